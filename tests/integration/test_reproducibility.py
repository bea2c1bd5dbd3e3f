"""The smoke pipeline (notebooks 01-05) is deterministic, resumable after a kill, invalidates exactly what a changed
parameter touches, and reproduces the committed reference numbers.

Run A is the complete smoke run that ``make test`` has just made (``SMOKE_RUN_A=results``: the results root it
wrote); without that variable the test makes its own. Run B is killed with SIGKILL while the Monte-Carlo notebook
is working, then started again. So ``make test`` runs the smoke pipeline twice in all. Then:

* B's resumed run recomputes nothing that was complete at the kill (their completion markers are untouched),
  and its result files are byte-identical to A's (timing and provenance fields excluded);
* changing one parameter (the projection grid) recomputes the projection results only;
* A's key numbers equal ``tests/reference/smoke.json`` within the tolerances stored there. After an intended
  change of the science, regenerate that file with ``make update-reference`` (``tests/key_numbers.py``) and
  commit it with the change that explains it; this test only reads it.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib import REPO_ROOT
from lib.infra.results import ResultStore
from lib.records import REGISTRY
from tests.key_numbers import REFERENCE, key_numbers, within

STAGES = ["01_train", "02_spectrum", "03_projection", "04_monte_carlo", "05_convergence", "07_your_model",
          "08_prediction"]
#: summaries rewritten by design on every run of their notebook (cheap, derived from the stored results)
ALWAYS_REWRITTEN = {"plan", "analysis"}
assert ALWAYS_REWRITTEN <= {f for s in REGISTRY.values() for f in s.folders}


def _args(extra=()):
    args = [sys.executable, "-m", "lib", "--profile", "smoke", *extra]
    for stage in STAGES:
        args += ["--only", stage]
    return args


def _env(root):
    return {**os.environ, "LANDSCAPE_RESULTS": str(root)}


def _run(root, extra=()):
    out = subprocess.run(_args(extra), cwd=REPO_ROOT, env=_env(root), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "smoke"


def _descendants(pid: int) -> list[int]:
    """pid and all its descendants (the runner and the Jupyter kernel it started in its own session)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _markers(root: Path) -> dict[Path, int]:
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*.meta.json")}


def _strip_timing(obj):
    """Drop wall-clock values: keys with "seconds" and the speed ratios computed from them ("speedup...")."""
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if "seconds" not in k and not k.startswith("speedup")}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    given = os.environ.get("SMOKE_RUN_A")
    if given:
        root = Path(given) if Path(given).is_absolute() else REPO_ROOT / given
        assert (root / "smoke" / "analysis").is_dir(), f"SMOKE_RUN_A={given} holds no complete smoke run"
        return root / "smoke"
    return _run(tmp_path_factory.mktemp("a"))


@pytest.fixture(scope="module")
def run_b(tmp_path_factory):
    """A run killed while 04_monte_carlo works (after its first curve is complete), then started again."""
    root = tmp_path_factory.mktemp("b")
    proc = subprocess.Popen(_args(), cwd=REPO_ROOT, env=_env(root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    curves = root / "smoke" / "curves"
    deadline = time.monotonic() + 600
    while not any(curves.glob("*.meta.json")):
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, "no Monte-Carlo curve after 10 minutes"
        time.sleep(0.05)
    for pid in _descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    time.sleep(1.0)
    killed_at = _markers(root / "smoke")
    store = ResultStore("smoke", root=root / "smoke")
    complete_curves = store.names("curves")
    assert complete_curves and not (root / "smoke" / "analysis").exists(), "the kill came at the wrong time"
    out = _run(root)
    return out, killed_at


def test_killed_run_resumes_without_recomputing_finished_work(run_b):
    out, killed_at = run_b
    after = _markers(out)
    redone = [str(p) for p, t in killed_at.items() if p.parts[0] not in ALWAYS_REWRITTEN and after.get(p) != t]
    assert not redone, f"complete results were recomputed after the restart: {redone}"
    assert len(after) > len(killed_at)


def test_two_runs_are_identical_including_a_resumed_one(run_a, run_b):
    a, (b, _) = run_a, run_b
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.parent.name != "notebooks"
                   and not p.name.endswith(".meta.json") and p.name != "timings.json")
    stages = {f.parts[0] for f in files}
    assert {"train", "spectrum", "projection", "curves", "terms", "analysis", "r0"} <= stages
    for rel in files:
        pa, pb = a / rel, b / rel
        assert pb.is_file(), f"{rel} missing in the second run"
        if rel.suffix == ".json":
            assert _strip_timing(json.loads(pa.read_text())) == _strip_timing(json.loads(pb.read_text())), rel
        else:
            assert pa.read_bytes() == pb.read_bytes(), f"{rel} differs between two identical runs"
    # the metas agree on parameters and payload checksums (identity), not on provenance/timing; JSON payloads (the
    # analysis tables, notebook 07's report) embed wall times, so they were compared above with timing fields removed
    for meta in a.rglob("*.meta.json"):
        ma, mb = json.loads(meta.read_text()), json.loads((b / meta.relative_to(a)).read_text())
        assert ma["params"] == mb["params"]
        json_payload = meta.with_name(meta.name.replace(".meta.json", ".json")).is_file()
        if meta.parent.name not in ALWAYS_REWRITTEN and not json_payload:
            assert ma["sha256"] == mb["sha256"], meta.relative_to(a)


def test_changed_parameter_invalidates_exactly_its_results(run_b):
    out, _ = run_b
    before = _markers(out)
    args = [sys.executable, "-m", "lib", "--profile", "smoke", "--only", "03_projection",
            "--set", "projection.grid_points=5"]
    res = subprocess.run(args, cwd=REPO_ROOT, env=_env(out.parent), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    after = _markers(out)
    changed = {p.parts[0] for p, t in before.items() if after[p] != t}
    assert changed == {"projection"}, changed
    store = ResultStore("smoke", root=out)
    assert {store.meta("projection", n)["params"]["grid_points"] for n in store.names("projection")} == {5}


def test_key_numbers_match_the_committed_reference(run_a):
    got = key_numbers(run_a)
    reference = json.loads(REFERENCE.read_text())
    assert set(got) == set(reference["numbers"]), "the reference file and the test disagree on the key numbers"
    off = {k: (got[k], r) for k, r in reference["numbers"].items() if not within(got[k], r)}
    assert not off, ("smoke key numbers moved beyond their tolerance (value, reference): "
                     + json.dumps(off, indent=1))
