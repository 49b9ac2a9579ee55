"""Grade every student's notebooks: triage, rebuild, isolate, execute (grading/execute.py), score, record."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nbformat

from ..exercises import metadata as fmt
from ..nbrun import NotebookRun, clean
from . import execute, report
from .confine import guest_brokers, refusal
from .gradebroker import GradingBroker, StudentSpace
from .rebuild import InvalidSubmission, Rebuilt, read_submission, rebuild
from .status import Status
from .submissions import StudentWork, discover

GRADER_VERSION = "1"


@dataclass
class GradeOptions:
    submissions: Path
    out: Path
    exercises_dir: Path
    workers: int = 1
    timeout: float = 600.0        # whole notebook
    cell_timeout: float = 60.0
    only: tuple[str, ...] = ()    # chapter numbers, e.g. ("02",)
    force: bool = False
    max_output_bytes: int = 200_000
    memory_limit: int = 4 * 2**30
    progress: bool = True
    # Grade even though kernels are not confined and a broker that accepts guest answers on
    # localhost (the instructor accepts that a kernel could log in to it).
    allow_guest_broker: bool = False


class GradingRefused(Exception):
    """Grading would be unsafe here; the message (pt-BR) says why and how to proceed."""


@dataclass
class Canonical:
    name: str
    notebook: nbformat.NotebookNode
    exercises: dict[str, float]
    digest: str

    @property
    def uses_cluster(self) -> bool:
        """The chapter's notebook starts a 3-node cluster of its own (chapter 8: notebook metadata
        `curso.cluster`); such notebooks are graded one at a time (see `execute_all`)."""
        return bool(self.notebook.metadata.get("curso", {}).get("cluster"))


@dataclass
class Job:
    student: str
    canonical: Canonical
    content: bytes | None
    problem: str | None
    digest: str


@dataclass
class ExerciseResult:
    student: str
    notebook: str
    exercise: str
    points: float
    max_points: float
    status: str
    reason: str = ""
    digest: str = ""
    extra: dict = field(default_factory=dict)

    def row(self) -> dict:
        return {"student": self.student, "notebook": self.notebook, "exercise": self.exercise,
                "points": self.points, "max_points": self.max_points, "status": self.status,
                "reason": self.reason, "digest": self.digest, **self.extra}


# ---------------------------------------------------------------------------------------------
class ResultStore:
    """results.jsonl, appended one notebook at a time and fsynced: a killed run loses nothing finished."""

    def __init__(self, out: Path):
        self.path = out / "results.jsonl"
        self._lock = threading.Lock()
        self.rows: list[dict] = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    self.rows.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by a kill

    def done(self) -> set[tuple[str, str, str]]:
        return {(r["student"], r["notebook"], r["digest"]) for r in self.rows}

    def add(self, results: list[ExerciseResult]) -> None:
        text = "".join(json.dumps(r.row(), ensure_ascii=False) + "\n" for r in results)
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            self.rows.extend(r.row() for r in results)

    def latest(self) -> list[dict]:
        """The newest row for each student x notebook x exercise."""
        newest: dict[tuple, dict] = {}
        for row in self.rows:
            newest[(row["student"], row["notebook"], row["exercise"])] = row
        return list(newest.values())


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:32]


def load_canonicals(exercises_dir: Path, only: tuple[str, ...]) -> list[Canonical]:
    out = []
    for path in sorted(Path(exercises_dir).glob("*.ipynb")):
        if only and not any(path.name.startswith(f"{int(n):02d}_") for n in only):
            continue
        nb = fmt.read(path)
        out.append(Canonical(path.name, nb, fmt.exercises(nb), _sha(path.read_bytes(), GRADER_VERSION.encode())))
    if not out:
        raise SystemExit(f"erro: nenhum caderno de exercícios em {exercises_dir}" + (f" para --only {' '.join(only)}" if only else ""))
    return out


def plan(students: list[StudentWork], canonicals: list[Canonical]) -> list[Job]:
    jobs = []
    for work in students:
        for canonical in canonicals:
            content = work.notebooks.get(canonical.name)
            problem = work.problems.get(canonical.name)
            digest = _sha(content or b"<none>", (problem or "").encode(), canonical.digest.encode())
            jobs.append(Job(work.student, canonical, content, problem, digest))
    return jobs


# ---------------------------------------------------------------------------------------------
def _all(job: Job, status: Status, reason: str) -> list[ExerciseResult]:
    return [ExerciseResult(job.student, job.canonical.name, ex, 0.0, pts, status, reason, job.digest)
            for ex, pts in job.canonical.exercises.items()]


def kernel_env(space: StudentSpace, home: Path) -> dict[str, str]:
    """The whole environment of the student's kernel: their own broker URL and nothing secret."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "HOME": str(home), "IPYTHONDIR": str(home / ".ipython"), "MPLCONFIGDIR": str(home / ".mpl"),
        "TMPDIR": str(home), "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
        "RABBITMQ_URL": space.amqp_url, "RABBITMQ_MANAGEMENT_URL": space.management_url,
        "CURSO_STRICT": "1", "CURSO_NO_DOCKER": "1", "CURSO_HOME": str(home / "curso"),
        "CURSO_GRADING": "1",
    }
    return env


