"""pytest plugin loaded into the grader's nbval run (`-p course_utils.grading.plugin`).

It runs in the pytest process, outside the learner's kernel, and for every check cell:

- takes the exercise's `snapshot` before the cell runs and runs its `verify` after it, with the
  student's own credentials (from RABBITMQ_URL): whatever the kernel monkeypatched, these run here
  (when the kernel's own check already failed, the exercise fails whatever the broker says, so
  `verify` is skipped: a failing answer costs no statistics wait);
- records the kernel's execute_reply status, so an error whose traceback display the student
  suppressed still counts as an error;
- appends one verdict line per check to the file named by `--curso-verdicts`, signed with an HMAC
  key that the grader wrote to a file this plugin reads and deletes at start-up, before any kernel
  exists (the key is never in the environment or argv), so that lines a kernel writes into the
  verdicts file are rejected.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from queue import Empty

import pytest

PREFIX = "CURSO-VERDICT "
_key: bytes = b""
_context = None
_verdicts_path: str | None = None


def sign(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def parse_verdicts(output: str, key: bytes) -> tuple[list[dict], int]:
    """Verdicts with a valid signature, and how many lines claimed to be verdicts but were forged."""
    good, forged = [], 0
    for line in output.splitlines():
        if not line.startswith(PREFIX):
            continue
        payload, _, signature = line[len(PREFIX):].rpartition(" ")
        if hmac.compare_digest(sign(key, payload), signature):
            good.append(json.loads(payload))
        else:
            forged += 1
    return good, forged


def pytest_addoption(parser):
    parser.addoption("--curso-verdicts", default=None, help="file for the grader's signed verdicts")
    parser.addoption("--curso-key-file", default=None, help="file holding the HMAC key; deleted once read")
    parser.addoption("--curso-memory-limit", type=int, default=0,
                     help="address-space limit in bytes for pytest and the kernel it starts")


def pytest_configure(config):
    global _key, _verdicts_path
    _verdicts_path = config.getoption("--curso-verdicts")
    if not _verdicts_path:
        return
    limit = config.getoption("--curso-memory-limit")
    if limit and os.name == "posix":
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # the kernel, started later, inherits it
    key_file = config.getoption("--curso-key-file")
    try:
        with open(key_file, "rb") as source:
            _key = source.read().strip()
        os.unlink(key_file)
    except (OSError, TypeError):
        _key = b""
    _patch_reply_capture()
    if _key and os.environ.get("RABBITMQ_URL"):
        _ctx()  # log in now, long before the first check cell, so the login is not seen as one of its connections


def _patch_reply_capture() -> None:
    from nbval.kernel import RunningKernel

    if getattr(RunningKernel, "_curso_patched", False):
        return

    def await_reply(self, msg_id, timeout=None):
        # As nbval's, plus: remember the reply, and notice a dead kernel within a second
        # instead of waiting out the cell timeout.
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        while True:
            wait = 1.0 if deadline is None else max(0.01, min(1.0, deadline - time.monotonic()))
            try:
                msg = self.get_message(stream="shell", timeout=wait)
            except Empty:
                if not self.is_alive():
                    raise RuntimeError("Kernel died while executing the cell (DeadKernelError)")
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                self.curso_last_reply = msg["content"]
                if msg["content"]["status"] == "aborted":
                    raise RuntimeError("Kernel aborted execution request")
                return

    RunningKernel.await_reply = await_reply
    RunningKernel._curso_patched = True


def _ctx():
    global _context
    if _context is None:
        from ..exercises.checks import CheckContext
        from ..sandbox import setup

        _context = CheckContext(setup("grader-side", reset=False), None, stats_wait=6.0)
    return _context


def _emit(verdict: dict) -> None:
    payload = json.dumps(verdict, ensure_ascii=False, sort_keys=True)
    with open(_verdicts_path, "a", encoding="utf-8") as out:
        out.write(f"{PREFIX}{payload} {sign(_key, payload)}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    cell = getattr(item, "cell", None)
    meta = (cell or {}).get("metadata", {}).get("curso", {}) if cell is not None else {}
    if meta.get("role") != "check" or not _key:
        yield
        return
    from ..exercises.checks import get_exercise

    exercise_id = meta.get("exercise")
    verdict = {"code_index": item.cell_num, "exercise": exercise_id}
    check = None
    try:
        check = get_exercise(exercise_id)()
        check.snapshot(_ctx())
    except Exception as exc:  # the broker-side steps must not break the run
        verdict["snapshot_error"] = f"{exc.__class__.__name__}: {exc}"
    kernel = item.parent.kernel
    kernel.curso_last_reply = None
    outcome = yield
    reply = getattr(kernel, "curso_last_reply", None) or {}
    verdict["reply_status"] = reply.get("status")
    verdict["reply_error"] = f"{reply.get('ename', '')}: {reply.get('evalue', '')}" if reply.get("status") == "error" else ""
    verdict["nbval_passed"] = outcome.excinfo is None
    if not verdict["nbval_passed"] or verdict["reply_status"] == "error":
        verdict["broker"] = "skipped"  # the kernel's own check failed: the exercise fails whatever the broker says
    elif check is not None and "snapshot_error" not in verdict:
        started = time.monotonic()
        try:
            check.verify(_ctx())
            verdict["broker"] = "passed"
        except AssertionError as exc:
            verdict.update(broker="failed", broker_hint=str(exc))
        except Exception as exc:
            verdict.update(broker="error", broker_hint=f"{exc.__class__.__name__}: {exc}")
        verdict["verify_seconds"] = round(time.monotonic() - started, 3)
    _emit(verdict)
