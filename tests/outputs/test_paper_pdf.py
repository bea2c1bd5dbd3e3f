"""The built paper and slides of one profile quote the numbers of that profile's results (run after `make paper`;
``make paper-test PROFILE=smoke`` sets ``PAPER_PROFILE``, default paper): ``paper/build/<profile>/main.pdf``,
``slides/build/<profile>/main.pdf`` and ``paper/generated/<profile>/``."""
import json
import os
import re
import subprocess

import numpy as np
import pytest

from lib import REPO_ROOT
from lib.infra.results import ResultStore
from lib.outputs.latex import fmt, pct
from lib.records.convergence import load_table as load_analysis
from lib.records.runs import run_name
from lib.records.spectrum import load_spectrum

pytestmark = pytest.mark.paper
PROFILE = os.environ.get("PAPER_PROFILE", "paper")
PAPER = REPO_ROOT / "paper" / "build" / PROFILE / "main.pdf"
SLIDES = REPO_ROOT / "slides" / "build" / PROFILE / "main.pdf"
GENERATED = REPO_ROOT / "paper" / "generated" / PROFILE


def _text(pdf):
    if not pdf.is_file():
        pytest.fail(f"{pdf.relative_to(REPO_ROOT)} is missing: run `make paper slides PROFILE={PROFILE}` first")
    out = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return out.replace("\u2212", "-").replace("\ufb01", "fi")


@pytest.fixture(scope="module")
def source():
    meta = json.loads((GENERATED / "source.json").read_text())
    assert meta["profile"] == PROFILE, f"{GENERATED}/source.json was written by profile {meta['profile']}"
    return ResultStore(PROFILE)


@pytest.mark.parametrize("pdf", [PAPER, SLIDES], ids=["paper", "slides"])
def test_no_unresolved_references(pdf):
    assert "??" not in _text(pdf)


def test_paper_length_and_embedded_fonts():
    info = subprocess.run(["pdfinfo", str(PAPER)], capture_output=True, text=True, check=True).stdout
    pages = int(re.search(r"Pages:\s+(\d+)", info).group(1))
    # a sanity range against a runaway build (a table or figure that lost its float, a repeated input): 25 pages
    # with the seed study's paragraph, proofs and references included
    assert 8 <= pages <= 26, f"paper has {pages} pages"
    fonts = subprocess.run(["pdffonts", str(PAPER)], capture_output=True, text=True, check=True).stdout
    rows = fonts.splitlines()[2:]
    assert rows and all(" yes " in r for r in rows), "every font must be embedded:\n" + fonts


def test_key_numbers_in_the_paper_equal_the_results(source):
    """Recompute a few quoted numbers from the result files and find them in the PDF text."""
    text = _text(PAPER)
    ds, m = "mnist", "mlp2"
    seeds = sorted(int(n.rsplit("_s", 1)[1]) for n in source.names("train") if n.startswith(f"{ds}_{m}_s"))
    assert seeds, "the profile has no mnist/mlp2 run"
    acc = np.mean([source.meta("train", run_name(ds, m, s))["summary"]["test_accuracy"] for s in seeds])
    lam1 = np.mean([load_spectrum(source, ds, m, s)["eigenvalues"][0].item() for s in seeds])
    slope = next(r["slope"] for r in load_analysis(source, "slopes")
                 if (r["dataset"], r["model"], r["subspace"], r["seed"]) == (ds, m, "hessian", seeds[0]))
    for label, value in [("test accuracy", pct(acc)), ("lambda_1", fmt(lam1)), ("slope", fmt(slope))]:
        assert value in text, f"{label} {value} (from results/{source.profile}) not found in {PAPER}"


def test_numbers_tex_matches_results(source):
    numbers = json.loads((GENERATED / "numbers.json").read_text())
    acc = source.meta("train", run_name("mnist", "mlp2", 0))["summary"]["test_accuracy"]
    if numbers["NSeeds"] == "1":
        assert numbers["AccMnistMlpTwo"] == pct(acc)
    rows = load_analysis(source, "sample_size")
    mid = sorted({r["delta"] for r in rows})[len({r["delta"] for r in rows}) // 2]
    first = min(r["seed"] for r in rows)
    row = next(r for r in rows if (r["dataset"], r["model"], r["delta"], r["seed"], r["scale"])
               == ("mnist", "mlp2", mid, first, "sigma"))
    assert numbers["KMcMnistMlpTwo"] == (fmt(row["K_fixed"]) if row["K_fixed"] else "not reached")
