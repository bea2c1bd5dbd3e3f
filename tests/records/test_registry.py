"""The stage registry of the records (``lib.records``: ``REGISTRY``, ``folder``, ``writer_of``): declared result folders
only, one writer each."""
import pytest

from lib.records import REGISTRY, folder, writer_of


def test_folder_accepts_declared_and_rejects_undeclared_result_folders():
    assert folder("monte_carlo", "terms") == "terms" and folder("convergence", "r0") == "r0"
    with pytest.raises(ValueError, match=r"stage 'train' does not write the result folder 'curves'; it writes "
                                         r"\['train'\] \(lib/records/__init__.py\)"):
        folder("train", "curves")
    with pytest.raises(ValueError, match="stage 'figures' does not write the result folder 'figures'"):
        folder("figures", "figures")
    with pytest.raises(KeyError):
        folder("no_such_stage", "train")
    with pytest.raises(ValueError, match="no stage writes the result folder 'paper'"):
        writer_of("paper")
    declared = [f for info in REGISTRY.values() for f in info.folders]
    assert len(declared) == len(set(declared))                           # one writer per result folder
