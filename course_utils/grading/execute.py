"""Executing rebuilt notebooks for grading, in the grader's own process.

Each notebook gets a kernel of its own (`python -m course_utils.grading.kernel`: an ipykernel with
an address-space limit that dies with the grader's thread that started it), started with the
student's environment only (`kernel_env`) in a scratch folder, talking to the grader over
Unix-domain sockets (the `ipc` transport: nothing listens on TCP, and the grader reaches it from
any network namespace). nbclient runs the cells one by one; for every check cell the grader, not
the kernel, takes the exercise's `snapshot` before the cell and runs its broker-side `verify` after
it, with the student's own credentials, so whatever the kernel monkeypatched (`verificar`,
`AssertionError`, the traceback display), the verdict on the broker is the grader's.

A worker overlaps two notebooks: while one runs, the next one's student space is made and its
kernel starts (`Prepared`), so a kernel's start-up (1-2 s) is not paid between notebooks.
Each step is a small function: `prepare` → `run_cells` (with `_CheckHooks`) → `cleanup`.
"""
from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from ..broker import from_url, verify_login
from ..nbrun import CellOutcome, NotebookRun, kill_leftovers
from .gradebroker import GradingBroker, StudentSpace

DEAD = "Kernel dead (DeadKernelError): o kernel morreu"
STARTUP_TIMEOUT = 60


class _GradedKernelManager(AsyncKernelManager):
    """A KernelManager whose kernel command is the grader's launcher (`grading/kernel.py`)."""

    memory_limit = 0

    def format_kernel_cmd(self, extra_arguments=None):
        return [sys.executable, "-m", "course_utils.grading.kernel", str(int(self.memory_limit)),
                "-f", self.connection_file]


@dataclass
class Prepared:
    """A notebook ready to run: its student space on the grading broker, its scratch folder, and its
    kernel, started (not necessarily ready yet)."""

    space: StudentSpace
    folder: Path
    km: _GradedKernelManager
    log: object  # the kernel's stdout and stderr, a file in `folder`


async def prepare(label: str, broker: GradingBroker, env_for: Callable[[StudentSpace, Path], dict],
                  memory_limit: int) -> Prepared:
    """Make the student's space and scratch folder and start the kernel (call inside the broker's
    namespace: the kernel process inherits the calling thread's)."""
    space = broker.space(label)
    folder = Path(tempfile.mkdtemp(prefix="curso-grade-job-"))
    try:
        home = folder / "home"
        home.mkdir()
        km = _GradedKernelManager(kernel_name="python3", transport="ipc")
        km.ip = str(folder / "k")  # ipc: the sockets are files named after this prefix
        km.connection_file = str(folder / "kernel.json")
        km.memory_limit = memory_limit
        log = open(folder / "kernel.log", "wb")
        await km.start_kernel(env=env_for(space, home), cwd=str(folder), stdout=log, stderr=log)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        broker.drop(space)
        raise
    return Prepared(space, folder, km, log)


async def cleanup(prepared: Prepared, broker: GradingBroker) -> None:
    """Stop the kernel (and its process group), drop the student space, remove the scratch folder."""
    try:
        try:
            await prepared.km.shutdown_kernel(now=True)
        except Exception:  # noqa: BLE001 - a kernel already gone
            pass
        prepared.log.close()
        kill_leftovers(prepared.folder)
    finally:
        try:
            broker.drop(prepared.space)
        finally:
            shutil.rmtree(prepared.folder, ignore_errors=True)


