"""Executing rebuilt notebooks for grading, in the grader's own process.

Each notebook gets a kernel of its own, forked by the run's fork server (`forkserver.py`: warm
imports, so a kernel is ready in a fraction of a second) with the student's environment only
(`kernel_env`), an address-space limit and its scratch folder, talking to the grader over
Unix-domain sockets (the `ipc` transport: nothing listens on TCP, and the grader reaches it from
any network namespace). nbclient runs the cells one by one; for every check cell the grader, not
the kernel, takes the exercise's `snapshot` before the cell and runs its broker-side `verify` after
it, with the student's own credentials, so whatever the kernel monkeypatched (`verificar`,
`AssertionError`, the traceback display), the verdict on the broker is the grader's.

A worker overlaps two notebooks: while one runs, the next one's student space is made and its
kernel forked (`Prepared`). Each step is a small function: `prepare` → `run_cells` (with
`_CheckHooks`) → `cleanup`.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import nbformat
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.connect import write_connection_file
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from ..broker import from_url, verify_login
from ..native import pid_alive, start_time
from ..nbrun import CellOutcome, NotebookRun, kill_leftovers
from .forkserver import KernelFactory
from .gradebroker import GradingBroker, StudentSpace

DEAD = "Kernel dead (DeadKernelError): o kernel morreu"
STARTUP_TIMEOUT = 60


class ForkedKernel:
    """What nbclient needs of a kernel manager, for a kernel the fork server forked: a client from
    the connection file, interrupt (SIGINT), liveness, and kill (its whole process group)."""

    def __init__(self, pid: int, connection_file: Path):
        self.pid = pid
        self.started = start_time(pid)  # with the pid, names the kernel (pids are reused)
        self.connection_file = connection_file
        self.kernel_id = f"curso-grade-{pid}"
        self.has_kernel = True

    def client(self) -> AsyncKernelClient:
        kc = AsyncKernelClient()
        kc.load_connection_file(str(self.connection_file))
        return kc

    def is_alive(self) -> bool:
        return pid_alive(self.pid) and start_time(self.pid) == self.started

    def _pid_reused(self) -> bool:
        now = start_time(self.pid)
        return now is not None and now != self.started

    def interrupt_kernel(self) -> None:
        if self.is_alive():
            os.kill(self.pid, signal.SIGINT)

    def shutdown_kernel(self, now: bool = True, restart: bool = False) -> None:
        """SIGKILL the kernel's process group (what the student started goes too), unless its pid
        now names another process: then that group is gone, and the pid is a stranger's."""
        try:
            if not self._pid_reused():
                os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.has_kernel = False

    def cleanup_resources(self, restart: bool = False) -> None:
        pass


@dataclass
class Prepared:
    """A notebook ready to run: its student space on the grading broker, its scratch folder, and its
    kernel, forked (not necessarily ready yet)."""

    space: StudentSpace
    folder: Path
    km: ForkedKernel
    created: bool = False  # the space exists on the node (the node may still have been booting)


class NodeDown(Exception):
    """The grading node never came up: the notebook was not graded (and gets no result)."""


async def prepare(label: str, broker: GradingBroker, factory: KernelFactory,
                  env_for: Callable[[StudentSpace, Path], dict], memory_limit: int,
                  booted: Callable[[], bool | None] = lambda: True) -> Prepared:
    """Fork the kernel with a reserved space's environment, then, once the node is up (`booted()`:
    True when it is, False when it never will be, None while it boots), make the space on it."""
    space = broker.reserve(label)
    folder = Path(tempfile.mkdtemp(prefix="curso-grade-job-"))
    try:
        home = folder / "home"
        home.mkdir()
        connection_file, _ = write_connection_file(str(folder / "kernel.json"), transport="ipc",
                                                   ip=str(folder / "k"))  # ipc: sockets are files named k-N
        pid = factory.fork(Path(connection_file), folder, folder / "kernel.log", env_for(space, home), memory_limit)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    prepared = Prepared(space, folder, ForkedKernel(pid, Path(connection_file)))
    try:
        while (up := booted()) is None:
            await asyncio.sleep(0.02)
        if not up:
            raise NodeDown()
        broker.create(space)
        prepared.created = True
    except BaseException:
        await cleanup(prepared, broker)
        raise
    return prepared


async def cleanup(prepared: Prepared, broker: GradingBroker) -> None:
    """Kill the kernel (and its process group), drop the student space, remove the scratch folder."""
    try:
        prepared.km.shutdown_kernel(now=True)
        kill_leftovers(prepared.folder)
    finally:
        try:
            if prepared.created:
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
                                    stats_wait=10.0)  # a broker-side verify waits for stats only until they show; on a loaded grading machine (the suite boots clusters beside it) 6 s was once short
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
    try:
        log = (prepared.folder / "kernel.log").read_text(encoding="utf-8", errors="replace")[-4000:]
    except OSError:
        log = ""
    output = "\n".join([*notes, log]).strip()
    return NotebookRun(cells, 0, timed_out, output, time.monotonic() - started), hooks.verdicts
