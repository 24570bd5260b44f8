"""Smoke test in a real browser (issue 16, item 6): JupyterLab opens notebooks 01 and 02 in headless
Chromium, runs all their cells, shows figures, and the coefficient explorer redraws when its slider moves;
and the site of executed notebooks (``ke-notebooks --html``) opens from the file system, shows its figures
and fetches nothing over the network.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; skipped without them:

    apt-get install -y chromium chromium-driver && pip install -r requirements.txt
    KE_BROWSER_TEST=1 python -m pytest tests/test_browser.py -v

It runs only when ``KE_BROWSER_TEST=1`` is set (about 3 minutes), so the test suite's time stays the same
on machines that happen to have Chromium.

The notebooks run from copies in a temporary folder (the repository's files are never saved over), on a
JupyterLab bound to 127.0.0.1 with a random port and token whose config, data and runtime folders are
temporary too. Screenshots go to ``$KE_BROWSER_SCREENSHOTS`` when set, else to pytest's tmp_path.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="needs the selenium package (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(os.environ.get("KE_BROWSER_TEST") != "1", reason="opt-in: set KE_BROWSER_TEST=1 (about 90 s)"),
    pytest.mark.skipif(not CHROMIUM, reason="needs Chromium (apt-get install chromium)"),
    pytest.mark.skipif(not CHROMEDRIVER, reason="needs chromedriver (apt-get install chromium-driver)"),
]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
RUN_TIMEOUT = 120  # seconds for one notebook's "Run All"; each takes ~15-20 s once the families are cached

# The page's view of the open notebook, from the JupyterLab app (exposed by expose_app_in_browser).
NOTEBOOK_STATE_JS = """
const panel = window.jupyterapp?.shell.currentWidget;
if (!panel?.sessionContext) return null;
const code = panel.content.widgets.filter(cell => cell.model.type === 'code');
const errors = [...panel.node.querySelectorAll(
    '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(e => e.textContent).filter(text => /Error|Traceback/.test(text));
return {path: panel.context.path, kernel: panel.sessionContext.session?.kernel?.status ?? null,
        counts: code.map(cell => cell.model.executionCount), errors,
        runAll: window.__keRunAll ?? null};
"""


@dataclass
class Lab:
    """A running JupyterLab: its base URL, token and notebook folder."""
    url: str
    token: str
    root: Path

    def api(self, method: str, path: str):
        """Call the server's REST API; returns the decoded JSON (or None)."""
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, message, interval: float = 0.25):
    """Poll ``condition()`` until it returns something truthy; fail with ``message()`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(message())
        time.sleep(interval)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving copies of the notebooks; stopped (kernels too) at the end."""
    from ke_utils.pretrain import NOTEBOOK_FAMILIES, builtin_families

    builtin_families(NOTEBOOK_FAMILIES, progress=False)  # at once when cached; else pretrain here, not in a cell

    base = tmp_path_factory.mktemp("lab")
    root = base / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=lambda folder, names: [n for n in names if not n.endswith(".ipynb")])
    env = {k: v for k, v in os.environ.items() if k != "KE_RESULTS_DIR"}  # notebooks then save nothing
    env.update({f"JUPYTER_{kind}_DIR": str(base / kind.lower()) for kind in ("CONFIG", "DATA", "RUNTIME")})
    env.update(IPYTHONDIR=str(base / "ipython"), MPLCONFIGDIR=str(base / "matplotlib"))
    settings = base / "config/lab/user-settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True)  # no "get Jupyter news?" toast over the screenshots, no web requests
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    token, port = secrets.token_hex(16), free_port()
    log_path = base / "jupyterlab.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True", "--LabApp.expose_app_in_browser=True"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, root)

    def up():
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited:\n{log_path.read_text()[-2000:]}")
        try:
            return lab.api("GET", "status") is not None
        except OSError:
            return False

    try:
        wait_for(up, 60, lambda: f"JupyterLab did not answer in 60 s:\n{log_path.read_text()[-2000:]}")
        yield lab
    finally:
        server.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium driven by chromedriver (both Debian's); closed at the end."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox",  # no sandbox: the test may run as root (CI)
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def page(lab, browser):
    """The browser on the lab; every kernel the test started is shut down afterwards."""
    yield browser
    for session in lab.api("GET", "sessions"):
        lab.api("DELETE", f"sessions/{session['id']}")


@pytest.fixture
def shots(tmp_path):
    """Where screenshots go: ``$KE_BROWSER_SCREENSHOTS`` or this test's tmp_path."""
    folder = Path(os.environ.get("KE_BROWSER_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def notebook_state(driver):
    return driver.execute_script(NOTEBOOK_STATE_JS)


def run_notebook(driver, lab: Lab, name: str) -> dict:
    """Open ``name`` in JupyterLab, run all cells with the ``notebook:run-all-cells`` command, wait until
    the run is over and the kernel idle, and check every code cell ran without an error output."""
    driver.get(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")
    wait_for(lambda: (s := notebook_state(driver)) and s["path"] == name and s["kernel"] == "idle", 60,
             lambda: f"{name}: notebook or kernel not ready in 60 s: {notebook_state(driver)}")
    driver.execute_script("""
        window.__keRunAll = {done: false};
        window.jupyterapp.commands.execute('notebook:run-all-cells').then(
            ok => { window.__keRunAll = {done: true, ok}; },
            err => { window.__keRunAll = {done: true, ok: false, error: String(err)}; });""")

    def over():  # an error output, or the command's promise settled and the kernel idle
        state = notebook_state(driver)
        return state if state["errors"] or state["runAll"]["done"] and state["kernel"] == "idle" else None

    state = wait_for(over, RUN_TIMEOUT, lambda: f"{name}: Run All not over in {RUN_TIMEOUT} s: {notebook_state(driver)}")
    assert not state["errors"], f"{name}: error output:\n" + "\n".join(state["errors"])[-3000:]
    assert state["runAll"]["ok"], f"{name}: Run All failed: {state['runAll']}"
    assert all(count is not None for count in state["counts"]), f"{name}: cells not run: {state['counts']}"
    return state


def png_sources(driver, root) -> list[str]:
    """The ``src`` of every output-area ``<img>`` under ``root`` showing a loaded PNG wider than 100 px
    (read in one script, so that a redraw cannot leave stale elements behind)."""
    return driver.execute_script("""
        return [...arguments[0].querySelectorAll('.jp-OutputArea-output img')]
            .filter(img => img.src.startsWith('data:image/png') && img.naturalWidth > 100).map(img => img.src);""",
                                 root)


def scroll_to(driver, element):
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)


def test_notebook_01_runs_and_draws_figures(page, lab, shots):
    run_notebook(page, lab, "01_what_is_knowledge_entropy.ipynb")
    notebook = page.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden)")
    figures = png_sources(page, notebook)
    assert figures, "no figure (PNG wider than 100 px) in any output area"
    assert all(len(src) > 5000 for src in figures), "a figure is a near-empty PNG"
    scroll_to(page, notebook.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")[-1])
    page.save_screenshot(str(shots / "01_executed.png"))


def test_notebook_02_widget_redraws_when_the_slider_moves(page, lab, shots):
    run_notebook(page, lab, "02_checkpoint_sweep.ipynb")
    widget = wait_for(lambda: page.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .widget-vbox"),
                      10, lambda: "the coefficient explorer widget did not render")[0]
    readout = widget.find_element(By.CSS_SELECTOR, ".widget-readout")
    before_step = readout.text
    before = wait_for(lambda: png_sources(page, widget), 30, lambda: "the widget shows no figure")
    scroll_to(page, widget)
    page.save_screenshot(str(shots / "02_widget_before.png"))

    widget.find_element(By.CSS_SELECTOR, ".noUi-handle").send_keys(Keys.ARROW_LEFT)  # previous checkpoint
    wait_for(lambda: (now := png_sources(page, widget)) and now != before, 30,
             lambda: f"the widget's figure did not change when the slider moved (step {before_step} -> {readout.text})")
    assert readout.text != before_step, "the slider's readout did not change"
    page.save_screenshot(str(shots / "02_widget_after.png"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``ke-notebooks --only 02 --html`` into a temporary folder (notebook 02 has the widget); its index."""
    from ke_utils.commands.run_notebooks import main

    out = tmp_path_factory.mktemp("results")
    main(["--only", "02", "--html", "--out", str(out)])
    return out / "site" / "index.html"


LOADED_IMAGES_JS = "return [...document.images].map(img => [img.complete && img.naturalWidth > 100, img.src.slice(0, 40)]);"
# Everything the page fetched that is neither inline (data:) nor a local file.
REMOTE_JS = ("return performance.getEntriesByType('resource').map(e => e.name)"
             ".filter(name => !name.startsWith('data:') && !name.startsWith('file:'));")


def test_the_site_opens_from_the_file_system_with_its_figures(browser, site, shots):
    browser.get(site.as_uri())
    images = browser.execute_script(LOADED_IMAGES_JS)
    assert images and all(ok for ok, _ in images), f"an index figure did not load: {images}"
    assert browser.execute_script(REMOTE_JS) == [], "the index loaded something over the network"
    browser.save_screenshot(str(shots / "site_index.png"))

    browser.find_element(By.CSS_SELECTOR, "article h2 a").click()
    wait_for(lambda: browser.current_url.endswith("02_checkpoint_sweep.html"), 10, lambda: "the page did not open")
    images = browser.execute_script(LOADED_IMAGES_JS)
    assert len(images) >= 5 and all(ok for ok, _ in images), f"a figure of notebook 02's page did not load: {images}"
    assert browser.execute_script(REMOTE_JS) == [], "notebook 02's page loaded something over the network"
    assert "run the notebook to use its controls" in browser.page_source, "the widget's figure is missing"
    browser.save_screenshot(str(shots / "site_02.png"))
