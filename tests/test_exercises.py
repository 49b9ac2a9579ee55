"""The exercise pipeline: build/check, blank exercises fail every check, wrong answers fail theirs,
solutions pass, and the broker-side half of each check (what the grader runs outside the learner's
kernel) catches every fault that shows in the broker."""
from __future__ import annotations

import gc
import os
import importlib.util
import shutil
from pathlib import Path

import nbformat
import pika
import pytest

from course_utils import setup
from course_utils.cli import main as curso_main
from course_utils.exercises import format as fmt
from course_utils.exercises.build import build_notebook
from course_utils.exercises.checks import CheckContext, get_exercise, verificar
from course_utils.exercises.runner import run_notebook

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "wrong_answers"
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def chapter_of(exercise: str) -> str:
    return f"{int(exercise.split('.')[0]):02d}"


def solution_path(chapter: str) -> Path:
    return next(p for p in SOLUTIONS if p.name.startswith(chapter + "_"))


def wrong_answers() -> list[tuple]:
    cases = []
    for path in sorted(FIXTURES.glob("cap*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for exercise, entries in module.WRONG.items():
            for description, source, broker_visible in entries:
                cases.append(pytest.param(exercise, source, broker_visible, id=f"{exercise}-{description}"))
    return cases


def all_exercises() -> list[str]:
    return [ex for path in SOLUTIONS for ex in fmt.exercises(fmt.read(path))]


def answer_source(exercise: str) -> str:
    nb = fmt.read(solution_path(chapter_of(exercise)))
    return next(c.source for c in nb.cells if fmt.role(c) == "answer" and fmt.exercise_id(c) == exercise)


@pytest.fixture
def sandbox(course_broker):
    curso = setup(f"teste-exercicios-{os.getpid()}")
    yield curso
    for leaked in [o for o in gc.get_objects() if isinstance(o, pika.BlockingConnection) and o.is_open]:
        leaked.close()
    curso.cleanup(delete_vhost=True)


def grader_view(exercise: str, curso, learner_ns: dict) -> None:
    """What the grader does around a check cell: snapshot, the kernel's part, then verify outside."""
    check = get_exercise(exercise)()
    ctx = CheckContext(curso, learner_ns)
    check.snapshot(ctx)
    try:
        check.run(ctx)
    except AssertionError:
        pass  # the kernel side may be faked by a hostile learner; the broker side must still judge
    check.verify(CheckContext(curso, None))


# --- format and build -------------------------------------------------------------------------

def test_solutions_follow_the_format():
    assert SOLUTIONS, "no solutions notebooks"
    for path in SOLUTIONS:
        nb = fmt.read(path)
        fmt.validate(nb, path.name)
        assert len(fmt.exercises(nb)) >= 3, f"{path.name}: fewer than three exercises"
        for exercise in fmt.exercises(nb):
            get_exercise(exercise)  # every check cell names a registered check


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

@pytest.mark.parametrize("exercise", all_exercises())
def test_solution_passes_its_check(sandbox, exercise, capsys):
    ns = {"pika": pika, "curso": sandbox}
    exec(answer_source(exercise), ns)
    verificar(exercise, sandbox, ns)
    assert f"Exercício {exercise} certo" in capsys.readouterr().out
    grader_view(exercise, sandbox, ns)


@pytest.mark.parametrize("exercise,source,broker_visible", wrong_answers())
def test_wrong_answer_fails_its_check(sandbox, exercise, source, broker_visible):
    ns = {"pika": pika, "curso": sandbox}
    exec(source, ns)
    with pytest.raises(AssertionError, match=f"Exercício {exercise}: "):
        verificar(exercise, sandbox, ns)
    if broker_visible:
        with pytest.raises(AssertionError):
            grader_view(exercise, sandbox, ns)


@pytest.fixture(scope="module")
def blank_runs(course_broker):
    runs = {}
    for path in SOLUTIONS:
        exercise_nb = ROOT / "exercises" / path.name
        runs[path.name] = (fmt.read(exercise_nb), run_notebook(exercise_nb, cell_timeout=60))
    return runs


@pytest.mark.parametrize("exercise", all_exercises())
def test_blank_exercise_fails_its_check(blank_runs, exercise):
    name = solution_path(chapter_of(exercise)).name
    nb, run = blank_runs[name]
    checks = [c for c in fmt.check_cells(nb) if c.exercise == exercise]
    assert checks
    for check in checks:
        outcome = run.cells[check.code_index]
        assert outcome.status == "failed", f"{exercise}: the blank check cell did not fail"
        assert outcome.error[0] == "AssertionError", f"{exercise}: failed with {outcome.error}, not a hint"
        assert outcome.error[1].startswith(f"Exercício {exercise}: ")
