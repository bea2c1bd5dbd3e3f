"""Number formatting and macro names of the generated LaTeX (paper/generated/numbers.tex)."""
from lib.outputs.report import fmt, macro, pct


def test_fmt_significant_digits_and_ranges():
    assert fmt(0.123456) == "0.123"
    assert fmt(-1.98) == "-1.98"
    assert fmt(19.2345) == "19.2"
    assert fmt(1245.68) == "1{,}246"           # not 1245.68: three significant digits, whole number
    assert fmt(27286.4) == "27{,}286"
    assert fmt(123456.0) == r"\ensuremath{1.23\times 10^{5}}"
    assert fmt(0.000298) == r"\ensuremath{2.98\times 10^{-4}}"
    assert fmt(10000) == "10{,}000"             # integers exactly
    assert fmt(None) == "n/a" and fmt(float("nan")) == "n/a"
    assert pct(0.9651) == "96.5"


def test_macro_names_are_letters_only():
    assert macro("acc", "mnist", "mlp2") == "AccMnistMlpTwo"
    assert macro("K", "mc", "fashion_mnist", "cnn") == "KMcFashionCnn"
    assert macro("time", "04_monte_carlo") == "TimeZeroFourMonteCarlo"


def test_prune_figures_removes_only_files_not_made(tmp_path):
    from lib.outputs.report import prune_figures

    for name in ("spectrum.pdf", "spectrum.png", "surfaces_old.pdf", "surfaces_old.png", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert prune_figures({"spectrum": None}, tmp_path) == ["surfaces_old.pdf", "surfaces_old.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "spectrum.pdf", "spectrum.png"]
