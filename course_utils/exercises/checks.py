"""The check framework behind every exercise's check cell.

A check cell holds one line, `verificar("2.2", curso)`. The exercise it names is a subclass of
`Exercise` in `course_utils/exercises/chapters/capNN.py`, in three steps:

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
import io
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import CourseError
from ..management import ManagementError
from . import kit, phrases
from .kit import close_quietly, expect  # noqa: F401 - part of the framework's surface

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
            known = _REGISTRY.get(cls.id)
            if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
                raise CourseError(f"Two checks registered under exercise id {cls.id!r}: "
                                  f"{known.__module__}.{known.__qualname__} and {cls.__module__}.{cls.__qualname__}")
            _REGISTRY[cls.id] = cls  # the same class again: a module reloaded

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
        # Our own nodes refresh management stats every second, RabbitMQ's default is 5 s;
        # a busy machine (a grader with several workers) adds a few seconds to either.
        ours = curso.broker.kind in ("native", "rabbit4")
        self.stats_interval = 1.0 if ours else 5.0
        self.stats_wait = (6.0 if ours else 10.0) if stats_wait is None else stats_wait
        self.timed_out = False  # set by kit.call when the learner's code hit the time limit

    # the learner's code -----------------------------------------------------------------
    def learner(self, name: str, what: str = "função") -> Any:
        if self.namespace is None or name not in self.namespace:
            raise AssertionError(phrases.not_found(name, what))
        return self.namespace[name]

    def call(self, name: str, *args, **kwargs) -> Any:
        """Call the learner's function `name` within the time limit (see `kit.call`)."""
        return kit.call(self, name, *args, **kwargs)

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
        try:
            peeked = self.management.peek(queue, count)
        except ManagementError as exc:
            if exc.status == 404:  # no such queue: nothing in it (the hints say why)
                return []
            raise
        return [m.get("payload", "") for m in peeked]


def get_exercise(exercise_id: str) -> type[Exercise]:
    """The Exercise class for '2.1', importing course_utils.exercises.chapters.capNN on demand."""
    if exercise_id not in _REGISTRY:
        chapter = exercise_id.split(".", 1)[0]
        try:
            importlib.import_module(f"course_utils.exercises.chapters.cap{int(chapter):02d}")
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


@dataclass
class Verdict:
    """One check cell judged as the grader judges it."""
    learner: AssertionError | None  # what verificar() told the learner, in the kernel
    grader: AssertionError | None   # what the broker-side verify concluded from outside the kernel
    output: str                     # what verificar() printed

    @property
    def passed(self) -> bool:
        return self.learner is None and self.grader is None


def judge(exercise_id: str, curso, namespace: dict) -> Verdict:
    """Run a check cell once, as when grading: the grader's snapshot, `verificar` with the
    learner's namespace (snapshot, run, verify), then the grader's own verify with no namespace.
    Tests and benchmarks use it, so that what the learner is told and what the grader concludes
    come from the same run of the learner's code."""
    grader_check = get_exercise(exercise_id)()
    grader_check.snapshot(CheckContext(curso, None))
    learner = None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            verificar(exercise_id, curso, namespace)
        except AssertionError as exc:
            learner = exc
    grader = None
    try:
        grader_check.verify(CheckContext(curso, None))
    except AssertionError as exc:
        grader = exc
    return Verdict(learner, grader, out.getvalue())
