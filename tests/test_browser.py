"""A chapter notebook in a real browser: JupyterLab headless, Debian's Chromium driven by Playwright.

Widgets break silently when JupyterLab, ipywidgets and the widgets' front-end extension drift apart:
the kernel side still runs (nbval passes) while the learner sees "Loading widget..." or a
`VBox(children=...)` text. This test looks at what a learner sees after Run → Run All Cells:

- no error output (a traceback or anything else on stderr, a widget that failed to display);
- every figure is a picture: a loaded `<img>` / `<svg>` of non-zero size, never the figure's text;
- the routing playground is a live widget that answers its Publicar button within seconds.

The notebook is chapter 3 (`notebooks/03_trocas_e_filas.ipynb`): a lesson, with ten figures
(routing tables, topologies) and the routing playground, in about 10 s of cells. The toolkit demo
has the playground too, but it is not a lesson and spends longer on throughput runs.

JupyterLab runs on a scratch copy of the notebook (autosave never touches the repository), on a
free port, with a token of ours, its own config/settings/workspaces folders, and dies with the test
process; it is stopped at the end whatever happens. Chromium is Debian's (`.ci/install-chromium.sh`),
never a browser downloaded by Playwright; where it is missing or does not start, the test skips and
says why. Screenshots go to `$CURSO_REPORTS/browser/` (default `.reports/browser/`), which CI keeps.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import requests

from course_utils.native import parent_death_signal

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_trocas_e_filas.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
# Flags this machine's closed network needs (without the background-networking ones Chromium's
# connections are refused), and --no-sandbox, without which Chromium refuses to run as root.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The Makefile's $(REPORTS) (relative to the repository), which CI keeps.
SHOTS = ROOT / os.environ.get("CURSO_REPORTS", ".reports") / "browser"

VIEWPORT = {"width": 1280, "height": 900}
TALL = {"width": 1280, "height": 1800}

SERVER_START_S = 45     # JupyterLab answering /api/status
KERNEL_IDLE_S = 30      # the kernel started and idle
RUN_ALL_S = 60          # every code cell of the chapter executed
SAVE_S = 10             # File → Save written to disk
PUBLISH_S = 8           # the playground's answer to a click
# The user settings a test run needs: no news / update pop-ups over the page (they would also try
# to reach the network).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
}

# A figure a front end could not show as a picture appears as its text repr.
FIGURE_AS_TEXT = re.compile(r"<Figure size \d+x\d+|<matplotlib\.|Figure\(\d+x\d+\)")
WIDGET_FALLBACK = re.compile(r"Loading widget\.\.\.|Error displaying widget|VBox\(children=")

pytestmark = [pytest.mark.slow, pytest.mark.chapter("03"), pytest.mark.timeout(180)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """A JupyterLab server on a scratch folder; `stop()` ends it and its kernels."""

    def __init__(self, root: Path, scratch: Path, env: dict[str, str]):
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        settings = scratch / "settings"
        for name, values in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(values))
        for sub in ("config", "runtime", "workspaces"):
            (scratch / sub).mkdir(exist_ok=True)
        env = dict(env, JUPYTER_CONFIG_DIR=str(scratch / "config"), JUPYTER_RUNTIME_DIR=str(scratch / "runtime"))
        argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
                f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={scratch / 'workspaces'}",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.name == "posix" and os.geteuid() == 0:
            argv.append("--allow-root")
        self.log = scratch / "jupyterlab.log"
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self._log_file, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=parent_death_signal)

    def api(self, path: str, post: dict | None = None):
        headers = {"Authorization": f"token {self.token}"}
        if post is None:
            response = requests.get(f"{self.url}/api/{path}", headers=headers, timeout=5)
        else:
            response = requests.post(f"{self.url}/api/{path}", headers=headers, json=post, timeout=30)
        response.raise_for_status()
        return response.json()

    def start_kernel(self, notebook: str) -> None:
        """The notebook's session, as opening it does (JupyterLab attaches to it), started while
        the page loads."""
        self.api("sessions", post={"path": notebook, "name": notebook, "type": "notebook",
                                   "kernel": {"name": "python3"}})

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"JupyterLab exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                self.api("status")
                return
            except requests.RequestException:
                time.sleep(0.25)
        raise AssertionError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def kernels_idle(self) -> bool:
        kernels = [s["kernel"] for s in self.api("sessions") if s.get("kernel")]
        return bool(kernels) and all(k.get("execution_state") == "idle" for k in kernels)

    def log_tail(self, chars: int = 3000) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGTERM: jupyter_server shuts its kernels down before exiting.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log_file.close()


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a scratch copy of the chapter, with a vhost suffix of its own; started here,
    waited for by the test (so that it boots while Chromium starts)."""
    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    # Beside the worker's own suffix (conftest), so that this run never shares chapter 3's vhost
    # with the nbval runs of the same notebook.
    env = dict(os.environ, CURSO_VHOST_SUFFIX=os.environ.get("CURSO_VHOST_SUFFIX", "") + "-nav")
    env.pop("RABBITMQ_URL", None)
    env.pop("CURSO_BROKER", None)
    server = Lab(work, tmp_path, env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser_page(tmp_path):
    """A page of Debian's Chromium, headless, in a new empty profile; skipped where it can't run."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright não instalado (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        pytest.skip(f"sem Chromium em {CHROMIUM} (bash .ci/install-chromium.sh, como root)")
    with sync_api.sync_playwright() as playwright:
        try:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_ARGS, timeout=30_000, viewport=VIEWPORT)
        except sync_api.Error as exc:
            lines = str(exc).splitlines()
            why = [line.strip() for line in lines if "[err]" in line or "exitCode" in line][:3]
            pytest.skip(f"o Chromium não abriu: {' | '.join(lines[:1] + why)}")
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            context.close()


def _figures_saved(path: Path) -> int | None:
    """How many figures the kernel sent, from the saved notebook; None until every cell is saved run."""
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception:  # noqa: BLE001 - half written
        return None
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not all(c.execution_count for c in code):
        return None
    return sum(1 for c in code for o in c.outputs
               if {"image/png", "image/svg+xml"} & set(o.get("data", {}))
               or FIGURE_AS_TEXT.search(o.get("data", {}).get("text/plain", "")))


def _wait(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


# What the page shows, read in one go. Prompts are "[12]:" once a cell ran, "[*]:" while it runs.
READ_NOTEBOOK = """() => {
  const cells = [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-CodeCell')];
  return cells.map((cell, index) => ({
    index,
    prompt: (cell.querySelector('.jp-InputPrompt') || {}).textContent || '',
    source: ((cell.querySelector('.jp-InputArea-editor') || {}).textContent || '').slice(0, 80),
    errors: [...cell.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
              .map(e => e.textContent.slice(0, 500)),
    texts: [...cell.querySelectorAll('.jp-OutputArea-output')].map(e => e.textContent.slice(0, 300)),
  }));
}"""

# Each picture in the output areas, scrolled into view as a learner would see it.
MEASURE_PICTURES = """async () => {
  const out = [];
  for (const el of document.querySelectorAll('.jp-OutputArea-output img, .jp-OutputArea-output svg')) {
    if (el.tagName.toLowerCase() === 'svg' && el.parentElement.closest('svg')) continue;  // part of one
    el.scrollIntoView({block: 'center'});
    if (el.tagName.toLowerCase() === 'img' && !el.complete) {
      await new Promise(r => { el.onload = el.onerror = r; setTimeout(r, 3000); });
    }
    const box = el.getBoundingClientRect();
    out.push({tag: el.tagName.toLowerCase(), width: box.width, height: box.height,
              natural: el.tagName.toLowerCase() === 'img' ? el.naturalWidth * el.naturalHeight : null});
  }
  return out;
}"""

def test_chapter_notebook_in_jupyterlab(lab, browser_page):
    page = browser_page
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    timings: dict[str, float] = {}
    started = time.monotonic()

    def shot(name: str, target=None) -> None:
        (target or page).screenshot(path=str(SHOTS / f"{name}.png"))

    try:
        lab.wait_ready(SERVER_START_S)
        timings["server"] = time.monotonic() - started
        lab.start_kernel(NOTEBOOK.name)
        page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}", wait_until="domcontentloaded")
        page.locator(".jp-NotebookPanel .jp-CodeCell").first.wait_for(state="visible", timeout=30_000)
        _wait(lab.kernels_idle, KERNEL_IDLE_S, "the notebook's kernel started and idle")
        timings["open"] = time.monotonic() - started

        # Run → Run All Cells, from JupyterLab's own menu, with the notebook focused.
        page.locator(".jp-NotebookPanel .jp-Notebook").first.click(position={"x": 5, "y": 5})
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
        mark = time.monotonic()

        def ran(cell) -> bool:
            return bool(re.fullmatch(r"\[\d+\]:", cell["prompt"].strip()))

        def name(cell) -> str:
            return f"code cell {cell['index'] + 1} ({cell['source'][:40]!r})"

        def finished():
            # Every cell ran; or a cell failed, which stops Run All (the cells after it never run).
            cells = page.evaluate(READ_NOTEBOOK)
            running = any("*" in c["prompt"] for c in cells)
            done = cells and (all(map(ran, cells)) or any(c["errors"] for c in cells))
            return cells if done and not running and lab.kernels_idle() else None

        try:
            cells = _wait(finished, RUN_ALL_S, "every code cell run and the kernel idle", interval=0.5)
        except AssertionError:
            pending = [f"{name(c)} {c['prompt']}" for c in page.evaluate(READ_NOTEBOOK) if not ran(c)]
            raise AssertionError(f"cells not run within {RUN_ALL_S} s: {pending[:5]}") from None
        timings["run all"] = time.monotonic() - mark
        mark = time.monotonic()
        page.locator(".jp-NotebookPanel .jp-Cell").first.scroll_into_view_if_needed()
        shot("01-notebook-top")

        errors = {name(c): c["errors"] for c in cells if c["errors"]}
        assert not errors, f"error output: {errors}"
        not_run = [name(c) for c in cells if not ran(c)]
        assert not not_run, f"code cells that did not run: {not_run[:5]}"
        as_text = {name(c): t for c in cells for t in c["texts"] if FIGURE_AS_TEXT.search(t)}
        assert not as_text, f"figures shown as text, not as pictures: {as_text}"
        pictures = page.evaluate(MEASURE_PICTURES)
        # As many pictures as the kernel sent figures: saved (Ctrl+S) and counted in the file.
        page.keyboard.press("Control+s")
        sent = _wait(lambda: _figures_saved(lab.root / NOTEBOOK.name), SAVE_S, "the notebook saved after the run")
        assert len(pictures) == sent, f"the kernel sent {sent} figures, the page shows {len(pictures)} pictures"
        assert pictures, "chapter 3 shows no figure at all"
        empty = [p for p in pictures if p["width"] < 1 or p["height"] < 1 or p["natural"] == 0]
        assert not empty, f"pictures of zero size or that did not load: {empty}"
        page.set_viewport_size(TALL)  # so that the tallest figure fits in one screenshot
        for n, picture in enumerate(page.locator(".jp-OutputArea-output img").all(), start=1):
            picture.scroll_into_view_if_needed()
            shot(f"02-figure-{n:02d}", picture)
        page.set_viewport_size(VIEWPORT)
        timings["figures"] = time.monotonic() - mark

        # The routing playground: a live widget, not its text fallback.
        cell = page.locator(".jp-NotebookPanel .jp-CodeCell").filter(
            has=page.locator(".jp-InputArea-editor", has_text="routing_playground(")).first
        cell.scroll_into_view_if_needed()
        output = cell.locator(".jp-OutputArea").first
        widget = output.locator(".widget-vbox").filter(has=page.get_by_role("button", name="Publicar"))
        try:
            _wait(lambda: widget.count() == 1, 10, "the routing playground shown as a widget")
        except AssertionError as exc:
            shot("03-playground-not-a-widget", cell)
            raise AssertionError(f"{exc}; its cell shows: {output.inner_text()[:300]!r}") from None
        fallback = WIDGET_FALLBACK.search(output.inner_text())
        assert not fallback, f"the playground's cell shows {fallback.group(0)!r} beside the widget"
        shot("03-playground-before", widget)

        answer = widget.locator(".widget-output")
        before = answer.inner_text()
        widget.locator("input[type=text]").first.fill("error")
        mark = time.monotonic()
        widget.get_by_role("button", name="Publicar").click()
        # Its answer: a line about the message typed and the routing picture (or a ⚠ warning).
        _wait(lambda: answer.inner_text() != before
              and (answer.locator("img").count() >= 1 or "⚠" in answer.inner_text()),
              PUBLISH_S, "the playground's answer to Publicar")
        timings["publish"] = time.monotonic() - mark
        text = answer.inner_text()
        assert "⚠" not in text and "error" in text, f"the playground answered: {text!r}"
        picture = answer.locator("img").first
        box = picture.bounding_box()
        assert box and box["width"] > 0 and box["height"] > 0, f"the playground's figure has no size: {box}"
        widget.scroll_into_view_if_needed()
        shot("04-playground-after", widget)

        # Limpar takes the playground's exchange and queues away again, and its picture with them.
        widget.get_by_role("button", name="Limpar").click()
        _wait(lambda: answer.locator("img").count() == 0, PUBLISH_S, "the playground's answer to Limpar")
    except BaseException:
        try:
            shot("99-failure")
        except Exception:  # noqa: BLE001 - the page may be gone; the original error matters
            pass
        raise
    finally:
        timings["total"] = time.monotonic() - started
        print("browser test timings (s):", {k: round(v, 1) for k, v in timings.items()})
