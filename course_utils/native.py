"""A self-contained RabbitMQ node run from the OS package, without root and without /etc/rabbitmq.

Every file the node reads or writes (Erlang cookie, config, enabled plugins, data, logs, pid)
lives under one folder, so several nodes can run side by side on one host: the course broker,
the locked-down grading broker, chapter 4's throwaway node and chapter 8's cluster all use this
class with different names and ports.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import BrokerStartError, PortInUse

_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \S+ \[\w+\] <[^>]*> ?")

# The management API's queue depths and connection lists refresh at the management agent's
# smallest sampling interval (5 s by default). The notebooks show them and the exercise checks read
# them, so the course's own nodes sample every second (measured: ~1 s from publish to visible).
FAST_STATS = ("[{rabbitmq_management_agent, [{sample_retention_policies, "
              "[{global, [{605, 1}]}, {basic, [{605, 1}]}, {detailed, [{605, 1}]}]}]}].")

# RabbitMQ's own defaults, as a Docker user gets them: queues and connections emit their statistics
# every 5 s and the management agent samples them every 5 s. For a node that must behave like that
# (tests of what the notebooks show on a default broker):
#     NativeNode(..., advanced_config=DEFAULT_STATS)
# advanced.config wins over rabbitmq.conf's collect_statistics_interval = 500, and FAST_STATS is
# not applied.
DEFAULT_STATS = "[{rabbit, [{collect_statistics_interval, 5000}]}]."

PLUGINS = ("rabbitmq_management", "rabbitmq_prometheus", "rabbitmq_stream")

# Where the OS packages put the server scripts. On Debian/Ubuntu /usr/sbin/rabbitmq-server is a
# wrapper that insists on root and switches to the rabbitmq user; the real scripts are below.
_SERVER_CANDIDATES = (
    "/usr/lib/rabbitmq/bin/rabbitmq-server",
    "/opt/homebrew/sbin/rabbitmq-server",
    "/usr/local/sbin/rabbitmq-server",
    "/opt/homebrew/opt/rabbitmq/sbin/rabbitmq-server",
    "/usr/local/opt/rabbitmq/sbin/rabbitmq-server",
)


def find_server() -> Path | None:
    """Path of the `rabbitmq-server` script to run directly, or None if RabbitMQ is not installed."""
    env = os.environ.get("CURSO_RABBITMQ_SERVER")
    if env:
        return Path(env) if Path(env).exists() else None
    for candidate in _SERVER_CANDIDATES:
        if Path(candidate).exists():
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    return Path(found) if found else None


@dataclass(frozen=True)
class Ports:
    amqp: int = 5672
    management: int = 15672
    prometheus: int = 15692
    stream: int = 5552
    dist: int = 25672

    @classmethod
    def offset(cls, n: int) -> "Ports":
        """The default ports shifted by n (for extra nodes beside the course broker)."""
        base = cls()
        return cls(base.amqp + n, base.management + n, base.prometheus + n, base.stream + n, base.dist + n)

    def all(self) -> dict[str, int]:
        return {"AMQP": self.amqp, "management": self.management, "Prometheus": self.prometheus,
                "streams": self.stream, "distribuição Erlang": self.dist}


# ---------------------------------------------------------------------------------------------
# Small probes, shared with broker discovery.

def amqp_answers(host: str, port: int, timeout: float = 2.0) -> bool | None:
    """True if an AMQP 0-9-1 server answers on host:port, False if something else answers,
    None if nothing listens."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    try:
        sock.settimeout(timeout)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        head = sock.recv(7)
    except OSError:  # timeout or reset: something listens, but it does not speak AMQP
        return False
    finally:
        sock.close()
    # A method frame (type 1) on channel 0: Connection.Start.
    return len(head) == 7 and head[0] == 1 and head[1:3] == b"\x00\x00"