BLANK = "resposta em branco: a célula de resposta ainda não foi preenchida"


def triage(job: Job, options: GradeOptions) -> Rebuilt | list[ExerciseResult]:
    """The first step, before any kernel: the results of a notebook whose outcome is already known
    (not submitted, unreadable, of another chapter, nothing answered), or the notebook rebuilt from
    the canonical one (`rebuild`: the student's answers, the canonical checks) to execute."""
    if job.problem:
        return _all(job, Status.INVALID, job.problem)
    if job.content is None:
        return _all(job, Status.MISSING, "caderno não entregue")
    try:
        rebuilt = rebuild(job.canonical.notebook, read_submission(job.content), options.max_output_bytes)
    except InvalidSubmission as exc:
        return _all(job, Status.INVALID, str(exc))
    if not any(rebuilt.answered.values()):
        return _all(job, Status.MISSING, BLANK)
    return rebuilt


def execute_all(to_run: list[tuple[Job, Rebuilt]], broker: GradingBroker, factory: execute.KernelFactory,
                options: GradeOptions, emit: Callable[[list[ExerciseResult]], None],
                boot: Callable[[], object] | None = None) -> None:
    """Run every rebuilt notebook on the grading broker, `options.workers` at a time, and hand each
    notebook's results to `emit` as soon as they are known. Each worker is a thread inside the
    broker's namespace with an event loop of its own (`_worker`). `boot`, when given, starts the
    node in the calling thread (which the node then dies with) after the workers have started:
    they fork their first kernels while it boots."""
    pending: queue.Queue = queue.Queue()
    for item in to_run:
        pending.put(item)
    failures: list[BaseException] = []
    state: dict[str, bool | None] = {"up": None if boot else True}
    # A notebook that starts its own 3-node cluster (chapter 8) runs alone: its nodes, their CPU and
    # their port blocks are not shared with another student's cluster booting or failing meanwhile.
    one_cluster = threading.BoundedSemaphore(1)

    def worker() -> None:
        try:
            with broker.inside():  # the kernels and every management call live in the node's namespace
                asyncio.run(_worker(pending, broker, factory, options, emit, lambda: state["up"], one_cluster))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            failures.append(exc)

    threads = [threading.Thread(target=worker, name=f"curso-grade-{n}", daemon=True)
               for n in range(max(1, min(options.workers, len(to_run))))]
    for thread in threads:
        thread.start()
    try:
        if boot is not None:
            boot()
            state["up"] = True
    finally:
        if state["up"] is None:  # boot() raised: the workers stop, their kernels go
            state["up"] = False
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]


def _take(pending: queue.Queue) -> tuple[Job, Rebuilt] | None:
    try:
        return pending.get_nowait()
    except queue.Empty:
        return None


