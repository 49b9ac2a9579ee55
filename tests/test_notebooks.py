"""Every chapter, solutions and docs notebook runs top to bottom under `pytest --nbval-lax` against
the live broker — twice in a row, with the same result (the chapter sandbox starts clean)."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from course_utils.exercises.runner import run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("solutions/*.ipynb"), *ROOT.glob("docs/*.ipynb")])


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS])
def test_notebook_runs_twice_clean(course_broker, path):
    first = run_notebook(path, cell_timeout=300, timeout=1500)
    failed = {i: first.cells[i].error for i in first.failed()}
    assert not first.timed_out and not failed, f"{path.name}: cells failed on the first run: {failed}\n{first.output[-3000:]}"
    assert first.cells, f"{path.name}: nbval ran no cell\n{first.output[-2000:]}"
    second = run_notebook(path, cell_timeout=300, timeout=1500)
    assert second.statuses() == first.statuses(), f"{path.name}: the second run differs: {second.statuses()}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(str(path), as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; strip them (jupyter nbconvert --clear-output)"
