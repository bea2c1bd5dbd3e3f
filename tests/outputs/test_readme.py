"""The README's results block is what lib.outputs.readme generates from the paper profile's results; the generation
and the staleness check run on the tiny pipeline too."""
import json

import pytest

from lib.infra.results import RESULTS_ROOT
from lib.outputs import latex, readme


def test_block_markers_are_in_the_readme():
    assert readme.current(readme.README.read_text(), "paper") is not None, "README lost its results block markers"


#: why the two checks of the committed README and docs/results.md skip on a fresh clone
NO_PAPER_RESULTS = ("compares the committed README.md / docs/results.md with the paper profile's own results, which "
                    "only `make reproduce` (~36 min) makes in results/paper/ and paper/generated/paper/; the tiny "
                    "profile's numbers differ, so it cannot stand in. The generation, the write and the staleness "
                    "check run on the tiny pipeline in test_block_of_the_tiny_pipeline_is_written_and_checked")


@pytest.mark.skipif(not (RESULTS_ROOT / "paper" / "analysis" / "summary.json").is_file(), reason=NO_PAPER_RESULTS)
def test_readme_block_equals_the_generated_one():
    assert readme.current(readme.README.read_text(), "paper") == readme.block("paper"), (
        "README results block is stale: run `make readme-results`")


@pytest.mark.skipif(not (RESULTS_ROOT / "paper" / "analysis" / "summary.json").is_file()
                    or not (readme.generated_dir("paper") / "numbers.json").is_file(), reason=NO_PAPER_RESULTS)
def test_results_doc_equals_the_generated_one():
    assert readme.RESULTS_DOC.read_text() == readme.results_doc("paper"), (
        "docs/results.md is stale: run `make readme-results`")


def _count(x) -> str:
    return "--" if x is None else f"{int(round(x)):,}"


def test_block_of_the_tiny_pipeline_is_written_and_checked(tiny_pipeline, tmp_path):
    """The block of a profile from its results: one row per summary row at the middle threshold with K and the
    pilot's K as the summary has them, the run's timings; ``write`` puts it between the markers only, after which
    the check of test_readme_block_equals_the_generated_one passes, and fails on a stale block."""
    store, profile = tiny_pipeline.store, tiny_pipeline.store.profile
    text = readme.block(profile, store)
    summary = readme.load_table(store, "summary")
    mid = sorted({r["delta"] for r in summary})[len({r["delta"] for r in summary}) // 2]
    rows = [r for r in summary if r["delta"] == mid]
    table = [line for line in text.splitlines() if line.startswith("| MNIST |")]
    assert len(table) == len(rows) > 0
    for line, r in zip(table, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == ["MNIST", "MLP-1", "loss gap" if r["scale"] == "loss_gap" else f"sigma = {r['sigma']:g}",
                             f"{mid:g}"]
        assert cells[4] == f"{_count(r['K_median'])} ({_count(r['K_q05'])}-{_count(r['K_q95'])})"
        assert cells[5] == _count(r["K_pilot"])
    assert "stage wall times 01_train 60 s, 04_monte_carlo 90 s (total 2 min" in text      # conftest.TINY_TIMINGS
    path = tmp_path / "README.md"
    path.write_text(f"# title\n\n{readme.BEGIN.format(profile=profile)}\nstale\n{readme.END}\nafter\n")
    assert readme.current(path.read_text(), profile) != readme.block(profile, store)       # the check fails
    readme.write(profile, path, store)
    assert readme.current(path.read_text(), profile) == readme.block(profile, store)       # and now passes
    assert path.read_text().startswith("# title\n\n") and path.read_text().endswith(f"{readme.END}\nafter\n")


def test_results_doc_has_every_run_of_the_profile(tiny_pipeline):
    """docs/results.md of a profile lists each (dataset, model) it ran with its accuracy, and its summary rows."""
    store = tiny_pipeline.store
    numbers = json.loads((tiny_pipeline.generated_dir / "numbers.json").read_text())
    text = readme.results_doc(store.profile, store, tiny_pipeline.generated_dir / "numbers.json")
    common = tiny_pipeline.stage("figures")[0]
    for ds in common.datasets:
        for m in common.models:
            label = f"| {readme.TEX_LABELS[ds]} | {readme.TEX_LABELS[m]} | "
            acc = readme.plain(numbers[latex.macro("acc", ds, m)])
            assert f"{label}{acc} +- " in text
    summary = readme.load_table(store, "summary")
    assert text.count("| loss gap |") == len([r for r in summary if r["scale"] == "loss_gap"])
    assert "n/a +- n/a" not in text


def test_plain_text_of_macro_values():
    assert readme.plain(r"\ensuremath{6.8\times 10^{-6}}") == "6.8e-6"
    assert readme.plain("0.025--0.033") == "0.025-0.033"
    assert readme.plain("10{,}000") == "10,000"
    assert readme.plain(r"12\,\%") == "12 %"


def test_replacement_only_touches_the_block(tmp_path, monkeypatch):
    text = f"# title\n\nbefore\n{readme.BEGIN.format(profile='x')}\nold\n{readme.END}\nafter\n"
    path = tmp_path / "README.md"
    path.write_text(text)
    monkeypatch.setattr(readme, "block", lambda profile="paper", store=None: (
        f"{readme.BEGIN.format(profile=profile)}\nnew\n{readme.END}\n"))
    readme.write("x", path)
    assert path.read_text() == f"# title\n\nbefore\n{readme.BEGIN.format(profile='x')}\nnew\n{readme.END}\nafter\n"
    path.write_text("no markers\n")
    with pytest.raises(ValueError, match="no results block markers"):
        readme.write("x", path)