async def _worker(pending: queue.Queue, broker: GradingBroker, factory: execute.KernelFactory,
                  options: GradeOptions, emit: Callable[[list[ExerciseResult]], None],
                  booted: Callable[[], bool | None], one_cluster: threading.BoundedSemaphore | None = None) -> None:
    """Take notebooks until none is left; while one runs, the next one's kernel is forked. If the
    node never comes up, stop without a result (nothing was graded). A notebook whose chapter uses a
    cluster runs only while this worker holds `one_cluster`."""

    def start(item):
        job, _rebuilt = item
        label = f"{job.student[:24]}-{job.canonical.name[:2]}"
        return asyncio.ensure_future(execute.prepare(label, broker, factory, kernel_env, options.memory_limit, booted))

    item = _take(pending)
    ready = start(item) if item else None
    try:
        while item is not None:
            job, rebuilt = item
            current, item = ready, _take(pending)
            ready = start(item) if item else None
            try:
                prepared = await current
            except execute.NodeDown:  # grade() raises the boot's error; nothing was graded
                return
            except Exception as exc:  # noqa: BLE001 - no kernel for this notebook: its result says why
                emit(_all(job, Status.ERROR, f"erro do corretor ao preparar o kernel: {exc.__class__.__name__}: {exc}"))
                continue
            gate = one_cluster if job.canonical.uses_cluster else None
            if gate is not None:  # held until the kernel, and with it its cluster, is gone
                await asyncio.to_thread(gate.acquire)
            try:
                results = await _run(job, rebuilt, prepared, options)
            except Exception as exc:  # noqa: BLE001
                results = _all(job, Status.ERROR, f"erro do corretor ao processar este caderno: {exc.__class__.__name__}: {exc}")
            finally:
                try:
                    await execute.cleanup(prepared, broker)
                finally:
                    if gate is not None:
                        gate.release()
            emit(results)
    finally:
        if ready is not None:  # stopped early: the kernel started ahead goes too
            try:
                await execute.cleanup(await ready, broker)
            except Exception:  # noqa: BLE001
                pass


async def _run(job: Job, rebuilt: Rebuilt, prepared: execute.Prepared, options: GradeOptions) -> list[ExerciseResult]:
    checks = {i: exercise for i, (exercise, _points) in rebuilt.check_cells.items()}
    run, verdicts = await execute.run_cells(rebuilt.notebook, prepared, options.cell_timeout, options.timeout, checks)
    results = score(job, rebuilt, run, verdicts, options)
    for result in results:
        result.extra["seconds"] = round(run.seconds, 2)  # the notebook's run (its kernel started ahead)
    return results


def _first_lines(text: str, limit: int = 600) -> str:
    text = clean(text).strip()
    return text if len(text) <= limit else text[:limit] + " …"


def judge_cell(code_index: int, run: NotebookRun, verdict: dict | None, options: GradeOptions) -> tuple[Status, str]:
    """(status, reason) of one check cell from nbval's outcome and the grader-side verdict."""
    outcome = run.cells.get(code_index)
    if outcome is None:
        if run.timed_out:
            return Status.TIMEOUT, f"o caderno passou do tempo total de {options.timeout:.0f} s antes desta verificação"
        return Status.ERROR, "a verificação não chegou a rodar: " + _first_lines(run.output[-800:], 400)
    if not outcome.ok:
        ename, evalue = outcome.error
        if "Timeout of" in outcome.message:
            return Status.TIMEOUT, f"a célula passou de {options.cell_timeout:.0f} s"
        if "Kernel dead" in outcome.message or "DeadKernelError" in outcome.message:
            return Status.ERROR, "o kernel morreu antes desta verificação (os._exit, falta de memória ou travamento)"
        if ename == "AssertionError":
            return Status.FAILED, evalue
        return Status.ERROR, f"{ename}: {evalue}" if ename else _first_lines(outcome.message)
    if verdict is None:
        return Status.ERROR, "o corretor não recebeu o resultado conferido no broker para esta verificação"
    if verdict.get("broker") == "failed":
        return Status.FAILED, f"{verdict.get('broker_hint')} (conferido pelo corretor, direto no broker)"
    if verdict.get("broker") == "error" or verdict.get("snapshot_error"):
        return Status.ERROR, f"o corretor não conseguiu conferir o broker: {verdict.get('broker_hint') or verdict.get('snapshot_error')}"
    return Status.PASSED, ""


