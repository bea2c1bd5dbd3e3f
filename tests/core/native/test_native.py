"""The native kernels (lib.core.native): status() reports every kernel (its switches: test_build.py), and a small CNN's
findings (test accuracy, lambda_1, V-bar, K) hold with the native code switched off, within the tolerances measured
in docs/reproducibility.md ("Native code on and off")."""
import json
import shutil

import pytest
import torch

from lib.core import native
from lib.core.hessian import HessianOperator, top_eigenpairs
from lib.core.landscape.delta import delta_curve
from lib.core.landscape.sampling import make_sampler
from lib.core.native import FLAGS, SWITCHES, fused_cnn, order_sums, refresh, status
from lib.core.sample_size.decay import k_closed_form
from lib.core.training.models import build
from lib.core.training.recipe import evaluate, train
from lib.infra import data

#: the small CNN configuration: the study CNN (seed 0) on the first N_TRAIN MNIST training images, EPOCHS epochs
#: of the training section's recipe (batch 64, Adam 1e-3), the top D Hessian eigenpairs, V-bar from T thetas of
#: N(0, SIGMA^2 I_D) (the monte_carlo section's D and sigma) and K(Delta) in closed form at DELTAS
N_TRAIN, EPOCHS, D, T, SIGMA, DELTAS = 2000, 2, 4, 16, 0.3, (1e-2, 1e-3, 1e-4)
#: native off against on (docs/reproducibility.md: measured differences and their margins)
ACCURACY_ABS = 0.002            # test accuracy, absolute (10,000 test images: 20 images)
LOSS_REL = 1e-5                 # test cross-entropy, relative
LAMBDA_REL = 1e-4               # lambda_1 .. lambda_D, relative
VBAR_REL = 1e-5                 # V-bar, relative
K_ABS = 1                       # K(Delta) at every Delta, in samples


def findings() -> dict:
    """Train the small CNN and measure its findings with the kernels as the environment switches them now
    (``refresh()`` first); the engines that ran are recorded with them."""
    refresh()
    x, y = data.load("mnist", "train")
    x, y = x[:N_TRAIN].contiguous(), y[:N_TRAIN].contiguous()
    x_test, y_test = data.load("mnist", "test")
    net = build("cnn", 0)
    history = train(net, x, y, epochs=EPOCHS, batch_size=64, lr=1e-3, seed=0, progress=False)
    test = evaluate(net, x_test, y_test)
    op = HessianOperator(net, x, y)
    eig = top_eigenpairs(op, D, seed=0)
    basis = torch.as_tensor(eig.eigenvectors).to(torch.float32)
    curve = delta_curve(net, x, y, basis, make_sampler("gaussian", sigma=SIGMA), T, progress=False)
    return {"accuracy": test["accuracy"], "test_loss": test["loss"], "train_loss": history.epoch_loss[-1],
            "eigenvalues": [float(v) for v in eig.eigenvalues], "vbar": curve.vbar, "vbar_stderr": curve.vbar_stderr,
            "K": [k_closed_form(curve.vbar, N_TRAIN, d) for d in DELTAS],
            "engines": {"train": "fused_cnn" if fused_cnn.available() else "torch", "hessian": op.engine,
                        "monte_carlo": curve.meta["engine"]},
            "native": {name: s["built"] for name, s in status().items()}}


def differences(on: dict, off: dict) -> dict:
    """Off against on: the absolute accuracy and K differences, the relative ones of the rest."""
    def rel(a, b):
        return abs(a - b) / abs(b)
    return {"accuracy": abs(off["accuracy"] - on["accuracy"]), "test_loss": rel(off["test_loss"], on["test_loss"]),
            "lambda": max(rel(a, b) for a, b in zip(off["eigenvalues"], on["eigenvalues"])),
            "vbar": rel(off["vbar"], on["vbar"]), "K": max(abs(a - b) for a, b in zip(off["K"], on["K"]))}


def test_status_reports_every_kernel(clean_switches):
    got = status()
    assert set(got) == {"fused_cnn", "order_sums"} == set(native.build.KERNELS)
    assert SWITCHES == ("LIB_NATIVE", "LIB_FUSED_CNN", "LIB_ORDER_SUMS")
    for name, module in (("fused_cnn", fused_cnn), ("order_sums", order_sums)):
        s = got[name]
        assert s["built"] == module.available()
        assert (s["reason"] is None) == s["built"], s
        assert s["compiler"] == native.build.compiler_command() and s["flags"] == list(FLAGS)
        assert (s["compiler_version"] is not None) == (shutil.which(s["compiler"]) is not None)
    assert got["fused_cnn"]["switch"] == "LIB_FUSED_CNN" and got["order_sums"]["switch"] == "LIB_ORDER_SUMS"
    assert json.loads(json.dumps(got)) == got            # provenance stores it as JSON


def test_findings_hold_with_native_code_off(clean_switches):
    """The small CNN's findings with every kernel (LIB_NATIVE=0: torch's operations) against the default run; the
    engines that ran are checked so that the comparison cannot pass by running the same path twice."""
    if not all(s["built"] for s in status().values()):
        pytest.skip(f"the native side cannot run here: {[s['reason'] for s in status().values()]}")
    on = findings()
    clean_switches.setenv("LIB_NATIVE", "0")
    off = findings()
    assert on["engines"] == {"train": "fused_cnn", "hessian": "fused", "monte_carlo": "fused_cnn"}, on["engines"]
    assert off["engines"] == {"train": "torch", "hessian": "structured", "monte_carlo": "torch"}, off["engines"]
    assert off["native"] == {"fused_cnn": False, "order_sums": False}
    diff = differences(on, off)
    assert diff["accuracy"] <= ACCURACY_ABS, (diff, on, off)
    assert diff["test_loss"] <= LOSS_REL, (diff, on, off)
    assert diff["lambda"] <= LAMBDA_REL, (diff, on, off)
    assert diff["vbar"] <= VBAR_REL, (diff, on, off)
    assert diff["K"] <= K_ABS, (diff, on, off)
    # the findings themselves: a trained model (not chance), a positive top curvature, K growing as Delta shrinks
    assert on["accuracy"] > 0.5 and on["eigenvalues"][0] > 0 and on["K"] == sorted(on["K"])
