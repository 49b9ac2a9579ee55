"""A lesson run the way a learner runs it in JupyterLab: one kernel, one cell at a time, with time
passing between cells.

nbval (tests/test_notebooks.py) runs the cells back to back, so nothing there notices what only time
does: a connection with a 1 s heartbeat that the broker drops while the learner reads (closing it
in the last cell then raised StreamLostError and the clean-up never ran), a measurement whose timer
spans two cells, a count that only holds on a fast machine. Here the notebook runs under nbclient
with a pause before its final clean-up cell (long enough for the broker to drop any connection
with a 1 s heartbeat), plus the few pauses and the slow-machine cell listed in `LEARNER`,
and the outputs are checked: no cell fails, no cell ends on a bare number (`channel.cancel()`
printing its `0`), no temporary folder is left behind, and the lines `EXPECT` names say what the
lesson says.

Only chapters 3 and 5 (`CHAPTERS`): chapters 1, 2 and 4 hold no short-heartbeat connection and no
timed claim across cells, so a paused run of each (20-40 s) would pay for nothing the nbval run
doesn't show. For those two, tests/test_notebooks.py makes this the lesson's second run, on 4.x
(after the nbval run on 3.10), so that the paused run costs no extra run of the notebook.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]

# A connection with a 1 s heartbeat that stays silent is dropped by the broker after 3-3.5 s, on
# 3.10 and on 4.0 alike (2 s: 6-6.5 s): the learner's pause before the last cell is longer than that.
FINAL_PAUSE = 5.0

# A loaded machine (the course's 2-core CI, a learner's laptop): every publisher confirm takes
# 100 ms. Run around chapter 3's TTL cell; the demo must still count what it says it counts.
SLOW_CONFIRMS = """\
_publicar_rapido = canal_confirmado.basic_publish
def _publicar_devagar(*args, **kwargs):
    _publicar_rapido(*args, **kwargs)
    time.sleep(0.1)
canal_confirmado.basic_publish = _publicar_devagar
"""
FAST_CONFIRMS = "canal_confirmado.basic_publish = _publicar_rapido"

# notebook -> {cell id: (seconds to wait before it, code to run before it, code to run after it)}
LEARNER = {
    "03_trocas_e_filas": {"c7447191": (0, SLOW_CONFIRMS, FAST_CONFIRMS)},  # 3.8 TTL and max-length
    "05_consumidores": {"d53d9d33": (3.0, "", "")},  # 5.6: reading between starting the workers and timing them
}


def _imagens(text: str) -> bool:
    found = re.search(r"(\d+) imagens em ([\d.,]+) s", text)
    return bool(found) and int(found.group(1)) == 30 and float(found.group(2).replace(",", ".")) < 30 * 0.1


# notebook -> {cell id: (what the lesson says, check of the cell's text output)}
EXPECT = {
    "03_trocas_e_filas": {
        "c7447191": ("right after publishing, all 5 quotes are in the TTL queue",
                     lambda text: "cotacoes agora: 5" in text),
    },
    "05_consumidores": {
        "d53d9d33": ("three threads take less than one thread would (30 x 0.1 s)", _imagens),
    },
}

CHAPTERS = ["notebooks/03_trocas_e_filas.ipynb", "notebooks/05_consumidores.ipynb"]


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.get("data", {}).get("text/plain", ""))
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
    return "\n".join(parts)


def _bare_number(cell) -> str | None:
    """The value a cell displays as its result when that value is a lone number (noise such as the
    0 that `channel.cancel()` returns)."""
    for output in cell.get("outputs", []):
        if output.output_type == "execute_result":
            value = output.get("data", {}).get("text/plain", "")
            if re.fullmatch(r"-?\d+(\.\d+)?", value.strip()):
                return value.strip()
    return None


def run_like_a_learner(path: Path, tmp_path: Path, monkeypatch) -> tuple[list[str], float]:
    """Run `path` cell by cell with the learner's pauses, in a kernel that inherits this process's
    environment (CURSO_BROKER included); (what went wrong, seconds)."""
    monkeypatch.delenv("RABBITMQ_URL", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    kernel_tmp = tmp_path / "tmp"  # the kernel's temporary folders, to see what it leaves behind
    kernel_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(kernel_tmp))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))

    stem = path.stem
    nb = nbformat.read(str(path), as_version=4)
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    learner = dict(LEARNER.get(stem, {}))
    last = nb.cells[code[-1]].id
    wait, before, after = learner.get(last, (0, "", ""))
    learner[last] = (max(wait, FINAL_PAUSE), before, after)

    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    failures: list[str] = []
    started = time.perf_counter()
    with client.setup_kernel():
        for index in code:
            cell = nb.cells[index]
            wait, before, after = learner.get(cell.id, (0, "", ""))
            time.sleep(wait)
            steps = [nbformat.v4.new_code_cell(before)] if before else []
            steps.append(cell)
            steps += [nbformat.v4.new_code_cell(after)] if after else []
            for target in steps:
                try:
                    client.execute_cell(target, index)
                except CellExecutionError:
                    failures.append(f"cell {cell.id} (code cell {code.index(index)}): {_text(target)[-1500:]}")
            nb.cells[index] = cell  # nbclient stores each executed cell at its index, extras included
    seconds = time.perf_counter() - started

    by_id = {cell.id: cell for cell in nb.cells}
    problems = [f"cells failed: {failure}" for failure in failures]
    noise = {cell_id: value for cell_id, cell in by_id.items()
             if cell.cell_type == "code" and (value := _bare_number(cell)) is not None}
    if noise:
        problems.append(f"cells end on a bare expression that prints a number: {noise}")
    for cell_id, (claim, check) in EXPECT.get(stem, {}).items():
        text = _text(by_id[cell_id])
        if not check(text):
            problems.append(f"cell {cell_id}: the lesson says {claim}, but it printed:\n{text}")
    left = sorted(p.name for p in kernel_tmp.iterdir() if p.name.startswith("curso-"))
    if left:
        problems.append(f"temporary folders left behind: {left}")
    return problems, seconds
