"""Confinement of graded kernels: a private network namespace, or a refusal to grade unconfined.

On Linux as root, the grading node and every graded kernel live in a network namespace of their
own, which has nothing but a loopback: from a kernel, `localhost` is the grading node and nothing
else (no instructor's course broker, no other service of the grading machine, no other network).
The namespace is held open by a small holder process (it dies with the grader); a thread enters it
with `setns(2)` for a block of work (`NetNamespace.inside()`): sockets and child processes made
in the block belong to the namespace, so the grader's own management calls and the nbval
subprocesses it starts reach the grading node there. A network namespace may be entered by one
thread of a multithreaded process, so the grader's worker threads each enter it for their job.

Where that is impossible (not Linux, not root, no `unshare`), `guest_brokers()` finds brokers on
localhost that accept `guest` (a kernel could log in to them), and grading refuses to start while
one answers, unless the instructor accepts the risk explicitly.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys
import threading
from typing import Iterator

CLONE_NEWNET = 0x40000000

# Run by the holder inside the new namespace: bring the loopback up (a new namespace starts with it
# down); start the namespace's Erlang port mapper as its own child (an Erlang node would otherwise
# start one as a daemon that outlives a grader killed with SIGKILL), so that it dies with the holder;
# say so, then wait until the grader closes stdin (or dies: parent-death signal).
_HOLDER = r"""
import ctypes, fcntl, socket, struct, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
req = struct.pack("16sH14s", b"lo", 0, b"")
flags = struct.unpack("16sH14s", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))
epmd = None
if len(sys.argv) > 1:
    epmd = subprocess.Popen([sys.argv[1], "-address", "127.0.0.1"], preexec_fn=lambda: libc.prctl(1, 9),
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):  # until it listens on 4369
        try:
            socket.create_connection(("127.0.0.1", 4369), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
print("ready", flush=True)
sys.stdin.read()
if epmd is not None:
    epmd.kill()
    epmd.wait()
"""


def unavailable_reason() -> str | None:
    """Why a private network namespace can't be made here (pt-BR), or None when it can."""
    if not sys.platform.startswith("linux"):
        return "isolamento de rede só existe no Linux"
    if os.geteuid() != 0:
        return "isolamento de rede precisa de root (o corretor roda como usuário comum)"
    if shutil.which("unshare") is None:
        return "o comando `unshare` (util-linux) não está instalado"
    return None


class NetNamespace:
    """A private network namespace with only a loopback, for as long as the object is open."""

    def __init__(self) -> None:
        self._holder: subprocess.Popen | None = None
        self._fd: int | None = None
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._lock = threading.Lock()

    def open(self, timeout: float = 10.0) -> "NetNamespace":
        reason = unavailable_reason()
        if reason:
            raise OSError(reason)
        epmd = shutil.which("epmd")
        self._holder = subprocess.Popen(["unshare", "--net", "--", sys.executable, "-c", _HOLDER,
                                         *([epmd] if epmd else [])],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        line = self._holder.stdout.readline()  # the holder answers at once, or exits with an error
        if line.strip() != "ready":
            err = self._holder.stderr.read() if self._holder.poll() is not None else ""
            self.close()
            raise OSError(f"não consegui criar o namespace de rede: {err.strip() or line.strip() or 'sem resposta'}")
        self._fd = os.open(f"/proc/{self._holder.pid}/ns/net", os.O_RDONLY)
        return self

    @property
    def path(self) -> str:
        """The namespace's file (`nsenter --net=PATH` enters it), while open."""
        return f"/proc/{self._holder.pid}/ns/net"

    def _setns(self, fd: int) -> None:
        if self._libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns: {os.strerror(errno)}")

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Run the block with the current thread in the namespace, then put it back where it was."""
        if self._fd is None:
            raise RuntimeError("the namespace is not open")
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            self._setns(self._fd)
            try:
                yield
            finally:
                self._setns(here)
        finally:
            os.close(here)

    def processes(self) -> list[int]:
        """pids of the processes living in the namespace (the holder among them), while open."""
        if self._holder is None:
            return []
        try:
            mine = os.readlink(self.path)
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/net") == mine:
                        found.append(int(entry))
                except OSError:
                    continue
        return found

    def close(self) -> None:
        """Kill whatever still lives in the namespace (an Erlang port mapper daemon outlives its node,
        a kernel may have left a process behind), then the holder; the namespace goes with them."""
        holder = self._holder.pid if self._holder is not None else None
        for pid in self.processes():
            # the holder stops its own port mapper; and this process is in the list while the thread
            # that leads it is inside the namespace (/proc/PID/ns/net is that thread's)
            if pid not in (holder, os.getpid()) and _parent_of(pid) != holder:
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        holder, self._holder = self._holder, None
        if holder is not None:
            with contextlib.suppress(Exception):
                holder.stdin.close()  # the holder stops its port mapper, reaps it and exits
            try:
                holder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait(timeout=10)
            for stream in (holder.stdout, holder.stderr):
                with contextlib.suppress(Exception):
                    stream.close()


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class InNamespace:
    """`target`'s methods, each called with the current thread inside `namespace`."""

    def __init__(self, target, namespace: NetNamespace) -> None:
        self._target, self._namespace = target, namespace

    def __getattr__(self, name: str):
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            with self._namespace.inside():
                return value(*args, **kwargs)

        return call


# Brokers a learner's kernel could reach on an unconfined grading machine: the course's own
# (3.10 and 4.x) and RabbitMQ's defaults.
LOCAL_BROKERS = (("127.0.0.1", 5672), ("127.0.0.1", 5682))


def guest_brokers(addresses=LOCAL_BROKERS, timeout: float = 2.0) -> list[str]:
    """The AMQP listeners among `addresses` where `guest`/`guest` logs in ("127.0.0.1:5672")."""
    import pika
    import pika.exceptions

    found = []
    for host, port in addresses:
        params = pika.ConnectionParameters(host=host, port=port, credentials=pika.PlainCredentials("guest", "guest"),
                                           socket_timeout=timeout, blocked_connection_timeout=timeout,
                                           connection_attempts=1, retry_delay=0, stack_timeout=timeout)
        try:
            connection = pika.BlockingConnection(params)
        except (pika.exceptions.AMQPError, OSError):
            continue
        found.append(f"{host}:{port}")
        with contextlib.suppress(Exception):
            connection.close()
    return found


def refusal(found: list[str], why: str) -> str:
    """The pt-BR message of a grader that won't grade unconfined next to a guest broker."""
    where = ", ".join(found)
    return (f"Não vou corrigir: {why}, e um broker aceita o usuário guest em {where}. Um caderno corrigido "
            f"poderia entrar nele (no broker do curso, guest é administrador e vê o vhost de todos os alunos). "
            f"Pare esse broker (`curso broker down`, e `curso broker down --versao 4`), ou rode o corretor como "
            f"root no Linux, onde cada caderno fica num namespace de rede próprio; ou, sabendo do risco, "
            f"passe --aceitar-broker-guest.")
