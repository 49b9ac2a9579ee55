"""The exercise notebook format (docs/authoring.md, "Exercise metadata").

Every exercise cell carries `metadata["curso"]`:

    {"role": "statement", "exercise": "2.1"}               markdown: what to do
    {"role": "answer",    "exercise": "2.1"}               code: the learner's answer
    {"role": "check",     "exercise": "2.1", "points": 2}  code: the check (from exercises/ when graded)

In `solutions/`, the answer lives between `### BEGIN SOLUTION` and `### END SOLUTION` lines; the
build replaces each such region by a placeholder that raises NotImplementedError with a hint.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import nbformat

KEY = "curso"
ROLES = ("statement", "answer", "check")
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
EXERCISE_ID = re.compile(r"^\d{1,2}\.\d{1,2}$")
NOTEBOOK_NAME = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")


class FormatError(ValueError):
    """A solutions notebook that breaks the format (caught by `curso exercises build`)."""


def meta(cell) -> dict:
    return cell.get("metadata", {}).get(KEY) or {}


def role(cell) -> str | None:
    return meta(cell).get("role")


def exercise_id(cell) -> str | None:
    return meta(cell).get("exercise")


@dataclass(frozen=True)
class CheckCell:
    exercise: str
    points: float
    cell_index: int        # index among all cells
    code_index: int        # index among code cells (nbval's "Cell N")


def check_cells(nb) -> list[CheckCell]:
    out, code_index = [], -1
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            code_index += 1
        if role(cell) == "check":
            out.append(CheckCell(exercise_id(cell), float(meta(cell).get("points", 1)), i, code_index))
    return out


def exercises(nb) -> dict[str, float]:
    """Exercise id -> total points of its check cells, in notebook order."""
    totals: dict[str, float] = {}
    for check in check_cells(nb):
        totals[check.exercise] = totals.get(check.exercise, 0) + check.points
    return totals


def validate(nb, name: str = "notebook") -> None:
    """Raise FormatError when a solutions notebook breaks the format."""
    seen_answer: set[str] = set()
    for i, cell in enumerate(nb.cells):
        m = meta(cell)
        if not m:
            continue
        where = f"{name}, célula {i}"
        if m.get("role") not in ROLES:
            raise FormatError(f"{where}: role {m.get('role')!r} não é um de {ROLES}")
        if not EXERCISE_ID.match(str(m.get("exercise", ""))):
            raise FormatError(f"{where}: exercise {m.get('exercise')!r} não tem a forma 'N.M'")
        if m["role"] in ("answer", "check") and cell.cell_type != "code":
            raise FormatError(f"{where}: uma célula {m['role']} tem de ser de código")
        if m["role"] == "answer":
            seen_answer.add(m["exercise"])
            if cell.source.count(BEGIN) != cell.source.count(END) or BEGIN not in cell.source:
                raise FormatError(f"{where}: a resposta precisa de pares '{BEGIN}' / '{END}'")
        if m["role"] == "check":
            if m["exercise"] not in seen_answer:
                raise FormatError(f"{where}: verificação de {m['exercise']} antes da célula de resposta")
            if not isinstance(m.get("points", 1), (int, float)) or m.get("points", 1) <= 0:
                raise FormatError(f"{where}: points tem de ser um número positivo")
            if BEGIN in cell.source:
                raise FormatError(f"{where}: uma verificação não pode ter solução")


def read(path) -> "nbformat.NotebookNode":
    return nbformat.read(str(path), as_version=4)
