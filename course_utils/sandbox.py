"""The chapter sandbox: `curso = setup("cap02")` gives a notebook a fresh vhost of its own."""
from __future__ import annotations

import os
import re
import time
import weakref

import pika

from . import strict
from .broker import VHOST_PREFIX, Broker, ensure_broker
from .errors import CourseError
from .management import Management

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,40}$")


# The heartbeat the course's connections ask for. A BlockingConnection answers heartbeats only while
# the program calls into pika: in a notebook, that is while a cell runs. With the broker's 60 s, a
# learner who reads for about three minutes finds the notebook's connection dropped (StreamLostError
# on the next cell); 600 s lets a pause of twenty minutes or so pass, and a dead client is still
# detected (heartbeats stay on). Chapters 2 and 5 tell the learner so.
NOTEBOOK_HEARTBEAT = 600


def course_params(url: str, connection_name: str, **overrides) -> pika.URLParameters:
    """pika parameters as the course uses them: bounded retries and timeouts, a connection name
    the management API shows, a heartbeat long enough for a learner's pause between cells
    (`NOTEBOOK_HEARTBEAT`); keyword arguments set attributes (heartbeat=2, ...)."""
    params = pika.URLParameters(url)
    params.heartbeat = NOTEBOOK_HEARTBEAT
    params.connection_attempts = 3
    params.retry_delay = 0.5
    params.socket_timeout = 5
    params.blocked_connection_timeout = 30
    params.client_properties = {"connection_name": connection_name}
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


def close_quietly(connection) -> bool:
    """Close a pika connection if it is open; never raises. True if this call closed it cleanly.

    A BlockingConnection only reads its socket while the program calls into pika, so a connection
    the broker dropped meanwhile (missed heartbeats) still says `is_open` until the next call, and
    `close()` then raises StreamLostError: the connection is closed all the same, which is all a
    clean-up wants. Anything else a half-broken connection raises on close is swallowed too."""
    if connection is None or not getattr(connection, "is_open", False):
        return False
    try:
        connection.close()
        return True
    except Exception:  # noqa: BLE001 - already closed by the broker, or broken: gone either way
        return False


