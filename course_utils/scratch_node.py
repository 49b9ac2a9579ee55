"""A throwaway RabbitMQ node for demos that must restart (or crash) a broker.

Chapter 4 shows which messages survive a broker restart. It must never restart the course broker
(other notebooks, and graded learners, share it), so it starts a node of its own:

    from course_utils.scratch_node import scratch_node

    with scratch_node("cap04") as node:          # ~6 s: a fresh node on free ports
        with pika.BlockingConnection(node.params()) as connection:
            ...                                   # declare, publish
        node.restart()                            # clean stop + start, data kept (~12 s)
        node.restart(kill=True)                   # SIGKILL + start: a crashed process
        node.management.queues()                  # its management API (guest/guest)
    # leaving the block stops the node and deletes its folder

The node is a `course_utils.native.NativeNode` run from the OS package (`rabbitmq-server`), in a
temporary folder, on a free block of ports, with RabbitMQ's default user guest/guest (which may
log in from localhost). It is started with `die_with_parent=True`: on Linux, when the process that
started it (the notebook's kernel) dies, the node is stopped too. A folder left behind by a killed
kernel is removed by the next `scratch_node()` call.

Without the OS package (a learner who runs the course broker in Docker) `scratch_node()` raises
`ScratchNodeUnavailable`, whose pt-BR message says why and what to install; `available()` tells
beforehand, so a notebook can skip the demo.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pika

from .errors import CourseError
from .management import Management
from .native import NativeNode, Ports, find_server, free_offset, pid_alive, release_offset
from .sandbox import close_quietly, course_params

PREFIX = "curso-descartavel-"
_counter = itertools.count(1)


class ScratchNodeUnavailable(CourseError):
    """RabbitMQ is not installed on this machine, so no throwaway node can be started."""


UNAVAILABLE = (
    "Esta demonstração reinicia um nó RabbitMQ descartável, iniciado a partir do RabbitMQ instalado "
    "no sistema (o script rabbitmq-server), e ele não está instalado aqui — você deve estar usando o "
    "broker do curso no Docker, o que está certo para o resto do curso. Para ver a demonstração, "
    "instale o RabbitMQ (Debian/Ubuntu: sudo apt-get install -y rabbitmq-server; macOS: brew install "
    "rabbitmq) e rode a célula de novo. O broker do curso nunca é reiniciado pelas demonstrações."
)


def available() -> bool:
    """True if a throwaway node can be started here (the OS RabbitMQ package is installed)."""
    return find_server() is not None


class ScratchNode:
    """A RabbitMQ node of one's own, in a temporary folder, to restart and crash at will.

    Create it with `scratch_node()` (started) or `ScratchNode(...)` then `start()`. `close()`
    stops it and deletes its folder; so does leaving a `with` block."""

    def __init__(self, label: str = "scratch", base_dir: Path | str | None = None):
        if not available():
            raise ScratchNodeUnavailable(UNAVAILABLE)
        safe = "".join(ch for ch in label.lower() if ch.isalnum()) or "scratch"
        name = f"descartavel-{safe}-{os.getpid()}-{next(_counter)}"
        if base_dir is None:
            _sweep_stale()
            base_dir = tempfile.mkdtemp(prefix=f"{PREFIX}{safe}-")
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "owner.json").write_text(json.dumps({"pid": os.getpid(), "node": name}))
        self._offset = free_offset(lease=True)  # its ports stay its own across restarts
        self.node = NativeNode(self.base_dir / "node", name=name, ports=Ports.offset(self._offset),
                               die_with_parent=True)
        self.host = "127.0.0.1"
        self._management: Management | None = None
        self._connections: list[pika.BlockingConnection] = []
        self.closed = False

    def __repr__(self) -> str:
        state = "fechado" if self.closed else ("rodando" if self.is_running() else "parado")
        return f"<ScratchNode {self.node.node_name} amqp={self.ports.amqp} {state}>"

    # where it is ------------------------------------------------------------------------
    @property
    def ports(self) -> Ports:
        return self.node.ports

    @property
    def name(self) -> str:
        """The Erlang node name (`descartavel-cap04-1234-1@localhost`)."""
        return self.node.node_name

    @property
    def url(self) -> str:
        """AMQP URL of the node's default vhost, as guest/guest."""
        return f"amqp://guest:guest@{self.host}:{self.ports.amqp}/%2F"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.ports.management}"

    def params(self, **overrides) -> pika.URLParameters:
        """pika connection parameters for the node (guest/guest, vhost '/')."""
        return course_params(self.url, "curso nó descartável", **overrides)

    def connect(self, **overrides) -> pika.BlockingConnection:
        """A BlockingConnection to the node; `close()` closes any still open."""
        connection = pika.BlockingConnection(self.params(**overrides))
        self._connections.append(connection)
        return connection

    @property
    def management(self) -> Management:
        """Management API client for the node (guest/guest, vhost '/')."""
        if self._management is None:
            self._management = Management(self.management_url, "guest", "guest", "/")
        return self._management

    # life cycle -------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.node.is_running()

    def start(self, timeout: float = 60.0) -> "ScratchNode":
        """Start the node (keeping its data) and wait until AMQP and the management API answer."""
        if self.closed:
            raise CourseError("Este nó descartável já foi fechado (close()); crie outro com scratch_node().")
        self.node.start(timeout)
        return self

    def stop(self, timeout: float = 30.0) -> bool:
        """Clean shutdown (SIGTERM): queues write what they must and stop. False if not running."""
        return self.node.stop(timeout)

    def kill(self) -> bool:
        """SIGKILL the node's Erlang VM: it dies at once, as in a crash. False if not running."""
        return self.node.kill()

    def restart(self, kill: bool = False, timeout: float = 60.0) -> float:
        """Stop the node and start it again on the same data; returns the seconds it took.

        kill=False: a clean shutdown (SIGTERM), as `systemctl restart rabbitmq-server` does.
        kill=True: SIGKILL, as if the process had crashed: what was only in memory is lost.
        Connections open to the node are cut either way."""
        started = time.monotonic()
        if kill:
            self.kill()
        else:
            self.stop()
        self._connections = [c for c in self._connections if c.is_open]
        self.start(timeout)
        return time.monotonic() - started

    def close(self) -> None:
        """Close its connections, stop the node (at once: its data is thrown away) and delete
        its folder. Safe to call twice."""
        if self.closed:
            return
        for connection in self._connections:
            close_quietly(connection)  # a connection cut by a restart may not close cleanly
        self._connections.clear()
        try:
            self.kill()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            release_offset(self._offset)
            self.closed = True

    def __enter__(self) -> "ScratchNode":
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # last resort; close() is the way
        try:
            if not self.closed and self.node.is_running():
                self.close()
        except Exception:
            pass


