"""`curso grade` end to end on a class of fixture submissions (tests/fixtures/submissions.py): each
bad input gets a status and a reason, none crashes the run or touches another student's result;
solutions get full marks, blank exercises zero; re-runs skip what is done; a killed run keeps
what it finished."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from course_utils.grading.gradebroker import GradingBroker
from course_utils.grading.grade import GradeOptions, GradingRefused, grade

from fixtures import submissions as fixture

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def rows_by(out: Path) -> dict[tuple[str, str], dict]:
    rows = {}
    for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rows[(row["student"], row["exercise"])] = row
    return rows


@pytest.fixture(scope="session")
def grading_broker(course_broker):
    """One grading node per test worker, shared by the tests that don't test its life cycle."""
    broker = GradingBroker().start()
    yield broker
    broker.stop()


CHAPTERS = sorted(p.name[:2] for p in (ROOT / "exercises").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="session")
def class_run(tmp_path_factory, grading_broker):
    base = tmp_path_factory.mktemp("turma")
    subs, out = base / "entregas", base / "resultados"
    subs.mkdir()
    expected = fixture.build(subs)
    os.environ[fixture.CANARY] = "1"  # in the grader's environment only: no kernel may see it
    try:
        summary = grade(GradeOptions(submissions=subs, out=out, exercises_dir=ROOT / "exercises", only=("02",),
                                     workers=2, cell_timeout=20, timeout=300, progress=False), grading_broker)
    finally:
        os.environ.pop(fixture.CANARY, None)
    return subs, out, expected, summary


def _every_bad_input_gets_its_status(class_run):
    _, out, expected, _ = class_run
    rows = rows_by(out)
    got = {(student, ex): rows[(student, ex)]["status"] for student, exs in expected.items() for ex in exs}
    want = {(student, ex): status for student, exs in expected.items() for ex, status in exs.items()}
    assert got == want
    for (student, ex), status in want.items():
        if status != "passed":
            assert rows[(student, ex)]["reason"], f"{student} {ex}: a {status} needs a reason"


def _reasons_say_what_happened(class_run):
    _, out, _, _ = class_run
    rows = rows_by(out)
    assert "não é um caderno" in rows[("json_quebrado", "2.1")]["reason"]
    assert "outro capítulo" in rows[("outro_capitulo", "2.1")]["reason"]
    assert "passou de 20 s" in rows[("trava", "2.1")]["reason"]
    assert "kernel morreu" in rows[("os_exit", "2.2")]["reason"]
    assert "conferido pelo corretor" in rows[("trapaca_verificar", "2.1")]["reason"]
    assert "não entregue" in rows[("nao_entregou", "2.1")]["reason"]


def _solutions_get_full_marks_and_blank_gets_zero(class_run):
    _, out, _, summary = class_run
    with open(out / "grades.csv", newline="") as f:
        grades = {row["student"]: row for row in csv.DictReader(f)}
    assert float(grades["perfeito"]["total"]) == float(grades["perfeito"]["max"]) == 5.0
    assert float(grades["zipado"]["total"]) == 5.0
    assert float(grades["em_branco"]["total"]) == 0.0
    for cheat in ("check_editado", "nbval_skip", "trapaca_verificar", "trapaca_traceback"):
        assert float(grades[cheat]["total"]) == 0.0, cheat
    assert float(grades["fuga"]["total"]) == 4.0  # lost 2.1 (every escape refused), nothing else


def _outputs_are_written(class_run):
    _, out, expected, summary = class_run
    assert (out / "summary.png").stat().st_size > 1000
    for student in expected:
        text = (out / "feedback" / f"{student}.md").read_text(encoding="utf-8")
        assert text.startswith(f"# Correção — {student}")
    assert "Exercício 2.2" in (out / "feedback" / "trapaca_verificar.md").read_text(encoding="utf-8")
    assert "perfeito" in summary.table()
    lms = list(csv.DictReader((out / "lms.csv").open(encoding="utf-8")))
    assert {r["student_id"] for r in lms} == set(expected)
    assert next(r for r in lms if r["student_id"] == "perfeito")["total"] == "5"
    for student in expected:
        results = json.loads((out / "gradescope" / student / "results.json").read_text(encoding="utf-8"))
        assert sorted(t["number"] for t in results["tests"]) == ["2.1", "2.2", "2.3"]
    perfect = json.loads((out / "gradescope" / "perfeito" / "results.json").read_text(encoding="utf-8"))
    assert perfect["score"] == 5.0 and all(t["status"] == "passed" for t in perfect["tests"])


def test_one_class_run(class_run):
    """The class is graded once (about 3 min); every property of that run is checked on it."""
    _every_bad_input_gets_its_status(class_run)
    _reasons_say_what_happened(class_run)
    _solutions_get_full_marks_and_blank_gets_zero(class_run)
    _outputs_are_written(class_run)


