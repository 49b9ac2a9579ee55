"""Rebuild a submitted notebook from the canonical exercise notebook.

Everything comes from `exercises/` except the student's answers: each canonical answer cell is
replaced by the student's answer cell(s) for that exercise (matched by the exercise id in the cell
metadata, or else by the cell id the notebook was handed out with), followed by any code cells the
student added right after it. Check cells, statements and the set-up cell are the canonical ones,
so an edited check, a deleted check or an added `# NBVAL_SKIP` or `raises-exception` tag changes
nothing. A first cell that caps the kernel's output is added for the grading run.
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


def _clean(cell) -> nbformat.NotebookNode:
    cell = copy.deepcopy(cell)
    cell.source = _NBVAL_MARKER.sub("", cell.source)
    cell.metadata.pop("tags", None)
    cell.metadata.pop("nbval", None)
    cell.outputs = []
    cell.execution_count = None
    return cell


def _as_answer(cell, exercise: str) -> nbformat.NotebookNode:
    cell = _clean(cell)
    cell.metadata[fmt.KEY] = {"role": "answer", "exercise": exercise}
    return cell


def _student_answers(student, canonical_ids: dict[str, str]) -> dict[str, list]:
    """exercise -> the student's answer cells plus the code cells they added after each."""
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


def prelude_cell(max_output_bytes: int) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(
        f"from course_utils.grading.prelude import install\ninstall(max_output_bytes={max_output_bytes})")
    cell["id"] = PRELUDE_ID
    return cell


def rebuild(canonical, student, max_output_bytes: int = 200_000) -> Rebuilt:
    canonical_ids = {c["id"]: fmt.exercise_id(c) for c in canonical.cells
                     if fmt.role(c) == "answer" and c.get("id")}
    expected = set(fmt.exercises(canonical))
    answers = _student_answers(student, canonical_ids)
    found = {fmt.exercise_id(c) for c in student.cells if fmt.role(c) in ("answer", "check")}
    if found and not found & expected:
        raise InvalidSubmission(
            f"este caderno tem os exercícios {', '.join(sorted(found))}, não os de "
            f"{', '.join(sorted(expected))}: é de outro capítulo, entregue com o nome errado?")

    out = copy.deepcopy(canonical)
    cells = [prelude_cell(max_output_bytes)]
    rebuilt = Rebuilt(out)
    for cell in canonical.cells:
        if fmt.role(cell) == "answer":
            exercise = fmt.exercise_id(cell)
            theirs = answers.get(exercise)
            placeholder = PLACEHOLDER.format(id=exercise)
            rebuilt.answered[exercise] = bool(theirs) and any(
                placeholder not in c.source and c.source.strip() for c in theirs)
            cells.extend(theirs or [copy.deepcopy(cell)])
        else:
            cells.append(copy.deepcopy(cell))
    for i, cell in enumerate(cells):
        if not cell.get("id") or sum(1 for c in cells if c.get("id") == cell.get("id")) > 1:
            cell["id"] = f"g{i:03d}"
    out.cells = cells

    code_index = -1
    for cell in cells:
        if cell.cell_type != "code":
            continue
        code_index += 1
        if fmt.role(cell) == "check":
            rebuilt.check_cells[code_index] = (fmt.exercise_id(cell), float(fmt.meta(cell).get("points", 1)))
        elif fmt.role(cell) == "answer":
            rebuilt.answer_cells[code_index] = fmt.exercise_id(cell)
    return rebuilt
