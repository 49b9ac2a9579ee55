"""Chapter 8's cluster in Docker: the three nodes of `docker/cluster/compose.yaml`, driven with the
same API as `course_utils.cluster.Cluster` (status, params, failure tools, quorum leader...).

`curso.cluster()` uses it when `CURSO_CLUSTER=docker`; the learner starts nothing by hand:

    CURSO_CLUSTER=docker jupyter lab        # then chapter 8 runs on the containers

`start()` runs `docker compose up -d` on the file (the nodes form the cluster by themselves: classic
peer discovery in `docker/cluster/rabbitmq.conf`) and waits until every node's management API
reports the three running; `close()` runs `docker compose down -v`. The failure tools map to Docker:
stop = `docker stop` (SIGTERM, a clean stop), kill = `docker kill` (SIGKILL), freeze = `docker pause`
(the cgroup freezer: the node answers nothing, as behind a partition), bring back = `docker start`
or `docker unpause`.

This path cannot be tested on the course's CI machine (no Docker engine there); keep it small and
exact: everything else comes from `Cluster`.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from .cluster import NET_TICKTIME, Cluster, ClusterTimeout, ClusterUnavailable
from .errors import CourseError
from .native import Ports

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker" / "cluster" / "compose.yaml"
PROJECT = "curso-cluster"
SERVICES = ("rabbit1", "rabbit2", "rabbit3")
AMQP_PORTS = (5701, 5702, 5703)
MANAGEMENT_PORTS = (15701, 15702, 15703)


def _docker(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ClusterUnavailable("CURSO_CLUSTER=docker, mas o comando docker não está instalado.") from None
    except subprocess.TimeoutExpired:
        raise ClusterTimeout(f"docker {' '.join(args)} não terminou em {timeout:.0f} s.") from None


def _compose(*args: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
    return _docker("compose", "-f", str(COMPOSE_FILE), "-p", PROJECT, *args, timeout=timeout)


class DockerNode:
    """One container of the compose file, with the part of NativeNode's interface Cluster uses."""

    def __init__(self, number: int):
        self.service = SERVICES[number - 1]
        self.name = self.service
        self.node_name = f"rabbit@{self.service}"
        self.ports = Ports(amqp=AMQP_PORTS[number - 1], management=MANAGEMENT_PORTS[number - 1])
        self.net_ticktime = NET_TICKTIME

    def _container(self) -> str:
        result = _compose("ps", "-q", self.service, timeout=60)
        return result.stdout.strip()

    def _state(self) -> dict:
        container = self._container()
        if not container:
            return {}
        result = _docker("inspect", "--format", "{{json .State}}", container, timeout=60)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def is_running(self) -> bool:
        return bool(self._state().get("Running"))

    def pid(self) -> int | None:
        return self._state().get("Pid") or None

    def _run(self, *args: str, timeout: float = 120.0) -> bool:
        result = _compose(*args, self.service, timeout=timeout)
        if result.returncode != 0:
            raise CourseError(f"docker compose {' '.join(args)} {self.service} falhou:\n{result.stderr.strip()[-800:]}")
        return True

    def stop(self, timeout: float = 60.0) -> bool:
        return self.is_running() and self._run("stop", timeout=timeout)

    def kill(self) -> bool:
        return self.is_running() and self._run("kill", "-s", "SIGKILL")

    def launch(self) -> None:
        self._run("start")

    def wait(self, timeout: float = 60.0) -> None:
        pass  # Cluster waits for every node's management API to report the cluster

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return _compose("exec", "-T", self.service, "rabbitmqctl", *args, timeout=timeout)


class DockerCluster(Cluster):
    """The compose file's cluster (RabbitMQ 4.x image) behind Cluster's API."""

    def __init__(self, label: str = "cluster", versao: str | None = None, **_options):
        if not COMPOSE_FILE.exists():
            raise ClusterUnavailable(f"Não achei {COMPOSE_FILE} (o arquivo compose do cluster do curso).")
        if _docker("info", timeout=30).returncode != 0:
            raise ClusterUnavailable("CURSO_CLUSTER=docker, mas o Docker não responde (`docker info` falhou): "
                                     "inicie o Docker ou remova CURSO_CLUSTER para usar o cluster nativo.")
        self.version = "4"
        self.nodes = [DockerNode(i) for i in range(1, len(SERVICES) + 1)]
        self.host = "127.0.0.1"
        self.timings: dict[str, float] = {}
        self.healed: list[str] = []
        self._frozen: dict[str, tuple[int, int | None]] = {}
        self._managements = {}
        self._connections = []
        self.closed = False

    def __repr__(self) -> str:
        return f"<Cluster Docker ({PROJECT}) {'fechado' if self.closed else ', '.join(self.names)}>"

    def start(self, timeout: float = 300.0) -> "DockerCluster":
        started = time.monotonic()
        result = _compose("up", "-d", "--wait", timeout=max(60.0, timeout))
        if result.returncode != 0:
            raise CourseError(f"docker compose up falhou:\n{result.stderr.strip()[-1500:]}")
        self._wait_view(lambda v: all(v.get(x, {}).get("running") and not v[x].get("partitions")
                                      for x in self.names),
                        self.nodes, started + timeout, "todos os nós rodando no cluster")
        self.timings["total_s"] = time.monotonic() - started
        return self

    def freeze_node(self, which, timeout: float = 60.0) -> float:
        n = self.node(which)
        if n.name in self._frozen:
            raise CourseError(f"O nó {n.node_name} já está congelado.")
        started = time.monotonic()
        n._run("pause")
        self._frozen[n.name] = (0, None)
        self._wait_down(n, timeout)
        return time.monotonic() - started

    def _thaw_if_frozen(self, n) -> None:
        if self._frozen.pop(n.name, None) is not None:
            n._run("unpause")

    def close(self) -> None:
        if self.closed:
            return
        for connection in self._connections:
            from .sandbox import close_quietly
            close_quietly(connection)
        self._connections.clear()
        self._frozen.clear()
        _compose("down", "-v", timeout=300)
        self.closed = True

    def __del__(self):  # containers are not children of the kernel: close() or `down` stops them
        pass
