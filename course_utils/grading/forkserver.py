"""Graded kernels forked from one warm process, so that a kernel is ready in a fraction of a second.

Starting an ipykernel costs 1-2 s of CPU, mostly imports (IPython, ipykernel, zmq, tornado, pika,
course_utils, pandas); a class pays it once per notebook. `KernelFactory` starts, once per grading
run, `python -m course_utils.grading.forkserver`: a process with a scrubbed environment (no secret
of the grader's) that imports all of that and then, for each request, forks a child that becomes
the student's kernel:

- its own session (so the grader kills it with its process group), SIGKILL when the fork server
  dies (`prctl(PR_SET_PDEATHSIG)`), which dies with the grader's thread that started it;
- the student's environment only (`os.environ` replaced), their scratch folder as working
  directory, stdout and stderr to the kernel's log, the address-space limit, fresh random state;
- then `IPKernelApp.launch_instance(["-f", connection_file])`: an ordinary ipykernel. The grader
  wrote the connection file (ipc transport) and talks to the kernel through `ForkedKernel.client()`.

The protocol is one JSON line per request on the fork server's stdin and one JSON line with the
child's pid on its stdout. The fork server must be started inside the grading node's network
namespace: its children inherit it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

# What a graded kernel imports anyway, imported once in the fork server. Nothing here reads the
# environment at import time (matplotlib does, MPLCONFIGDIR and MPLBACKEND: it is left out).
WARM = ("IPython", "ipykernel.kernelapp", "ipykernel.ipkernel", "zmq", "tornado.ioloop", "jupyter_client.session",
        "pika", "pandas", "course_utils", "course_utils.exercises.checks", "course_utils.exercises.kit")


# ---- the fork server (its own process) -------------------------------------------------------------
def _reap(*_args) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _become_kernel(request: dict) -> None:
    """In the forked child: set up the student's process, then run ipykernel (never returns)."""
    code = 1
    try:
        os.setsid()
        from ..native import parent_death_signal

        parent_death_signal(signal.SIGKILL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        limit = int(request.get("memory_limit") or 0)
        if limit:
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        import random
        random.seed()
        sys.path[0] = request["cwd"]  # as `python -m ipykernel_launcher` started there would have it
        sys.argv = [sys.executable, "-f", request["connection_file"]]
        from ipykernel.kernelapp import IPKernelApp

        IPKernelApp.launch_instance(argv=["-f", request["connection_file"]])
        code = 0
    finally:
        os._exit(code)


def serve() -> None:
    import importlib

    for name in WARM:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _become_kernel(request)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()


# ---- the grader's side -----------------------------------------------------------------------------
class KernelFactory:
    """The fork server, seen from the grader: `start()` (inside the namespace, from a thread that
    lives as long as the run), `fork(...)` from any thread, `stop()`."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._ready = False

    def start(self) -> "KernelFactory":
        from ..native import parent_death_signal

        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/nonexistent"}
        self._proc = subprocess.Popen([sys.executable, "-m", "course_utils.grading.forkserver"], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      cwd="/", text=True, start_new_session=True, preexec_fn=parent_death_signal)
        return self

    def fork(self, connection_file: Path, cwd: Path, log: Path, env: dict[str, str], memory_limit: int,
             timeout: float = 60.0) -> int:
        """Fork a kernel for one notebook; its pid (also its process group). Waits for the fork
        server's imports the first time; never longer than `timeout` (then the fork server is killed)."""
        request = {"connection_file": str(connection_file), "cwd": str(cwd), "log": str(log), "env": env,
                   "memory_limit": memory_limit}
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise RuntimeError("o processo que inicia os kernels da correção não está rodando")
            watchdog = threading.Timer(timeout, self._kill)
            watchdog.start()
            try:
                if not self._ready:
                    self._ready = "ready" in json.loads(proc.stdout.readline() or "{}")
                proc.stdin.write(json.dumps(request) + "\n")
                proc.stdin.flush()
                answer = json.loads(proc.stdout.readline() or "{}")
            except (OSError, ValueError):
                answer = {}
            finally:
                watchdog.cancel()
            if "pid" not in answer:
                raise RuntimeError(f"o processo que inicia os kernels da correção não respondeu em {timeout:.0f} s")
            return int(answer["pid"])

    def _kill(self) -> None:
        _kill_group(self._proc)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _kill_group(proc)
        proc.wait()
        self._ready = False
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _kill_group(proc: subprocess.Popen | None) -> None:
    """SIGKILL the fork server's process group (a child forked but not yet in a session of its
    own is in it), only while the fork server is unreaped: once reaped, its pid may be another
    process's (Linux reuses pids)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


if __name__ == "__main__":
    serve()