def port_listening(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


LEASES = Path(tempfile.gettempdir()) / "curso-portas"


def free_offset(start: int | None = None, step: int = 37, tries: int = 100, lease: bool = False) -> int:
    """An offset n such that every port of Ports.offset(n) is free and not leased (for extra
    nodes). The default start depends on the process id, so that concurrent processes rarely try
    the same block.

    lease=True leases the block to this process (a file under `LEASES` naming it) until
    `release_offset(n)` or the process's end: for a node that is stopped or killed and started
    again on the same ports (a restart, a failover demo), which would otherwise find them taken by
    another process's new node in between (seen in a suite run). Whoever leases releases when the
    node is done for good (`ScratchNode.close`, `Cluster.close`): a long-lived process (a test
    worker) would otherwise hold every block it ever used. A lease whose process is gone (or whose
    pid now names another process) counts for nothing."""
    if start is None:
        start = 3000 + (os.getpid() % 97) * step
    with _lease_lock():
        for n in range(start, start + step * tries, step):
            if _live_lease(n):
                continue
            if all(port_free(p) for p in Ports.offset(n).all().values()):
                if lease:
                    (LEASES / str(n)).write_text(_me())
                return n
    raise PortInUse(f"Não achei um bloco de portas livres a partir do deslocamento {start}.")


def release_offset(n: int) -> None:
    """Give back the lease on block n, if this process holds it."""
    with _lease_lock():
        if _leased_by_me(n):
            (LEASES / str(n)).unlink(missing_ok=True)


def _me() -> str:
    return f"{os.getpid()} {start_time(os.getpid())}"


@contextlib.contextmanager
def _lease_lock() -> Iterator[None]:
    """Serialize lease-taking between processes (flock on a file beside the leases)."""
    LEASES.mkdir(mode=0o777, exist_ok=True)
    with contextlib.suppress(OSError):
        LEASES.chmod(0o1777)  # shared by every user of the machine, as /tmp
    try:
        import fcntl
    except ImportError:  # not a Unix: no native nodes there anyway
        yield
        return
    with open(LEASES / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _lease_owner(n: int) -> str | None:
    try:
        return (LEASES / str(n)).read_text().strip() or None
    except OSError:
        return None


def _leased_by_me(n: int) -> bool:
    return _lease_owner(n) == _me()


def _live_lease(n: int) -> bool:
    """Block n is leased to a process that still runs (this one included)."""
    owner = _lease_owner(n)
    if owner is None:
        return False
    if owner == _me():
        return True
    try:
        pid, started = owner.split()
        return pid_alive(int(pid)) and str(start_time(int(pid))) == started
    except ValueError:
        return False


def who_listens(port: int) -> str | None:
    """'name (pid N)' of the process listening on a TCP port, when /proc lets us see it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    name = (proc / "comm").read_text().strip()
                    return f"{name} (pid {proc.name})"
        except OSError:
            continue
    return None


def pid_alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat), or None if there is
    no such process (or no /proc). A pid and its start time name one process: Linux reuses pids."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def parent_death_signal(signum: int = signal.SIGTERM) -> None:
    """In the child: get `signum` (SIGTERM: the server script then stops the node) when the parent
    thread that started this process dies."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signum))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def tail(path: Path, lines: int = 25, window: int = 256 * 1024) -> str:
    """The last `lines` lines of a file, reading at most its last `window` bytes."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - window))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------

# A node past its start timeout whose log still grows is booting, not stuck: it gets up to
# BOOT_GRACE times the timeout (a course broker with some hundred vhosts recovers them for a minute).
BOOT_GRACE = 4
BOOT_PROGRESS_S = 10.0


@dataclass
class NativeNode:
    """One RabbitMQ node whose every file lives under `base_dir`."""

    base_dir: Path
    name: str = "curso"
    ports: Ports = field(default_factory=Ports)
    default_user: tuple[str, str] | None = None  # None: RabbitMQ's guest/guest
    extra_config: tuple[str, ...] = ()
    cookie: str | None = None  # nodes of one cluster share a cookie
    advanced_config: str = FAST_STATS  # Erlang terms for settings rabbitmq.conf cannot express
    die_with_parent: bool = False  # Linux: stop the node when the process that started it dies
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        self._proc: subprocess.Popen | None = None

    # paths ------------------------------------------------------------------------------
    @property
    def node_name(self) -> str:
        return f"{self.name}@localhost"

    @property
    def home(self) -> Path:
        return self.base_dir / "home"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / f"{self.name}.pid"

    @property
    def console_log(self) -> Path:
        return self.base_dir / "log" / "console.log"

    @property
    def node_log(self) -> Path:
        return self.base_dir / "log" / f"{self.node_name}.log"

    # hooks for nodes run in another root (course_utils.rabbit4) ---------------------------
    def command(self, tool: str = "rabbitmq-server") -> list[str]:
        """The argv that runs one of RabbitMQ's scripts (rabbitmq-server, rabbitmqctl,
        rabbitmq-diagnostics...) for this node. A subclass may wrap it (chroot)."""
        server = find_server()
        if server is None:
            raise BrokerStartError("O RabbitMQ não está instalado (não achei o script rabbitmq-server).")
        return [str(server if tool == "rabbitmq-server" else server.parent / tool)]

    def node_path(self, path: Path) -> str:
        """How the node's own process sees one of its files (a host path here; a subclass whose
        node runs in a chroot maps it into the root filesystem)."""
        return str(path)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        b, p = self.base_dir, self.node_path
        env.update({
            "HOME": p(self.home),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_MNESIA_BASE": p(b / "data"),
            "RABBITMQ_LOG_BASE": p(b / "log"),
            "RABBITMQ_PID_FILE": p(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": p(b / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": p(b / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": p(b / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": p(b / "advanced.config"),
            "RABBITMQ_DIST_PORT": str(self.ports.dist),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ports.dist + 10000),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ports.dist + 10010),
        })
        return env

    # state ------------------------------------------------------------------------------
    def pid(self) -> int | None:
        """The pid in the node's pid file, or None: no file, or a file left by a node that died
        and whose pid now belongs to another process. Linux reuses pids (pid_max is often 32768,
        which a test suite goes through), so a stale file must never make us signal a stranger."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_this_node(pid) else None

    def _is_this_node(self, pid: int) -> bool:
        """True unless `pid` is a live process that is not this node's VM: the VM's command line
        names the node's home folder (`-home`); a process that no longer exists counts as this
        node's, dead (`pid_alive` says so)."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return True
        except OSError:
            return not Path("/proc/self").exists()  # no /proc: nothing to tell them apart with
        home = self.node_path(self.home).encode()
        return any(a == b"-home" and b == home for a, b in zip(argv, argv[1:]))

    def is_running(self) -> bool:
        pid = self.pid()
        return pid is not None and pid_alive(pid)

    def answers(self) -> bool:
        return bool(amqp_answers(self.host, self.ports.amqp)) and port_listening(self.host, self.ports.management)

    # life cycle -------------------------------------------------------------------------
    def write_config(self) -> None:
        b = self.base_dir
        for sub in ("home", "data", "log"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        (b / "enabled_plugins").write_text("[" + ",".join(PLUGINS) + "].\n")
        (b / "rabbitmq-env.conf").write_text("# written by course_utils; the environment says it all\n")
        (b / "advanced.config").write_text(self.advanced_config + "\n")
        p, h = self.ports, self.host
        lines = [
            f"listeners.tcp.1 = {h}:{p.amqp}",
            f"management.tcp.ip = {h}",
            f"management.tcp.port = {p.management}",
            f"prometheus.tcp.ip = {h}",
            f"prometheus.tcp.port = {p.prometheus}",
            f"stream.listeners.tcp.1 = {h}:{p.stream}",
            f"stream.advertised_host = localhost",
            f"stream.advertised_port = {p.stream}",
            "log.file.level = info",
            # The course broker lives for months: its log is rotated at 10 MB, three files kept
            # (one that grew to 216 MB in a few weeks of test runs was read whole on a failed boot).
            "log.file.rotation.size = 10485760",
            "log.file.rotation.count = 3",
            # With FAST_STATS: how often queues and connections emit their metrics (default 5 s).
            "collect_statistics_interval = 500",
            "log.console = false",
        ]
        if self.default_user:
            user, password = self.default_user
            lines += [f"default_user = {user}", f"default_pass = {password}",
                      "default_user_tags.administrator = true",
                      "default_permissions.configure = .*", "default_permissions.read = .*",
                      "default_permissions.write = .*"]
        lines += list(self.extra_config)
        (b / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        cookie_file = self.home / ".erlang.cookie"
        if self.cookie or not cookie_file.exists():
            cookie_file.write_text(self.cookie or secrets.token_hex(16).upper())
            cookie_file.chmod(0o400)

    def _check_ports(self, grace: float = 5.0) -> None:
        # A port still answering may belong to a process that is exiting: a node SIGKILLed a moment
        # ago keeps its listening sockets until the kernel has torn it down, which under load took
        # longer than the 0.5 s a test gave it (seen once in CI). Give it `grace` seconds first.
        deadline = time.monotonic() + grace
        for label, port in self.ports.all().items():
            while port_listening(self.host, port) and time.monotonic() < deadline:
                time.sleep(0.2)
            if port_listening(self.host, port):
                holder = who_listens(port)
                who = f" por {holder}" if holder else ""
                raise PortInUse(
                    f"A porta {port} ({label}) de {self.host} já está ocupada{who}, e não por um "
                    f"RabbitMQ do curso. Pare esse processo ou, se for um RabbitMQ seu, aponte o curso "
                    f"para ele com RABBITMQ_URL=amqp://usuario:senha@localhost:{self.ports.amqp}/."
                )

    def start(self, timeout: float = 60.0) -> None:
        """Start the node and wait until AMQP and the management API answer."""
        command = self.command()
        if self.is_running():
            self.wait(timeout)
            return
        if self.pid_file.exists():  # stale: the node was killed without `down`
            self.pid_file.unlink()
        self._check_ports()
        self.write_config()
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.console_log, "ab") as log:
            log.write(f"\n==== start {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                command, env=self.env(), cwd=self.base_dir, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=parent_death_signal if self.die_with_parent else None,
            )
        self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> None:
        """Wait until AMQP and the management API answer. A node still booting past `timeout`
        (its log grew in the last BOOT_PROGRESS_S seconds: it is recovering vhosts, say) gets up to
        BOOT_GRACE times `timeout` in all; a node that started here and never answers is killed, so
        a failed start leaves nothing running."""
        started = time.monotonic()
        deadline, cap = started + timeout, started + timeout * BOOT_GRACE
        while True:
            now = time.monotonic()
            if now >= deadline and not (now < cap and self._log_moving()):
                break
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerStartError(self._boot_failure("o processo do nó terminou durante a partida"))
            if self._proc is None and self.pid() is not None and not self.is_running():
                raise BrokerStartError(self._boot_failure("o processo do nó terminou durante a partida"))
            if self.answers():
                return
            time.sleep(0.2)
        waited = time.monotonic() - started
        failure = self._boot_failure(
            f"esperei {waited:.0f} s pela porta AMQP {self.ports.amqp} e pela API de gerenciamento "
            f"{self.ports.management} e elas não responderam")
        if self._proc is not None and self._proc.poll() is None:
            self.kill()
            try:  # the server script and whatever it started (the VM before it wrote its pid file)
                os.killpg(self._proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self._proc.wait(10)
            failure += "\nO nó que eu tinha iniciado foi parado (nada ficou rodando)."
        raise BrokerStartError(failure)

    def _log_moving(self) -> bool:
        """Whether the node's log was written in the last BOOT_PROGRESS_S seconds."""
        try:
            return time.time() - self.node_log.stat().st_mtime < BOOT_PROGRESS_S
        except OSError:
            return False

    def _boot_failure(self, what: str) -> str:
        return (f"O nó RabbitMQ {self.node_name} não subiu: {what}.\n"
                f"Fim do log ({self.base_dir / 'log'}):\n{self.boot_log() or '(log vazio)'}\n"
                f"Se o problema for a pasta de dados, apague-a e tente de novo: rm -rf {self.base_dir}")

    def boot_log(self, lines: int = 25) -> str:
        """The part of the console log that explains the last boot: RabbitMQ's own error lines
        before 'BOOT FAILED' when there are any (the Erlang crash report after them is noise)."""
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            text = ""
        last = text.rsplit("==== start", 1)[-1].splitlines()[1:]
        if any("BOOT FAILED" in line for line in last):
            cut = next(i for i, line in enumerate(last) if "BOOT FAILED" in line)
            before = [_STAMP.sub("", line) for line in last[:cut]]
            plain = [line for line in last[cut:] if not _STAMP.match(line)
                     and not line.startswith(("{", "Kernel pid", "Crash dump"))]
            return "\n".join(line for line in (before + plain)[-lines:] if line.strip())
        return "\n".join(x for x in ("\n".join(last[-lines:]), tail(self.node_log, lines)) if x.strip())

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the node (SIGTERM: a clean shutdown), then reap it. False if it was not running."""
        return self._signal_and_reap(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 10.0) -> bool:
        """SIGKILL the node's Erlang VM, as in a crash, and reap it. False if it was not running."""
        return self._signal_and_reap(signal.SIGKILL, timeout)

    def _signal_and_reap(self, signum: int, timeout: float) -> bool:
        """Send `signum` to the VM, wait (bounded) for it to exit, SIGKILL it if it has not, reap
        the server script that started it and forget the pid file."""
        pid = self.pid()
        if pid is None or not pid_alive(pid):
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            if self._proc is not None:
                self._proc.poll()
            time.sleep(0.02 if signum == signal.SIGKILL else 0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.pid_file.unlink(missing_ok=True)
        return True

    def ctl(self, *args: str, timeout: float = 60.0, tool: str = "rabbitmqctl") -> subprocess.CompletedProcess:
        """Run rabbitmqctl (or rabbitmq-diagnostics, rabbitmq-queues...) against this node."""
        return subprocess.run([*self.command(tool), "-n", self.node_name, *args], env=self.env(),
                              capture_output=True, text=True, timeout=timeout)
