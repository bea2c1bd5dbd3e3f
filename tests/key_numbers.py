"""The smoke profile's key numbers and their committed reference (``tests/reference/smoke.json``).

    python tests/key_numbers.py --update [RESULTS_DIR]   # rewrite the reference values from results/smoke

Regenerate only after an intended change of the science, and commit the file with the change that explains it.
The tolerances in the file are kept; only the values are replaced.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lib.infra.results import ResultStore  # noqa: E402

REFERENCE = Path(__file__).parent / "reference" / "smoke.json"


def key_numbers(root: Path) -> dict:
    """Test accuracy, top eigenvalue, trace, slopes, V-bar and sufficient sample sizes of a smoke run."""
    store = ResultStore("smoke", root=root)
    train = store.meta("train", "mnist_mlp2_s0")["summary"]
    spec = store.meta("spectrum", "mnist_mlp2_s0")["summary"]
    slopes = {r["subspace"]: r for r in store.load("analysis", "slopes").payload["rows"] if r["seed"] == 0}
    sizes = {r["delta"]: r for r in store.load("analysis", "sample_size").payload["rows"]
             if r["seed"] == 0 and r["scale"] == "sigma"}
    return {
        "test_accuracy": train["test_accuracy"],
        "lambda_1": spec["lambda_1"],
        "trace": spec["trace"],
        "slope_hessian": slopes["hessian"]["slope"],
        "slope_random": slopes["random"]["slope"],
        "vbar_hessian": slopes["hessian"]["vbar"],
        "K_mc_1e-3": sizes[1e-3]["K_fixed"],
        "K_closed_1e-3": sizes[1e-3]["K_closed"],
    }


def within(value, ref: dict) -> bool:
    return abs(value - ref["value"]) <= ref.get("atol", 0.0) + ref.get("rtol", 0.0) * abs(ref["value"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="write the values into the reference file")
    parser.add_argument("results", nargs="?", default=str(REPO / "results" / "smoke"))
    args = parser.parse_args(argv)
    got = key_numbers(Path(args.results))
    reference = json.loads(REFERENCE.read_text())
    for key, value in got.items():
        old = reference["numbers"][key]["value"]
        print(f"{key:16s} {old!r:>22} -> {value!r}")
        if args.update:
            reference["numbers"][key]["value"] = value
    if args.update:
        REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")
        print(f"wrote {REFERENCE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