def scratch_node(label: str = "scratch", timeout: float = 60.0) -> ScratchNode:
    """Start a throwaway node and return its handle (also a context manager that closes it).

    Raises ScratchNodeUnavailable (pt-BR) when the OS RabbitMQ package is not installed, and
    BrokerStartError (with the node's log) if it does not come up; no folder is left behind."""
    node = ScratchNode(label)
    try:
        node.start(timeout)
    except BaseException:
        node.close()
        raise
    return node


def sweep_stale(prefix: str = PREFIX, on_sweep=None) -> None:
    """Delete folders `$TMPDIR/<prefix>*` whose owner process (`owner.json`) and nodes (a pid file
    one level down: `node/NAME.pid`, a cluster's `no1/NAME.pid`...) are all gone. Shared with
    `course_utils.cluster`; `on_sweep(folder)` runs before a folder is deleted."""
    root = Path(tempfile.gettempdir())
    for folder in root.glob(f"{prefix}*"):
        try:
            owner = json.loads((folder / "owner.json").read_text())
            node_pids = [int(f.read_text().strip()) for f in folder.glob("*/*.pid")]
        except (OSError, ValueError):
            continue
        if pid_alive(int(owner.get("pid", 0))) or any(pid_alive(pid) for pid in node_pids):
            continue
        if on_sweep is not None:
            on_sweep(folder)
        shutil.rmtree(folder, ignore_errors=True)


_sweep_stale = sweep_stale


__all__ = ["scratch_node", "ScratchNode", "ScratchNodeUnavailable", "available", "sweep_stale"]
