"""The Monte Carlo stage (``lib.stages.monte_carlo``) on the tiny pipeline of ``conftest.tiny_pipeline``: the plan and
its groups, the loss-gap sigma, every saved curve, the per-sample terms, the quadratic prediction, the full-space
comparisons and the closed-form speed rows against independent computations (plain autograd Hessian-vector
products, plain forward passes, explicit prefix means)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.core.landscape.sampling import DEFAULT_SOBOL_REPLICATES, make_sampler
from lib.core.landscape.subspace import random_basis
from lib.records import monte_carlo as mc_records
from lib.records import spectrum as spectrum_records
from lib.stages import monte_carlo as mc_stage
from tests.cases import explicit_losses
from tests.stages.conftest import DS, MODEL, RUN, SEED, N, _differences, _flat, _gap_sigma, _hvp, _net64, _spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_monte_carlo_plan_groups_counts_and_saved_curves(tiny_pipeline):
    store = tiny_pipeline.store
    common, section = tiny_pipeline.stage("monte_carlo")
    rows = [r for r in tiny_pipeline.out["monte_carlo"] if r["group"] != "full_space"]
    plan = mc_records.load_plan(store)
    assert plan == mc_stage.plan(common, section, {(DS, MODEL, SEED): _gap_sigma(store)})
    counts = {g: len(mc_records.group(plan, g)) for g in mc_records.GROUPS}
    assert counts == {"main": 2, "gap": 1, "sigma": 4, "dim": 2, "distribution": 4, "estimator": 3}
    assert len(rows) == 16 and sorted(r["group"] for r in rows) == sorted(g for g, _ in plan)
    distinct = {s for _, s in plan}
    assert len(distinct) == 14                         # D=2 gaussian plain is the same curve in 3 sweeps
    assert store.names("curves") == sorted(s.name for s in distinct)
    assert store.names("terms") == sorted([f"{RUN}_hessian_D1", f"{RUN}_hessian_D2", f"{RUN}_random_D2"])
    assert store.names("scales") == [RUN]
    main = mc_records.group(plan, "main")
    assert [(s.subspace, s.D, s.sigma, s.n_samples, s.n_orders, s.scale) for s in main] == [
        ("hessian", 2, 0.3, 8, 2, "sigma"), ("random", 2, 0.3, 8, 2, "sigma")]
    assert mc_records.main_curves(plan) == main
    (gap,) = mc_records.group(plan, "gap")
    assert (gap.subspace, gap.D, gap.sigma, gap.n_samples, gap.n_orders, gap.scale) == (
        "hessian", 2, _gap_sigma(store), 8, 2, "loss_gap") and "_gap_" in gap.name
    assert sorted((s.subspace, s.sigma) for s in mc_records.group(plan, "sigma")) == [
        ("hessian", 0.1), ("hessian", 1.0), ("random", 0.1), ("random", 1.0)]
    assert [s.D for s in mc_records.group(plan, "dim")] == [1, 2]
    assert [s.distribution for s in mc_records.group(plan, "distribution")] == ["gaussian", "ball", "sphere",
                                                                               "curvature"]
    assert [s.estimator for s in mc_records.group(plan, "estimator")] == ["plain", "antithetic", "sobol"]
    assert all(s.theory for s in distinct) and all(s.seed == SEED for s in distinct)
    for r in rows:
        meta = store.meta("curves", r["name"])
        assert meta["summary"]["vbar"] == r["vbar"] and r["skipped"] is False


def test_monte_carlo_loss_gap_sigma_matches_the_generalisation_gap(tiny_pipeline):
    """The saved loss-gap sigma raises the mean training loss along z ~ N(0, I) in the top-2 Hessian subspace by
    the run's test - training loss (recomputed with plain forward passes at the stage's common draws)."""
    store = tiny_pipeline.store
    p = store.load("scales", RUN).payload
    trained = store.meta("train", RUN)["summary"]
    assert p["gap"] == pytest.approx(trained["test_loss"] - trained["train_loss"], rel=1e-12) and p["gap"] > 0
    net, x, y = _net64(store)
    P = spectrum_records.load_spectrum(store, DS, MODEL, SEED)["eigenvectors"][:2].double()
    z = make_sampler("gaussian", sigma=1.0).sample(4, 2, seed=SEED + 7919)
    w0 = _flat(net)
    base = explicit_losses(net, x, y, w0).mean().item()
    rise = np.mean([explicit_losses(net, x, y, w0 + p["sigma"] * th @ P).mean().item() for th in z]) - base
    assert p["rise_at_sigma"] == pytest.approx(rise, rel=1e-4)
    assert rise == pytest.approx(p["gap"], rel=0.1)               # bisection to 2 % in sigma
    ev = spectrum_records.load_spectrum(store, DS, MODEL, SEED)["eigenvalues"][:2].numpy()
    assert p["quadratic_guess"] == pytest.approx(np.sqrt(2 * p["gap"] / ev.sum()), rel=1e-9)


CURVES = {"main_hessian": ("main", {"subspace": "hessian"}), "main_random": ("main", {"subspace": "random"}),
          "gap": ("gap", {}), "dim_1": ("dim", {"D": 1}), "antithetic": ("estimator", {"estimator": "antithetic"}),
          "sobol": ("estimator", {"estimator": "sobol"}), "curvature": ("distribution", {"distribution": "curvature"}),
          "sigma_1_random": ("sigma", {"subspace": "random", "sigma": 1.0})}


@pytest.mark.parametrize("which", list(CURVES))
def test_monte_carlo_curve_equals_explicit_recomputation(tiny_pipeline, which):
    """Delta_k, its standard error over the estimator's units, V-bar, the theta = 0 terms, the random-order
    curves and the band's batch standard error, recomputed from per-sample losses of plain forward passes at the
    sampler's thetas."""
    store = tiny_pipeline.store
    grp, match = CURVES[which]
    spec = _spec(mc_records.load_plan(store), grp, **match)
    c = mc_records.load_curve(store, spec)
    net, x, y = _net64(store)
    n_par = sum(q.numel() for q in net.parameters())
    spectrum = spectrum_records.load_spectrum(store, DS, MODEL, SEED)
    if spec.subspace == "hessian":
        basis, eig = spectrum["eigenvectors"][:spec.D].double(), spectrum["eigenvalues"][:spec.D].numpy()
        np.testing.assert_array_equal(c["eigenvalues"], eig)
    else:
        basis, eig = random_basis(n_par, spec.D, seed=spec.seed, dtype=torch.float64), None
        assert c["eigenvalues"] is None
    sampler = mc_stage.sampler_for(spec, eig)
    if spec.distribution == "curvature":
        assert c["sampler_params"]["eps"] == pytest.approx(0.5 * spec.sigma ** 2 * eig.sum(), rel=1e-12)
    thetas = sampler.sample(spec.n_samples, spec.D, estimator=spec.estimator, seed=spec.seed)
    w0 = _flat(net)
    L = np.stack([explicit_losses(net, x, y, w0 + th @ basis).numpy() for th in thetas])      # (T, N)
    l0 = explicit_losses(net, x, y, w0).numpy()
    unit = {"plain": 1, "antithetic": 2, "sobol": spec.n_samples // DEFAULT_SOBOL_REPLICATES}[spec.estimator]
    d, d0 = _differences(L), _differences(l0)
    per_unit = (d ** 2).reshape(-1, unit, N - 1).mean(1)
    v_unit = L.var(axis=1).reshape(-1, unit).mean(1)
    n_units = spec.n_samples // unit
    assert c["N"] == N and c["D"] == spec.D and c["n_samples"] == spec.n_samples and c["n_units"] == n_units
    assert c["n_forward"] == spec.n_samples + 1
    np.testing.assert_array_equal(c["k"], np.arange(1, N))
    np.testing.assert_allclose(c["losses0"], l0, rtol=1e-5)
    np.testing.assert_allclose(c["d0sq"], d0 ** 2, rtol=1e-3, atol=1e-12)
    np.testing.assert_allclose(c["delta"], per_unit.mean(0), rtol=1e-3, atol=1e-12)
    stderr = per_unit.std(0, ddof=1) / np.sqrt(n_units)
    np.testing.assert_allclose(c["stderr"], stderr, rtol=1e-2, atol=1e-12)
    np.testing.assert_allclose(c["centred"], ((d - d0) ** 2).mean(0), rtol=1e-2, atol=1e-12)
    assert c["v0"] == pytest.approx(l0.var(), rel=1e-5)
    assert c["vbar"] == pytest.approx(v_unit.mean(), rel=1e-5)
    assert c["vbar_stderr"] == pytest.approx(v_unit.std(ddof=1) / np.sqrt(n_units), rel=1e-3)
    # k-average identity (Welford): N V(w) = sum_k k (k+1) d_k(w)^2 for every w, hence for the theta averages
    kk = c["k"] * (c["k"] + 1.0)
    assert float(kk @ c["delta"]) == pytest.approx(N * c["vbar"], rel=1e-9)
    # fewer units than the 32 batches: one unit per batch, so the band's standard error is the units' one
    assert c["n_batches"] == n_units
    np.testing.assert_allclose(c["band_se"], stderr, rtol=1e-2, atol=1e-12)
    assert c["band_multiplier"] > 2.0                   # a simultaneous band is wider than a pointwise one
    if spec.n_orders:
        g = torch.Generator().manual_seed(spec.seed + 1)
        perms = [torch.randperm(N, generator=g).numpy() for _ in range(spec.n_orders)]
        per_order = np.stack([(_differences(L[:, perm]) ** 2).mean(0) for perm in perms])
        np.testing.assert_allclose(c["order_mean"], per_order.mean(0), rtol=1e-3, atol=1e-12)
        np.testing.assert_allclose(c["order_median"], np.median(per_order, 0), rtol=1e-3, atol=1e-12)
        np.testing.assert_allclose(c["order_formula"], c["vbar"] * N / ((N - 1) * kk), rtol=1e-12)
        assert float(kk @ c["order_mean"]) == pytest.approx(N * c["vbar"], rel=1e-9)
        suffix = np.maximum.accumulate(per_order[:, ::-1], axis=1)[:, ::-1]
        assert c["order_suffix_max"].shape == (spec.n_orders, N - 1)
        np.testing.assert_allclose(c["order_suffix_max"].numpy(), suffix, rtol=1e-3, atol=1e-12)
    else:
        assert c["order_mean"] is None and c["order_formula"] is None and c["order_suffix_max"] is None


def test_monte_carlo_terms_are_per_sample_loss_gradient_and_hessian_in_the_subspace(tiny_pipeline):
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    spec = _spec(plan, "main", subspace="hessian")
    t = mc_records.load_terms(store, spec)
    assert t.a.shape == (N,) and t.b.shape == (N, 2) and t.C.shape == (N, 2, 2)
    torch.testing.assert_close(t.C, t.C.transpose(1, 2), rtol=1e-5, atol=1e-5)      # float32 jet
    c = mc_records.load_curve(store, spec)
    np.testing.assert_allclose(t.a.numpy(), c["losses0"], rtol=1e-5)
    net, x, y = _net64(store)
    P = spectrum_records.load_spectrum(store, DS, MODEL, SEED)["eigenvectors"][:2].double()
    params = list(net.parameters())
    for i in (0, 1, N - 1):
        loss = F.cross_entropy(net(x[i:i + 1]), y[i:i + 1])
        grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        torch.testing.assert_close(t.b[i], P @ grad, rtol=1e-3, atol=1e-5)
        C = torch.stack([P @ _hvp(net, x[i:i + 1], y[i:i + 1], P[e]) for e in range(2)])
        torch.testing.assert_close(t.C[i], C, rtol=1e-3, atol=1e-5)


def test_monte_carlo_quadratic_prediction_equals_the_closed_form(tiny_pipeline):
    """Q_k of a Gaussian curve = da^2 + s|db|^2 + s da tr(dC) + (m/4)(2 tr(dC^2) + tr(dC)^2), s = sigma^2,
    m = sigma^4, from the saved per-sample terms (docs/specification.md 4.2); T_k only for isotropic samplers."""
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    spec = _spec(plan, "sigma", subspace="hessian", sigma=1.0)
    c = mc_records.load_curve(store, spec)
    t = mc_records.load_terms(store, spec)
    da = _differences(t.a.numpy())
    db = _differences(t.b.numpy().T).T                                  # (N-1, D)
    dC = _differences(t.C.numpy().reshape(N, -1).T).T.reshape(N - 1, 2, 2)
    s, m = spec.sigma ** 2, spec.sigma ** 4
    tr = np.trace(dC, axis1=1, axis2=2)
    Q = da ** 2 + s * (db ** 2).sum(1) + s * da * tr + m / 4 * (2 * np.einsum("kab,kba->k", dC, dC) + tr ** 2)
    np.testing.assert_allclose(c["Q"], Q, rtol=1e-8, atol=1e-14)
    assert c["T"] is not None and len(c["T"]) == N - 1
    assert set(c["vbar_quadratic"]) >= {"vbar", "V0", "grad_part", "curv_part"}
    curv = mc_records.load_curve(store, _spec(plan, "distribution", distribution="curvature"))
    assert curv["T"] is None and curv["Q"].shape == (N - 1,)


def test_monte_carlo_full_space_group_equals_plain_forward_passes(tiny_pipeline):
    """The full_space comparisons: the sigma sweep at D and the D sweep at sigma, both scales; each saved curve
    recomputed from plain forward passes (subspace: the sampler's thetas in the top-D Hessian subspace; full: the
    perturbations eps_t ~ N(0, s^2 I_n) with s = sigma sqrt(D/n) or sigma); Jensen per k on every saved curve."""
    from lib.core.landscape.delta import full_space_perturbations

    store = tiny_pipeline.store
    _, section = tiny_pipeline.stage("monte_carlo")
    pairs = mc_records.load_full_space_plan(store)
    net, x, y = _net64(store)
    n_par = sum(q.numel() for q in net.parameters())
    assert sorted((p["line"], p["D"], p["sigma"], p["scale"]) for p in pairs) == sorted(
        [(line, D, s, scale) for line, D, s in (("sigma", 2, 0.1), ("sigma", 2, 1.0), ("dim", 1, 0.3), ("dim", 2, 0.3))
         for scale in ("norm", "coordinate")])
    for p in pairs:
        want = p["sigma"] * np.sqrt(p["D"] / n_par) if p["scale"] == "norm" else p["sigma"]
        assert p["s"] == pytest.approx(want, rel=1e-5) and p["full"]["sigma"] == p["s"]
        assert p["subspace"]["n_samples"] == p["full"]["n_samples"] == section.full_space_samples
    names = {mc_records.FullSpaceSpec(**p[k]).name for p in pairs for k in ("subspace", "full")}
    assert store.names("full_space") == sorted(names)
    assert len(names) == 4 + 4 + 3          # 4 (D, sigma) pairs; full: 4 distinct s (norm) + 3 sigmas (coordinate)
    w0 = _flat(net)
    spectrum = spectrum_records.load_spectrum(store, DS, MODEL, SEED)
    T = section.full_space_samples
    main = next(p for p in pairs if (p["line"], p["D"], p["scale"]) == ("dim", 2, "norm"))
    sub = mc_records.load_full_space_curve(store, main["subspace"])
    thetas = make_sampler("gaussian", sigma=0.3).sample(T, 2, seed=SEED)
    basis = spectrum["eigenvectors"][:2].double()
    L = np.stack([explicit_losses(net, x, y, w0 + th @ basis).numpy() for th in thetas])
    eps = full_space_perturbations(n_par, range(T), main["s"], seed=SEED)
    F_ = np.stack([explicit_losses(net, x, y, w0 + e.float().double()).numpy() for e in eps])
    for c, losses in ((sub, L), (mc_records.load_full_space_curve(store, main["full"]), F_)):
        d = _differences(losses)
        np.testing.assert_allclose(c["delta"], (d ** 2).mean(0), rtol=1e-3, atol=1e-12)
        np.testing.assert_allclose(c["abs_mean"], np.abs(d).mean(0), rtol=1e-3, atol=1e-12)
        np.testing.assert_allclose(c["stderr"], (d ** 2).std(0, ddof=1) / np.sqrt(T), rtol=1e-2, atol=1e-12)
        assert c["n_forward"] == T + 1 and c["N"] == N
    assert mc_records.load_full_space_curve(store, main["full"])["D"] == n_par
    for name in names:
        c = store.load("full_space", name).payload
        assert np.all(c["abs_mean"] <= np.sqrt(c["delta"]) * (1 + 1e-9))        # Jensen, every k, real curves
    rows = [r for r in tiny_pipeline.out["monte_carlo"] if r["group"] == "full_space"]
    assert len(rows) == len(pairs)
    for r, p in zip(rows, pairs):
        a, b = (mc_records.load_full_space_curve(store, p[k]) for k in ("subspace", "full"))
        assert r["median_ratio"] == pytest.approx(float(np.median(a["delta"] / b["delta"])), rel=1e-12)


def test_monte_carlo_closed_form_speed_rows_from_the_saved_curves(tiny_pipeline):
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    rows = mc_records.load_speed(store)
    want = [("main", _spec(plan, "main", subspace="hessian"))] + [
        ("sigma", s) for s in mc_records.group(plan, "sigma") if s.subspace == "hessian"]
    assert [(r["group"], r["name"]) for r in rows] == [(g, s.name) for g, s in want]
    for r, (_, spec) in zip(rows, want):
        c = mc_records.load_curve(store, spec)
        summary = store.meta("curves", spec.name)["summary"]
        rel = float(np.median(c["stderr"] / c["delta"]))
        assert r["relative_se"] == pytest.approx(rel, rel=1e-12)
        assert r["T_target"] == pytest.approx(spec.n_samples * (rel / 0.01) ** 2, rel=1e-12)
        assert r["mc_seconds"] == summary["mc_seconds"]
        assert r["mc_seconds_target"] == pytest.approx(summary["mc_seconds"] / c["n_forward"] * (r["T_target"] + 1))
        assert r["jet_seconds"] == store.meta("terms", spec.terms_name)["summary"]["seconds"]
        assert 0 < r["closed_seconds"] < 5
        assert r["speedup"] == pytest.approx(r["mc_seconds_target"] / r["closed_seconds"])
        assert r["speedup_with_jet"] == pytest.approx(r["mc_seconds_target"] / (r["closed_seconds"] + r["jet_seconds"]))
        assert r["median_mc_over_q"] == pytest.approx(float(np.median(c["delta"] / c["Q"])), rel=1e-12)

