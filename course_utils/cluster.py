"""A real 3-node RabbitMQ cluster on one machine, for chapter 8 (quorum queues, failures, failover).

    from course_utils.cluster import cluster, available

    if available():                               # False: the notebook skips the cluster sections
        with cluster("cap08") as c:               # 3 nodes booted at once, then joined (~20-25 s)
            c.status()                            # a DataFrame: nó, processo, no cluster, portas...
            params = c.all_params()               # pika tries them in order: client fail-over
            c.quorum_leader("pedidos")            # 'cap08-no2-1234@localhost'
            c.kill_node(2)                        # SIGKILL; returns once the others see it down
            c.bring_back(2)                       # starts it again; returns once it is back
            c.freeze_node(3)                      # SIGSTOP: a network partition, seen after the tick
            c.bring_back(3)                       # SIGCONT
    # leaving the block kills the nodes and deletes their folders (so does c.close())

Each node is a `course_utils.native.NativeNode` (the OS package, RabbitMQ 3.10 here) or, with
`versao="4"` (default: what CURSO_BROKER says, as `broker.ensure_broker` reads it), a
`course_utils.rabbit4.Rabbit4Node` (Debian 13's 4.0 in a chroot; root only). The three nodes have
distinct names (`<label>-no1-<pid>@localhost`...), port blocks (`free_offset`) and folders under
one temporary folder, share one Erlang cookie, and run the management plugin. They boot at the
same time; nodes 2 and 3 then join node 1, one after the other (`rabbitmqctl stop_app`,
`join_cluster`, `start_app`).
The learner's course broker is never one of them.

Users: RabbitMQ's default guest/guest, as `scratch_node` does: guest may log in from localhost, the
nodes listen on 127.0.0.1 only, and a joining node takes over the first node's users anyway.

Failure tools (`stop_node`, `kill_node`, `freeze_node`, `bring_back`) return the seconds until the
cluster noticed: every other running node's management API (`/api/nodes`, field `running`) says
the node is down (or, for `bring_back`, that every node is running again, with no partition). Each
wait is bounded; on expiry `ClusterTimeout` says in pt-BR what was not seen.

A frozen node (SIGSTOP) is only noticed when its peers miss its Erlang distribution ticks:
`net_ticktime` seconds (default 60, so 60-75 s). The cluster's nodes and their CLI tools run with
`NET_TICKTIME` = 5 s (advanced.config, RABBITMQ_CTL_ERL_ARGS): Erlang drops a frozen peer after
5-6.25 s; 3.10's /api/nodes reports it down at ~6 s, 4.0's at ~12-13 s (its /api/nodes requests
block meanwhile), instead of 60-75 s and more with the default tick.
`cluster_partition_handling` is `pause_minority` (RabbitMQ's advice for clusters of 3 or more):
a node that finds itself alone after a freeze pauses, then rejoins by itself once it sees the
majority again, instead of leaving a partition someone has to heal by hand.

On Linux the nodes get SIGTERM when the process that started them dies (`die_with_parent=True`,
PR_SET_PDEATHSIG; they are forked by one long-lived thread, background's spawner, since the signal
follows the forking *thread*). A folder left by a killed kernel is removed by the next cluster.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pika

from .errors import BrokerStartError, CourseError, PortInUse
from .management import Management
from .native import (FAST_STATS, PLUGINS, NativeNode, Ports, find_server, free_offset, pid_alive,
                     release_offset, start_time, tail)
from .sandbox import close_quietly, course_params
from .scratch_node import sweep_stale

PREFIX = "curso-cluster-"
SIZE = 3
NET_TICKTIME = 5  # seconds; Erlang's default is 60 (see the module docstring)
PARTITION_HANDLING = "pause_minority"
CLUSTER_PLUGINS = ("rabbitmq_consistent_hash_exchange",)
START_TIMEOUT = 120.0  # the whole start-up (boot + join); measured ~20 s here
NOTICE_TIMEOUT = 60.0  # failure tools: how long the cluster may take to notice
HEAL_AFTER = 10.0  # bring_back: seconds a thawed node gets to rejoin by itself (see bring_back)
NODE_MEMORY_MB = 350  # a fresh node with management uses ~150-250 MB; keep a margin
_POLL = 0.1
_counter = itertools.count(1)


class ClusterUnavailable(CourseError):
    """A local cluster cannot be started here (no RabbitMQ, not root for 4.x, memory, ports)."""


class ClusterTimeout(CourseError):
    """The cluster did not notice a change (a node down or back) within the time allowed."""


# ---------------------------------------------------------------------------------------------
# Whether it can run.

def _version(versao: str | None) -> str:
    from .broker import wanted_version  # broker imports most of the package; keep this module light
    return wanted_version(versao)


def mem_available_mb() -> float | None:
    """MemAvailable of /proc/meminfo in MB, or None where there is no such file."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def unavailable_reason(versao: str | None = None, size: int = SIZE) -> str | None:
    """Why a local cluster cannot start here (pt-BR), or None if it can. Starts nothing."""
    version = _version(versao)
    if version == "4":
        from .rabbit4 import Rabbit4Unavailable, require_root, rootfs_dir, rootfs_ok
        try:
            require_root()
        except Rabbit4Unavailable as exc:
            return f"O cluster local de RabbitMQ 4.x não pode subir aqui. {exc}"
        if not rootfs_ok(rootfs_dir()) and shutil.which("debootstrap") is None:
            return ("O cluster local de RabbitMQ 4.x roda o pacote do Debian 13 num chroot, e nem o sistema "
                    "de arquivos dele nem o debootstrap (que o monta) existem aqui: apt-get install -y "
                    "debootstrap, ou rode o capítulo com o broker padrão (sem CURSO_BROKER=4).")
    elif find_server() is None:
        return ("O cluster local de 3 nós é iniciado a partir do RabbitMQ instalado no sistema (o script "
                "rabbitmq-server), e ele não está instalado aqui — você deve estar usando o broker do curso "
                "no Docker, o que está certo para o resto do curso. Para ver as seções de cluster, instale o "
                "RabbitMQ (Debian/Ubuntu: sudo apt-get install -y rabbitmq-server; macOS: brew install "
                "rabbitmq) e rode a célula de novo. O broker do curso nunca faz parte do cluster.")
    free = mem_available_mb()
    need = size * NODE_MEMORY_MB
    if free is not None and free < need:
        return (f"Há só {free:.0f} MB de memória disponível (MemAvailable) e um cluster de {size} nós precisa "
                f"de uns {need} MB. Feche outros programas (ou notebooks) e rode a célula de novo.")
    try:
        _port_blocks(size, lease=False)
    except PortInUse as exc:
        return f"Não há portas livres para os {size} nós do cluster: {exc}"
    return None


