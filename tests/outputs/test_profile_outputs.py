"""Each profile has its own generated outputs: notebook 06 of one profile writes only into
``paper/figures/<profile>/`` and ``paper/generated/<profile>/``, leaves another profile's folders byte-identical, and
prunes stale figures only inside its own folder. Also: the key-number lines that nbval compares
(``lib.outputs.key_numbers``) are the saved values in a fixed format."""
import json

import numpy as np
import pytest

from lib.outputs import key_numbers, latex, registry
from lib.records.convergence import load_table
from lib.records.runs import run_name

pytestmark = pytest.mark.usefixtures("one_thread")


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_one_profile_never_touches_another_profiles_outputs(tiny_pipeline, tmp_path, monkeypatch):
    figs_root, gen_root = tmp_path / "paper" / "figures", tmp_path / "paper" / "generated"
    other_figs, other_gen = figs_root / "paper", gen_root / "paper"      # "the paper profile" of this tree
    for folder in (other_figs, other_gen):
        folder.mkdir(parents=True)
    (other_figs / "spectrum.pdf").write_bytes(b"%PDF-paper profile")
    (other_figs / "spectrum.png").write_bytes(b"\x89PNG paper profile")
    (other_figs / "only_in_paper.png").write_bytes(b"a figure the tiny profile does not make")
    (other_gen / "numbers.tex").write_text("\\newcommand{\\Profile}{paper}\n")
    (other_gen / "source.json").write_text('{"profile": "paper"}')
    (figs_root / "loose.png").write_bytes(b"a file directly under the root")
    own = figs_root / tiny_pipeline.store.profile
    own.mkdir()
    (own / "stale_figure.pdf").write_bytes(b"made by an older run")
    (own / "stale_figure.png").write_bytes(b"made by an older run")
    before = _tree(tmp_path / "paper")
    monkeypatch.setattr(latex, "FIGURES", figs_root)
    monkeypatch.setattr(latex, "GENERATED", gen_root)
    common, section = tiny_pipeline.stage("figures")
    out = registry.run(tiny_pipeline.store, common, section)
    after = _tree(tmp_path / "paper")
    mine = f"{tiny_pipeline.store.profile}/"
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    outside = [k for k in changed if not k.split("/", 1)[1].startswith(mine)]
    assert outside == [], f"06 of profile {tiny_pipeline.store.profile} changed files of another profile: {outside}"
    assert {k: v for k, v in after.items() if k.startswith(("figures/paper/", "generated/paper/"))} == \
        {k: v for k, v in before.items() if k.startswith(("figures/paper/", "generated/paper/"))}
    assert after["figures/loose.png"] == before["figures/loose.png"]
    assert out["removed"] == ["stale_figure.pdf", "stale_figure.png"]            # pruned: its own folder only
    assert sorted(p.stem for p in own.glob("*.png")) == sorted(out["figures"])
    assert json.loads((gen_root / mine / "source.json").read_text())["profile"] == tiny_pipeline.store.profile
    # the same files as the fixture's own 06 run (into its temporary roots): the outputs depend on the results only
    for name in out["figures"]:
        assert (own / f"{name}.png").is_file() and (tiny_pipeline.figures_dir / f"{name}.png").is_file()
    for t in out["tables"]:
        assert (gen_root / mine / f"{t}.tex").read_text() == (tiny_pipeline.generated_dir / f"{t}.tex").read_text()


def test_prune_figures_never_leaves_its_folder(tmp_path):
    own, other = tmp_path / "smoke", tmp_path / "paper"
    for folder in (own, other):
        folder.mkdir()
        for name in ("spectrum.pdf", "old.png"):
            (folder / name).write_text(folder.name)
    (tmp_path / "root_level.pdf").write_text("x")
    assert latex.prune_figures({"spectrum"}, own) == ["old.png"]
    assert sorted(p.name for p in own.iterdir()) == ["spectrum.pdf"]
    assert sorted(p.name for p in other.iterdir()) == ["old.png", "spectrum.pdf"]
    assert (tmp_path / "root_level.pdf").is_file()


def test_key_numbers_print_the_saved_values(tiny_pipeline):
    store = tiny_pipeline.store
    common, _ = tiny_pipeline.stage("train")
    train = key_numbers.text("train", store, common).splitlines()
    s = store.meta("train", run_name("mnist", "mlp1", 0))["summary"]
    assert train == [f"key numbers of train (profile {store.profile}, 1 lines):",
                     f"mnist_mlp1_s0: train_loss {s['train_loss']:.7g}, train_accuracy {s['train_accuracy']:.7g}, "
                     f"test_accuracy {s['test_accuracy']:.7g}"]
    conv = key_numbers.text("convergence", store, tiny_pipeline.stage("convergence")[0]).splitlines()
    slopes, sizes = load_table(store, "slopes"), load_table(store, "sample_size")
    assert len(conv) == 1 + len(slopes) + len(sizes)
    r = slopes[0]
    assert conv[1] == (f"slope mnist mlp1 s0 {r['subspace']}: {r['slope']:.7g} (se {r['slope_se']:.7g}), "
                       f"vbar {r['vbar']:.7g}")
    spec = key_numbers.text("spectrum", store, tiny_pipeline.stage("spectrum")[0]).splitlines()
    ev = store.meta("spectrum", "mnist_mlp1_s0")["summary"]["lambda_1"]
    assert spec[1].startswith(f"mnist_mlp1_s0: lambda_1 {ev:.7g}, lambda_4 ") and np.isfinite(ev)
    with pytest.raises(ValueError, match="stage='plots' has no key numbers"):
        key_numbers.text("plots", store, common)


def test_key_numbers_of_06_leave_out_timings_versions_and_commits(outputs_of_tiny):
    store, common = outputs_of_tiny
    lines = key_numbers.text("figures", store, common).splitlines()[1:]
    names = [line.split(" = ", 1)[0][1:] for line in lines]
    assert "Profile" in names and "AccMnistMlpOne" in names
    assert not [n for n in names if n.startswith(("Time", "Wall", "Version", "GitCommit", "Machine", "Threads"))]


@pytest.fixture
def outputs_of_tiny(tiny_pipeline, monkeypatch):
    monkeypatch.setattr(latex, "GENERATED", tiny_pipeline.generated_dir.parent)
    return tiny_pipeline.store, tiny_pipeline.stage("figures")[0]
