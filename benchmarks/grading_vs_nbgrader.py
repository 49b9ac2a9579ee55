"""`curso grade` against nbgrader's `autograde` on the same class: the synthetic chapter 2 class of
benchmarks/grading.py (correct, partial, blank), graded by both in one run; prints notebooks per
minute and the median seconds per notebook of each, and checks both give every student the same
total. Goal: `curso grade` >= 2x nbgrader's rate, as `curso grade` runs by default (two workers per
core, at most 8); the ratio with 1 worker is printed too.

    .venv/bin/python benchmarks/grading_vs_nbgrader.py [--students 9] [--keep]

nbgrader lives in a virtualenv of its own that the first run makes (timed apart, not counted):
`~/.cache/curso/nbgrader-<version>-venv` (under $XDG_CACHE_HOME when set), reused afterwards and
rebuilt when the pin or the course's requirements change. nbgrader is pinned to 0.9.6: the 0.9
series is the one that runs on Jupyter Server 2 / JupyterLab 4 / Notebook 7 (what the course
requires; 0.8 needs the classic notebook 6) and 0.9.6 is its newest release; a pin keeps the
figures comparable from run to run (the autograde pipeline, its executor and its defaults change
between releases) and the cached venv valid. The course's requirements are installed there too,
constrained to the versions of the project's .venv (so both graders' kernels run the same pika,
ipykernel, jupyter_client, ...); `course_utils` is put on that venv's path with a .pth file naming
the checkout (not `pip install -e`, which would write build metadata into the shared checkout),
and a kernel `curso-nbgrader` (that venv's python) is registered inside it, with JUPYTER_PATH
pointing there so no other kernel of that name wins.

Conversion to nbgrader's format (cell roles read with course_utils.exercises.metadata): answer
cells -> `solution: true` (grade_id `resposta-2_1`); check cells -> autograder tests `grade: true,
locked: true, points: N` (grade_id `verificacao-2_1`); every other cell (the set-up cell, the
statements, the final clean-up) -> locked read-only, which is what curso's rebuild does too
(everything but the answers comes from the canonical notebook). The source is the converted
solutions notebook; `nbgrader generate_assignment` (not counted) records it in the gradebook
(sqlite, in the course folder); each student's notebook is converted and put in
`submitted/<student>/cap02/`; then one `nbgrader autograde cap02` grades them all, one at a time.

nbgrader runs bare: its kernels reach the course broker on localhost:5672 as guest, and
`setup("ex02")` makes the chapter's vhost (deleted and recreated by every notebook). Its
environment has no RABBITMQ_URL; it gets the same CURSO_STRICT=1 / MPLBACKEND / private IPython
folder as curso's kernels, the same 60 s cell timeout (nbgrader's default is 30 s) and a
CURSO_VHOST_SUFFIX of its own, so other users of the course broker (tests, other benchmarks) never
share its vhost (removed at the end). `curso grade` runs as `GradeOptions` defaults give it:
isolation (as root, a private network namespace and its own grading broker) and tamper checks on.

What is timed: nbgrader, the whole `nbgrader autograde` process (its start-up included);
curso, the whole `grade()` call (its grading broker's start included). Per notebook: nbgrader,
from its pre-convert hook to its post-convert hook for that student; curso, triage + the
notebook's run as results.jsonl records it (from the moment its worker takes it: a kernel started
ahead, while the previous notebook ran, is not counted again). Both are also shown by kind, because `curso grade` decides a blank notebook at
triage, without a kernel, while nbgrader executes it like any other.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from grading import NAME, synthetic_class  # noqa: E402  (benchmarks/grading.py)

from course_utils.exercises import metadata as fmt  # noqa: E402
from course_utils.grading.cli import default_workers  # noqa: E402
from course_utils.management import Management  # noqa: E402

NBGRADER_VERSION = "0.9.6"
KERNEL_NAME = "curso-nbgrader"
ASSIGNMENT = "cap02"
NOTEBOOK_ID = Path(NAME).stem
KINDS = ("correct", "partial", "blank")       # synthetic_class: student i gets KINDS[i % 3]
COURSE_AMQP, COURSE_MANAGEMENT = ("localhost", 5672), "http://localhost:15672"
CELL_TIMEOUT = 60                             # GradeOptions.cell_timeout's default
# Kernel-side packages whose versions should match between the two environments.
KERNEL_PACKAGES = ("pika", "ipykernel", "jupyter_client", "pyzmq", "tornado", "ipython", "nbformat",
                   "requests", "traitlets")


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# nbgrader's environment
def course_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return list(project.get("dependencies", []))


def venv_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "curso" / f"nbgrader-{NBGRADER_VERSION}-venv"


def _base_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


def _stamp() -> dict:
    return {"nbgrader": NBGRADER_VERSION, "python": _base_python(), "root": str(ROOT),
            "requirements": sorted(course_requirements()), "kernel": KERNEL_NAME}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}


def _run_logged(cmd: list[str], log: Path, what: str, env: dict | None = None, timeout: float = 1800,
                cwd: Path | None = None) -> None:
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, timeout=timeout, cwd=cwd)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{what}: no answer after {timeout:.0f} s (log: {log})") from None
        except OSError as exc:
            raise BenchError(f"{what}: {exc}") from None
    if proc.returncode != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-30:])
        raise BenchError(f"{what} failed (exit {proc.returncode}); the last lines of {log}:\n{tail}")


def _project_constraints(path: Path) -> Path:
    """The project's .venv versions as pip constraints (not pip/setuptools, not the course itself)."""
    frozen = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                            capture_output=True, text=True)
    lines = [line for line in frozen.stdout.splitlines()
             if "==" in line and line.split("==")[0].lower().replace("_", "-")
             not in ("pip", "setuptools", "wheel", "course-utils", "nbgrader")]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ensure_nbgrader() -> tuple[Path, float | None]:
    """The nbgrader virtualenv (made on the first run); returns (venv, install seconds or None)."""
    venv = venv_dir()
    marker = venv / "curso-benchmark.json"
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == _stamp() and (venv / "bin" / "nbgrader").exists():
                return venv, None
        except ValueError:
            pass
        say(f"the nbgrader venv {venv} is out of date (another pin, Python or course requirements): rebuilding it")
    elif venv.exists():
        say(f"{venv} holds an unfinished install: rebuilding it")
    if sys.version_info < (3, 11):
        raise BenchError(f"nbgrader {NBGRADER_VERSION} needs Python >= 3.11; this is {sys.version.split()[0]}")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"nbgrader-{NBGRADER_VERSION}-install.log"
    log.write_text("", encoding="utf-8")
    say(f"first run: installing nbgrader {NBGRADER_VERSION} into {venv} (log: {log}); "
        "timed apart, not counted in the benchmark")
    started = time.perf_counter()
    env = _clean_env()
    py = str(venv / "bin" / "python")
    try:
        _run_logged([_base_python(), "-m", "venv", str(venv)], log, "python -m venv")
        pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
               f"nbgrader=={NBGRADER_VERSION}", "ipykernel", *course_requirements()]
        constraints = _project_constraints(venv.parent / f"nbgrader-{NBGRADER_VERSION}-constraints.txt")
        try:
            _run_logged([*pip, "-c", str(constraints)], log,
                        f"pip install nbgrader=={NBGRADER_VERSION} with the course's requirements", env=env)
        except BenchError:
            say(f"pip could not install nbgrader with the project's .venv versions as constraints (see {log}); "
                "trying again without them (the two graders' kernels may then run different versions)")
            _run_logged(pip, log, f"pip install nbgrader=={NBGRADER_VERSION} with the course's requirements", env=env)
        # course_utils from the checkout, without writing into it: a .pth file puts ROOT on sys.path.
        site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, env=env, check=True).stdout.strip()
        (Path(site) / "curso-course-utils.pth").write_text(str(ROOT) + "\n", encoding="utf-8")
        _run_logged([py, "-m", "ipykernel", "install", "--prefix", str(venv), "--name", KERNEL_NAME,
                     "--display-name", "Python 3 (curso, nbgrader venv)"], log, "ipykernel install", env=env)
        _run_logged([py, "-c", "import course_utils, nbgrader, pika; "
                     f"assert nbgrader.__version__ == {NBGRADER_VERSION!r}, nbgrader.__version__"],
                    log, "importing course_utils and nbgrader in the nbgrader venv", env=env)
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    marker.write_text(json.dumps(_stamp()), encoding="utf-8")
    seconds = time.perf_counter() - started
    say(f"nbgrader {NBGRADER_VERSION} installed in {seconds:.0f} s")
    return venv, seconds