def available(versao: str | None = None, size: int = SIZE) -> bool:
    """True if a local cluster can be started here (a notebook skips its cluster sections if not)."""
    return unavailable_reason(versao, size) is None


def _block_ports(offset: int) -> set[int]:
    p = Ports.offset(offset)
    return {*p.all().values(), *range(p.dist + 10000, p.dist + 10011)}  # + the CLI tools' range


def _port_blocks(size: int, lease: bool = True) -> list[int]:
    """`size` port offsets whose ports are all free and all distinct (CLI tools' ranges included),
    leased to this process (`native.free_offset`) until `Cluster.close()`: a node stopped, killed
    or frozen and brought back finds its ports still its own. lease=False only looks."""
    chosen: list[int] = []
    taken: set[int] = set()
    start = None
    while len(chosen) < size:
        n = free_offset(start, lease=lease)
        ports = _block_ports(n)
        if not ports & taken:
            chosen.append(n)
            taken |= ports
        elif lease:
            release_offset(n)
        start = n + 37
    return chosen


# ---------------------------------------------------------------------------------------------
# The nodes.

def advanced_config(net_ticktime: int = NET_TICKTIME) -> str:
    """advanced.config of a cluster node: the course's fast statistics plus a short net tick."""
    return f"[{{kernel, [{{net_ticktime, {net_ticktime}}}]}}, {FAST_STATS[1:]}"


