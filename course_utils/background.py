"""Background workers and servers for the notebooks: real processes or threads speaking AMQP.

    from course_utils.background import Background
    bg = Background(curso)
    bg.write("worker.py", codigo)                 # or %%writefile into bg.folder
    w = bg.process("worker-1", "worker.py", "arg")
    w.wait_for("pronto")                          # bounded wait for a line of its output
    bg.show()                                     # the new lines of every worker, "[worker-1] ..."
    w.kill()                                      # SIGKILL: a crash mid-task
    bg.stop_all()                                 # also done by curso.cleanup() and at kernel exit

Processes run `sys.executable script args...` in a scratch folder of their own with
RABBITMQ_URL=curso.url in their environment, unbuffered, stdout and stderr merged and read by one
reader thread per process into a buffer (never a pipe that can fill and block the child). On Linux
they get SIGTERM when the kernel dies (PR_SET_PDEATHSIG, `native.parent_death_signal`); they are
forked from one long-lived spawner thread, because the kernel sends that signal when the *thread*
that forked the child ends, not only the process.

Threads run `target(*args)` (plus `stop_event=` when the target accepts that keyword); what they
print goes to their own buffer too (a routing `sys.stdout`/`sys.stderr` installed while they run),
so `show()` and `wait_for()` treat both kinds alike. Nothing here blocks past its timeout.
"""
from __future__ import annotations

import inspect
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from .errors import CourseError
from .native import parent_death_signal

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours its request log
MAX_LINES = 50_000  # per worker; older lines are dropped (a chatty worker must not eat the RAM)


# ---------------------------------------------------------------------------------------------
# Output buffers


class _Output:
    """Lines a worker printed, with the wall-clock time each arrived; thread-safe."""

    def __init__(self) -> None:
        self._lines: list[tuple[float, str]] = []
        self._partial = ""
        self._dropped = 0
        self._shown = 0  # index (counting dropped lines) of the first line show() has not printed
        self.closed = False
        self.cond = threading.Condition()

    def feed(self, text: str) -> None:
        with self.cond:
            text = self._partial + text
            *complete, self._partial = text.split("\n")
            now = time.time()
            for line in complete:
                self._lines.append((now, line.rstrip("\r")))
            if len(self._lines) > MAX_LINES:
                cut = len(self._lines) - MAX_LINES
                del self._lines[:cut]
                self._dropped += cut
            if complete:
                self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            if self._partial:
                self._lines.append((time.time(), self._partial))
                self._partial = ""
            self.closed = True
            self.cond.notify_all()

    def records(self) -> list[tuple[float, str]]:
        with self.cond:
            extra = [(time.time(), self._partial)] if self._partial else []
            return list(self._lines) + extra

    def text(self) -> str:
        with self.cond:
            return "".join(line + "\n" for _, line in self._lines) + self._partial

    def take_new(self) -> list[tuple[float, str]]:
        with self.cond:
            start = max(self._shown - self._dropped, 0)
            new = self._lines[start:]
            self._shown = self._dropped + len(self._lines)
            return new

    def count(self, text: str) -> int:
        with self.cond:
            return sum(text in line for _, line in self._lines) + (text in self._partial if self._partial else 0)


class _ThreadRouter:
    """A sys.stdout/sys.stderr stand-in: writes from a registered worker thread go to its buffer,
    everything else to the stream it replaced."""

    def __init__(self, original) -> None:
        self._original = original

    def write(self, text: str) -> int:
        out = _THREAD_OUTPUTS.get(threading.get_ident())
        if out is None:
            return self._original.write(text)
        out.feed(text)
        return len(text)

    def flush(self) -> None:
        if _THREAD_OUTPUTS.get(threading.get_ident()) is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


_THREAD_OUTPUTS: dict[int, _Output] = {}
_ROUTER_LOCK = threading.Lock()


def _install_router() -> None:
    with _ROUTER_LOCK:
        for stream in ("stdout", "stderr"):
            current = getattr(sys, stream)
            if not isinstance(current, _ThreadRouter):
                setattr(sys, stream, _ThreadRouter(current))


