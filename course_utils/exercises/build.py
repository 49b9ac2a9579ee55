"""Build exercises/ from solutions/ (the single source) and tell whether exercises/ is stale."""
from __future__ import annotations

import copy
import difflib
from pathlib import Path

import nbformat

from . import metadata as fmt

PLACEHOLDER = 'raise NotImplementedError("Exercício {id}: escreva sua resposta aqui (e apague esta linha).")'


def blank_answer(source: str, exercise: str) -> str:
    """Replace every BEGIN/END SOLUTION region by the placeholder, at the region's indentation."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith(fmt.BEGIN):
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + PLACEHOLDER.format(id=exercise))
        elif stripped.startswith(fmt.END):
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def build_notebook(solution, name: str = "notebook"):
    """The student version of a solutions notebook: answers blanked, outputs cleared."""
    fmt.validate(solution, name)
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            if fmt.role(cell) == "answer":
                cell.source = blank_answer(cell.source, fmt.exercise_id(cell))
        cell.metadata.pop("execution", None)
    nb.metadata.get("curso", {}).pop("solution", None)
    return nb


def render(nb) -> str:
    return nbformat.writes(nb).rstrip("\n") + "\n"


def planned(root: Path) -> dict[Path, str]:
    """exercises/<name> -> text it should have, for every solutions/<name>."""
    out = {}
    for path in sorted((root / "solutions").glob("*.ipynb")):
        if not fmt.NOTEBOOK_NAME.match(path.name):
            raise fmt.FormatError(f"{path.name}: o nome precisa ter a forma NN_assunto.ipynb")
        out[root / "exercises" / path.name] = render(build_notebook(fmt.read(path), path.name))
    return out


def build_all(root: Path) -> list[Path]:
    """Write exercises/ from solutions/; remove exercise notebooks with no solution. Returns what changed."""
    changed = []
    target = planned(root)
    (root / "exercises").mkdir(exist_ok=True)
    for path, text in target.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    for path in (root / "exercises").glob("*.ipynb"):
        if path not in target:
            path.unlink()
            changed.append(path)
    return changed


def stale(root: Path) -> list[str]:
    """Human-readable reasons why exercises/ does not match solutions/ (empty when up to date)."""
    reasons = []
    target = planned(root)
    for path, text in target.items():
        if not path.exists():
            reasons.append(f"{path.relative_to(root)}: falta (rode `curso exercises build`)")
        elif path.read_text(encoding="utf-8") != text:
            diff = difflib.unified_diff(path.read_text(encoding="utf-8").splitlines(), text.splitlines(),
                                        "committed", "built", lineterm="", n=0)
            first = [line for line in diff if line.startswith(("+", "-"))][2:6]
            reasons.append(f"{path.relative_to(root)}: desatualizado em relação a solutions/\n    " + "\n    ".join(first))
    for path in sorted((root / "exercises").glob("*.ipynb")):
        if path not in target:
            reasons.append(f"{path.relative_to(root)}: não tem solução correspondente em solutions/")
    return reasons