def test_grading_broker_is_locked_down(course_broker):
    with GradingBroker() as broker:
        users = {u["name"] for u in broker.admin.users()}
        assert "guest" not in users and users == {"grader-admin"}
        assert "default_pass" not in (broker.node.base_dir / "rabbitmq.conf").read_text()
        space = broker.space("teste")
        perms = broker.admin.get(f"users/{space.user}/permissions")
        assert [p["vhost"] for p in perms] == [space.vhost]
        broker.drop(space)
        assert space.user not in {u["name"] for u in broker.admin.users()}
        assert space.vhost not in {v["name"] for v in broker.admin.vhosts()}


@pytest.fixture
def host_port():
    """A TCP port listening on the grading machine's own loopback, outside any namespace."""
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()[1]
    server.close()


def _grade_probe(tmp_path, broker, port, **extra) -> dict:
    subs, out = tmp_path / "entregas", tmp_path / "resultados"
    fixture.write_confinement_probe(subs / "sonda", port)
    grade(GradeOptions(submissions=subs, out=out, exercises_dir=ROOT / "exercises", only=("02",),
                       progress=False, **extra), broker)
    return rows_by(out)


def test_graded_kernel_reaches_only_its_grading_broker(tmp_path, grading_broker, host_port):
    """Confined, a graded answer cell can neither log in as guest to the course brokers (running
    now) nor open a TCP connection to any other local port, and it still reaches its own broker."""
    if not grading_broker.confined:
        pytest.skip(f"sem isolamento aqui: {grading_broker.unconfined_reason}")
    rows = _grade_probe(tmp_path, grading_broker, host_port)
    assert rows[("sonda", "2.1")]["status"] == "passed", rows[("sonda", "2.1")]


def test_unconfined_grading_refuses_next_to_a_guest_broker(tmp_path, course_broker, host_port):
    """The same probe, graded without the namespace: it reaches the course broker (so the test above
    can fail), and without the explicit flag the grader refuses to start."""
    broker = GradingBroker(confine=False).start()
    try:
        with pytest.raises(GradingRefused, match="guest.*--aceitar-broker-guest"):
            _grade_probe(tmp_path / "recusa", broker, host_port)
        rows = _grade_probe(tmp_path / "aceito", broker, host_port, allow_guest_broker=True)
        assert rows[("sonda", "2.1")]["status"] == "failed", rows[("sonda", "2.1")]
    finally:
        broker.stop()


def test_what_a_graded_notebook_started_dies_after_it(tmp_path, grading_broker):
    """A process a student's notebook started in a session of its own (a Celery worker, a server,
    as course_utils.background starts them) and that ignores SIGTERM is killed after the notebook."""
    subs, out, pidfile = tmp_path / "entregas", tmp_path / "resultados", tmp_path / "teimoso.pid"
    fixture.write_leaver(subs / "teimoso", pidfile)
    grade(GradeOptions(submissions=subs, out=out, exercises_dir=ROOT / "exercises", only=("02",),
                       progress=False), grading_broker)
    assert rows_by(out)[("teimoso", "2.1")]["status"] == "passed"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    alive = Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not alive, "a process the graded notebook started outlived it"


def test_rerun_skips_and_force_regrades(tmp_path, grading_broker):
    subs, out = tmp_path / "entregas", tmp_path / "resultados"
    (subs / "um").mkdir(parents=True)
    (subs / "um" / fixture.NAME).write_bytes((ROOT / "exercises" / fixture.NAME).read_bytes())
    options = GradeOptions(submissions=subs, out=out, exercises_dir=ROOT / "exercises", only=("02",),
                           progress=False)
    first = grade(options, grading_broker)
    assert (first.graded, first.skipped) == (1, 0)
    again = grade(options, grading_broker)
    assert (again.graded, again.skipped) == (0, 1)
    options.force = True
    forced = grade(options, grading_broker)
    assert (forced.graded, forced.skipped) == (1, 0)


