"""Run a notebook under nbval (`pytest --nbval-lax`) in a subprocess and report each code cell.

Used by the test suite (chapters, solutions, blank exercises) and the benchmarks; the grader runs
notebooks itself (grading/execute.py) but reports them with the same `NotebookRun` / `CellOutcome`.
nbval names its items "Cell N" with N counting code cells only; the JUnit XML report gives each
one's outcome.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

_CELL = re.compile(r"Cell (\d+)$")
_ANSI = re.compile(r"(\x1b|#x1B)\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): ?(.*)$")


def clean(text: str) -> str:
    """Traceback text without terminal colour codes."""
    return _ANSI.sub("", text)


@dataclass
class CellOutcome:
    code_index: int
    status: str  # passed | failed | skipped | error
    message: str = ""
    seconds: float = 0.0  # the cell's run time, as nbval's report gives it
    raised: tuple[str, str] | None = None  # (type, message) when known exactly (the kernel's reply)

    @property
    def ok(self) -> bool:
        return self.status == "passed"

    @property
    def error(self) -> tuple[str, str]:
        """(exception type, message): `raised`, or else the last exception line in the cell's traceback."""
        if self.raised is not None:
            return self.raised
        found = ("", "")
        for line in clean(self.message).splitlines():
            match = _ERROR_LINE.match(line.strip())
            if match:
                found = (match.group(1), match.group(2))
        return found


@dataclass
class NotebookRun:
    cells: dict[int, CellOutcome]
    returncode: int
    timed_out: bool
    output: str
    seconds: float = 0.0  # the whole run, kernel start and pytest's own start included

    def statuses(self) -> dict[int, str]:
        return {i: c.status for i, c in sorted(self.cells.items())}

    def failed(self) -> list[int]:
        return [i for i, c in sorted(self.cells.items()) if not c.ok]


def run_notebook(notebook: Path, env: dict[str, str] | None = None, cell_timeout: float = 120,
                 timeout: float = 900, work_dir: Path | None = None) -> NotebookRun:
    """Execute `notebook` with nbval in a fresh kernel, from a scratch folder.

    `env` replaces the subprocess environment (the kernel inherits it); `timeout` bounds the
    whole run, `cell_timeout` each cell; `work_dir` is where the scratch folder is made. Whatever is left running from the scratch
    folder afterwards (an orphaned kernel, a learner's background process) is killed."""
    notebook = Path(notebook).resolve()
    with tempfile.TemporaryDirectory(prefix="curso-nbrun-", dir=work_dir) as tmp:
        work = Path(tmp)
        target = work / notebook.name
        shutil.copyfile(notebook, target)
        (work / "pytest.ini").write_text("[pytest]\naddopts =\n")
        xml = work / "report.xml"
        cmd = [sys.executable, "-m", "course_utils.nbval_main", "--nbval-lax", "--nbval-current-env",
               f"--nbval-cell-timeout={cell_timeout}", "-p", "no:cacheprovider",
               "-c", str(work / "pytest.ini"), "--rootdir", str(work), f"--junitxml={xml}", "-q",
               "-W", "ignore::DeprecationWarning"]
        cmd.append(str(target))
        run_env = dict(os.environ if env is None else env)
        run_env.setdefault("MPLBACKEND", "Agg")
        # Kernel connection files go to the scratch folder, so leftovers can be found by path.
        run_env["JUPYTER_RUNTIME_DIR"] = str(work / "runtime")
        run_env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        timed_out = False
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=work, env=run_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            returncode, output = proc.returncode, _text(out)
        except subprocess.TimeoutExpired:
            timed_out, returncode = True, -1
            _kill_group(proc)
            out, _ = proc.communicate()
            output = _text(out)
        finally:
            kill_leftovers(work)
        cells = parse_junit(xml) if xml.exists() else {}
        return NotebookRun(cells, returncode, timed_out, output, time.monotonic() - started)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill pytest and the kernel it started (same process group)."""
    import signal
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def kill_leftovers(work: Path, passes: int = 3) -> None:
    """Kill any process still running from the scratch folder: an orphaned kernel (its command line
    names the kernel connection file inside it), or anything a student's notebook started in a
    session of its own (a Celery worker, a server): those carry the kernel's environment, whose
    HOME is inside the folder, or run in it. Scanned again while one pass still found some (a
    process may have started another before it was killed)."""
    import signal
    proc_dir = Path("/proc")
    if not proc_dir.exists():
        return
    needle = str(work).encode()
    for _ in range(passes):
        found = 0
        for entry in proc_dir.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes() \
                        or os.readlink(entry / "cwd").encode().startswith(needle):
                    os.kill(int(entry.name), signal.SIGKILL)
                    found += 1
            except (OSError, ValueError):
                continue
        if not found:
            return


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def parse_junit(xml: Path) -> dict[int, CellOutcome]:
    cells: dict[int, CellOutcome] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        match = _CELL.search(case.get("name", ""))
        if not match:
            continue
        index = int(match.group(1))
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                status = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "") + "\n" + (node.text or "")
                break
        cells[index] = CellOutcome(index, status, message.strip(), float(case.get("time") or 0.0))
    return cells
