"""The key-number lines nbval compares (``lib.outputs.key_numbers``): the saved values in a fixed format, without
timings, versions or commits."""
import numpy as np
import pytest

from lib.outputs import key_numbers, latex
from lib.records.convergence import load_table
from lib.records.runs import run_name

pytestmark = pytest.mark.usefixtures("one_thread")


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
