"""The exercise pipeline: build/check, blank exercises fail every check, wrong answers fail theirs,
solutions pass, and the broker-side half of each check (what the grader runs outside the learner's
kernel) catches every fault that shows in the broker. Each answer is judged in one pass, as the
grader does: what the learner is told and what the grader concludes come from the same run."""
from __future__ import annotations

import gc
import importlib.util
import itertools
import os
import re
import threading
import time
import shutil
from pathlib import Path

import nbformat
import pika
import pytest

from course_utils import setup
from course_utils.cli import main as curso_main
from course_utils.exercises import metadata as fmt
from course_utils.exercises.build import build_notebook
from course_utils.exercises import kit
from course_utils.exercises.checks import get_exercise, judge
from course_utils.nbrun import run_notebook

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "wrong_answers"
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


# Chapters whose checks run on a 3-node cluster (`curso.cluster()`): their tests share one cluster,
# started once on the one worker that runs them all (an xdist group), on the 4.x nodes (the
# solutions are graded on 3.10 nodes by test_grading). A cluster per test would boot 3 nodes each.
CLUSTER_CHAPTERS = {"08"}
CLUSTER_VERSION = "4"


def chapter_of(exercise: str) -> str:
    return f"{int(exercise.split('.')[0]):02d}"


def chapter_marks(chapter: str) -> list:
    marks = [pytest.mark.chapter(chapter)]
    if chapter in CLUSTER_CHAPTERS:
        marks.append(pytest.mark.xdist_group(f"cluster{chapter}"))
    return marks


def solution_path(chapter: str) -> Path:
    return next(p for p in SOLUTIONS if p.name.startswith(chapter + "_"))