def version_mismatches(venv: Path) -> list[str]:
    probe = ("import json, importlib.metadata as m\n"
             f"print(json.dumps({{p: m.version(p) for p in {KERNEL_PACKAGES!r}}}))")
    theirs = json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True,
                                       text=True, env=_clean_env(), check=True).stdout)
    import importlib.metadata as m
    return [f"{p} {m.version(p)} here, {theirs[p]} in nbgrader's venv" for p in KERNEL_PACKAGES
            if m.version(p) != theirs[p]]


# ---------------------------------------------------------------------------------------------
# The class in nbgrader's format
def _nbgrader_meta(**fields) -> dict:
    base = {"grade": False, "solution": False, "locked": False, "schema_version": 3}
    base.update(fields)
    return base


def to_nbgrader(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook with nbgrader's cell metadata: answers are solution cells, checks autograder
    tests with their points, every other cell locked read-only; it runs in KERNEL_NAME."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    checks: dict[str, int] = defaultdict(int)
    others = 0
    for cell in nb.cells:
        role, exercise = fmt.role(cell), str(fmt.exercise_id(cell) or "").replace(".", "_")
        if role == "answer":
            meta = _nbgrader_meta(solution=True, grade_id=f"resposta-{exercise}")
        elif role == "check":
            checks[exercise] += 1
            suffix = "" if checks[exercise] == 1 else f"-{checks[exercise]}"
            meta = _nbgrader_meta(grade=True, locked=True, points=fmt.meta(cell).get("points", 1),
                                  grade_id=f"verificacao-{exercise}{suffix}")
        elif role == "statement":
            meta = _nbgrader_meta(locked=True, grade_id=f"enunciado-{exercise}")
        else:
            is_setup = cell.cell_type == "code" and "setup(" in cell.source and others <= 1
            meta = _nbgrader_meta(locked=True, grade_id="preparacao" if is_setup else f"celula-{others}")
            others += 1
        cell.metadata["nbgrader"] = meta
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3 (curso, nbgrader venv)",
                                 "language": "python"}
    return nb


