"""Rebuild a submitted notebook from the canonical exercise notebook.

Everything comes from `exercises/` except the student's answers: each canonical answer cell is
replaced by the student's answer cell(s) for that exercise (matched by the exercise id in the cell
metadata, or else by the cell id the notebook was handed out with), followed by any code cells the
student added right after it. Check cells, statements and the set-up cell are the canonical ones,
so an edited check, a deleted check or an added `# NBVAL_SKIP` or `raises-exception` tag changes
nothing. A first cell that caps the kernel's output is added for the grading run.

`rebuild` is a pipeline of small steps, each one job (like nbgrader's preprocessors), each
unit-tested on a tiny notebook in tests/test_rebuild.py:
`check_chapter` → `collect_answers` (with `strip_markers`) → `splice_answers` → `with_prelude` →
`unique_ids` → `index_cells`.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import nbformat

from ..exercises import metadata as fmt
from ..exercises.build import PLACEHOLDER

_NBVAL_MARKER = re.compile(r"^\s*#\s*NBVAL_\w+.*$", re.MULTILINE)
PRELUDE_ID = "curso-grader-prelude"


class InvalidSubmission(ValueError):
    """The submission cannot be graded at all (the reason is in pt-BR)."""


@dataclass
class Rebuilt:
    notebook: nbformat.NotebookNode
    answered: dict[str, bool] = field(default_factory=dict)  # exercise -> the student wrote something
    answer_cells: dict[int, str] = field(default_factory=dict)  # code index -> exercise
    check_cells: dict[int, tuple[str, float]] = field(default_factory=dict)  # code index -> (exercise, points)


def read_submission(content: bytes) -> nbformat.NotebookNode:
    try:
        nb = nbformat.reads(content.decode("utf-8"), as_version=4)
    except UnicodeDecodeError as exc:
        raise InvalidSubmission("o arquivo não é texto UTF-8 (não é um caderno Jupyter)") from exc
    except Exception as exc:  # nbformat raises several kinds for broken JSON
        raise InvalidSubmission(f"o arquivo não é um caderno Jupyter válido ({exc.__class__.__name__})") from exc
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        raise InvalidSubmission(f"o caderno não passa na validação do formato Jupyter: {str(exc).splitlines()[0]}") from exc
    return nb


def strip_markers(cell) -> nbformat.NotebookNode:
    """A copy of `cell` without nbval markers (`# NBVAL_...` lines, tags, nbval metadata) or outputs."""
    cell = copy.deepcopy(cell)
    cell.source = _NBVAL_MARKER.sub("", cell.source)
    cell.metadata.pop("tags", None)
    cell.metadata.pop("nbval", None)
    cell.outputs = []
    cell.execution_count = None
    return cell


def _as_answer(cell, exercise: str) -> nbformat.NotebookNode:
    cell = strip_markers(cell)
    cell.metadata[fmt.KEY] = {"role": "answer", "exercise": exercise}
    return cell


def _canonical_answer_ids(canonical) -> dict[str, str]:
    """cell id -> exercise, for the canonical answer cells (a student's notebook keeps those ids)."""
    return {c["id"]: fmt.exercise_id(c) for c in canonical.cells if fmt.role(c) == "answer" and c.get("id")}


def check_chapter(canonical, student) -> None:
    """Refuse a notebook whose exercises are all of another chapter (InvalidSubmission, pt-BR)."""
    expected = set(fmt.exercises(canonical))
    found = {fmt.exercise_id(c) for c in student.cells if fmt.role(c) in ("answer", "check")}
    if found and not found & expected:
        raise InvalidSubmission(
            f"este caderno tem os exercícios {', '.join(sorted(found))}, não os de "
            f"{', '.join(sorted(expected))}: é de outro capítulo, entregue com o nome errado?")


def collect_answers(canonical, student) -> dict[str, list]:
    """exercise -> the student's answer cells plus the code cells they added after each, cleaned
    (`strip_markers`) and marked as answers. An answer cell is found by its metadata, or else by
    the id of the canonical answer cell it was handed out as."""
    canonical_ids = _canonical_answer_ids(canonical)
    answers: dict[str, list] = {}
    current: str | None = None
    for cell in student.cells:
        exercise = None
        if cell.cell_type == "code":
            if fmt.role(cell) == "answer":
                exercise = fmt.exercise_id(cell)
            elif not fmt.meta(cell) and cell.get("id") in canonical_ids:
                exercise = canonical_ids[cell["id"]]
        if exercise:
            current = exercise
            answers.setdefault(exercise, []).append(_as_answer(cell, exercise))
        elif cell.cell_type == "code" and not fmt.meta(cell) and current and cell.get("id") not in canonical_ids:
            answers[current].append(_as_answer(cell, current))  # a helper cell added after an answer
        elif fmt.meta(cell) or cell.cell_type == "markdown" or cell.get("id") in canonical_ids:
            current = None
    return answers


def splice_answers(canonical, answers: dict[str, list]) -> tuple[list, dict[str, bool]]:
    """The canonical cells with each answer cell replaced by the student's cells for it (the
    canonical placeholder where they gave none), and exercise -> whether they wrote something."""
    cells, answered = [], {}
    for cell in canonical.cells:
        if fmt.role(cell) == "answer":
            exercise = fmt.exercise_id(cell)
            theirs = answers.get(exercise)
            placeholder = PLACEHOLDER.format(id=exercise)
            answered[exercise] = bool(theirs) and any(placeholder not in c.source and c.source.strip() for c in theirs)
            cells.extend(theirs or [copy.deepcopy(cell)])
        else:
            cells.append(copy.deepcopy(cell))
    return cells, answered


def prelude_cell(max_output_bytes: int) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(
        f"from course_utils.grading.prelude import install\ninstall(max_output_bytes={max_output_bytes})")
    cell["id"] = PRELUDE_ID
    return cell


def with_prelude(cells: list, max_output_bytes: int) -> list:
    """The cells after a first cell that caps the kernel's output."""
    return [prelude_cell(max_output_bytes), *cells]


def unique_ids(cells: list) -> list:
    """Every cell with an id, none twice (a student's copied cells repeat ids): duplicates renamed."""
    for i, cell in enumerate(cells):
        if not cell.get("id") or sum(1 for c in cells if c.get("id") == cell.get("id")) > 1:
            cell["id"] = f"g{i:03d}"
    return cells


def index_cells(cells: list) -> tuple[dict[int, str], dict[int, tuple[str, float]]]:
    """(code index -> exercise of each answer cell, code index -> (exercise, points) of each check
    cell), code indices counting code cells only, as nbval numbers them."""
    answer_cells, check_cells = {}, {}
    code_index = -1
    for cell in cells:
        if cell.cell_type != "code":
            continue
        code_index += 1
        if fmt.role(cell) == "check":
            check_cells[code_index] = (fmt.exercise_id(cell), float(fmt.meta(cell).get("points", 1)))
        elif fmt.role(cell) == "answer":
            answer_cells[code_index] = fmt.exercise_id(cell)
    return answer_cells, check_cells


def rebuild(canonical, student, max_output_bytes: int = 200_000) -> Rebuilt:
    check_chapter(canonical, student)
    cells, answered = splice_answers(canonical, collect_answers(canonical, student))
    cells = unique_ids(with_prelude(cells, max_output_bytes))
    out = copy.deepcopy(canonical)
    out.cells = cells
    answer_cells, check_cells = index_cells(cells)
    return Rebuilt(out, answered, answer_cells, check_cells)