def wrong_answers() -> list[tuple]:
    """Every fixture: (description, source, broker_visible[, hint pattern])."""
    cases = []
    for path in sorted(FIXTURES.glob("cap*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for exercise, entries in module.WRONG.items():
            for entry in entries:
                description, source, broker_visible, *hint = entry
                cases.append(pytest.param(exercise, source, broker_visible, hint[0] if hint else None,
                                          id=f"{exercise}-{description}",
                                          marks=chapter_marks(chapter_of(exercise))))
    return cases


def all_exercises() -> list[str]:
    return [ex for path in SOLUTIONS for ex in fmt.exercises(fmt.read(path))]


def answer_source(exercise: str) -> str:
    nb = fmt.read(solution_path(chapter_of(exercise)))
    return next(c.source for c in nb.cells if fmt.role(c) == "answer" and fmt.exercise_id(c) == exercise)


_SANDBOXES = itertools.count(1)


@pytest.fixture(scope="session")
def shared_cluster():
    """One 3-node cluster for every check of the cluster chapters on this worker (started on first
    use, closed at the end of the session)."""
    from course_utils.cluster import cluster

    running = []

    def get():
        if not running:
            running.append(cluster("teste-checks", versao=CLUSTER_VERSION))
        return running[0]

    yield get
    for c in running:
        c.close()


@pytest.fixture
def sandbox(course_broker, request, shared_cluster):
    """A vhost of its own for each test: statistics of a deleted vhost can reach a new one of the
    same name for a while, and must not leak from one test into the next. A cluster chapter's
    sandbox gets the worker's shared cluster (each check restores its nodes and recreates its queues)."""
    curso = setup(f"teste-ex-{os.getpid()}-{next(_SANDBOXES)}")
    mark = request.node.get_closest_marker("chapter")
    if mark is not None and mark.args and mark.args[0] in CLUSTER_CHAPTERS:
        curso.use_cluster(shared_cluster())
    yield curso
    for leaked in [o for o in gc.get_objects() if isinstance(o, pika.BlockingConnection) and kit.is_open(o)]:
        try:
            leaked.close()
        except Exception:  # noqa: BLE001 - a connection a wrong answer broke
            pass
    curso.cleanup(delete_vhost=True)


# --- format and build -------------------------------------------------------------------------

def test_solutions_follow_the_format():
    assert SOLUTIONS, "no solutions notebooks"
    for path in SOLUTIONS:
        nb = fmt.read(path)
        fmt.validate(nb, path.name)
        assert len(fmt.exercises(nb)) >= 3, f"{path.name}: fewer than three exercises"
        for exercise in fmt.exercises(nb):
            get_exercise(exercise)  # every check cell names a registered check
        # a notebook that boots its own cluster says so, so that the grader runs it alone
        boots_cluster = any(c.cell_type == "code" and "curso.cluster()" in c.source for c in nb.cells)
        assert boots_cluster == bool(nb.metadata.get("curso", {}).get("cluster")), path.name
        assert boots_cluster == (path.name[:2] in CLUSTER_CHAPTERS), path.name


def test_build_blanks_answers_and_keeps_checks():
    for path in SOLUTIONS:
        solution = fmt.read(path)
        built = build_notebook(solution, path.name)
        for before, after in zip(solution.cells, built.cells):
            if fmt.role(before) == "answer":
                assert fmt.BEGIN not in after.source and "NotImplementedError" in after.source
            else:
                assert before.source == after.source
            assert after.get("outputs", []) == []


def test_committed_exercises_are_up_to_date(capsys):
    assert curso_main(["exercises", "check", "--root", str(ROOT)]) == 0


def test_check_fails_after_solution_edited_without_rebuild(tmp_path, capsys):
    for folder in ("solutions", "exercises"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    assert curso_main(["exercises", "check", "--root", str(tmp_path)]) == 0
    edited = tmp_path / "solutions" / SOLUTIONS[0].name
    nb = fmt.read(edited)
    statement = next(c for c in nb.cells if fmt.role(c) == "statement")
    statement.source += "\n\nUma frase nova no enunciado."
    nbformat.write(nb, str(edited))
    assert curso_main(["exercises", "check", "--root", str(tmp_path)]) == 1
    assert "desatualizado" in capsys.readouterr().err
    assert curso_main(["exercises", "build", "--root", str(tmp_path)]) == 0
    assert curso_main(["exercises", "check", "--root", str(tmp_path)]) == 0


def test_malformed_solution_is_refused(tmp_path, capsys):
    (tmp_path / "solutions").mkdir()
    nb = fmt.read(SOLUTIONS[0])
    answer = next(c for c in nb.cells if fmt.role(c) == "answer")
    answer.source = answer.source.replace(fmt.END, "")
    nbformat.write(nb, str(tmp_path / "solutions" / SOLUTIONS[0].name))
    assert curso_main(["exercises", "build", "--root", str(tmp_path)]) == 2
    assert "BEGIN SOLUTION" in capsys.readouterr().err


# --- checks against the live broker ----------------------------------------------------------

@pytest.mark.parametrize("exercise", [pytest.param(e, marks=chapter_marks(chapter_of(e)))
                                      for e in all_exercises()])
def test_solution_passes_its_check(sandbox, exercise):
    ns = {"pika": pika, "curso": sandbox}
    exec(answer_source(exercise), ns)
    verdict = judge(exercise, sandbox, ns)
    assert verdict.learner is None, f"the solution failed in the kernel: {verdict.learner}"
    assert f"Exercício {exercise} certo" in verdict.output
    assert verdict.grader is None, f"the solution failed the grader's broker-side verify: {verdict.grader}"


@pytest.mark.parametrize("exercise,source,broker_visible,hint", wrong_answers())
def test_wrong_answer_fails_its_check(sandbox, exercise, source, broker_visible, hint):
    ns = {"pika": pika, "curso": sandbox}
    exec(source, ns)
    verdict = judge(exercise, sandbox, ns)
    assert verdict.learner is not None, "the wrong answer passed verificar()"
    message = str(verdict.learner)
    assert message.startswith(f"Exercício {exercise}: "), message
    if hint is not None:
        assert re.search(hint, message, re.IGNORECASE | re.DOTALL), f"the hint does not name the cause: {message}"
    if broker_visible:
        assert verdict.grader is not None, "the broker-side verify (the grader's) accepted the wrong answer"


CHAPTERS = sorted({chapter_of(e) for e in all_exercises()})


@pytest.mark.slow
@pytest.mark.parametrize("chapter", [pytest.param(c, marks=pytest.mark.chapter(c)) for c in CHAPTERS])
def test_blank_exercises_fail_every_check(course_broker, chapter):
    name = solution_path(chapter).name
    exercise_nb = ROOT / "exercises" / name
    nb = fmt.read(exercise_nb)
    # a cluster chapter's set-up cell boots 3 nodes, and may wait for a boot slot while other
    # tests' clusters boot
    run = run_notebook(exercise_nb, cell_timeout=240 if chapter in CLUSTER_CHAPTERS else 60)
    checks = fmt.check_cells(nb)
    assert checks, f"{name}: no check cells"
    for check in checks:
        outcome = run.cells.get(check.code_index)
        assert outcome is not None, f"{check.exercise}: nbval did not run the check cell\n{run.output[-2000:]}"
        assert outcome.status == "failed", (f"{check.exercise}: the blank check cell did not fail "
                                            f"({outcome.status}):\n{outcome.message[-3000:]}\n{run.output[-3000:]}")
        assert outcome.error[0] == "AssertionError", f"{check.exercise}: failed with {outcome.error}, not a hint"
        assert outcome.error[1].startswith(f"Exercício {check.exercise}: ")


def test_the_time_limit_outlasts_an_alarm_python_dropped():
    """A learner's call is cut by an alarm. Python drops an exception raised while it runs a
    finalizer or a weakref callback, and a learner's poison loop makes plenty of garbage: the alarm
    then repeats until the call ends (a one-shot alarm once let such a loop run until the suite's
    own timeout)."""
    from course_utils.exercises.kit import _Timeout, time_limit

    dropped, started = [], time.monotonic()
    with pytest.raises(_Timeout):
        with time_limit(0.2):
            while time.monotonic() - started < 5:
                try:
                    time.sleep(0.01)
                except _Timeout:
                    if dropped:
                        raise
                    dropped.append(time.monotonic() - started)  # as a finalizer would: printed, dropped
    assert dropped and time.monotonic() - started < 1.5, (dropped, time.monotonic() - started)


def test_the_kit_words_bodies_figures_and_amqp_errors_for_the_hints():
    from course_utils.exercises import phrases

    assert kit.body_text(b"pedido \xc3\xa9") == "pedido é" and kit.body_text(b"\xff") == "\ufffd"
    assert kit.body_text(7) == "7"
    assert kit.shown([b"a", "b"]) == "'a', 'b'"
    assert phrases.decimal(0.25, 2) == "0,25" and phrases.decimal(0.6) == "0,6" and phrases.decimal(None) == "0,0"
    closed = pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - unknown delivery tag 3")
    table = {"NOT_FOUND": "não achei", "unknown delivery tag": "ack duplicado"}
    assert kit.advice_in(table, closed) == "ack duplicado"
    assert kit.advice_in(table, RuntimeError("outra coisa")) is None


def test_settled_waits_a_whole_statistics_interval_before_judging_a_wrong_answer():
    """A collection pass may show the publishes and not yet the last confirm; settled() judges a
    'collected' value only once it has held for a statistics interval, so the next pass's confirm
    still counts. A right answer ('done') ends the wait at once."""
    from course_utils.exercises.checks import CheckContext

    ctx = CheckContext.__new__(CheckContext)
    ctx.stats_wait, ctx.stats_interval = 5.0, 0.6
    started = time.monotonic()

    def probe():  # (publishes, confirms): the third confirm shows 0.5 s later, in the next pass
        return (4, 2) if time.monotonic() - started < 0.5 else (4, 3)

    value = kit.settled(ctx, probe, done=lambda v: v[1] >= 3, collected=lambda v: v[0] >= 4)
    assert value == (4, 3)
    late = time.monotonic()
    value = kit.settled(ctx, lambda: (4, 2), done=lambda v: v[1] >= 3, collected=lambda v: v[0] >= 4)
    assert value == (4, 2) and 0.6 <= time.monotonic() - late < 2.0  # judged after one interval, not the whole wait
    early = time.monotonic()
    kit.settled(ctx, lambda: (4, 3), done=lambda v: v[1] >= 3, collected=lambda v: v[0] >= 4)
    assert time.monotonic() - early < 0.1


def test_counts_of_is_exact_and_names_a_missing_queue(sandbox):
    with sandbox.connect() as connection:
        channel = connection.channel()
        channel.queue_declare(queue="contadas", durable=True)
        channel.basic_publish(exchange="", routing_key="contadas", body=b"um")
        channel.basic_publish(exchange="", routing_key="contadas", body=b"dois")
    ctx = type("Ctx", (), {"curso": sandbox})()
    assert kit.counts_of(ctx, "contadas") == (2, 0)
    with pytest.raises(AssertionError, match="A fila 'sumida' não existe"):
        kit.counts_of(ctx, "sumida")


def test_drain_takes_every_message_exactly_and_waits_for_late_ones(sandbox):
    with sandbox.connect() as connection:
        channel = connection.channel()
        channel.queue_declare(queue="drenada", durable=True)
        for body in (b"um", b"dois"):
            channel.basic_publish(exchange="", routing_key="drenada", body=body,
                                  properties=pika.BasicProperties(message_id=body.decode()))
    late = threading.Timer(0.4, lambda: _publish_one(sandbox, "drenada", b"tres"))
    late.start()
    got = kit.drain(sandbox.connect(), "drenada", expected=3, wait=3.0)
    late.join()
    assert [body for _props, body in got] == [b"um", b"dois", b"tres"]
    assert got[0][0].message_id == "um"
    assert kit.drain(sandbox.connect(), "drenada") == []  # acked: nothing left
    assert kit.drain(sandbox.connect(), "sumida") == []


def _publish_one(sandbox, queue: str, body: bytes) -> None:
    with sandbox.connect() as connection:
        connection.channel().basic_publish(exchange="", routing_key=queue, body=body)