def test_killed_run_keeps_finished_results(tmp_path, grading_broker):
    subs, out = tmp_path / "entregas", tmp_path / "resultados"
    for student in ("a1", "a2", "a3"):
        (subs / student).mkdir(parents=True)
        (subs / student / fixture.NAME).write_bytes((ROOT / "solutions" / fixture.NAME).read_bytes())
    cmd = [sys.executable, "-m", "course_utils.cli", "grade", str(subs), "--out", str(out),
           "--exercises", str(ROOT / "exercises"), "--only", "02", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (results.exists() and results.read_text().count("\n") >= 3):
        time.sleep(0.2)
    kernels = _kernels_of(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {json.loads(line)["student"] for line in results.read_text().splitlines()}
    assert finished and len(finished) < 3, "the kill should land mid-run"
    assert len(kernels) >= 2, "the grader had its fork server and a kernel running when it was killed"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in kernels):
        time.sleep(0.2)
    assert not [pid for pid in kernels if Path(f"/proc/{pid}").exists()], "a killed grader left kernels running"
    resumed = grade(GradeOptions(submissions=subs, out=out, exercises_dir=ROOT / "exercises", only=("02",),
                                 progress=False), grading_broker)
    assert resumed.skipped == len(finished) and resumed.graded == 3 - len(finished)
    assert list(resumed.grades["total"]) == [5.0, 5.0, 5.0]


def _processes_in(folder: Path) -> list[int]:
    """Pids of the processes whose working directory is inside `folder` (a kernel runs in its job's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_node_that_never_boots_grades_nothing_and_leaves_nothing(tmp_path, monkeypatch):
    """The kernels are forked while the node boots; if it never answers, grade() raises, records no
    result (a re-run grades everything) and no kernel outlives it."""
    import tempfile

    from course_utils.errors import BrokerStartError

    subs, out, jobs = tmp_path / "entregas", tmp_path / "resultados", tmp_path / "jobs"
    jobs.mkdir()
    for student in ("b1", "b2"):
        (subs / student).mkdir(parents=True)
        (subs / student / fixture.NAME).write_bytes((ROOT / "solutions" / fixture.NAME).read_bytes())

    forked = []

    def never_boots(self, timeout: float = 90.0):
        self.open()
        deadline = time.monotonic() + 60  # the fork server's imports come first: seconds on a loaded machine
        while time.monotonic() < deadline and not forked:
            time.sleep(0.2)
            forked.extend(_processes_in(jobs))
        raise BrokerStartError("o nó de correção não subiu (teste)")

    monkeypatch.setattr(GradingBroker, "start", never_boots)
    monkeypatch.setattr(tempfile, "tempdir", str(jobs))  # the kernels' folders, named in their environment
    with pytest.raises(BrokerStartError, match="não subiu"):
        grade(GradeOptions(submissions=subs, out=out, exercises_dir=ROOT / "exercises", only=("02",),
                           workers=2, progress=False))
    assert forked, "no kernel was forked while the node booted"
    results = out / "results.jsonl"
    assert not results.exists() or not results.read_text().strip(), results.read_text()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _processes_in(jobs):
        time.sleep(0.2)
    assert not _processes_in(jobs), "kernels forked while the node booted outlived the run"
    assert not list(jobs.iterdir()), "the kernels' scratch folders were left behind"


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        if any(line.split()[1:2] == [str(parent)] for line in status.splitlines() if line.startswith("PPid:")):
            found.append(int(entry.name))
    return found


def _kernels_of(grader: int) -> list[int]:
    """Pids of the grader's fork server (course_utils.grading.forkserver) and of the kernels it forked."""
    def is_forkserver(pid: int) -> bool:
        try:
            return b"course_utils.grading.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    servers = [pid for pid in _children(grader) if is_forkserver(pid)]
    return servers + [pid for server in servers for pid in _children(server)]


@pytest.mark.parametrize("chapter", [pytest.param(c, marks=pytest.mark.chapter(c)) for c in CHAPTERS])
def test_committed_solutions_get_full_marks(tmp_path, grading_broker, chapter):
    """Every chapter's solutions, graded on the 3.10 grading node, get full marks; this is also the
    solutions' 3.10 run (test_notebooks runs them on 4.x). Blank exercises getting zero is shown per
    check by test_exercises.test_blank_exercises_fail_every_check and through the grader by the
    class run (its blank student), so it is not graded again here."""
    subs, out = tmp_path / "entregas", tmp_path / "resultados"
    (subs / "solucoes").mkdir(parents=True)
    for path in (ROOT / "solutions").glob(f"{chapter}_*.ipynb"):
        (subs / "solucoes" / path.name).write_bytes(path.read_bytes())
    # Chapter 8's set-up cell boots the student's 3-node cluster: in the suite it may also wait for
    # a boot slot while other tests' clusters boot (course_utils.cluster.start_slot).
    cell_timeout = 240.0 if chapter == "08" else GradeOptions.cell_timeout
    summary = grade(GradeOptions(submissions=subs, out=out, exercises_dir=ROOT / "exercises", only=(chapter,),
                                 workers=2, progress=False, cell_timeout=cell_timeout), grading_broker)
    grades = summary.grades.set_index("student")
    rows = rows_by(out)
    assert rows, f"chapter {chapter}: nothing was graded"
    failing = {k: (r["status"], r["reason"]) for k, r in rows.items() if r["status"] != "passed"}
    assert not failing, failing
    assert grades.loc["solucoes", "total"] == grades.loc["solucoes", "max"] > 0
