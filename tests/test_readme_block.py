"""The README's results block is what lib.outputs.readme generates from the paper profile's results."""
import json

import pytest

from lib.infra.results import RESULTS_ROOT
from lib.outputs import latex, readme


def test_block_markers_are_in_the_readme():
    assert readme.current(readme.README.read_text(), "paper") is not None, "README lost its results block markers"


@pytest.mark.skipif(not (RESULTS_ROOT / "paper" / "analysis" / "summary.json").is_file(),
                    reason="the paper profile has not been reproduced on this machine (make reproduce)")
def test_readme_block_equals_the_generated_one():
    assert readme.current(readme.README.read_text(), "paper") == readme.block("paper"), (
        "README results block is stale: run `make readme-results`")


@pytest.mark.skipif(not (RESULTS_ROOT / "paper" / "analysis" / "summary.json").is_file()
                    or not (readme.generated_dir("paper") / "numbers.json").is_file(),
                    reason="the paper profile has not been reproduced on this machine (make reproduce)")
def test_results_doc_equals_the_generated_one():
    assert readme.RESULTS_DOC.read_text() == readme.results_doc("paper"), (
        "docs/results.md is stale: run `make readme-results`")


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
    monkeypatch.setattr(readme, "block", lambda profile="paper": f"{readme.BEGIN.format(profile=profile)}\nnew\n"
                                                                 f"{readme.END}\n")
    readme.write("x", path)
    assert path.read_text() == f"# title\n\nbefore\n{readme.BEGIN.format(profile='x')}\nnew\n{readme.END}\nafter\n"
    path.write_text("no markers\n")
    with pytest.raises(ValueError, match="no results block markers"):
        readme.write("x", path)
