"""The grading broker: a RabbitMQ node the grader starts for the purpose and locks down.

No `guest` user; one administrator whose random password stays in the grader's memory (it is
scrubbed from the node's config file once the node has created the user); per submission, a vhost
and a user whose permissions cover only that vhost. Where it can (Linux, root), the node lives in a
private network namespace (`confine.NetNamespace`) with the kernels graded on it: `inside()` runs a
block there, and `admin` makes every management call there.
"""
from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..management import Management
from ..native import NativeNode, Ports, free_offset
from .confine import InNamespace, NetNamespace, unavailable_reason


@dataclass(frozen=True)
class StudentSpace:
    vhost: str
    user: str
    password: str
    amqp_url: str
    management_url: str


class GradingBroker:
    """Start with `with GradingBroker() as broker:`; `broker.space(label)` makes a student space."""

    def __init__(self, base_dir: Path | None = None, host: str = "127.0.0.1", confine: bool | None = None):
        """`confine`: run the node (and, through `inside()`, the kernels) in a private network
        namespace; None (the default) does so wherever it can (`confine.unavailable_reason()`)."""
        self.unconfined_reason = unavailable_reason() if confine is not False else "isolamento desligado"
        if confine and self.unconfined_reason:
            raise OSError(self.unconfined_reason)
        self.namespace: NetNamespace | None = None
        self._confine = confine
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="curso-grade-broker-"))
        self.base_dir.chmod(0o700)
        self.host = host
        self._admin_password = secrets.token_urlsafe(24)
        self.node = NativeNode(self.base_dir / "node", name=f"cursograde{secrets.token_hex(3)}",
                               ports=Ports.offset(free_offset()),
                               default_user=("grader-admin", self._admin_password),
                               extra_config=("loopback_users = none",), die_with_parent=True)
        self.admin: Management | InNamespace | None = None
        self._lock = threading.Lock()

    # life cycle -------------------------------------------------------------------------
    @property
    def confined(self) -> bool:
        return self.namespace is not None

    def inside(self):
        """A block run with the current thread in the node's network namespace (or as is, unconfined)."""
        return self.namespace.inside() if self.namespace is not None else contextlib.nullcontext()

    def open(self) -> "GradingBroker":
        """Make the private network namespace, where it can (`start` does it too), so that the
        grader can start what must live there while the node boots."""
        if self.namespace is None and self.unconfined_reason is None:
            try:
                self.namespace = NetNamespace().open()
            except OSError as exc:  # e.g. a container without CAP_SYS_ADMIN: unshare is refused
                if self._confine:
                    raise
                self.unconfined_reason = str(exc)
        return self

    def start(self, timeout: float = 90.0) -> "GradingBroker":
        self.open()
        try:
            with self.inside():
                self.node.start(timeout)
        except BaseException:
            self._close_namespace()
            raise
        conf = self.node.base_dir / "rabbitmq.conf"
        # The user exists now; the password need not stay on disk.
        conf.write_text("".join(line for line in conf.read_text().splitlines(keepends=True)
                                if not line.startswith("default_pass")))
        admin = Management(self.management_url, "grader-admin", self._admin_password, "/")
        self.admin = InNamespace(admin, self.namespace) if self.namespace is not None else admin
        self.admin.overview()
        users = {u["name"] for u in self.admin.users()}
        assert "guest" not in users, "the grading broker must have no guest user"
        return self

    def stop(self) -> None:
        """Kill the node and remove what it had: nothing of a grading node outlives the run, so there
        is nothing to shut down cleanly (a clean stop took 7 s of every run)."""
        try:
            with self.inside():
                self.node.kill()
        finally:
            self._close_namespace()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _close_namespace(self) -> None:
        namespace, self.namespace = self.namespace, None
        if namespace is not None:
            namespace.close()

    def __enter__(self) -> "GradingBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # addresses --------------------------------------------------------------------------
    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.node.ports.management}"

    @property
    def amqp_port(self) -> int:
        return self.node.ports.amqp

    # student spaces ---------------------------------------------------------------------
    def space(self, label: str) -> StudentSpace:
        """A fresh vhost and a user allowed only there."""
        return self.create(self.reserve(label))

    def reserve(self, label: str) -> StudentSpace:
        """The names, password and URLs of a new student space, made up before the node needs to
        answer (a kernel can be started with them while it boots); `create` makes it on the node."""
        token = secrets.token_hex(4)
        vhost = f"grade-{label}-{token}"
        user = f"aluno-{label}-{token}"
        password = secrets.token_urlsafe(18)
        url = f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.amqp_port}/{quote(vhost, safe='')}"
        return StudentSpace(vhost, user, password, url, self.management_url)

    def create(self, space: StudentSpace) -> StudentSpace:
        """Make a reserved space on the node: its vhost, and its user with permissions there only."""
        admin = self.admin
        admin.create_vhost(space.vhost, description=f"curso grade: {space.vhost}")
        admin.create_user(space.user, space.password, tags="management")
        admin.set_permissions(space.user, space.vhost)
        return space

    def drop(self, space: StudentSpace) -> None:
        """Delete the user (closing its connections) and the vhost."""
        admin = self.admin
        for conn in admin.all_connections():
            if conn.get("user") == space.user:
                admin.close_connection(conn["name"])
        admin.delete_user(space.user)
        admin.delete_vhost(space.vhost)
