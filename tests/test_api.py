"""The public API (``lib.api.analyze``) on models and losses outside the paper's: against an independent Monte-Carlo
loop, data as tensors / lists / DataLoaders, and a refusal of every bad input before any compute."""
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lib.api import analyze
from lib.core.checks import ParameterError
from lib.core.landscape.sampling import make_sampler
from lib.core.sample_size.decay import first_k_below, k_closed_form
from lib.core.sample_size.sufficient import k_per_order, order_summary, simultaneous_multiplier
from tests.cases import explicit_hessian, seeded_model
from tests.core.hessian.conftest import batch_list, mse_onehot


class ResidualMLP(nn.Module):
    """A tanh MLP with two residual blocks and biases: not one of lib.core.training.models."""

    def __init__(self, d_in=6, width=8, n_out=3):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList([nn.Linear(width, width) for _ in range(2)])
        self.out = nn.Linear(width, n_out)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for block in self.blocks:
            h = h + torch.tanh(block(h))
        return self.out(h)


class HandTanh(torch.autograd.Function):
    """tanh as a hand-written autograd.Function: backward (and double backward) work, forward-mode AD does not."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.tanh(z)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * (1 - torch.tanh(z) ** 2)


class HandTanhModel(ResidualMLP):
    """The residual MLP with a hand-written first activation (no jvp rule: Q_k cannot be computed)."""

    def forward(self, x):
        h = HandTanh.apply(self.inp(x))
        for block in self.blocks:
            h = h + torch.tanh(block(h))
        return self.out(h)


# ----------------------------------------------------------------------------------------------- analyze
def independent_curve(model, x, y, basis, sigma, T, seed, n_orders):
    """Delta_k, its standard error, V-bar and the per-order curves from explicit per-sample losses at the same
    thetas: plain forward passes of a copy of the model with the perturbed weights w* + P^T theta."""
    thetas = make_sampler("gaussian", sigma=sigma).sample(T, basis.shape[0], seed=seed)
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    N = len(x)
    k = torch.arange(1, N + 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 1)
    perms = [torch.randperm(N, generator=g) for _ in range(n_orders)]
    sq, var, orders = [], [], torch.zeros(n_orders, N - 1, dtype=torch.float64)
    for th in thetas:
        net = copy.deepcopy(model)
        torch.nn.utils.vector_to_parameters(w0 + basis.T @ th, net.parameters())
        net.eval()
        with torch.no_grad():
            losses = mse_onehot(net(x), y)
        L = torch.cumsum(losses, 0) / k
        sq.append((L[1:] - L[:-1]) ** 2)
        var.append(losses.var(unbiased=False))
        for r, p in enumerate(perms):
            Lp = torch.cumsum(losses[p], 0) / k
            orders[r] += (Lp[1:] - Lp[:-1]) ** 2 / T
    sq = torch.stack(sq)
    return (sq.mean(0).numpy(), (sq.std(0) / np.sqrt(T)).numpy(), float(torch.stack(var).mean()), orders.numpy())


def residual_case(n=60, builder=ResidualMLP):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return seeded_model(builder, 4), x, y


def test_analyze_equals_an_independent_monte_carlo_loop(one_thread):
    model, x, y = residual_case()
    before = [p.detach().clone() for p in model.parameters()]
    thresholds = (3e-2, 3e-3, 1e-3)
    report = analyze(model, DataLoader(TensorDataset(x, y), batch_size=16), mse_onehot, D=3, sigma=0.3,
                     n_samples=16, n_orders=5, thresholds=thresholds, seed=2, n_batches=8)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert report.N == 60 and report.D == 3 and report.basis.shape == (3, report.n_params)
    H = explicit_hessian(model, x, y, loss=lambda out, t: mse_onehot(out, t).mean())
    np.testing.assert_allclose(report.eigenvalues, np.linalg.eigh(H.numpy())[0][::-1][:3], rtol=1e-6)

    delta, stderr, vbar, orders = independent_curve(model, x, y, report.basis, 0.3, 16, 2, 5)
    np.testing.assert_allclose(report.delta, delta, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(report.stderr, stderr, rtol=1e-8, atol=1e-15)
    assert report.vbar == pytest.approx(vbar, rel=1e-12)
    np.testing.assert_allclose(report.curve.order_curves, orders, rtol=1e-9, atol=1e-15)

    k = report.k
    c = simultaneous_multiplier(report.curve.batch_means, seed=2)
    assert report.band_multiplier == pytest.approx(c)
    per_order = k_per_order(k, orders, thresholds)
    for g, (thr, s) in enumerate(zip(thresholds, report.sample_sizes)):
        assert s.threshold == thr
        assert s.K == first_k_below(k, delta, thr)
        assert s.K_band == first_k_below(k, delta + c * report.band_se, thr)
        assert s.K_closed == k_closed_form(vbar, 60, thr)
        summary = order_summary(per_order[:, g])
        assert (s.K_order_median, s.K_order_q05, s.K_order_q95, s.K_order_upper, s.orders_reached) == (
            summary.median, summary.q05, summary.q95, summary.upper, summary.reached)
    assert any(s.K is not None for s in report.sample_sizes)

    assert report.Q is not None and report.Q.shape == (59,) and np.all(np.isfinite(report.Q))
    assert report.vbar_quadratic["vbar"] > 0
    d = report.to_dict()
    assert json.loads(json.dumps(d))["sample_sizes"][0]["K"] == report.sample_sizes[0].K
    fig = report.plot()
    assert fig.axes and fig.axes[0].get_xscale() == "log"


def test_analyze_tensors_equal_loader_and_skips_quadratic_with_a_note(one_thread):
    model, x, y = residual_case(n=30, builder=HandTanhModel)
    kw = {"D": 2, "sigma": 0.5, "n_samples": 8, "n_orders": 3, "n_batches": 4, "seed": 0}
    a = analyze(model, (x, y), mse_onehot, **kw)
    b = analyze(model, batch_list(x, y, 9), mse_onehot, quadratic=False, **kw)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-10)
    np.testing.assert_allclose(a.delta, b.delta, rtol=1e-8)
    assert a.Q is None and any(n.startswith("Q_k skipped") for n in a.notes)
    H = explicit_hessian(model, x, y, loss=lambda out, t: mse_onehot(out, t).mean())
    np.testing.assert_allclose(a.eigenvalues, np.linalg.eigh(H.numpy())[0][::-1][:2], rtol=1e-6)
    assert b.Q is None and "Q_k not computed (quadratic=False)" in b.notes
    with pytest.raises(ValueError, match="shuffle"):
        analyze(model, DataLoader(TensorDataset(x, y), shuffle=True), mse_onehot, **kw)


def test_analyze_thick_restart_solver_equals_lanczos_and_the_explicit_hessian(one_thread):
    model, x, y = residual_case(n=30)
    kw = {"D": 3, "sigma": 0.3, "n_samples": 8, "n_orders": 3, "n_batches": 4, "seed": 1, "tol": 1e-10}
    a = analyze(model, (x, y), mse_onehot, quadratic=False, **kw)
    b = analyze(model, (x, y), mse_onehot, quadratic=False, solver="thick-restart", **kw)
    H = explicit_hessian(model, x, y, loss=lambda out, t: mse_onehot(out, t).mean())
    exact = np.linalg.eigh(H.numpy())[0][::-1][:3]
    np.testing.assert_allclose(b.eigenvalues, exact, rtol=1e-8)
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=1e-8)
    assert b.settings["solver"] == "thick-restart" and a.settings["solver"] == "lanczos"
    assert float(np.max(b.residuals)) < 1e-6
    # the same subspace (eigenvectors up to sign): |<a_i, b_i>| = 1
    overlap = (a.basis.double() * b.basis.double()).sum(1).abs()
    np.testing.assert_allclose(overlap.numpy(), 1.0, atol=1e-6)


# ------------------------------------------------------------------------------- bad inputs fail before compute
@pytest.fixture
def no_compute(monkeypatch):
    """``analyze`` must refuse before its first solver: building the Hessian operator fails the test."""
    def started(*args, **kwargs):
        raise AssertionError("analyze started computing on a bad input")

    monkeypatch.setattr("lib.api.BatchedHessianOperator", started)


def refused(capfd, match, model, data, loss_fn=mse_onehot, **kw):
    """The ParameterError ``analyze`` raises (its message matched), with nothing printed to the terminal."""
    with pytest.raises(ParameterError, match=match) as err:
        analyze(model, data, loss_fn, D=2, n_samples=4, n_orders=0, quadratic=False, **kw)
    out, printed = capfd.readouterr()
    assert out == "" and printed == "", (out, printed)
    return str(err.value)


def test_analyze_refuses_a_device_this_machine_lacks(capfd, no_compute):
    model, x, y = residual_case(n=20)
    missing = f"cuda:{torch.cuda.device_count() + 7}"
    msg = refused(capfd, rf"^device='{missing}' is not allowed: one of the devices of this machine: \['cpu'",
                  model, (x, y), device=missing)
    assert "pass device='cpu'" in msg
    if not torch.cuda.is_available():
        assert "torch finds no CUDA device on this machine" in msg
    refused(capfd, r"^device='gpu' is not allowed: one of the devices of this machine: \['cpu'", model, (x, y),
            device="gpu")


def test_analyze_refuses_an_unknown_solver(capfd, no_compute):
    model, x, y = residual_case(n=20)
    msg = refused(capfd, r"^solver='arpack' is not allowed", model, (x, y), solver="arpack")
    assert "lanczos" in msg and "thick-restart" in msg and "power" not in msg


def test_analyze_names_the_first_non_finite_input_and_weight(capfd, no_compute):
    model, x, y = residual_case(n=40)
    bad = x.clone()
    bad[23, 4] = float("nan")
    bad[30, 0] = float("inf")
    msg = refused(capfd, r"^batch 3 inputs\[2, 4\]=nan is not allowed: finite inputs", model, batch_list(bad, y))
    assert "sample 23 of the data (row 2 of batch 3)" in msg and "batch 3 has 1" in msg
    refused(capfd, r"^batch 0 inputs\[23, 4\]=nan is not allowed", model, (bad, y), batch_size=40)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.blocks[0].weight[2, 1] = float("inf")
        broken.out.bias[1] = float("nan")
    msg = refused(capfd, r"^model parameter 'blocks.0.weight'\[2, 1\]=inf is not allowed: finite weights",
                  broken, (x, y))
    assert "1 of its 64 values are NaN or inf" in msg
    targets = torch.randn(40, 3, dtype=torch.float64)
    targets[11, 2] = float("nan")
    refused(capfd, r"^batch 1 targets\[4, 2\]=nan is not allowed: finite targets", model, batch_list(x, targets),
            loss_fn=lambda out, t: ((out - t) ** 2).sum(1))


def test_analyze_refuses_labels_outside_the_model_classes(capfd, no_compute):
    model, x, _ = residual_case(n=30)
    ten = seeded_model(lambda: ResidualMLP(n_out=10), 4)
    y = torch.arange(30) % 10
    y[17] = 12
    msg = refused(capfd, r"^batch 2 targets\[3\]=12 is not allowed: a class index in \[0, 9\] \(the model has 10 "
                  "outputs\\)", ten, batch_list(x, y), loss_fn=None)
    assert "sample 17 of the data" in msg and "span [0, 12]" in msg
    y[17], y[4] = 3, -1
    refused(capfd, r"^batch 0 targets\[4\]=-1 is not allowed: a class index in \[0, 9\]", ten, (x, y), loss_fn=None)
    # a loss of its own: its error, with the targets' range, names the batch
    y3 = torch.arange(30) % 3
    y3[8] = 12
    msg = refused(capfd, r"^batch 1 targets='shape \(7,\), dtype torch.int64' is not allowed: targets loss_fn "
                  r"accepts for the model's outputs \(shape \(7, 3\), dtype torch.float64\); this batch's targets "
                  r"span \[0, 12\]", model, batch_list(x, y3))
    assert "loss_fn raised RuntimeError" in msg


def test_analyze_refuses_empty_data(capfd, no_compute):
    model, x, y = residual_case(n=20)
    refused(capfd, r"^data='inputs of shape \(0, 6\)' is not allowed: at least one sample .*empty data", model,
            (x[:0], y[:0]))
    refused(capfd, r"^data=\[\] is not allowed: at least 2 samples", model, [])
    refused(capfd, r"^data='0 sample\(s\)' is not allowed: at least 2 samples", model,
            DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4))
    refused(capfd, r"^data='1 sample\(s\)' is not allowed: at least 2 samples", model, [(x[:1], y[:1])])


def test_analyze_names_the_batch_whose_inputs_the_model_rejects(capfd, no_compute):
    model, x, y = residual_case(n=30)
    batches = batch_list(x, y)
    batches[2] = (batches[2][0][:, :5], batches[2][1])
    msg = refused(capfd, r"^batch 2 inputs='shape \(7, 5\), dtype torch.float64' is not allowed: inputs the model "
                  r"accepts \(its parameters: torch.float64 on cpu\)", model, batches)
    assert "mat1 and mat2 shapes cannot be multiplied" in msg
    msg = refused(capfd, r"^batch 0 inputs='shape \(30, 6\), dtype torch.int64' is not allowed", model,
                  (x.long(), y), batch_size=30)
    assert "the model raised RuntimeError" in msg
