"""The README's results block is what lib.outputs.readme generates from the paper profile's results."""
import pytest

from lib.infra.results import RESULTS_ROOT
from lib.outputs import readme


def test_block_markers_are_in_the_readme():
    assert readme.current(readme.README.read_text(), "paper") is not None, "README lost its results block markers"


@pytest.mark.skipif(not (RESULTS_ROOT / "paper" / "analysis" / "summary.json").is_file(),
                    reason="the paper profile has not been reproduced on this machine (make reproduce)")
def test_readme_block_equals_the_generated_one():
    assert readme.current(readme.README.read_text(), "paper") == readme.block("paper"), (
        "README results block is stale: run `make readme-results`")


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
