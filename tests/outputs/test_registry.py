"""The figures stage (``lib.outputs.registry``, notebook 06) on the tiny pipeline: every registered figure as PDF and
PNG, the tables and source record, numbers.tex; ``registry.missing`` lists exactly the outputs not there."""
import json
import shutil

import pytest

from lib.outputs import latex, registry, tables
from lib.records import projection as projection_records
from tests.conftest import TINY_TIMINGS

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _expected_figure_names(store):
    runs = projection_records.projected_runs(store)
    return [n for key in registry.FIGURES for n in
            ([f"surfaces_{ds}_{m}" for ds, m, _ in runs] if key == "surfaces" else [key])]


def test_figures_stage_writes_every_registered_figure_as_pdf_and_png(tiny_pipeline):
    out = tiny_pipeline.out["figures"]
    names = _expected_figure_names(tiny_pipeline.store)
    assert out["figures"] == names and "surfaces_mnist_mlp1" in names and len(names) == len(registry.FIGURES)
    assert out["removed"] == []
    written = sorted(p.name for p in tiny_pipeline.figures_dir.iterdir())
    assert written == sorted(f"{n}.{e}" for n in names for e in ("pdf", "png"))
    for n in names:
        assert (tiny_pipeline.figures_dir / f"{n}.pdf").read_bytes()[:5] == b"%PDF-"
        assert (tiny_pipeline.figures_dir / f"{n}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_stage_writes_the_tables_and_source(tiny_pipeline):
    store, gen = tiny_pipeline.store, tiny_pipeline.generated_dir
    out = tiny_pipeline.out["figures"]
    common, _ = tiny_pipeline.stage("figures")
    assert out["tables"] == list(registry.TABLES) and {"sample_size", "solvers", "theory"} <= set(out["tables"])
    assert (gen / "sample_size.tex").read_text() == tables.sample_size_table(store)
    assert (gen / "solvers.tex").read_text() == tables.solver_table(store)
    assert (gen / "theory.tex").read_text() == tables.theory_table(store)
    inputs = registry.Inputs.of(store, common)
    for name, make in registry.TABLES.items():
        assert (gen / f"{name}.tex").read_text() == make(inputs)
    assert json.loads((gen / "source.json").read_text()) == {
        "profile": "pipeline_test", "figures": sorted(out["figures"]), "n_numbers": len(out["numbers"])}
    assert sorted(p.name for p in gen.iterdir()) == sorted(
        ["numbers.json", "numbers.tex", "placeholders.txt", "source.json", *(f"{t}.tex" for t in registry.TABLES)])


def test_figures_stage_numbers_tex_has_one_newcommand_per_value(tiny_pipeline):
    values = tiny_pipeline.out["figures"]["numbers"]
    lines = (tiny_pipeline.generated_dir / "numbers.tex").read_text().splitlines()
    assert lines[0].startswith("% Generated")
    parsed = {}
    for line in lines[1:]:
        assert line.startswith("\\newcommand{\\") and line.endswith("}"), line
        name, _, value = line[len("\\newcommand{\\"):-1].partition("}{")
        assert name.isalpha() and name not in parsed
        parsed[name] = value
    # every value, and an "n/a" for each macro the paper uses that these results do not give
    missing = tiny_pipeline.out["figures"]["placeholders"]
    assert missing == [m for m in latex.placeholders(values) if m != "PlaceholderNote"]
    assert not set(missing) & {k for k, v in values.items() if v != "n/a"}
    note = "; entries ``n/a'' are not run in it" if missing else ""     # the setup sentence, only with placeholders
    assert parsed == {**values, **{m: "n/a" for m in missing}, "PlaceholderNote": note}
    assert len(lines) - 1 == len(parsed) > 100
    assert json.loads((tiny_pipeline.generated_dir / "numbers.json").read_text()) == parsed
    assert (tiny_pipeline.generated_dir / "placeholders.txt").read_text().split() == missing
    minutes = {k: v / 60 for k, v in TINY_TIMINGS.items()}                # the runner's timings, in minutes
    assert values["TimeTrain"] == latex.fmt(minutes["01_train"], 2) == "1"
    assert values["TimeMonteCarlo"] == "1.5" and values["TimeTotal"] == "2.5"
    assert values["Profile"] == "pipeline_test"


# ------------------------------------------------------------------------------------------------ missing
P = "pipeline_test"      # the tiny pipeline's profile


@pytest.fixture
def outputs_copy(tiny_pipeline, tmp_path, monkeypatch):
    """A copy of what notebook 06 wrote, under latex.FIGURES / GENERATED (patched roots) / profile."""
    figs, gen = tmp_path / "figures" / P, tmp_path / "generated" / P
    shutil.copytree(tiny_pipeline.figures_dir, figs)
    shutil.copytree(tiny_pipeline.generated_dir, gen)
    monkeypatch.setattr(latex, "FIGURES", tmp_path / "figures")
    monkeypatch.setattr(latex, "GENERATED", tmp_path / "generated")
    return figs, gen


def test_missing_lists_exactly_the_removed_outputs(outputs_copy, capsys):
    figs, gen = outputs_copy
    assert registry.missing(P) == []
    assert registry.main(["--check", "--profile", P]) == 0
    assert f"all {len(registry.TABLES)} tables, numbers.tex and the recorded figures of profile {P} are present" \
        in capsys.readouterr().out
    assert len(registry.missing("other")) == len(registry.TABLES) + 2      # another profile: nothing there yet
    for path in (gen / "solvers.tex", gen / "numbers.tex", figs / "r0_curves.png", figs / "spectrum.pdf"):
        path.unlink()
    assert registry.missing(P) == [f"paper/generated/{P}/solvers.tex", f"paper/generated/{P}/numbers.tex",
                                   f"paper/figures/{P}/r0_curves.png", f"paper/figures/{P}/spectrum.pdf"]   # sorted
    assert registry.main(["--profile", P]) == 1
    err = capsys.readouterr().err
    assert f"missing output: paper/figures/{P}/r0_curves.png" in err and f"make reproduce PROFILE={P}" in err
    assert registry.missing(P, ["r0_curves", "never_made"]) == [
        f"paper/generated/{P}/solvers.tex", f"paper/generated/{P}/numbers.tex", f"paper/figures/{P}/r0_curves.png",
        f"paper/figures/{P}/never_made.pdf", f"paper/figures/{P}/never_made.png"]


def test_missing_without_source_json_checks_tables_only(outputs_copy):
    figs, gen = outputs_copy
    (gen / "source.json").unlink()
    (figs / "delta_main.pdf").unlink()
    assert registry.missing(P) == [f"paper/generated/{P}/source.json"]
