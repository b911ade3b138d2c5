"""The widgets as a learner meets them: JupyterLab in a real (headless) Chromium.

Notebook 05 is copied into an empty folder, opened in JupyterLab at 1366×768 and run in smoke
mode; then the α slider is moved with the keyboard, as a learner would, and the test checks
that the ComicDiff image and the readout change and that the explorer fits the screen.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``playwright`` Python package
(dev extra); skipped with the reason where either is missing, except in CI
(``COMICUTILS_REQUIRE_ALL=1``), where that is a failure.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "05_comicdiff_inference_and_widgets.ipynb"
CHROMIUM = os.environ.get("COMICUTILS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SCREEN = {"width": 1366, "height": 768}
RUN_ALL_TIMEOUT_S = 600

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_ALL_TIMEOUT_S + 300)]


@pytest.fixture(scope="module", autouse=True)
def _chromium():
    """Skipped on a contributor's machine without Chromium; a failure in CI (COMICUTILS_REQUIRE_ALL=1)."""
    from conftest import skip_unless_required

    if not Path(CHROMIUM).is_file():
        skip_unless_required(f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_unless_required("the playwright package is not installed (dev extra)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on localhost serving a folder that holds only notebook 05."""
    work = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    port, token = _free_port(), "comicutils-browser-test"
    env = {**os.environ, "COMICUTILS_MODE": "smoke", "COMICUTILS_PROGRESS": "1",
           "COMICUTILS_RUNS": str(work / "runs"), "COMICUTILS_FIGURES": str(work / "figures"),
           "JUPYTER_CONFIG_DIR": str(work / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(work / ".runtime")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--expose-app-in-browser",
           f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={work}", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
           "jupyterlab.NeverCheckForUpdate"]
    log = open(work / "lab.log", "wb")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {(work / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 60 s")
        yield base, token, work
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def page(lab):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    base, token, _ = lab
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        pg = browser.new_page(viewport=SCREEN)
        pg.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", wait_until="domcontentloaded")
        pg.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                             "&& window.jupyterapp.shell.currentWidget.sessionContext", timeout=90_000)
        pg.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session"
                             " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                             timeout=90_000)
        yield pg
        browser.close()


def _run_all(pg) -> None:
    """Run every cell through JupyterLab's own command and wait until the kernel is idle again
    with every code cell numbered (an error stops the run and fails the test)."""
    pg.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.time() + RUN_ALL_TIMEOUT_S
    script = """() => {
        const nb = window.jupyterapp.shell.currentWidget;
        const cells = nb.content.widgets.filter(c => c.model.type === 'code');
        const errors = cells.flatMap(c => c.model.outputs.toJSON()).filter(o => o.output_type === 'error');
        const pending = cells.filter(c => c.model.executionCount === null || c.promptNode.textContent.includes('*'));
        return {errors: errors.map(e => e.ename + ': ' + e.evalue), pending: pending.length,
                status: nb.sessionContext.session.kernel.status};
    }"""
    while time.time() < deadline:
        state = pg.evaluate(script)
        if state["errors"]:
            pytest.fail(f"notebook 05 raised in JupyterLab: {state['errors'][0]}")
        if state["pending"] == 0 and state["status"] == "idle":
            return
        time.sleep(2)
    pytest.fail(f"notebook 05 did not finish within {RUN_ALL_TIMEOUT_S} s in JupyterLab: {state}")


def test_alpha_slider_moves_the_image_and_the_readout_in_jupyterlab(page):
    _run_all(page)
    slider = page.locator(".widget-slider", has=page.locator("text=α (blend)")).last
    slider.scroll_into_view_if_needed()
    assert slider.is_visible()
    explorer = slider.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]")
    image = explorer.locator("img").nth(1)                      # photo | ComicDiff at α | comic
    readout = explorer.locator(".widget-html").last
    readout_before, src_before = readout.inner_text(), image.get_attribute("src")
    value_before = slider.locator(".widget-readout").inner_text()
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(6):                                          # six steps of 0.05 to the left
        page.keyboard.press("ArrowLeft")
    # Each move is a round trip to the kernel (one decode); on a busy CPU that can take a while.
    page.wait_for_function(
        "([text, img, before, src]) => text.innerText !== before && img.getAttribute('src') !== src",
        arg=[readout.element_handle(), image.element_handle(), readout_before, src_before], timeout=180_000)
    assert slider.locator(".widget-readout").inner_text() != value_before
    box = explorer.bounding_box()
    assert box["width"] <= SCREEN["width"] and box["height"] <= SCREEN["height"], box
    # the slider and the readout sit on one row, with every image visible at the same time
    slider_box, text_box = slider.bounding_box(), readout.bounding_box()
    assert abs((slider_box["y"] + slider_box["height"] / 2) - (text_box["y"] + text_box["height"] / 2)) < 80
    shot = os.environ.get("COMICUTILS_BROWSER_SCREENSHOT")      # e.g. to look at the layout
    if shot:
        explorer.screenshot(path=shot)