# ---------------------------------------------------------------------------------------------
# The spawner: every child is forked from this one thread, which lives as long as the interpreter.


class _Spawner:
    def __init__(self) -> None:
        self._jobs: "queue.Queue[tuple[Callable[[], Any], Future]]" = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="curso-background-spawner", daemon=True)
                self._thread.start()
        future: Future = Future()
        self._jobs.put((fn, future))
        return future.result(timeout)

    def _loop(self) -> None:
        while True:
            fn, future = self._jobs.get()
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)


_SPAWNER = _Spawner()


def spawn(fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Run `fn` (which starts a child process) in the spawner thread and return its result. A child
    that must die with this process (PR_SET_PDEATHSIG) gets its signal when the *thread* that forked
    it ends, so a child forked by a short-lived thread (a pool's) would die with that thread; forked
    from here, it lives as long as the interpreter (the kernel)."""
    return _SPAWNER.run(fn, timeout)


def _child_setup(parent_pid: int) -> None:
    """In the forked child, before exec: die with the parent (Linux), even if it already died."""
    parent_death_signal()
    if os.getppid() != parent_pid:
        os._exit(1)


# ---------------------------------------------------------------------------------------------
# Workers


class Worker:
    """What `Background.process()` and `Background.thread()` return."""

    previous: "Worker | None" = None  # the worker this one replaced in `Background.restart`

    kind = "worker"

    def __init__(self, name: str) -> None:
        self.name = name
        self._out = _Output()
        self.started_at = time.time()

    # output ------------------------------------------------------------------------------
    def output(self) -> str:
        """Everything it printed so far (stdout and stderr)."""
        return self._out.text()

    def lines(self) -> list[str]:
        return [line for _, line in self._out.records()]

    def records(self) -> list[tuple[float, str]]:
        """(time.time() when the line arrived, line) for every line so far."""
        return self._out.records()

    def show(self) -> None:
        """Print its new lines since the last show(), prefixed with its name."""
        for _, line in self._out.take_new():
            print(f"[{self.name}] {line}")

    def wait_for(self, text: str, timeout: float = 10, count: int = 1) -> bool:
        """True once `text` appears in `count` lines of its output (default: one); False after
        `timeout` seconds, or as soon as the worker has ended without printing it."""
        deadline = time.monotonic() + timeout
        out = self._out
        with out.cond:
            while True:
                if out.count(text) >= count:
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or out.closed:
                    return False
                out.cond.wait(min(left, 0.1))

    # life ----------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        raise NotImplementedError

    def stop(self, timeout: float = 5) -> bool:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "rodando" if self.alive else "parado"
        return f"<{self.kind} {self.name!r} {state}>"


class ProcessWorker(Worker):
    kind = "processo"

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        super().__init__(name)
        self.argv, self.cwd, self.env = argv, cwd, env
        parent = os.getpid()
        use_pdeathsig = sys.platform.startswith("linux")

        def spawn() -> subprocess.Popen:
            return subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=(lambda: _child_setup(parent)) if use_pdeathsig else None)

        self._proc: subprocess.Popen = _SPAWNER.run(spawn)
        self.pid: int = self._proc.pid
        self._reader = threading.Thread(target=self._read, name=f"curso-bg-reader-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self._proc.stdout
        try:
            while True:
                chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(1)
                if not chunk:
                    break
                self._out.feed(chunk.decode("utf-8", errors="replace"))
        except (OSError, ValueError):
            pass
        finally:
            self._out.close()

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)  # its own session: the script and anything it started
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def _wait(self, timeout: float) -> bool:
        try:
            self._proc.wait(timeout=max(timeout, 0))
        except subprocess.TimeoutExpired:
            return False
        self._reader.join(1.0)  # the rest of its output
        return True

    def kill(self) -> None:
        """SIGKILL, as in a crash: the broker closes its connection and requeues its unacked messages."""
        if self.alive:
            self._signal(signal.SIGKILL)
        self._wait(5)

    def stop(self, timeout: float = 5) -> bool:
        """SIGTERM, then SIGKILL after `timeout` s. True if it ended on SIGTERM (or had ended)."""
        if not self.alive:
            self._wait(1)
            return True
        self._signal(signal.SIGTERM)
        if self._wait(timeout):
            return True
        self.kill()
        return False

    def __repr__(self) -> str:
        state = "rodando" if self.alive else f"terminou (código {self.returncode})"
        return f"<processo {self.name!r} pid={self.pid} {state}>"


class ThreadWorker(Worker):
    kind = "thread"
    pid = None

    def __init__(self, name: str, target: Callable, args: tuple, kwargs: dict) -> None:
        super().__init__(name)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.result: Any = None
        try:
            accepts = "stop_event" in inspect.signature(target).parameters or any(
                p.kind is p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())
        except (TypeError, ValueError):
            accepts = False
        if accepts:
            kwargs = {**kwargs, "stop_event": self.stop_event}
        _install_router()
        self._thread = threading.Thread(target=self._run, args=(target, args, kwargs),
                                        name=f"curso-bg-{name}", daemon=True)
        self._thread.start()

    def _run(self, target: Callable, args: tuple, kwargs: dict) -> None:
        _THREAD_OUTPUTS[threading.get_ident()] = self._out
        try:
            self.result = target(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - shown in its output
            self.error = exc
            self._out.feed(traceback.format_exc())
        finally:
            _THREAD_OUTPUTS.pop(threading.get_ident(), None)
            self._out.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5) -> bool:
        """Set `stop_event` and wait up to `timeout` s. True if the thread has ended."""
        self.stop_event.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def kill(self) -> None:
        raise CourseError(
            f"A thread {self.name!r} não pode ser morta à força: o Python não mata threads. "
            f"Para simular uma queda no meio de uma tarefa use um processo (bg.process) e w.kill().")


# ---------------------------------------------------------------------------------------------


class ServerWorker(Worker):
    """An HTTP server (a WSGI app: Flask's, say) on 127.0.0.1 in a thread of the kernel, serving
    each request in a thread of its own; what `Background.serve()` returns. Its request log goes
    to its own output (`show()`), never to the cell that happens to run."""

    kind = "servidor"
    pid = None

    def __init__(self, name: str, app: Callable, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(name)
        try:
            from werkzeug.serving import WSGIRequestHandler, make_server
        except ImportError as exc:
            raise CourseError("O servidor HTTP do curso usa o werkzeug (vem com o Flask), que não está "
                              "instalado neste Python: pip install flask") from exc
        out = self._out

        class Handler(WSGIRequestHandler):
            def log(self, type: str, message: str, *args: Any) -> None:  # noqa: A002 - werkzeug's name
                out.feed(_ANSI.sub("", f"{self.address_string()} {message % args}") + "\n")

        try:  # werkzeug prints and exits (SystemExit) when the port is taken
            self._server = make_server(host, port, app, threaded=True, request_handler=Handler)
        except (OSError, SystemExit) as exc:
            raise CourseError(f"Não consegui abrir o servidor {name!r} em {host}:{port}. "
                              f"A porta está ocupada? Use port=0 (uma porta livre, o padrão).") from exc
        self._server.daemon_threads = True  # a request still streaming never holds the kernel
        self.port: int = self._server.server_port
        self.url = f"http://{host}:{self.port}"
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"curso-bg-{name}", daemon=True)
        self._thread.start()
        out.feed(f"servindo em {self.url}\n")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5) -> bool:
        """Stop serving and close the listening socket. True once the server thread has ended."""
        self.stop_event.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._thread.join(timeout)
        self._server.server_close()
        if not self._out.closed:
            self._out.feed("parado\n")
            self._out.close()
        return not self._thread.is_alive()

    def kill(self) -> None:
        self.stop(1)

    def __repr__(self) -> str:
        return f"<servidor {self.name!r} {self.url} {'rodando' if self.alive else 'parado'}>"


class Background:
    """The notebook's (or a check's) background workers: start, watch and stop them."""

    def __init__(self, curso=None, url: str | None = None) -> None:
        if curso is None and url is None:
            raise CourseError("Background precisa do sandbox do capítulo: Background(curso).")
        self.url = url or curso.url
        self.workers: dict[str, Worker] = {}
        self._folder: list[Path] = []  # created on first use (a check that only runs threads needs none)
        self._finalizer = weakref.finalize(self, _finalize, self.workers, self._folder)
        if curso is not None:
            _register_cleanup(curso, self)

    @property
    def folder(self) -> Path:
        """The scratch folder where scripts are written and processes run (created on first use)."""
        if not self._folder:
            self._folder.append(_scratch_folder())
        return self._folder[0]

    # files --------------------------------------------------------------------------------
    def write(self, filename: str, code: str) -> Path:
        """Write a script into the scratch folder (where processes run); returns its path."""
        path = self.folder / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code if code.endswith("\n") else code + "\n", encoding="utf-8")
        return path

    def _script(self, script: str | os.PathLike) -> Path:
        path = Path(script)
        for candidate in ([path] if path.is_absolute() else [self.folder / path, Path.cwd() / path]):
            if candidate.is_file():
                return candidate.resolve()
        raise CourseError(f"Não achei o script {str(script)!r} (nem em {self.folder} nem na pasta atual). "
                          f"Escreva-o antes com bg.write({str(script)!r}, codigo) ou %%writefile.")

    # starting -----------------------------------------------------------------------------
    def _replace(self, name: str) -> None:
        old = self.workers.get(name)
        if old is not None and old.alive:
            forced = not old.stop(timeout=3)
            print(f"[{name}] já estava rodando: parei o anterior" + (" (à força)." if forced else "."))

    def process(self, name: str, script: str | os.PathLike, *args: Any,
                env: dict[str, str] | None = None) -> ProcessWorker:
        """Start `python script args...` as a real process; RABBITMQ_URL in its environment."""
        path = self._script(script)
        self._replace(name)
        child_env = {**os.environ, "RABBITMQ_URL": self.url, "PYTHONUNBUFFERED": "1",
                     "PYTHONIOENCODING": "utf-8", "CURSO_WORKER": name, **(env or {})}
        worker = ProcessWorker(name, [sys.executable, "-u", str(path), *map(str, args)], self.folder, child_env)
        self.workers[name] = worker
        return worker

    def thread(self, name: str, target: Callable, *args: Any, **kwargs: Any) -> ThreadWorker:
        """Run `target(*args)` in a daemon thread (it opens its own connection)."""
        self._replace(name)
        worker = ThreadWorker(name, target, args, kwargs)
        self.workers[name] = worker
        return worker

    def module(self, name: str, module: str, *args: Any, env: dict[str, str] | None = None) -> ProcessWorker:
        """Start `python -m module args...` as a real process (as `process`, same environment), with
        the scratch folder and the current folder on its PYTHONPATH: a module written with
        `bg.write` imports there as it does in the kernel after `bg.import_module`."""
        self._replace(name)
        path = os.pathsep.join(p for p in (str(self.folder), str(Path.cwd()), os.environ.get("PYTHONPATH", "")) if p)
        child_env = {**os.environ, "RABBITMQ_URL": self.url, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path,
                     "PYTHONIOENCODING": "utf-8", "CURSO_WORKER": name, **(env or {})}
        worker = ProcessWorker(name, [sys.executable, "-u", "-m", module, *map(str, args)], self.folder, child_env)
        self.workers[name] = worker
        return worker

    def import_module(self, module: str):
        """Import (or import again, fresh) a module written into the scratch folder with `bg.write`:
        the kernel and a worker process then run the same file."""
        import importlib

        if str(self.folder) not in sys.path:
            sys.path.insert(0, str(self.folder))
        importlib.invalidate_caches()
        if module in sys.modules:
            return importlib.reload(sys.modules[module])
        return importlib.import_module(module)

    def celery(self, name: str, app: str, *args: Any, pool: str = "solo", concurrency: int = 1,
               loglevel: str = "INFO", ready_timeout: float = 30.0, env: dict[str, str] | None = None) -> ProcessWorker:
        """Start a real Celery worker, `celery -A app worker`, and wait until it says it is ready.

        `app` is what `-A` takes: a module in the scratch folder (`bg.write("tarefas.py", ...)`) or
        importable from here. Its environment has CELERY_BROKER_URL (and RABBITMQ_URL) set to this
        vhost's URL: `Celery("tarefas", broker=os.environ["CELERY_BROKER_URL"])` finds the same
        broker in the worker as in a kernel that set it (the kernel must not set RABBITMQ_URL: that
        is the grader's, and `setup()` would take it). The worker is named `name@<host>`, runs without mingle and gossip
        (they only slow a lone worker's start), `pool="solo"` (tasks in the worker's own process;
        `"prefork"` for child processes, as in production) and `args` are passed on. If it is not
        ready within `ready_timeout` s, or ends, it is killed and a pt-BR error shows its log."""
        import importlib.util

        if importlib.util.find_spec("celery") is None:
            raise CourseError("O Celery não está instalado neste Python: pip install 'celery>=5.7,<5.8' "
                              "(ou make setup, que instala tudo do curso).")
        worker = self.module(name, "celery", "-A", app, "worker", "-n", f"{name}@%h", f"--pool={pool}",
                             f"--concurrency={concurrency}", f"--loglevel={loglevel}", "--without-mingle",
                             "--without-gossip", *args,
                             # as root (CI, a container) Celery warns at every start; the course
                             # knows, and the warning buried the worker's log
                             env={"PYTHONWARNINGS": "ignore:You're running the worker with superuser",
                                  # where Celery looks for its broker when the app names none
                                  "CELERY_BROKER_URL": self.url, **(env or {})})
        if worker.wait_for(" ready.", timeout=ready_timeout):
            return worker
        ended = not worker.alive
        worker.kill()
        log = "\n".join(worker.lines()[-20:]) or "(nada)"
        raise CourseError(f"O worker Celery {name!r} {'terminou' if ended else f'não ficou pronto em {ready_timeout:g} s'} "
                          f"(parei-o). Últimas linhas do log:\n{log}")

    def serve(self, name: str, app: Callable, port: int = 0) -> ServerWorker:
        """Serve a WSGI app (a Flask app) on 127.0.0.1 in a thread; `port=0` takes a free port.
        Returns the server: `.url`, `.port`, `.stop()`; stopped by `stop_all()` like the others."""
        self._replace(name)
        worker = ServerWorker(name, app, port=port)
        self.workers[name] = worker
        return worker

    def restart(self, name: str, timeout: float = 5) -> ProcessWorker:
        """Stop the process `name` (SIGTERM, then SIGKILL after `timeout` s; or it died already, a
        kill say) and start it again with the same command and environment: a service that comes
        back. Its new output follows the old one in `records()` and `timeline()`."""
        old = self.workers.get(name)
        if not isinstance(old, ProcessWorker):
            raise CourseError(f"Não há processo {name!r} para reiniciar (bg.restart serve para bg.process/bg.module).")
        old.stop(timeout)
        worker = ProcessWorker(name, old.argv, old.cwd, old.env)
        worker.previous = old
        self.workers[name] = worker
        return worker

    def timeline(self, names: list[str] | None = None, since: float | None = None):
        """Every line of every worker (or of `names`), merged in arrival order, as a DataFrame:
        `t` (seconds since `since`, default the first line), `quem`, `linha`. Lines of a worker
        before its restarts are included."""
        import pandas as pd

        rows = [(t, name, line) for t, name, line in self.records() if names is None or name in names]
        start = since if since is not None else (rows[0][0] if rows else 0.0)
        return pd.DataFrame([{"t": round(t - start, 3), "quem": name, "linha": line} for t, name, line in rows
                             if t >= start], columns=["t", "quem", "linha"])

    def _all_records(self) -> list[tuple[float, str, str]]:
        rows = []
        for i, worker in enumerate(self.workers.values()):
            chain = []
            while worker is not None:
                chain.append(worker)
                worker = getattr(worker, "previous", None)
            for w in chain:
                rows += [(t, i, j, w.name, line) for j, (t, line) in enumerate(w.records())]
        return [(t, name, line) for t, _, _, name, line in sorted(rows)]

    def __getitem__(self, name: str) -> Worker:
        return self.workers[name]

    # watching -----------------------------------------------------------------------------
    def show(self) -> None:
        """Print every worker's new lines since the last show(), in arrival order, "[nome] linha"."""
        new = [(t, i, j, w.name, line) for i, w in enumerate(self.workers.values())
               for j, (t, line) in enumerate(w._out.take_new())]
        for *_, name, line in sorted(new):
            print(f"[{name}] {line}")

    def records(self) -> list[tuple[float, str, str]]:
        """(time, worker name, line) of every line of every worker (before its restarts too), in
        arrival order."""
        return self._all_records()

    def status(self):
        """One row per worker: name, kind, pid, whether it runs, lines printed (a DataFrame)."""
        import pandas as pd

        return pd.DataFrame([{"nome": w.name, "tipo": w.kind, "pid": w.pid, "rodando": w.alive,
                              "linhas": len(w.records())} for w in self.workers.values()],
                            columns=["nome", "tipo", "pid", "rodando", "linhas"])

    def alive(self) -> list[str]:
        return [w.name for w in self.workers.values() if w.alive]

    # stopping -----------------------------------------------------------------------------
    def stop_all(self, timeout: float = 5, quiet: bool = False) -> list[str]:
        """Stop every worker (processes: SIGTERM, then SIGKILL after `timeout` s; threads: their
        stop_event, joined for `timeout` s). Prints, in pt-BR, what had to be killed or did not
        stop; returns those sentences."""
        report = _stop_workers(list(self.workers.values()), timeout)
        if not quiet:
            for sentence in report:
                print(sentence)
        return report

    def __repr__(self) -> str:
        return f"<Background {len(self.workers)} trabalhador(es), rodando: {', '.join(self.alive()) or 'nenhum'}>"


def _stop_workers(workers: list[Worker], timeout: float) -> list[str]:
    running = [w for w in workers if w.alive]
    for w in running:  # ask them all at once, then wait for them together
        if isinstance(w, ProcessWorker):
            w._signal(signal.SIGTERM)
        else:
            w.stop_event.set()
    deadline = time.monotonic() + timeout
    report = []
    for w in running:
        left = deadline - time.monotonic()
        if isinstance(w, ProcessWorker):
            if not w._wait(left):
                w.kill()
                report.append(f"[{w.name}] não terminou com SIGTERM em {timeout:g} s: encerrado com SIGKILL.")
        elif not w.stop(max(left, 0)):
            report.append(f"[{w.name}] a thread não terminou em {timeout:g} s (não olhou o stop_event?): "
                          f"continua em segundo plano até o kernel terminar.")
    return report


SCRATCH = Path(tempfile.gettempdir()) / "curso-background"


def _scratch_folder() -> Path:
    """A new folder under SCRATCH named after this process (`<pid>-xxxx`). A kernel that is killed
    cannot remove its folders, so the ones of processes that no longer exist are removed here."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    for old in SCRATCH.iterdir():
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_exists(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=SCRATCH))


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finalize(workers: dict[str, Worker], folder: list[Path]) -> None:
    try:
        _stop_workers(list(workers.values()), 2)
    finally:
        for path in folder:
            shutil.rmtree(path, ignore_errors=True)


def _register_cleanup(curso, bg: Background) -> None:
    """Make `curso.cleanup()` stop bg's workers, through the sandbox's public hook."""
    ref = weakref.ref(bg)

    def stop() -> None:
        target = ref()
        if target is not None:
            target.stop_all()

    curso.on_cleanup(stop)


__all__ = ["Background", "Worker", "ProcessWorker", "ThreadWorker", "ServerWorker"]
