"""The check framework behind every exercise's check cell.

A check cell holds one line, `verificar("2.2", curso)`. The exercise it names is a subclass of
`Exercise` in `course_utils/exercises/capNN.py`, in three steps:

    snapshot(ctx)  broker state before the learner's code runs (optional)
    run(ctx)       kernel side: calls the learner's functions, checks return values
    verify(ctx)    broker side: asserts on what the broker shows (management API / AMQP)

In JupyterLab all three run in the learner's kernel. When grading, the grader also runs
`snapshot` before and `verify` after the check cell from its own process, with its own credentials,
so that nothing the learner's kernel does (monkeypatching AssertionError, this module, ...) can
fake a broker-state pass. `verify` must therefore depend only on the broker and on `self`'s
snapshot, never on the learner's namespace.
"""
from __future__ import annotations

import contextlib
import importlib
import signal
import threading
import time
from typing import Any, Callable

import pika.exceptions

from ..errors import CourseError, StrictModeError

_REGISTRY: dict[str, type["Exercise"]] = {}


class Exercise:
    """Base class of an exercise check. Subclasses set `id` and `points` and override the steps."""

    id: str = ""
    title: str = ""
    points: float = 1
    # How long a learner's function may run inside a check before it is interrupted.
    call_timeout: float = 10.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.id:
            _REGISTRY[cls.id] = cls

    def snapshot(self, ctx: "CheckContext") -> None:
        """Record broker state before the learner's code runs (kept on self)."""

    def run(self, ctx: "CheckContext") -> None:
        """Kernel side: call the learner's code; raise AssertionError with a hint on failure."""

    def verify(self, ctx: "CheckContext") -> None:
        """Broker side: assert on the broker's state; depends only on the broker and self."""


class CheckContext:
    """What a check sees: the chapter sandbox and, in the kernel, the learner's namespace."""

    def __init__(self, curso, namespace: dict | None = None, stats_wait: float | None = None,
                 call_timeout: float = 10.0):
        self.curso = curso
        self.call_timeout = call_timeout
        self.management = curso.management
        self.namespace = namespace
        if stats_wait is None:
            # Our own nodes refresh management stats every second, RabbitMQ's default is 5 s;
            # a busy machine (a grader with several workers) adds a few seconds to either.
            stats_wait = 6.0 if curso.broker.kind == "native" else 10.0
        self.stats_wait = stats_wait

    # the learner's code -----------------------------------------------------------------
    def learner(self, name: str, what: str = "função") -> Any:
        if self.namespace is None or name not in self.namespace:
            raise AssertionError(f"Não encontrei a {what} `{name}`. Escreva-a na célula de resposta "
                                 f"acima e rode essa célula antes desta verificação.")
        return self.namespace[name]

    def call(self, name: str, *args, **kwargs) -> Any:
        """Call the learner's function `name`, turning 'not done yet' and hangs into hints."""
        fn = self.learner(name)
        if not callable(fn):
            raise AssertionError(f"`{name}` deveria ser uma função, mas é {type(fn).__name__}.")
        try:
            with time_limit(self.call_timeout, name):
                return fn(*args, **kwargs)
        except NotImplementedError:
            raise AssertionError(f"`{name}` ainda não foi implementada: escreva o corpo da função na "
                                 f"célula de resposta (no lugar do raise NotImplementedError).") from None
        except StrictModeError as exc:
            raise AssertionError(f"`{name}` declarou algo que o RabbitMQ 4.x recusa: {exc}") from None
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise AssertionError(f"Durante `{name}` o broker fechou o canal: {exc.reply_code} "
                                 f"{exc.reply_text}") from None
        except pika.exceptions.AMQPError as exc:
            raise AssertionError(f"Durante `{name}` a conexão com o broker falhou: {exc!r}") from None

    # the broker ------------------------------------------------------------------------
    def queue(self, name: str) -> dict | None:
        return self.management.queue_or_none(name)

    def eventually(self, probe: Callable[[], Any], condition: Callable[[Any], bool],
                   timeout: float | None = None) -> Any:
        """Poll `probe()` until `condition(value)` or the stats wait runs out; return the last value.

        The management API's counts refresh at the broker's statistics interval, so a fresh
        value may take that long to show."""
        deadline = time.monotonic() + (self.stats_wait if timeout is None else timeout)
        value = probe()
        while not condition(value) and time.monotonic() < deadline:
            time.sleep(0.2)
            value = probe()
        return value

    def queue_when(self, name: str, condition: Callable[[dict], bool]) -> dict | None:
        """The queue's management record once `condition` holds (or the last one seen)."""
        return self.eventually(lambda: self.queue(name), lambda q: q is not None and condition(q))

    def bodies(self, queue: str, count: int = 100) -> list[str]:
        """Bodies of the messages ready in `queue`, read through the management API (requeued)."""
        return [m.get("payload", "") for m in self.management.peek(queue, count)]


def close_quietly(connection) -> None:
    """Close a check's connection; one a learner's call left broken mid-frame may refuse."""
    if connection is not None and connection.is_open:
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - best effort, the broker drops it anyway
            pass


def expect(condition: Any, hint: str) -> None:
    """Fail the check with a hint the learner can act on."""
    if not condition:
        raise AssertionError(hint)


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    """Interrupt a learner's call that runs too long (main thread on Unix; elsewhere no limit)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(what)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except TimeoutError as exc:
        if str(exc) != what:
            raise
        raise AssertionError(
            f"`{what}` não terminou em {seconds:.0f} s. Um consumidor que usa start_consuming() ou "
            f"consume() sem inactivity_timeout espera mensagens para sempre: pare depois de receber "
            f"o que precisa ou use um tempo limite.") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def get_exercise(exercise_id: str) -> type[Exercise]:
    """The Exercise class for '2.1', importing course_utils.exercises.capNN on demand."""
    if exercise_id not in _REGISTRY:
        chapter = exercise_id.split(".", 1)[0]
        try:
            importlib.import_module(f"course_utils.exercises.cap{int(chapter):02d}")
        except (ImportError, ValueError):
            pass
    if exercise_id not in _REGISTRY:
        raise CourseError(f"Exercício desconhecido: {exercise_id!r}")
    return _REGISTRY[exercise_id]


def _learner_namespace() -> dict | None:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return shell.user_ns if shell is not None else None


def verificar(exercise_id: str, curso, namespace: dict | None = None) -> None:
    """Run exercise `exercise_id`'s check against `curso` (the chapter sandbox).

    Prints a short pt-BR success line, or raises AssertionError with a hint."""
    __tracebackhide__ = True  # IPython hides this frame: the learner sees the hint, not our internals
    exercise = get_exercise(exercise_id)()
    ctx = CheckContext(curso, namespace if namespace is not None else _learner_namespace(),
                       call_timeout=exercise.call_timeout)
    try:
        exercise.snapshot(ctx)
        exercise.run(ctx)
        exercise.verify(ctx)
    except AssertionError as exc:
        raise AssertionError(f"Exercício {exercise_id}: {exc}") from None
    print(f"✅ Exercício {exercise_id} certo!" + (f" {exercise.title}" if exercise.title else ""))
