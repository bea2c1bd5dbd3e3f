"""A real browser (headless Chromium driven by Selenium) uses the JupyterLab that `make lab` serves: it opens a
jupytext ``.py`` notebook as a notebook (Open With > Notebook), runs its parameters cell and a new cell, and reads
the output; then a cell that draws a figure with the project's plotting module and ``plt.show()``, and finds the
rendered figure (an ``img`` in an output area, decoded with a nonzero width): no image, and the test fails. The
test's environment exports ``MPLBACKEND=Agg`` (tests/conftest.py, CI), which ``make lab`` overrides. The server
is started with ``make lab LAB_ARGS=...`` exactly as a user on a remote machine would (as root here, which
``make lab`` handles with --allow-root).

Skipped only when Chromium or chromedriver is not installed and this is not CI; with ``CI=true`` it must run
(``make test`` installs ``chromium chromium-driver`` as root, see lib/infra/prereqs.py).
"""
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from lib import REPO_ROOT
from lib.infra.prereqs import browser_paths
from lib.infra.runner import KERNEL_NAME

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM, CHROMEDRIVER = browser_paths()
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000")
NOTEBOOK = "01_train.py"
#: typed on one line (no auto-indent): a 3.4 x 2.55 inch figure, ~340 px wide at matplotlib's 100 dpi
FIGURE_CELL = ("import matplotlib.pyplot as plt; from lib.outputs import plotting; fig, axes = plotting.figure(); "
               "axes[0, 0].plot([0, 1, 2], [2, 0, 1]); plt.show()")

if not (CHROMIUM and CHROMEDRIVER) and not IN_CI:
    pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)
if not IN_CI:
    pytest.importorskip("selenium")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """``make lab`` on a free port with a token; JupyterLab settings, workspaces and runtime files in tmp_path
    (autosave off: the test edits the notebook in the browser and never writes it; no auto-closed brackets, so
    that typed code arrives as typed)."""
    port, token = _free_port(), "browser-test-token"
    for plugin, value in (("docmanager-extension/plugin", '{"autosave": false}'),
                          ("codemirror-extension/plugin", '{"defaultConfig": {"autoClosingBrackets": false}}')):
        path = tmp_path / "settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    log = tmp_path / "lab.log"
    # -o: treat the setup stamp as up to date (the venv running this test is the one make lab uses)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["make", "-s", "-o", ".venv/.setup-stamp", "lab",
             f"LAB_ARGS=--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={token}"],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("make lab did not serve JupyterLab:\n" + log.read_text()[-3000:])
                time.sleep(0.3)
        yield base, token
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def browser(tmp_path):
    assert CHROMIUM and CHROMEDRIVER, "CI=true but chromium / chromedriver are not installed"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _menu_item(label):
    return (By.XPATH, "//li[contains(@class,'lm-Menu-item')][.//div[contains(@class,'lm-Menu-itemLabel') and "
                      f"normalize-space(.)='{label}']]")


def _shift_enter(driver):
    ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()


def test_make_lab_opens_a_py_notebook_and_runs_a_cell(lab, browser, tmp_path):
    base, token = lab
    paired = REPO_ROOT / "notebooks" / NOTEBOOK.replace(".py", ".ipynb")
    checkpoints = REPO_ROOT / "notebooks" / ".ipynb_checkpoints"     # JupyterLab's checkpoint on opening (ignored)
    cleanup = not checkpoints.exists()
    before = paired.stat().st_mtime_ns if paired.exists() else None
    source = (REPO_ROOT / "notebooks" / NOTEBOOK).read_bytes()
    wait = WebDriverWait(browser, 90, ignored_exceptions=[StaleElementReferenceException])
    try:
        browser.get(f"{base}/lab/tree/notebooks?token={token}")
        item = wait.until(EC.element_to_be_clickable(
            (By.XPATH, f"//li[contains(@class,'jp-DirListing-item')][.//span[text()='{NOTEBOOK}']]")))
        ActionChains(browser).context_click(item).perform()
        ActionChains(browser).move_to_element(wait.until(EC.visibility_of_element_located(_menu_item("Open With"))
                                                         )).perform()
        wait.until(EC.element_to_be_clickable(_menu_item("Notebook"))).click()
        # the percent-format .py is rendered as a notebook: markdown and code cells, the project's kernel
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-CodeCell")) >= 3)
        wait.until(lambda d: f"Python ({KERNEL_NAME})" in d.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel").text)
        assert browser.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-MarkdownCell")
        # run the parameters cell (the first code cell), insert a cell below it, run it and read its output
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, ".jp-NotebookPanel .jp-CodeCell .cm-content"))
                   ).click()
        _shift_enter(browser)
        ActionChains(browser).send_keys(Keys.ESCAPE).send_keys("a").send_keys(Keys.ENTER).perform()
        ActionChains(browser).send_keys("import sys; print('browser test:', profile, n_train, sys.prefix)").perform()
        _shift_enter(browser)
        out = WebDriverWait(browser, 180).until(lambda d: [
            e.text for e in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output") if "browser test:" in e.text])
        # a figure: one more cell, drawn with lib.outputs.plotting and shown with plt.show()
        assert not browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")
        ActionChains(browser).send_keys(Keys.ESCAPE).send_keys("a").send_keys(Keys.ENTER).perform()
        ActionChains(browser).send_keys(FIGURE_CELL).perform()
        _shift_enter(browser)
        try:
            widths = WebDriverWait(browser, 180).until(lambda d: [
                d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
                for img in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")] or None)
        except TimeoutException:
            outputs = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")]
            pytest.fail(f"no figure rendered in an output area after plt.show(); outputs: {outputs}")
    except Exception:
        browser.save_screenshot(str(tmp_path / "failure.png"))
        raise
    finally:
        if cleanup and checkpoints.is_dir():
            for made in checkpoints.glob(NOTEBOOK.replace(".py", "-checkpoint.*")):
                made.unlink()
            if not any(checkpoints.iterdir()):
                checkpoints.rmdir()
    assert len(widths) == 1 and widths[0] > 100, f"one decoded figure expected, natural widths {widths}"
    words = out[0].split()
    assert words[2:4] == ["smoke", "1000"], out
    assert Path(words[4]).resolve() == (REPO_ROOT / ".venv").resolve(), f"kernel not from .venv: {out}"
    # nothing was written: the .py is untouched and no paired .ipynb appeared or changed
    assert (REPO_ROOT / "notebooks" / NOTEBOOK).read_bytes() == source
    assert (paired.stat().st_mtime_ns if paired.exists() else None) == before
