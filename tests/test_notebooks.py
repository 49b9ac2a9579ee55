"""Every chapter, solutions and docs notebook runs top to bottom under `pytest --nbval-lax`, on both
broker versions: the default course broker (RabbitMQ 3.10 on Debian 12) and the RabbitMQ 4.x one
(`CURSO_BROKER=4`, Debian 13's 4.0 configured with 4.3's defaults).

A lesson (notebooks/, docs/) runs first on 3.10, then again from the top on 4.x, and both runs must
give the same result: the second run proves that running a notebook again starts clean (the
sandbox recreates its vhost; whatever lives outside it, throwaway nodes, folders, processes, is on
the same machine for both runs) and that the lesson holds on 4.x. For chapters 3 and 5 the second
run is the learner's: cell by cell with pauses, under nbclient (tests/learner_run.py), where time
between cells changes what happens. A solution notebook runs here on
4.x, as a learner runs it; on 3.10 it runs under `curso grade` (tests/test_grading.py grades every
chapter's solutions on a 3.10 grading node and wants full marks), so it is not run a third time.
Under the suite each notebook gets vhosts of its own (CURSO_VHOST_SUFFIX, conftest)."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from course_utils.nbrun import clean, run_notebook
from learner_run import CHAPTERS as PAUSED, run_like_a_learner

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("docs/*.ipynb")])
SOLUTIONS = sorted(ROOT.glob("solutions/*.ipynb"))
ALL = sorted([*LESSONS, *SOLUTIONS])


def _param(path: Path):
    chapter = path.name[:2]
    marks = [pytest.mark.chapter(chapter)] if chapter.isdigit() else []
    return pytest.param(path, id=str(path.relative_to(ROOT)), marks=marks)


def _run(path: Path, version: str):
    env = dict(os.environ, CURSO_BROKER=version)
    env.pop("RABBITMQ_URL", None)
    return run_notebook(path, env=env, cell_timeout=300, timeout=1500)


def _expect_clean(run, path: Path, where: str) -> None:
    failed = {i: run.cells[i].error for i in run.failed()}
    # The first failed cell's whole message: an error's first line alone hid why a cluster did not join.
    first = clean(run.cells[min(failed)].message)[-4000:] if failed else ""
    assert not run.timed_out and not failed, (f"{path.name} on {where}: cells failed: {failed}\n"
                                              f"first failed cell:\n{first}\n{run.output[-3000:]}")
    assert run.cells, f"{path.name} on {where}: nbval ran no cell\n{run.output[-2000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("path", [_param(p) for p in LESSONS])
def test_lesson_runs_on_310_then_again_on_4x(course_broker, course_broker4, path, tmp_path, monkeypatch):
    first = _run(path, "")
    _expect_clean(first, path, f"RabbitMQ {course_broker.management().version()}")
    if str(path.relative_to(ROOT)) in PAUSED:
        monkeypatch.setenv("CURSO_BROKER", "4")
        problems, seconds = run_like_a_learner(path, tmp_path, monkeypatch)
        assert not problems, (f"{path.name} on RabbitMQ {course_broker4.management().version()}, second run, "
                              f"cell by cell with pauses ({seconds:.0f} s):\n" + "\n".join(problems))
        return
    second = _run(path, "4")
    _expect_clean(second, path, f"RabbitMQ {course_broker4.management().version()} (second run)")
    assert second.statuses() == first.statuses(), f"{path.name}: the second run differs: {second.statuses()}"


@pytest.mark.slow
@pytest.mark.parametrize("path", [_param(p) for p in SOLUTIONS])
def test_solution_notebook_runs_clean_on_4x(course_broker4, path):
    _expect_clean(_run(path, "4"), path, f"RabbitMQ {course_broker4.management().version()}")


@pytest.mark.parametrize("path", [_param(p) for p in ALL])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(str(path), as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; strip them (jupyter nbconvert --clear-output)"