class Chapter:
    """Handle for one chapter's vhost. Create it with `setup()`."""

    def __init__(self, name: str, broker: Broker, vhost: str, owns_vhost: bool):
        self.name = name
        self.broker = broker
        self.vhost = vhost
        self.owns_vhost = owns_vhost
        self.management: Management = broker.management(vhost)
        self._connections: "weakref.WeakSet[pika.BlockingConnection]" = weakref.WeakSet()
        self._cleanup_hooks: list = []
        self._cluster = None

    def __repr__(self) -> str:
        return f"<Chapter {self.name!r} vhost={self.vhost!r} broker={self.broker.kind}>"

    @property
    def url(self) -> str:
        """AMQP URL of this chapter's vhost (with credentials): pika.URLParameters(curso.url)."""
        return self.broker.amqp_url(self.vhost)

    def params(self, **overrides) -> pika.URLParameters:
        """Connection parameters for pika; keyword arguments set attributes (heartbeat=30, ...)."""
        return course_params(self.url, f"curso {self.name}", **overrides)

    def connect(self, **overrides) -> pika.BlockingConnection:
        """A BlockingConnection to this vhost; `cleanup()` closes any still open."""
        connection = pika.BlockingConnection(self.params(**overrides))
        self._connections.add(connection)
        return connection

    def reset(self) -> None:
        """Delete and recreate the vhost (only one this sandbox created)."""
        if not self.owns_vhost:
            raise CourseError("Este vhost veio de RABBITMQ_URL: o curso não o apaga.")
        self.close_connections()
        admin = self.broker.management()
        admin.recreate_vhost(self.vhost, description=f"Curso RabbitMQ com Python: {self.name}")
        admin.set_permissions(self.broker.username, self.vhost)

    def close_connections(self, *connections) -> int:
        """Close `connections` and every connection `connect()` opened that is still open; never
        raises (see `close_quietly`). Returns how many were closed here."""
        closed = 0
        for connection in [*connections, *self._connections]:
            closed += close_quietly(connection)
        return closed

    def on_cleanup(self, fn) -> None:
        """Call `fn()` first in every `cleanup()` (course_utils.background registers its stop_all)."""
        self._cleanup_hooks.append(fn)

    def cluster(self, versao: str | None = None, **options):
        """The chapter's local 3-node cluster (`course_utils.cluster`): started on the first call
        (about 15-25 s), the same one afterwards; `cleanup()` stops it, and it dies with the kernel.
        Raises `ClusterUnavailable` (pt-BR) where a cluster cannot run here."""
        current = self._cluster
        if current is not None and not current.closed:
            return current
        from .cluster import cluster as start_cluster

        self.use_cluster(start_cluster(self.name, versao=versao, **options), owned=True)
        return self._cluster

    def use_cluster(self, running, owned: bool = False) -> None:
        """Make `running` (a started `Cluster`) the one `cluster()` returns, e.g. one cluster shared
        by many sandboxes in a test run; with `owned`, `cleanup()` closes it."""
        self._cluster = running
        if owned:
            self.on_cleanup(running.close)

    def cleanup(self, *connections, delete_vhost: bool = False) -> None:
        """End of a notebook: close `connections` (the ones it opened with
        `pika.BlockingConnection(curso.params())`) and those `connect()` opened, then, with
        delete_vhost, remove the vhost. Closing never fails, not even on a connection the broker has
        already dropped (a missed heartbeat while the learner was reading), so the rest always runs."""
        for fn in list(self._cleanup_hooks):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a clean-up step never stops the rest
                pass
        self.close_connections(*connections)
        if delete_vhost and self.owns_vhost:
            self.broker.management().delete_vhost(self.vhost)

    # convenience for notebooks ----------------------------------------------------------
    def queues(self, wait_for: dict[str, int | tuple[int, int]] | None = None, timeout: float = 10.0):
        """The vhost's queues as a pandas DataFrame (as the management API shows them).

        The API's counts refresh once per statistics interval (1 s on the course's own broker,
        5 s by default elsewhere). `wait_for={"fila": 3}` waits (up to `timeout`) until that queue
        shows 3 messages in total; `{"fila": (ready, unacked)}` waits for both counts."""
        import pandas as pd

        deadline = time.monotonic() + timeout
        while True:
            raw = self.management.queues()
            if not wait_for or _counts_match(raw, wait_for) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        rows = [{"fila": q["name"], "tipo": q.get("type", "classic"), "durável": q.get("durable"),
                 "exclusiva": q.get("exclusive"), "prontas": q.get("messages_ready", 0),
                 "sem_ack": q.get("messages_unacknowledged", 0), "total": q.get("messages", 0),
                 "consumidores": q.get("consumers", 0)}
                for q in raw]
        return pd.DataFrame(rows, columns=["fila", "tipo", "durável", "exclusiva", "prontas",
                                           "sem_ack", "total", "consumidores"])

    def connections(self, wait_for: int | None = None, timeout: float = 10.0):
        """Open AMQP connections to this vhost as a DataFrame; `wait_for=n` waits until n show."""
        import pandas as pd

        deadline = time.monotonic() + timeout
        raw = self.management.connections()
        while wait_for is not None and len(raw) != wait_for and time.monotonic() < deadline:
            time.sleep(0.25)
            raw = self.management.connections()
        rows = [{"conexão": c.get("client_properties", {}).get("connection_name") or c["name"],
                 "usuário": c.get("user"), "canais": c.get("channels", 0), "estado": c.get("state")}
                for c in raw]
        return pd.DataFrame(rows, columns=["conexão", "usuário", "canais", "estado"])


def _counts_match(queues: list[dict], wanted: dict) -> bool:
    by_name = {q["name"]: q for q in queues}
    for name, expected in wanted.items():
        q = by_name.get(name)
        if q is None:
            return False
        if isinstance(expected, tuple):
            if (q.get("messages_ready", 0), q.get("messages_unacknowledged", 0)) != expected:
                return False
        elif q.get("messages", 0) != expected:
            return False
    return True


_SUFFIX = re.compile(r"^[a-z0-9_.-]{0,40}$")


def vhost_for(name: str) -> str:
    """`curso-NAME`, plus `CURSO_VHOST_SUFFIX` when set: the test suite gives each parallel worker
    its own suffix, so two workers running the same notebook never share a vhost."""
    if not _NAME.match(name or ""):
        raise CourseError(f"Nome de capítulo inválido: {name!r}. Use letras minúsculas e números, como 'cap02'.")
    suffix = os.environ.get("CURSO_VHOST_SUFFIX", "")
    if not _SUFFIX.match(suffix):
        raise CourseError(f"CURSO_VHOST_SUFFIX inválido: {suffix!r} (use letras minúsculas, números, '-', '_' ou '.').")
    return f"{VHOST_PREFIX}{name}{suffix}"


def setup(name: str, reset: bool = True, timeout: float = 60.0) -> Chapter:
    """Ensure the broker and give the chapter a fresh vhost (deleted and recreated).

    With RABBITMQ_URL set (the grader does this), the URL's vhost is used as given and nothing is
    created or deleted. Strict mode (RabbitMQ 4.x compatibility) is switched on unless CURSO_STRICT=0.
    """
    if strict.wanted():
        strict.enable()
    broker = ensure_broker(timeout=timeout)
    if broker.vhost is not None:  # RABBITMQ_URL names the vhost
        return Chapter(name, broker, broker.vhost, owns_vhost=False)
    chapter = Chapter(name, broker, vhost_for(name), owns_vhost=True)
    if reset or not broker.management().vhost_exists(chapter.vhost):
        chapter.reset()
    return chapter