def exercise_of(grade_id: str) -> str:
    """'verificacao-2_1' or 'verificacao-2_1-2' -> '2.1'."""
    return grade_id.split("-")[1].replace("_", ".")


CONFIG = '''\
import json, time
from pathlib import Path

c = get_config()
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = "curso-rabbitmq"
c.CourseDirectory.db_url = "sqlite:///" + {db!r}
c.Execute.timeout = {cell_timeout}          # curso grade's --cell-timeout (nbgrader's default: 30 s)


def _mark(event):
    def hook(assignment, student, notebooks):
        # `student` is the command's pattern ("*"); the notebooks are submitted/<student>/<assignment>/...
        who = sorted({{Path(nb).parts[-3] for nb in notebooks}})
        with open({spans!r}, "a", encoding="utf-8") as out:
            out.write(json.dumps({{"event": event, "student": ",".join(who), "t": time.time()}}) + "\\n")
    return hook


# One line per student before and after autograde converts their notebooks: the per-notebook time.
c.Autograde.pre_convert_hook = _mark("start")
c.Autograde.post_convert_hook = _mark("end")
'''

SCORES = '''\
import json, sys
from nbgrader.api import Gradebook, MissingEntry
out = {}
with Gradebook(sys.argv[1]) as gb:
    for student in gb.students:
        try:
            sub = gb.find_submission(sys.argv[2], student.id)
        except MissingEntry:
            continue
        cells = {g.name: g.score for nb in sub.notebooks for g in nb.grades}
        out[student.id] = {"score": sub.score, "max": sub.max_score, "cells": cells}
print(json.dumps(out))
'''