class _Member:
    """What a cluster node adds to NativeNode / Rabbit4Node: its CLI tools use the nodes' tick
    time (a CLI with Erlang's 60 s would be dropped by a node that expects a tick every 5 s), and
    `launch()`, a start that does not wait (the nodes boot at once; they are waited for together)."""

    net_ticktime = NET_TICKTIME
    _no_wait = False

    def env(self) -> dict[str, str]:
        env = super().env()
        env["RABBITMQ_CTL_ERL_ARGS"] = f"-kernel net_ticktime {self.net_ticktime}"
        return env

    def write_config(self) -> None:
        super().write_config()
        # Chapter 8 shards one stream of messages with the consistent-hash exchange: it ships with
        # RabbitMQ and is enabled at boot, beside the course's usual plugins.
        (self.base_dir / "enabled_plugins").write_text("[" + ",".join((*PLUGINS, *CLUSTER_PLUGINS)) + "].\n")

    def wait(self, timeout: float = 60.0) -> None:
        if not self._no_wait:
            super().wait(timeout)

    def launch(self) -> None:
        self._no_wait = True
        try:
            self.start()
        finally:
            self._no_wait = False


class ClusterNode(_Member, NativeNode):
    """A node of a 3.10 (OS package) cluster."""


def _rabbit4_class():
    from .rabbit4 import Rabbit4Node

    class Cluster4Node(_Member, Rabbit4Node):
        """A node of a 4.x (Debian 13 chroot) cluster."""
    return Cluster4Node


def _spawn(fn, timeout: float = 120.0):
    """Run `fn` (which forks a node) in background's long-lived spawner thread: PR_SET_PDEATHSIG
    fires when the forking thread ends, so a node forked by a pool thread would die with it."""
    from .background import spawn
    return spawn(fn, timeout)


# ---------------------------------------------------------------------------------------------