def score(job: Job, rebuilt: Rebuilt, run: NotebookRun, verdicts: dict[int, dict],
          options: GradeOptions) -> list[ExerciseResult]:
    answer_timeouts = {ex for i, ex in rebuilt.answer_cells.items()
                       if i in run.cells and "Timeout of" in run.cells[i].message
                       and "DeadKernelError" not in run.cells[i].message}
    results = []
    for exercise, max_points in job.canonical.exercises.items():
        cells = [(i, pts) for i, (ex, pts) in rebuilt.check_cells.items() if ex == exercise]
        points, status, reasons = 0.0, Status.PASSED, []
        for code_index, pts in cells:
            cell_status, reason = judge_cell(code_index, run, verdicts.get(code_index), options)
            if cell_status is Status.PASSED:
                points += pts
            else:
                reasons.append(reason)
                if cell_status.severity > status.severity:
                    status = cell_status
        if status is not Status.PASSED:
            if not rebuilt.answered.get(exercise):
                status, reasons = Status.MISSING, [BLANK]
            elif exercise in answer_timeouts:
                status = Status.TIMEOUT
                reasons.insert(0, f"a célula de resposta passou de {options.cell_timeout:.0f} s")
        results.append(ExerciseResult(job.student, job.canonical.name, exercise, points, max_points,
                                      status, " | ".join(dict.fromkeys(reasons)), job.digest))
    return results


# ---------------------------------------------------------------------------------------------
def grade(options: GradeOptions, broker: GradingBroker | None = None) -> report.Summary:
    """Grade the class in `options`. With `broker` (a started GradingBroker), the notebooks run on
    it and it is left running; otherwise a grading broker is started for the run and stopped."""
    options.out.mkdir(parents=True, exist_ok=True)
    canonicals = load_canonicals(options.exercises_dir, options.only)
    students = discover(options.submissions, [c.name for c in canonicals])
    store = ResultStore(options.out)
    done = set() if options.force else store.done()
    planned = plan(students, canonicals)
    jobs = [j for j in planned if (j.student, j.canonical.name, j.digest) not in done]
    skipped = len(planned) - len(jobs)

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="corrigindo", unit="caderno", file=sys.stderr,
               disable=not options.progress or not jobs)
    started = time.monotonic()
    # Decided before any kernel starts: every notebook whose outcome is already known.
    to_run = []
    for job in jobs:
        decided = _safe(lambda: triage(job, options), job)
        if isinstance(decided, list):
            store.add(decided)
            bar.update(1)
        else:
            to_run.append((job, decided))
    needs_broker = bool(to_run)
    if needs_broker:
        threading.Thread(target=report.prepare_plotting, name="curso-grade-plotting", daemon=True).start()
    own_broker = broker is None and needs_broker
    if own_broker:
        broker = GradingBroker().open()
    if needs_broker and not broker.confined and options.progress:
        print(f"aviso: os cadernos rodam sem isolamento de rede ({broker.unconfined_reason}).", file=sys.stderr)
    if needs_broker and not broker.confined and not options.allow_guest_broker:
        found = guest_brokers()
        if found:
            if own_broker:
                broker.stop()
            bar.close()
            raise GradingRefused(refusal(found, broker.unconfined_reason or "os cadernos não estão isolados"))

    def emit(results: list[ExerciseResult]) -> None:
        store.add(results)
        bar.update(1)

    factory = execute.KernelFactory()
    try:
        if needs_broker:
            with broker.inside():
                factory.start()  # its imports run while the node boots
        # The node boots in this thread (it dies with the thread that started it), while the
        # workers fork their first kernels.
        execute_all(to_run, broker, factory, options, emit, boot=broker.start if own_broker else None)
    finally:
        bar.close()
        factory.stop()
        if own_broker:
            broker.stop()
    summary = report.write_all(options.out, store.latest(), canonicals, [w.student for w in students])
    summary.graded, summary.skipped, summary.seconds = len(jobs), skipped, time.monotonic() - started
    return summary


def _safe(step, job: Job):
    """Run one pipeline step of a job; an unexpected grader error becomes status 'error' for that
    notebook instead of crashing the run."""
    try:
        return step()
    except Exception as exc:  # noqa: BLE001 - recorded, not raised
        return _all(job, Status.ERROR, f"erro do corretor ao processar este caderno: {exc.__class__.__name__}: {exc}")