class NbgraderCourse:
    """An nbgrader course folder for the class; `autograde()` grades it and `scores()` reads the gradebook."""

    def __init__(self, folder: Path, venv: Path, students: dict[str, Path]):
        self.folder, self.venv, self.students = folder, venv, students
        self.db = folder / "gradebook.db"
        self.spans = folder / "spans.jsonl"
        self.log = folder / "nbgrader.log"
        self.runtime = folder / ".runtime"
        self.suffix = f"-nbg{secrets.token_hex(3)}"
        self.vhost = f"curso-ex02{self.suffix}"

    def env(self) -> dict[str, str]:
        """What nbgrader and its kernels see: no RABBITMQ_* (they go to the course broker as guest), no
        user Jupyter or IPython configuration, kernel connection files in the course folder."""
        env = {k: v for k, v in _clean_env().items()
               if not k.startswith(("RABBITMQ_", "CURSO_", "JUPYTER", "IPYTHON", "MPL", "CONDA"))}
        env.update({
            "PATH": f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            "JUPYTER_PATH": str(self.venv / "share" / "jupyter"),
            "JUPYTER_CONFIG_DIR": str(self.folder / ".jupyter"),
            "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "IPYTHONDIR": str(self.folder / ".ipython"), "MPLCONFIGDIR": str(self.folder / ".mpl"),
            "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            "CURSO_STRICT": "1", "CURSO_NO_DOCKER": "1", "CURSO_HOME": str(self.folder / ".curso"),
            "CURSO_VHOST_SUFFIX": self.suffix,
        })
        return env

    def build(self) -> None:
        """source/, nbgrader_config.py, generate_assignment (release/ and the gradebook), submitted/."""
        source = self.folder / "source" / ASSIGNMENT
        source.mkdir(parents=True)
        nbformat.write(to_nbgrader(fmt.read(ROOT / "solutions" / NAME)), str(source / NAME))
        (self.folder / ".jupyter").mkdir()
        (self.folder / "nbgrader_config.py").write_text(CONFIG.format(
            root=str(self.folder), db=str(self.db), spans=str(self.spans), cell_timeout=CELL_TIMEOUT), encoding="utf-8")
        self._kernel_check()
        self.nbgrader("generate_assignment", ASSIGNMENT, what="nbgrader generate_assignment", timeout=300)
        for student, path in self.students.items():
            target = self.folder / "submitted" / student / ASSIGNMENT
            target.mkdir(parents=True)
            nbformat.write(to_nbgrader(fmt.read(path)), str(target / NAME))

    def _kernel_check(self) -> None:
        found = subprocess.run([str(self.venv / "bin" / "jupyter"), "kernelspec", "list", "--json"],
                               capture_output=True, text=True, env=self.env(), cwd=self.folder)
        try:
            spec = json.loads(found.stdout)["kernelspecs"][KERNEL_NAME]["spec"]
        except (ValueError, KeyError):
            raise BenchError(f"the kernel {KERNEL_NAME} is not registered in {self.venv} "
                             f"(jupyter kernelspec list: {found.stderr.strip()[-300:]}); delete that folder "
                             "to have it rebuilt") from None
        if Path(spec["argv"][0]).parent != self.venv / "bin":
            raise BenchError(f"the kernel {KERNEL_NAME} runs {spec['argv'][0]}, not {self.venv}/bin/python")

    def nbgrader(self, *args: str, what: str, timeout: float) -> float:
        """Run `nbgrader ARGS` in the course folder (its own session, killed on timeout); wall seconds."""
        cmd = [str(self.venv / "bin" / "nbgrader"), *args]
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            started = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=self.folder, env=self.env(), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except BaseException:
                kill_group(proc)
                raise
            finally:
                kill_leftovers(self.runtime, self.suffix)
            seconds = time.perf_counter() - started
        text = self.log.read_text(encoding="utf-8", errors="replace")
        if code != 0:
            tail = "".join(text.splitlines(keepends=True)[-30:])
            raise BenchError(f"{what} failed (exit {code}); the last lines of {self.log}:\n{tail}")
        return seconds

    def autograde(self) -> float:
        return self.nbgrader("autograde", ASSIGNMENT, what="nbgrader autograde",
                             timeout=120 + 20 * CELL_TIMEOUT * len(self.students))

    def per_notebook(self) -> dict[str, float]:
        starts, out = {}, {}
        for line in self.spans.read_text(encoding="utf-8").splitlines():
            mark = json.loads(line)
            if mark["event"] == "start":
                starts[mark["student"]] = mark["t"]
            elif mark["student"] in starts:
                out[mark["student"]] = mark["t"] - starts[mark["student"]]
        return out

    def first_start(self) -> float:
        return min(json.loads(line)["t"] for line in self.spans.read_text(encoding="utf-8").splitlines())

    def scores(self) -> dict[str, dict]:
        found = subprocess.run([str(self.venv / "bin" / "python"), "-c", SCORES, f"sqlite:///{self.db}", ASSIGNMENT],
                               capture_output=True, text=True, env=self.env(), cwd=self.folder)
        if found.returncode != 0:
            raise BenchError(f"reading nbgrader's gradebook {self.db} failed: {found.stderr.strip()[-800:]}")
        return json.loads(found.stdout)

    def drop_vhost(self) -> None:
        try:
            Management(COURSE_MANAGEMENT, "guest", "guest").delete_vhost(self.vhost)
        except Exception as exc:  # noqa: BLE001 - clean-up: report, go on
            say(f"warning: could not delete the vhost {self.vhost} on the course broker: {exc}")


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def kill_leftovers(runtime: Path, token: str) -> list[int]:
    """Kill what nbgrader's run left: kernels (their command line names a connection file in
    `runtime`) and anything whose environment carries this run's vhost suffix."""
    killed = []
    needles = (str(runtime).encode(), f"CURSO_VHOST_SUFFIX={token}\0".encode())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needles[0] in cmdline or needles[1] in environ:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except OSError:
                pass
    return killed