class Cluster:
    """A local RabbitMQ cluster of `size` nodes (3 by default), in a temporary folder.

    Nodes are named by their number (1, 2, 3), by their Erlang name, or passed as the node itself.
    `close()` kills the nodes and deletes the folder; so does leaving a `with` block."""

    def __init__(self, label: str = "cluster", versao: str | None = None, size: int = SIZE,
                 die_with_parent: bool = True, net_ticktime: int = NET_TICKTIME,
                 partition_handling: str = PARTITION_HANDLING):
        self.version = _version(versao)
        reason = unavailable_reason(self.version, size)
        if reason:
            raise ClusterUnavailable(reason)
        safe = "".join(ch for ch in label.lower() if ch.isalnum()) or "cluster"
        count = next(_counter)
        suffix = f"{os.getpid()}" if count == 1 else f"{os.getpid()}-{count}"
        sweep_stale(PREFIX, on_sweep=_forget_mount_points)
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{safe}-"))
        cls = _rabbit4_class() if self.version == "4" else ClusterNode
        cookie = secrets.token_hex(16).upper()
        self._offsets = offsets = _port_blocks(size)  # leased until close()
        self.nodes: list[NativeNode] = []
        # 4.x: 4.0's own defaults, not DENY_LIKE_4_3. With a deprecated feature denied, 4.0.5 checks
        # at every boot whether the cluster uses it, and on a node that joins or restarts in a cluster
        # it wrongly finds transient non-exclusive queues in use ("failed_to_deny_deprecated_features
        # [transient_nonexcl_queues]", seen at start_app after join_cluster and at a restart after
        # SIGKILL, with no such queue declared). Strict mode still refuses them on the client side.
        extra = {"deny_like_4_3": False} if self.version == "4" else {}
        for i, offset in enumerate(offsets, 1):
            node = cls(self.base_dir / f"no{i}", name=f"{safe}-no{i}-{suffix}", ports=Ports.offset(offset),
                       cookie=cookie, die_with_parent=die_with_parent,
                       advanced_config=advanced_config(net_ticktime),
                       extra_config=(f"cluster_partition_handling = {partition_handling}",), **extra)
            node.net_ticktime = net_ticktime
            self.nodes.append(node)
        (self.base_dir / "owner.json").write_text(json.dumps({
            "pid": os.getpid(), "version": self.version, "nodes": [n.name for n in self.nodes],
            "rootfs": str(getattr(self.nodes[0], "rootfs", "") or "")}))
        self.host = "127.0.0.1"
        self.timings: dict[str, float] = {}
        self.healed: list[str] = []  # nodes whose partition bring_back had to heal (stop_app/start_app)
        self.rejoined: dict[str, str] = {}  # node name -> why its first join failed (start() joined it again)
        self._frozen: dict[str, tuple[int, int | None]] = {}  # node name -> (pid, start time)
        self._managements: dict[str, Management] = {}
        self._connections: list[pika.BlockingConnection] = []
        self.closed = False

    def __repr__(self) -> str:
        state = "fechado" if self.closed else f"{len(self.nodes)} nós"
        label = "RabbitMQ 4.x" if self.version == "4" else "RabbitMQ padrão"
        return f"<Cluster {label} {state}: {', '.join(self.names)}>"

    # where it is ------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """The nodes' Erlang names, in order (`cap08-no1-1234@localhost`, ...)."""
        return [n.node_name for n in self.nodes]

    def node(self, which) -> NativeNode:
        """The node numbered `which` (1-based), named `which` (with or without @localhost), or itself."""
        if isinstance(which, int) and not isinstance(which, bool):
            if 1 <= which <= len(self.nodes):
                return self.nodes[which - 1]
        elif isinstance(which, str):
            for n in self.nodes:
                if which in (n.node_name, n.name):
                    return n
        elif any(which is n for n in self.nodes):
            return which
        raise CourseError(f"Não há nó {which!r} neste cluster; os nós são 1 a {len(self.nodes)}: "
                          f"{', '.join(self.names)}.")

    def amqp_port(self, which) -> int:
        return self.node(which).ports.amqp

    def url(self, which, vhost: str = "/") -> str:
        from urllib.parse import quote
        return f"amqp://guest:guest@{self.host}:{self.amqp_port(which)}/{quote(vhost, safe='')}"

    def params(self, which, vhost: str = "/", **overrides) -> pika.URLParameters:
        """pika parameters for one node (guest/guest). Keyword arguments set attributes."""
        n = self.node(which)
        return course_params(self.url(n, vhost), f"curso cluster {n.name}", **overrides)

    def all_params(self, vhost: str = "/", **overrides) -> list[pika.URLParameters]:
        """Parameters for every node, in order: `pika.BlockingConnection(c.all_params())` tries
        them one after the other (one attempt each, 3 s socket timeout) and connects to the first
        node that answers, as a client fails over."""
        overrides = {"connection_attempts": 1, "retry_delay": 0, "socket_timeout": 3, **overrides}
        return [self.params(n, vhost, **overrides) for n in self.nodes]

    def connect(self, which=None, **overrides) -> pika.BlockingConnection:
        """A BlockingConnection to one node, or (which=None) to the first that answers; `close()`
        closes any still open."""
        params = self.all_params(**overrides) if which is None else self.params(which, **overrides)
        connection = pika.BlockingConnection(params)
        self._connections.append(connection)
        return connection

    def management(self, which, timeout: float = 10.0) -> Management:
        """Management API client of one node (guest/guest, vhost '/')."""
        n = self.node(which)
        key = f"{n.name}:{timeout}"
        if key not in self._managements:
            self._managements[key] = Management(f"http://{self.host}:{n.ports.management}", "guest", "guest",
                                                "/", timeout=timeout)
        return self._managements[key]

    # state ------------------------------------------------------------------------------
    def is_frozen(self, which) -> bool:
        return self.node(which).name in self._frozen

    def _up(self) -> list[NativeNode]:
        """Nodes whose process runs and is not frozen (they can answer)."""
        return [n for n in self.nodes if n.name not in self._frozen and n.is_running()]

    def live_node(self) -> NativeNode:
        """A node that runs and is not frozen (where the cluster's view is read from)."""
        up = self._up()
        if not up:
            raise CourseError("Nenhum nó do cluster está rodando (todos parados ou congelados).")
        return up[0]

    def nodes_view(self, via=None, timeout: float = 3.0) -> dict[str, dict]:
        """{node name: its /api/nodes record} as node `via` (default: a live one) sees the cluster."""
        mgmt = self.management(via if via is not None else self.live_node(), timeout=timeout)
        return {rec["name"]: rec for rec in mgmt.nodes()}

    def running_nodes(self, via=None) -> list[str]:
        """Names of the nodes that `via` (default: a live node) reports running."""
        return sorted(name for name, rec in self.nodes_view(via).items() if rec.get("running"))

    def cluster_status(self, which=None, timeout: float = 60.0) -> dict:
        """`rabbitmqctl cluster_status --formatter json` run against one node (default: a live one)."""
        n = self.node(which) if which is not None else self.live_node()
        result = n.ctl("cluster_status", "--formatter", "json", timeout=timeout)
        if result.returncode != 0:
            raise CourseError(f"rabbitmqctl cluster_status falhou em {n.node_name}: "
                              f"{(result.stderr or result.stdout).strip()[-500:]}")
        return json.loads(result.stdout[result.stdout.index("{"):])

    def status(self):
        """One row per node (a DataFrame, pt-BR columns): its process as this machine sees it
        (rodando / parado / congelado), whether the cluster reports it running (read from a live
        node's /api/nodes), its partitions, AMQP and management ports, pid."""
        import pandas as pd

        try:
            view = self.nodes_view()
        except CourseError:
            view = {}
        rows = []
        for i, n in enumerate(self.nodes, 1):
            rec = view.get(n.node_name, {})
            process = "congelado" if n.name in self._frozen else ("rodando" if n.is_running() else "parado")
            rows.append({"nº": i, "nó": n.node_name, "processo": process,
                         "no cluster": ("rodando" if rec.get("running") else "fora") if rec else "—",
                         "partições": ", ".join(rec.get("partitions") or []) or "—" if rec else "—",
                         "porta AMQP": n.ports.amqp, "porta gerenciamento": n.ports.management,
                         "pid": n.pid()})
        return pd.DataFrame(rows).set_index("nº")

    # quorum queues ----------------------------------------------------------------------
    def queue_record(self, queue: str, vhost: str = "/", via=None) -> dict:
        mgmt = self.management(via if via is not None else self.live_node())
        return mgmt.queue(queue, vhost)

    def quorum_leader(self, queue: str, vhost: str = "/", via=None) -> str | None:
        """The node that leads quorum queue `queue` (management API `leader`)."""
        return self.queue_record(queue, vhost, via).get("leader")

    def quorum_members(self, queue: str, vhost: str = "/", via=None) -> dict[str, list[str]]:
        """{"membros": nodes holding a replica, "online": those of them up} (management API)."""
        rec = self.queue_record(queue, vhost, via)
        return {"membros": sorted(rec.get("members") or []), "online": sorted(rec.get("online") or [])}

    # life cycle -------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> "Cluster":
        """Boot every node at once, join nodes 2.. to node 1, and wait until each node's
        management API reports all of them running. Raises BrokerStartError / ClusterTimeout
        (pt-BR) and leaves nothing running on failure."""
        if self.closed:
            raise CourseError("Este cluster já foi fechado (close()); crie outro com cluster().")
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        try:
            if self.version == "4":
                from .rabbit4 import ensure_rootfs
                ensure_rootfs(self.nodes[0].rootfs)  # built once, before the clock of the nodes' boot
            with start_slot(deadline):
                self.timings["fila_s"] = time.monotonic() - started
                for n in self.nodes:
                    _spawn(n.launch, timeout=max(1.0, deadline - time.monotonic()))
                self._wait_all(self.nodes, deadline)
            booted = time.monotonic()
            self.timings["partida_s"] = booted - started
            seed = self.nodes[0]
            # One node at a time, as RabbitMQ's clustering guide does: node 3 joining while node 2
            # sits between join_cluster and start_app learns of a member whose app is stopped, and
            # under load its start_app then failed (exit 69), in CI on 4.0.5 and here on 3.10.
            for n in self.nodes[1:]:
                self._join(n, seed, deadline)
            self._wait_all(self.nodes, deadline)
            self._wait_view(lambda v: all(v.get(x, {}).get("running") and not v[x].get("partitions")
                                          for x in self.names),
                            self.nodes, deadline, "todos os nós rodando no cluster")
            self.timings["juncao_s"] = time.monotonic() - booted
            self.timings["total_s"] = time.monotonic() - started
        except BaseException:
            for n in self.nodes:
                n.kill()
            raise
        return self

    def restore(self, timeout: float = NOTICE_TIMEOUT * 2) -> float:
        """Bring back every node that is stopped, killed or frozen (see `bring_back`), all at once;
        seconds taken (0 when the cluster was whole). A check calls it first, so it always starts on 3 nodes."""
        started = time.monotonic()
        deadline = started + timeout
        down = [n for n in self.nodes if n.name in self._frozen or not n.is_running()]
        if down:  # at once: each bring_back waits for the whole cluster, so one at a time never ends
            with ThreadPoolExecutor(len(down)) as pool:
                list(pool.map(lambda n: self.bring_back(n, timeout=max(1.0, deadline - time.monotonic())), down))
        return time.monotonic() - started

    def _wait_all(self, nodes, deadline: float) -> None:
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda n: n.wait(max(1.0, deadline - time.monotonic())), nodes))

    def _join(self, n: NativeNode, seed: NativeNode, deadline: float) -> None:
        """stop_app, join_cluster, start_app on `n`. A join that fails is tried once more after
        `reset`, RabbitMQ's recipe for a node whose join went wrong (seen once in CI under load:
        start_app exiting 69 on 4.0.5 after join_cluster); the first failure is kept in `rejoined`."""
        join = (("stop_app",), ("join_cluster", seed.node_name), ("start_app",))
        try:
            self._ctl_steps(n, join, deadline)
        except BrokerStartError as first:
            self.rejoined[n.node_name] = str(first)
            try:
                self._ctl_steps(n, (("stop_app",), ("reset",), *join[1:]), deadline)
            except BrokerStartError as second:
                raise BrokerStartError(f"{second}\nAntes, na primeira tentativa: {first}") from None

    def _ctl_steps(self, n: NativeNode, steps, deadline: float) -> None:
        for args in steps:
            left = max(5.0, deadline - time.monotonic())
            try:
                result = n.ctl(*args, timeout=left)
            except subprocess.TimeoutExpired:
                raise ClusterTimeout(f"rabbitmqctl {' '.join(args)} não terminou em {left:.0f} s no nó "
                                     f"{n.node_name}.") from None
            if result.returncode != 0:
                errors = [line for line in tail(n.node_log, 400).splitlines() if "[error]" in line][-8:]
                raise BrokerStartError(
                    f"O nó {n.node_name} não entrou no cluster: rabbitmqctl {' '.join(args)} falhou "
                    f"(código {result.returncode}).\n{(result.stderr or result.stdout).strip()[-800:]}"
                    + ("\nErros no log do nó:\n" + "\n".join(errors) if errors else ""))

    def _wait_view(self, ok, observers, deadline: float, what: str) -> float:
        """Poll /api/nodes of every observer until `ok(view)` holds for each; seconds waited."""
        started = time.monotonic()
        pending = list(observers)
        last: dict[str, str] = {}
        while True:
            for n in list(pending):
                try:
                    view = self.nodes_view(n, timeout=2.0)
                except CourseError as exc:  # not answering yet (restarting) or unreachable
                    last[n.node_name] = f"não respondeu ({exc})"
                    continue
                if ok(view):
                    pending.remove(n)
                else:
                    last[n.node_name] = _describe(view)
            if not pending:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                seen = "; ".join(f"{n.node_name} {last.get(n.node_name, 'não respondeu')}" for n in pending)
                raise ClusterTimeout(
                    f"Esperei {time.monotonic() - started:.0f} s e o cluster não mostrou {what}. "
                    f"O que cada nó ainda mostrava: {seen}.")
            time.sleep(_POLL)

    def _survivors(self, n: NativeNode) -> list[NativeNode]:
        return [m for m in self._up() if m is not n]

    def _wait_down(self, n: NativeNode, timeout: float) -> float:
        survivors = self._survivors(n)
        if not survivors:
            return 0.0
        return self._wait_view(lambda v: not v.get(n.node_name, {}).get("running", False), survivors,
                               time.monotonic() + timeout, f"o nó {n.node_name} fora do ar")

    def stop_node(self, which, timeout: float = NOTICE_TIMEOUT) -> float:
        """Stop a node cleanly (SIGTERM: it tells the others it leaves). Returns the seconds from
        the signal until every other running node reports it down."""
        n = self.node(which)
        self._thaw_if_frozen(n)
        started = time.monotonic()
        if not n.stop(timeout):
            raise CourseError(f"O nó {n.node_name} já estava parado.")
        self._wait_down(n, max(1.0, timeout - (time.monotonic() - started)))
        return time.monotonic() - started

    def kill_node(self, which, timeout: float = NOTICE_TIMEOUT) -> float:
        """SIGKILL a node's Erlang VM, as in a crash. Returns the seconds until every other
        running node reports it down (its connections close at once, so that is quick)."""
        n = self.node(which)
        self._frozen.pop(n.name, None)  # SIGKILL ends a stopped process too
        started = time.monotonic()
        if not n.kill():
            raise CourseError(f"O nó {n.node_name} já estava parado.")
        self._wait_down(n, timeout)
        return time.monotonic() - started

    def freeze_node(self, which, timeout: float = NOTICE_TIMEOUT) -> float:
        """SIGSTOP a node's Erlang VM: it keeps its connections open but answers nothing, as behind
        a network partition. Returns the seconds until the others report it down (the Erlang net
        tick: about NET_TICKTIME to 1.25 × NET_TICKTIME)."""
        n = self.node(which)
        if n.name in self._frozen:
            raise CourseError(f"O nó {n.node_name} já está congelado.")
        pid = n.pid()
        if pid is None or not pid_alive(pid):
            raise CourseError(f"O nó {n.node_name} não está rodando; não há o que congelar.")
        self._frozen[n.name] = (pid, start_time(pid))
        started = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        self._wait_down(n, timeout)
        return time.monotonic() - started

    def bring_back(self, which, timeout: float = NOTICE_TIMEOUT * 2) -> float:
        """Bring a node back: SIGCONT if it is frozen, start it again if it was stopped or killed.
        Returns the seconds until every node reports every node running, with no partition.

        A thawed node usually finds itself alone, pauses (pause_minority) and rejoins by itself in
        a few seconds. Sometimes it reconnects to the others before it pauses, and the partition
        stays (each side reports the other down); then, `HEAL_AFTER` seconds after the thaw, its
        RabbitMQ application is restarted (`stop_app`, `start_app`), RabbitMQ's own recipe for a
        partition, and the node's name is added to `healed`."""
        n = self.node(which)
        started = time.monotonic()
        deadline = started + timeout
        everyone_running = (lambda v: all(v.get(x, {}).get("running") and not v[x].get("partitions")
                                          for x in self.names))
        what = f"o nó {n.node_name} de volta"
        if n.name in self._frozen:
            self._thaw_if_frozen(n)
            try:
                self._wait_view(everyone_running, self._up(), min(deadline, started + HEAL_AFTER), what)
                return time.monotonic() - started
            except ClusterTimeout:
                if time.monotonic() >= deadline:
                    raise
            for args in (("stop_app",), ("start_app",)):
                try:
                    n.ctl(*args, timeout=max(5.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    break
            self.healed.append(n.node_name)
        elif not n.is_running():
            _spawn(n.launch, timeout=timeout)
            try:
                n.wait(max(1.0, min(deadline, time.monotonic() + timeout / 3) - time.monotonic()))
            except BrokerStartError:
                # Seen once in a loaded suite run: a 3.10 node restarted after SIGKILL never opened
                # its ports. A second start, from scratch, within what is left of the deadline.
                n.kill()
                _spawn(n.launch, timeout=timeout)
                n.wait(max(1.0, deadline - time.monotonic()))
        self._wait_view(everyone_running, self._up(), deadline, what)
        return time.monotonic() - started

    def _thaw_if_frozen(self, n: NativeNode) -> None:
        frozen = self._frozen.pop(n.name, None)
        if frozen is None:
            return
        pid, born = frozen
        # pid safety: only the very process we stopped (same pid, same start time, still the node).
        if n.pid() == pid and start_time(pid) == born:
            os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        """Close its connections, kill every node (the data is thrown away) and delete the folder.
        Safe to call twice."""
        if self.closed:
            return
        for connection in self._connections:
            close_quietly(connection)  # a connection to a killed node may not close cleanly
        self._connections.clear()
        try:
            for n in self.nodes:
                self._frozen.pop(n.name, None)  # SIGKILL ends a stopped process as well
                try:
                    n.kill()
                except Exception:  # noqa: BLE001 - kill the others all the same
                    pass
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            for offset in getattr(self, "_offsets", ()):
                release_offset(offset)
            self.closed = True

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # last resort; close() is the way
        try:
            if not self.closed and any(n.is_running() for n in self.nodes):
                self.close()
        except Exception:  # noqa: BLE001
            pass


SLOTS = Path(tempfile.gettempdir()) / "curso-cluster-vagas"
START_SLOTS = 2  # clusters booting at once on this machine; more only slow each other down


@contextlib.contextmanager
def start_slot(deadline: float, slots: int = START_SLOTS):
    """Hold one of `slots` machine-wide boot slots (flock on a file) while a cluster's nodes boot.

    Nine nodes booting at once on 2 cores took longer each than three clusters booting in turn
    (the test suite starts several clusters side by side). A slot is freed when its holder ends,
    even by SIGKILL (the kernel drops the flock). Waits at most until `deadline`."""
    import fcntl

    SLOTS.mkdir(parents=True, exist_ok=True)
    files = []
    try:
        while True:
            for i in range(slots):
                f = open(SLOTS / f"vaga-{i}", "a+")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    f.close()
                    continue
                files.append(f)
                break
            if files:
                break
            if time.monotonic() > deadline:
                raise ClusterTimeout("Outros clusters desta máquina ocuparam as vagas de partida até o "
                                     "prazo acabar; tente de novo quando eles terminarem.")
            time.sleep(0.2)
        yield
    finally:
        for f in files:
            f.close()  # drops the lock


def _describe(view: dict[str, dict]) -> str:
    """pt-BR summary of one node's /api/nodes view: who it sees running, who is out, partitions."""
    parts = []
    for name, rec in sorted(view.items()):
        text = f"{name.split('@')[0]} {'rodando' if rec.get('running') else 'fora'}"
        if rec.get("partitions"):
            text += f" (partição com {', '.join(p.split('@')[0] for p in rec['partitions'])})"
        parts.append(text)
    return "vê: " + ", ".join(parts)


def cluster(label: str = "cluster", versao: str | None = None, timeout: float = START_TIMEOUT,
            **options) -> Cluster:
    """Start a local cluster and return its handle (also a context manager that closes it).

    Raises ClusterUnavailable (pt-BR) when it cannot start here, BrokerStartError / ClusterTimeout
    if a node does not come up or join; nothing is left running and no folder is left behind.
    With CURSO_CLUSTER=docker, the cluster is the one of docker/cluster/compose.yaml instead
    (`course_utils.docker_cluster`), behind the same API."""
    if os.environ.get("CURSO_CLUSTER", "").strip().lower() == "docker":
        from .docker_cluster import DockerCluster

        c = DockerCluster(label, versao=versao)
    else:
        c = Cluster(label, versao=versao, **options)
    try:
        c.start(timeout)
    except BaseException:
        c.close()
        raise
    return c


def _forget_mount_points(folder: Path) -> None:
    """Called by the sweep before deleting a 4.x cluster's folder: remove the empty mount points
    its nodes left in the root filesystem (a node's own stop removes its point; a killed kernel's
    nodes died without)."""
    try:
        owner = json.loads((folder / "owner.json").read_text())
    except (OSError, ValueError):
        return
    rootfs = owner.get("rootfs")
    if owner.get("version") != "4" or not rootfs:
        return
    from .rabbit4 import NODES_INSIDE
    for name in owner.get("nodes", []):
        try:
            (Path(rootfs) / NODES_INSIDE.lstrip("/") / name).rmdir()
        except OSError:
            pass


__all__ = ["cluster", "Cluster", "ClusterUnavailable", "ClusterTimeout", "available", "unavailable_reason",
           "NET_TICKTIME", "PARTITION_HANDLING"]