class _CheckHooks:
    """The grader's side of every check cell: `snapshot` before it, `verify` after it (skipped when
    the kernel's own check failed: the exercise fails whatever the broker says), in the grader's
    process with the student's credentials. Verdicts keyed by code index."""

    def __init__(self, space: StudentSpace):
        from ..exercises.checks import CheckContext
        from ..sandbox import Chapter

        broker = replace(from_url(space.amqp_url), management_url=space.management_url)
        verify_login(broker)  # log in now, so that no check cell sees the grader's first connection as new
        self.context = CheckContext(Chapter("grader-side", broker, space.vhost, owns_vhost=False), None,
                                    stats_wait=6.0)
        self.verdicts: dict[int, dict] = {}
        self._check = None

    def before(self, code_index: int, exercise_id: str) -> None:
        from ..exercises.checks import get_exercise

        verdict = self.verdicts[code_index] = {"code_index": code_index, "exercise": exercise_id}
        self._check = None
        try:
            self._check = get_exercise(exercise_id)()
            self._check.snapshot(self.context)
        except Exception as exc:  # noqa: BLE001 - the broker-side steps must not break the run
            verdict["snapshot_error"] = f"{exc.__class__.__name__}: {exc}"

    def after(self, code_index: int, outcome: CellOutcome) -> None:
        verdict = self.verdicts[code_index]
        if not outcome.ok:
            verdict["broker"] = "skipped"
            return
        if self._check is None or "snapshot_error" in verdict:
            return
        started = time.monotonic()
        try:
            self._check.verify(self.context)
            verdict["broker"] = "passed"
        except AssertionError as exc:
            verdict.update(broker="failed", broker_hint=str(exc))
        except Exception as exc:  # noqa: BLE001
            verdict.update(broker="error", broker_hint=f"{exc.__class__.__name__}: {exc}")
        verdict["verify_seconds"] = round(time.monotonic() - started, 3)


def _outcome(code_index: int, reply: dict | None, seconds: float) -> CellOutcome:
    """A cell's outcome from the kernel's execute_reply (the display of a traceback can be
    suppressed by the student; the reply's status cannot be hidden that way)."""
    content = (reply or {}).get("content", {})
    if content.get("status", "ok") == "ok":
        return CellOutcome(code_index, "passed", seconds=seconds)
    ename, evalue = content.get("ename", ""), content.get("evalue", "")
    traceback = "\n".join(content.get("traceback") or [])
    return CellOutcome(code_index, "failed", f"{traceback}\n{ename}: {evalue}".strip(), seconds,
                       raised=(ename, evalue))


async def run_cells(nb: nbformat.NotebookNode, prepared: Prepared, cell_timeout: float, timeout: float,
                    checks: dict[int, str]) -> tuple[NotebookRun, dict[int, dict]]:
    """Execute every code cell of `nb` on the prepared kernel, the grader's hooks around the check
    cells (`checks`: code index -> exercise id); (the run, the grader's verdicts)."""
    started = time.monotonic()
    deadline = started + timeout
    client = NotebookClient(nb, km=prepared.km, timeout=int(cell_timeout), allow_errors=True,
                            interrupt_on_timeout=True, startup_timeout=STARTUP_TIMEOUT, iopub_timeout=4,
                            skip_cells_with_tag=f"curso-{secrets.token_hex(8)}", record_timing=False,
                            kernel_name="python3", resources={"metadata": {"path": str(prepared.folder)}})
    replies: dict[int, dict] = {}
    client.on_cell_executed = lambda cell, cell_index, execute_reply: replies.__setitem__(cell_index, execute_reply)
    hooks = _CheckHooks(prepared.space)  # logs in now, before any check cell counts connections
    cells: dict[int, CellOutcome] = {}
    timed_out, notes = False, []
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    try:
        async with client.async_setup_kernel():
            for code_index, index in enumerate(code):
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                limit = max(1, int(min(cell_timeout, left)))
                client.timeout = limit
                client.error_on_timeout = {"ename": "CellTimeoutError",
                                           "evalue": f"Timeout of {limit} seconds exceeded", "traceback": []}
                exercise = checks.get(code_index)
                if exercise is not None:
                    hooks.before(code_index, exercise)
                cell_started = time.monotonic()
                try:
                    await client.async_execute_cell(nb.cells[index], index)
                except DeadKernelError:
                    for rest in code[code_index:]:
                        at = code.index(rest)
                        cells[at] = CellOutcome(at, "error", DEAD, raised=("DeadKernelError", "Kernel died"))
                    break
                outcome = _outcome(code_index, replies.get(index), time.monotonic() - cell_started)
                cells[code_index] = outcome
                if exercise is not None:
                    hooks.after(code_index, outcome)
                if outcome.status != "passed" and time.monotonic() >= deadline:
                    timed_out = True
                    break
    except Exception as exc:  # noqa: BLE001 - a kernel that never became ready, a broken client
        notes.append(f"{exc.__class__.__name__}: {exc}")
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    prepared.log.flush()
    log = (prepared.folder / "kernel.log").read_text(encoding="utf-8", errors="replace")[-4000:]
    output = "\n".join([*notes, log]).strip()
    return NotebookRun(cells, 0, timed_out, output, time.monotonic() - started), hooks.verdicts