# ---------------------------------------------------------------------------------------------
# curso grade, timed per notebook
def curso_grade(subs: Path, out: Path, workers: int) -> tuple[object, float, dict[str, float], float]:
    """grade() as benchmarks/grading.py calls it; (summary, seconds, seconds per student, broker start)."""
    from course_utils.grading import grade as grade_mod
    from course_utils.grading.gradebroker import GradingBroker
    from course_utils.grading.grade import GradeOptions

    per_student: dict[str, float] = defaultdict(float)
    broker_start: list[float] = []

    def timed(step):
        def wrapper(job, *args, **kwargs):
            started = time.perf_counter()
            try:
                return step(job, *args, **kwargs)
            finally:
                per_student[job.student] += time.perf_counter() - started
        return wrapper

    original_start = GradingBroker.start

    def timed_start(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original_start(self, *args, **kwargs)
        finally:
            broker_start.append(time.perf_counter() - started)

    original_triage = grade_mod.triage
    grade_mod.triage = timed(grade_mod.triage)
    GradingBroker.start = timed_start
    try:
        started = time.perf_counter()
        summary = grade_mod.grade(GradeOptions(submissions=subs, out=out, exercises_dir=ROOT / "exercises",
                                               only=("02",), workers=workers, progress=False))
        seconds = time.perf_counter() - started
    finally:
        grade_mod.triage = original_triage
        GradingBroker.start = original_start
    runs = {}  # each executed notebook's run as results.jsonl records it (one value per notebook)
    for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "seconds" in row:
            runs[row["student"]] = float(row["seconds"])
    for student, run_seconds in runs.items():
        per_student[student] += run_seconds
    return summary, seconds, dict(per_student), sum(broker_start)


# ---------------------------------------------------------------------------------------------
def kind_of(student: str) -> str:
    return KINDS[int(student.removeprefix("aluno")) % 3]


def rate_line(label: str, count: int, seconds: float, per: dict[str, float], note: str = "") -> str:
    by_kind = []
    for kind in KINDS:
        values = [s for student, s in per.items() if kind_of(student) == kind]
        if values:
            by_kind.append(f"{kind} {statistics.median(values):.2f}")
    median = statistics.median(per.values()) if per else float("nan")
    return (f"{label:<35}{count} notebooks in {seconds:6.1f} s = {count / seconds * 60:5.1f} nb/min, "
            f"median {median:5.2f} s per notebook  (by kind: {', '.join(by_kind)}{note})")


def check_course_broker() -> None:
    import socket
    try:
        socket.create_connection(COURSE_AMQP, timeout=3).close()
        Management(COURSE_MANAGEMENT, "guest", "guest").overview()
    except Exception as exc:  # noqa: BLE001
        raise BenchError(f"nbgrader's kernels need the course broker on localhost:5672 with guest/guest and its "
                         f"management API on 15672 (`curso broker up`): {exc}") from None


def run(args) -> None:
    bench_started = time.perf_counter()
    venv, install_seconds = ensure_nbgrader()
    mismatched = version_mismatches(venv)
    if mismatched:
        say("warning: the kernels of the two graders run different versions: " + "; ".join(mismatched))
    check_course_broker()
    tmp = Path(tempfile.mkdtemp(prefix="curso-vs-nbgrader-"))
    course = None
    try:
        subs = tmp / "entregas"
        synthetic_class(subs, args.students)
        students = {p.name: p / NAME for p in sorted(subs.iterdir())}
        counts = {k: sum(kind_of(s) == k for s in students) for k in KINDS}

        course = NbgraderCourse(tmp / "nbgrader", venv, students)
        prep_started = time.perf_counter()
        course.folder.mkdir()
        course.build()
        prep = time.perf_counter() - prep_started
        say(f"nbgrader course folder ready in {prep:.1f} s (generate_assignment included, not counted); "
            f"autograding {len(students)} notebooks ...")
        autograde_started = time.time()
        nbg_seconds = course.autograde()
        nbg_per = course.per_notebook()
        nbg_startup = course.first_start() - autograde_started
        nbg_scores = course.scores()
        course.drop_vhost()

        runs = {}
        for workers in sorted({1, default_workers()}) if args.workers2 else (1,):
            say(f"curso grade, {workers} worker(s) ...")
            runs[workers] = curso_grade(subs, tmp / f"resultados{workers}", workers)

        # ---- report
        print(f"class: {len(students)} notebooks ({counts['correct']} correct, {counts['partial']} partial, "
              f"{counts['blank']} blank), chapter 2")
        print(rate_line("nbgrader autograde (bare):", len(nbg_per), nbg_seconds, nbg_per))
        for workers, (summary, seconds, per, _) in runs.items():
            print(rate_line(f"curso grade (isolated, {workers} worker{'s' if workers > 1 else ''}):",
                            summary.graded, seconds, per, note=": triage, no kernel"))
        one = runs[1]
        nbg_rate = len(nbg_per) / nbg_seconds
        for workers, (summary, seconds, _, _) in runs.items():
            default = "; the default here" if workers == default_workers() else ""
            print(f"ratio curso/nbgrader ({workers} worker{'s' if workers > 1 else ''}{default}): "
                  f"{summary.graded / seconds / nbg_rate:.2f}x   (goal >= 2x)")
        executed = [s for s in students if kind_of(s) != "blank"]
        if executed and all(s in nbg_per and s in one[2] for s in executed):
            a = statistics.median(nbg_per[s] for s in executed)
            b = statistics.median(one[2][s] for s in executed)
            print(f"per executed notebook (correct + partial, both run a kernel), median: nbgrader {a:.2f} s, "
                  f"curso 1 worker {b:.2f} s = {a / b:.2f}x")
        print(f"fixed costs inside those totals: nbgrader's process start {nbg_startup:.1f} s before its first "
              "notebook; curso's grading broker start " +
              ", ".join(f"{r[3]:.1f} s ({w} worker{'s' if w > 1 else ''})" for w, r in runs.items()))

        rows, agree = [], True
        for student in students:
            nbg = nbg_scores.get(student, {}).get("score")
            cur = [float(r[0].grades.set_index("student").loc[student, "total"]) for r in runs.values()]
            same = nbg is not None and all(abs(c - nbg) < 1e-9 for c in cur)
            agree &= same
            rows.append((student, kind_of(student), nbg, cur, same))
        print(f"totals agree: {'yes' if agree else 'no'}")
        header = "  ".join(f"curso {w}w" for w in runs)
        print(f"  {'student':<9}{'kind':<9}{'nbgrader':>9}  {header}")
        for student, kind, nbg, cur, same in rows:
            print(f"  {student:<9}{kind:<9}{'-' if nbg is None else f'{nbg:g}':>9}  "
                  + "  ".join(f"{c:>8g}" for c in cur) + ("" if same else "   <- differs"))
        if not agree:
            exercises = list(fmt.exercises(fmt.read(ROOT / "exercises" / NAME)))
            print("  per exercise where they differ (nbgrader / curso 1 worker):")
            grades1 = runs[1][0].grades.set_index("student")
            for student, _, _, _, same in rows:
                if same:
                    continue
                cells = nbg_scores.get(student, {}).get("cells", {})
                nbg_ex = defaultdict(float)
                for grade_id, score in cells.items():
                    if grade_id.startswith("verificacao-"):
                        nbg_ex[exercise_of(grade_id)] += score or 0.0
                print(f"    {student}: " + ", ".join(f"{ex} {nbg_ex.get(ex, 0):g}/{float(grades1.loc[student, ex]):g}"
                                                     for ex in exercises))
        install = f"; nbgrader install {install_seconds:.0f} s, not counted" if install_seconds else ""
        print(f"nbgrader {NBGRADER_VERSION}; whole benchmark {time.perf_counter() - bench_started:.0f} s{install}"
              + (f"; course folder kept in {tmp}" if args.keep else ""))
    finally:
        if course is not None:
            kill_leftovers(course.runtime, course.suffix)
            course.drop_vhost()
        if args.keep:
            say(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=9, help="notebooks in the synthetic class (default 9)")
    parser.add_argument("--keep", action="store_true", help="keep the course folder and results for inspection")
    parser.add_argument("--no-2-workers", dest="workers2", action="store_false",
                        help="skip the extra curso grade run with curso grade's default workers")
    args = parser.parse_args()
    if args.students < 1:
        parser.error("--students must be at least 1")

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
