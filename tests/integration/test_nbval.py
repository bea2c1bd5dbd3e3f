"""``make nbval`` (a step of ``make test``): nbval re-executes an executed smoke notebook and compares the output of
its cell tagged ``nbval-check-output`` (the key numbers, ``lib.outputs.key_numbers``) with the saved one. Unaltered it
passes; a deliberately changed number in the saved output fails. The sanitizers replace timings, paths, progress
bars, dates, commits and matplotlib's figure text, never a number of the key-number lines; a checked cell that also
shows a figure passes with other image bytes (nbval skips them) and fails on its printed number."""
import base64
import io
import json
import os
import re
import subprocess
import sys

import pytest
from nbval.plugin import get_sanitize_patterns
from PIL import Image

from lib import REPO_ROOT
from lib.infra import runner

NOTEBOOKS = REPO_ROOT / "results" / "smoke" / "notebooks"
SANITIZE = REPO_ROOT / "tests" / "nbval_sanitize.cfg"
CHEAPEST = NOTEBOOKS / "01_train.ipynb"     # ~5 s to re-execute (the trained weights are cached)


def _checked_cell(nb: dict) -> dict | None:
    """The last cell tagged ``nbval-check-output``: the key numbers (a worked run's checked cell comes before it)."""
    return next((c for c in reversed(nb["cells"]) if "nbval-check-output" in c.get("metadata", {}).get("tags", [])),
                None)


def _nbval(path):
    # as make nbval: kernels draw inline, one thread, the numerics pinned as the runner's kernels had them
    env = {**os.environ, **runner.KERNEL_ENV, **runner.numerics_pins(), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-sanitize-with", str(SANITIZE), str(path)], cwd=path.parent, env=env,
                          capture_output=True, text=True, timeout=600)


def _sanitizers():
    """The (regex, replacement) pairs exactly as nbval reads them from the file."""
    pairs = get_sanitize_patterns(SANITIZE.read_text())
    assert len(pairs) == 6
    return pairs


def _sanitize(text):
    for regex, replace in _sanitizers():
        text = re.sub(regex, replace, text)
    return text


def test_sanitizers_replace_run_dependent_parts_but_no_number():
    assert _sanitize("mnist_mlp2_s0: computed in 17.3 s") == "mnist_mlp2_s0: computed in TIME"
    assert _sanitize("saved in /work/main/results/smoke/train") == "saved in PATH"
    assert _sanitize("written 2026-12-01T22:45:03+00:00, commit 5b349fe3a1") == "written DATE, commit COMMIT"
    assert _sanitize(" 45%|#####     | 9/20 [00:01<00:02]") == " PROGRESS"
    assert _sanitize("<Figure size 1050x787.5 with 4 Axes>") == _sanitize("<Figure size 510x382 with 1 Axes>") \
        == "FIGURE"
    for line in ["mnist_mlp2_s0: train_loss 0.7334109, train_accuracy 0.759, test_accuracy 0.7003",
                 "K mnist mlp2 s0 sigma Delta=0.001: fixed 253, band 359, closed 148",
                 "main mnist_mlp2_s0 hessian D=4 gaussian sigma=0.3 plain: vbar 21.92444, Delta_last 1.38242e-05",
                 r"\KMcMnistMlpTwo = 1234567", r"\SlopeMnistMlpTwoHess = -2.05",
                 r"\TraceMnistMlpTwo = \ensuremath{1.23\times 10^{5}}"]:
        assert _sanitize(line) == line


@pytest.mark.skipif(not CHEAPEST.is_file() or _checked_cell(json.loads(CHEAPEST.read_text())) is None,
                    reason="re-executes results/smoke/notebooks/01_train.ipynb with its cached smoke results, which "
                           "`make notebooks-smoke` writes (make test runs it before pytest; a fresh clone's make "
                           "pytest has none); the same pass/fail check on a notebook the test executes itself is "
                           "test_a_checked_cell_showing_a_figure_is_compared_on_its_numbers_not_its_image")
def test_nbval_passes_the_executed_notebook_and_fails_on_a_changed_number(tmp_path):
    nb = json.loads(CHEAPEST.read_text())
    ok = tmp_path / "ok" / CHEAPEST.name
    ok.parent.mkdir()
    ok.write_text(json.dumps(nb))
    run = _nbval(ok)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    cell = _checked_cell(nb)
    text = "".join(cell["outputs"][0]["text"])
    match = re.search(r"test_accuracy (\d\.\d+)", text)
    assert match, text
    value = match.group(1)
    changed = value[:-1] + str((int(value[-1]) + 1) % 10)         # the last printed digit, one up
    cell["outputs"][0]["text"] = [line.replace(f"test_accuracy {value}", f"test_accuracy {changed}", 1)
                                  for line in cell["outputs"][0]["text"]]
    assert "".join(cell["outputs"][0]["text"]) != text
    bad = tmp_path / "bad" / CHEAPEST.name
    bad.parent.mkdir()
    bad.write_text(json.dumps(nb))
    run = _nbval(bad)
    assert run.returncode != 0 and "1 failed" in run.stdout, run.stdout[-3000:]
    assert changed in run.stdout and value in run.stdout          # nbval shows the saved and the new output


FIGURE_CELL = '''# %% tags=["parameters"]
profile = "x"

# %% tags=["nbval-check-output"]
import matplotlib.pyplot as plt

from lib.outputs import plotting

with plotting.style():
    fig, axes = plotting.figure()
    axes[0, 0].plot([0, 1, 2], [0.5, 0.25, 0.125])
print("Delta_last 0.125")
plt.show()
'''


def test_a_checked_cell_showing_a_figure_is_compared_on_its_numbers_not_its_image(tmp_path, monkeypatch):
    books = tmp_path / "notebooks"
    books.mkdir()
    (books / "01_train.py").write_text(FIGURE_CELL)
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", books)
    monkeypatch.setattr(runner, "RESULTS_ROOT", tmp_path / "results")
    assert runner.main(["--profile", "smoke"]) == 0
    nb = json.loads((tmp_path / "results" / "smoke" / "notebooks" / "01_train.ipynb").read_text())
    cell = _checked_cell(nb)
    shown = [o for o in cell["outputs"] if "image/png" in o.get("data", {})]
    assert len(shown) == 1 and "<Figure size" in "".join(shown[0]["data"]["text/plain"])
    other = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(other, format="PNG")
    shown[0]["data"]["image/png"] = base64.b64encode(other.getvalue()).decode()      # other image bytes
    shown[0]["data"]["text/plain"] = "<Figure size 640x480 with 1 Axes>"              # and another size
    ok = tmp_path / "ok" / "01_train.ipynb"
    ok.parent.mkdir()
    ok.write_text(json.dumps(nb))
    run = _nbval(ok)
    assert run.returncode == 0 and "passed" in run.stdout and "failed" not in run.stdout, run.stdout[-3000:]
    for out in cell["outputs"]:
        if out["output_type"] == "stream":
            out["text"] = "".join(out["text"]).replace("0.125", "0.126")
    bad = tmp_path / "bad" / "01_train.ipynb"
    bad.parent.mkdir()
    bad.write_text(json.dumps(nb))
    run = _nbval(bad)
    assert run.returncode != 0 and "1 failed" in run.stdout and "0.126" in run.stdout, run.stdout[-3000:]
