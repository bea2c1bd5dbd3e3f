"""Each profile has its own generated outputs: notebook 06 of one profile writes only into
``paper/figures/<profile>/`` and ``paper/generated/<profile>/``, leaves another profile's folders byte-identical, and
prunes stale figures only inside its own folder."""
import json

import pytest

from lib.outputs import latex, registry

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
