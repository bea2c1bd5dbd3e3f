"""The tiny pipeline (``conftest.tiny_pipeline``: every stage in-process) writes only into temporary folders: nothing
under the repository's paper/ or results/ changes."""
from lib.outputs import latex


def test_pipeline_never_touches_the_repository_paper_or_results(tiny_pipeline):
    """Notebook 06 writes into latex.FIGURES/GENERATED (paper/figures, paper/generated) and reads the store's
    timings.json: the fixture points them at temporary folders. No file there changed
    (mtime and size) while the six stages ran, and nothing of this profile appeared under the real results root
    (other profiles' folders there are left out of the comparison: a concurrent `make reproduce` may write them)."""
    figs, gen, results_root = tiny_pipeline.repo_folders
    profile = tiny_pipeline.store.profile
    before, after = tiny_pipeline.repo_before, tiny_pipeline.repo_after
    assert any(p.startswith(str(gen)) for p in before) or not gen.is_dir(), "the snapshot saw paper/generated"

    def compared(snap):
        out = {}
        for path, stat in snap.items():
            rel = path[len(str(results_root)) + 1:].split("/") if path.startswith(str(results_root) + "/") else None
            if rel is None or len(rel) == 1 or rel[0] == profile:
                out[path] = stat
        return out

    old, new = compared(before), compared(after)
    changed = sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))
    assert changed == [], f"the tiny pipeline wrote into the repository: {changed}"
    assert not (results_root / profile).exists()
    assert tiny_pipeline.store.root == tiny_pipeline.results_root / profile
    assert (latex.FIGURES, latex.GENERATED) == (figs, gen)          # the patches are undone after the stages
