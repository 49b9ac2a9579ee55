"""Grade every student's notebooks: rebuild, isolate, execute with nbval, score, record."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from ..exercises import metadata as fmt
from ..nbrun import NotebookRun, clean, run_notebook
from . import report
from .confine import guest_brokers, refusal
from .gradebroker import GradingBroker, StudentSpace
from .plugin import parse_verdicts
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


def execute(job: Job, rebuilt: Rebuilt, broker: GradingBroker, options: GradeOptions) -> list[ExerciseResult]:
    """Run the rebuilt notebook in an isolated space of the grading broker and score it."""
    label = f"{job.student[:24]}-{job.canonical.name[:2]}"
    space = broker.space(label)
    job_dir = Path(tempfile.mkdtemp(prefix="curso-grade-job-"))
    try:
        nb_path = job_dir / job.canonical.name
        nbformat.write(rebuilt.notebook, str(nb_path))
        key = secrets.token_hex(32).encode()
        key_file = job_dir / "key"
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        verdicts = job_dir / "verdicts.txt"
        home = job_dir / "home"
        home.mkdir()
        with broker.inside():  # the kernel and its nbval process see only the grading node
            run = run_notebook(nb_path, env=kernel_env(space, home), cell_timeout=options.cell_timeout,
                               timeout=options.timeout, plugins=("course_utils.grading.plugin",),
                               extra_args=("--curso-verdicts", str(verdicts), "--curso-key-file", str(key_file),
                                           "--curso-memory-limit", str(options.memory_limit)),
                               work_dir=job_dir)
        signed, forged = parse_verdicts(verdicts.read_text(encoding="utf-8") if verdicts.exists() else "", key)
        results = score(job, rebuilt, run, {v["code_index"]: v for v in signed}, forged, options)
        for result in results:
            result.extra["seconds"] = round(run.seconds, 2)  # the notebook's run, kernel start included
        return results
    finally:
        try:
            broker.drop(space)
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)


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
    if verdict.get("reply_status") == "error":
        return Status.FAILED, f"a verificação falhou ({verdict.get('reply_error', '').strip()}), mas a mensagem de erro foi escondida"
    if verdict.get("broker") == "failed":
        return Status.FAILED, f"{verdict.get('broker_hint')} (conferido pelo corretor, direto no broker)"
    if verdict.get("broker") == "error" or verdict.get("snapshot_error"):
        return Status.ERROR, f"o corretor não conseguiu conferir o broker: {verdict.get('broker_hint') or verdict.get('snapshot_error')}"
    return Status.PASSED, ""


def score(job: Job, rebuilt: Rebuilt, run: NotebookRun, verdicts: dict[int, dict], forged: int,
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
        extra = {"forged_verdicts": forged} if forged else {}
        results.append(ExerciseResult(job.student, job.canonical.name, exercise, points, max_points,
                                      status, " | ".join(dict.fromkeys(reasons)), job.digest, extra))
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
    own_broker = broker is None and needs_broker
    if own_broker:
        broker = GradingBroker().start()
    if needs_broker and not broker.confined and options.progress:
        print(f"aviso: os cadernos rodam sem isolamento de rede ({broker.unconfined_reason}).", file=sys.stderr)
    if needs_broker and not broker.confined and not options.allow_guest_broker:
        found = guest_brokers()
        if found:
            if own_broker:
                broker.stop()
            bar.close()
            raise GradingRefused(refusal(found, broker.unconfined_reason or "os cadernos não estão isolados"))
    try:
        with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
            futures = {pool.submit(_safe, lambda job=job, rebuilt=rebuilt: execute(job, rebuilt, broker, options), job): job
                       for job, rebuilt in to_run}
            for future in as_completed(futures):
                store.add(future.result())
                bar.update(1)
    finally:
        bar.close()
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
