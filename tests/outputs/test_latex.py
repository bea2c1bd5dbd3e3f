"""LaTeX output helpers (``lib.outputs.latex``): numbers.tex with one sorted \\newcommand per value and its
placeholders, ``fmt``/``pct``/``macro`` on edge values, pruning of figures not made, profile folders."""
import json

import numpy as np
import pytest

from lib.outputs import latex
from lib.outputs.latex import fmt, macro, pct


def test_write_numbers_one_sorted_newcommand_per_value_and_placeholders(tmp_path):
    values = {"Beta": "2", "Alpha": "1{,}000", "Epsilon": r"\ensuremath{x}"}
    missing = latex.write_numbers(values, tmp_path / "n.tex")
    assert missing == [m for m in latex.placeholders(values) if m != "PlaceholderNote"] and "Alpha" not in missing
    assert missing, "the paper uses numbers these three values do not give"
    # the setup sentence explaining "n/a" is there exactly when placeholders are
    full = {**values, **{m: "n/a" for m in missing}, "PlaceholderNote": "; entries ``n/a'' are not run in it"}
    assert (tmp_path / "n.tex").read_text().splitlines()[1:] == [f"\\newcommand{{\\{k}}}{{{v}}}"
                                                                for k, v in sorted(full.items())]
    assert json.loads((tmp_path / "n.json").read_text()) == full
    assert (tmp_path / "placeholders.txt").read_text().split() == missing
    with pytest.raises(ValueError, match=f"{len(missing)} number\\(s\\) the paper or slides use have no result"):
        latex.write_numbers(values, tmp_path / "m.tex", allow_placeholders=False)
    assert not (tmp_path / "m.tex").exists()
    complete = {m: "1" for m in latex.required_macros()}
    assert latex.write_numbers(complete, tmp_path / "c.tex", allow_placeholders=False) == []
    assert json.loads((tmp_path / "c.json").read_text())["PlaceholderNote"] == ""


def test_placeholders_are_the_macros_a_source_uses_without_a_value(tmp_path):
    tex = tmp_path / "main.tex"
    tex.write_text("\\newcommand{\\Local}{x}\nAcc \\AccMnistMlpTwo{} and \\KTop, $\\Delta$, \\Local, \\textbf{y}, "
                   "\\NTrain\n")
    assert latex.placeholders({"KTop": "4", "NTrain": "n/a"}, [tex]) == ["AccMnistMlpTwo", "NTrain"]
    assert latex.placeholders({"KTop": "4", "NTrain": "200", "AccMnistMlpTwo": "97.0"}, [tex]) == []


# ------------------------------------------------------------------------------------------------ fmt, pct, macro
@pytest.mark.parametrize("x, expected", [
    (0.123456, "0.123"), (-1.98, "-1.98"), (19.2345, "19.2"),
    (1245.68, "1{,}246"),                     # not 1245.68: three significant digits, whole number
    (27286.4, "27{,}286"), (99999.4, "99{,}999"),
    (123456.0, r"\ensuremath{1.23\times 10^{5}}"), (1e5, r"\ensuremath{1.00\times 10^{5}}"),
    (0.000298, r"\ensuremath{2.98\times 10^{-4}}"), (-0.000298, r"\ensuremath{-2.98\times 10^{-4}}"),
    (0.001, "0.001"), (0.0009999, r"\ensuremath{1.00\times 10^{-3}}"), (0.0, "0"), (1.0, "1"),
    (10000, "10{,}000"), (-1234567, "-1{,}234{,}567"), (np.int64(7), "7"),     # integers exactly
    (np.float32(0.5), "0.5"), (None, "n/a"), (float("nan"), "n/a"), (float("inf"), "n/a"), (-np.inf, "n/a"),
])
def test_fmt_edge_values(x, expected):
    assert fmt(x) == expected


def test_fmt_digits_and_pct():
    assert fmt(0.123456, 2) == "0.12" and fmt(1.5, 2) == "1.5" and fmt(3e-5, 2) == r"\ensuremath{3.0\times 10^{-5}}"
    assert pct(0.9651) == "96.5" and pct(1) == "100.0" and pct(0) == "0.0" and pct(None) == "n/a"
    assert pct(0.00049) == "0.0" and pct(np.float64(0.25)) == "25.0"


def test_macro_names_are_letters_only():
    assert macro("acc", "mnist", "mlp2") == "AccMnistMlpTwo"
    assert macro("K", "mc", "fashion_mnist", "cnn") == "KMcFashionCnn"
    assert macro("time", "04_monte_carlo") == "TimeZeroFourMonteCarlo"
    assert macro("k2", "mnist", "mlp1", "hessian") == "KTwoMnistMlpOneHess"
    assert macro("r0", "slope", "min") == "RZeroSlopeMin"
    assert macro("a-b_c d") == "ABCD" and macro() == "" and macro("", "x") == "X"


def test_prune_figures_removes_only_files_not_made(tmp_path):
    for name in ("spectrum.pdf", "spectrum.png", "surfaces_old.pdf", "surfaces_old.png", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert latex.prune_figures({"spectrum": None}, tmp_path) == ["surfaces_old.pdf", "surfaces_old.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "spectrum.pdf", "spectrum.png"]


def test_profile_folders_are_plain_names_under_the_roots(tmp_path, monkeypatch):
    monkeypatch.setattr(latex, "FIGURES", tmp_path / "f")
    monkeypatch.setattr(latex, "GENERATED", tmp_path / "g")
    assert latex.figures_dir("smoke") == tmp_path / "f" / "smoke"
    assert latex.generated_dir("paper") == tmp_path / "g" / "paper"
    for bad in ("", "../paper", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="not a plain folder name"):
            latex.figures_dir(bad)
