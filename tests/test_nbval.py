"""``make nbval`` (a step of ``make test``): nbval re-executes an executed smoke notebook and compares the output of
its cell tagged ``nbval-check-output`` (the key numbers, ``lib.outputs.key_numbers``) with the saved one. Unaltered it
passes; a deliberately changed number in the saved output fails. The sanitizers replace timings, paths, progress
bars, dates and commits, never a number of the key-number lines."""
import json
import os
import re
import subprocess
import sys

import pytest
from nbval.plugin import get_sanitize_patterns

from lib import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "results" / "smoke" / "notebooks"
SANITIZE = REPO_ROOT / "tests" / "nbval_sanitize.cfg"
CHEAPEST = NOTEBOOKS / "01_train.ipynb"     # ~5 s to re-execute (the trained weights are cached)


def _checked_cell(nb: dict) -> dict | None:
    return next((c for c in nb["cells"] if "nbval-check-output" in c.get("metadata", {}).get("tags", [])), None)


def _nbval(path):
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-sanitize-with", str(SANITIZE), str(path)], cwd=path.parent, env=env,
                          capture_output=True, text=True, timeout=600)


def _sanitizers():
    """The (regex, replacement) pairs exactly as nbval reads them from the file."""
    pairs = get_sanitize_patterns(SANITIZE.read_text())
    assert len(pairs) == 5
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
    for line in ["mnist_mlp2_s0: train_loss 0.7334109, train_accuracy 0.759, test_accuracy 0.7003",
                 "K mnist mlp2 s0 sigma Delta=0.001: fixed 253, band 359, closed 148",
                 "main mnist_mlp2_s0 hessian D=4 gaussian sigma=0.3 plain: vbar 21.92444, Delta_last 1.38242e-05",
                 r"\KMcMnistMlpTwo = 1234567", r"\SlopeMnistMlpTwoHess = -2.05",
                 r"\TraceMnistMlpTwo = \ensuremath{1.23\times 10^{5}}"]:
        assert _sanitize(line) == line


@pytest.mark.skipif(not CHEAPEST.is_file() or _checked_cell(json.loads(CHEAPEST.read_text())) is None,
                    reason="no executed smoke notebook with a key-number cell (make notebooks-smoke)")
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
