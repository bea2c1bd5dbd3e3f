"""Every stage entry point (``lib.stages.<stage>.run``) on the tiny pipeline of ``conftest.tiny_pipeline``: the saved
results against independent computations (plain autograd Hessian-vector products, plain forward passes, explicit
prefix means), skipping of identical work, and the stage plumbing (``base.load``, ``folder``)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from lib.core import hessian
from lib.core.landscape.sampling import DEFAULT_SOBOL_REPLICATES, make_sampler
from lib.core.landscape.subspace import filter_normalized_directions, random_basis
from lib.core.sample_size.decay import fit_slope, k_closed_form
from lib.core.training import models
from lib.core.training.recipe import evaluate, train
from lib.infra import data
from lib.infra.results import MissingResultError, ResultStore, json_bytes
from lib.outputs import latex, registry, tables
from lib.outputs import numbers as paper_numbers
from lib.records import REGISTRY, folder, writer_of
from lib.records import convergence as convergence_records
from lib.records import monte_carlo as mc_records
from lib.records import projection as projection_records
from lib.records import spectrum as spectrum_records
from lib.records.runs import load, load_trained, run_name
from lib.stages import monte_carlo as mc_stage
from lib.stages import projection as projection_stage
from lib.stages import spectrum as spectrum_stage
from lib.stages import train as train_stage
from lib.stages.convergence import bounds as convergence_bounds
from tests.cases import explicit_losses
from tests.conftest import TINY_TIMINGS, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

DS, MODEL, SEED, N = "mnist", "mlp1", 0, 200
RUN = run_name(DS, MODEL, SEED)


# ------------------------------------------------------------------------------------------------ helpers
def _net64(store):
    net, _ = load_trained(store, DS, MODEL, SEED, dtype=torch.float64)
    x, y = data.training_subset(DS, N, 0)
    return net, x.double(), y


def _flat(net) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def _hvp(net, x, y, v: torch.Tensor) -> torch.Tensor:
    """H v of the mean cross-entropy by a plain double backward (no lib.core.hessian)."""
    params = list(net.parameters())
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    hv = torch.autograd.grad(flat @ v, params)
    return torch.cat([h.reshape(-1) for h in hv]).detach()


def _differences(L: np.ndarray) -> np.ndarray:
    """d_k = L_{k+1} - L_k for k = 1..N-1 of per-sample losses (..., N), from explicit prefix means."""
    n = L.shape[-1]
    prefix = np.cumsum(L, axis=-1) / np.arange(1, n + 1)
    return prefix[..., 1:] - prefix[..., :-1]


def _first_below(values, threshold):
    """min{k : values_j < threshold for every j >= k} (k = index + 1), None when the last value is not below."""
    values = np.asarray(values)
    if not values[-1] < threshold:
        return None
    bad = np.flatnonzero(~(values < threshold))
    return 1 if len(bad) == 0 else int(bad[-1] + 2)


def _k_closed_brute(vbar, n, threshold):
    k = np.arange(1, 100 * n)
    return int(k[np.argmax(vbar * n / ((n - 1) * k * (k + 1)) < threshold)])


def _spec(plan, grp, **match):
    found = [s for s in mc_records.group(plan, grp) if all(getattr(s, a) == v for a, v in match.items())]
    assert len(found) == 1, (grp, match, found)
    return found[0]


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ isolation
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


# ------------------------------------------------------------------------------------------------ train
def test_train_rows_equal_evaluate_on_the_reloaded_model(tiny_pipeline):
    store = tiny_pipeline.store
    (row,) = tiny_pipeline.out["train"]
    assert row["name"] == RUN and row["skipped"] is False and row["n_train"] == N
    assert row["n_params"] == 784 * 256 + 256 + 256 * 10 + 10 and len(row["epoch_loss"]) == 1
    net, meta = load_trained(store, DS, MODEL, SEED)
    common, section = tiny_pipeline.stage("train")
    assert meta["params"] == train_stage.training_params(DS, MODEL, SEED, N, 0, section)
    xt, yt = data.load(DS, "test")
    on_test = evaluate(net, xt, yt)
    assert row["test_accuracy"] == pytest.approx(on_test["accuracy"], abs=1e-12)
    assert row["test_loss"] == pytest.approx(on_test["loss"], rel=1e-6)
    with torch.no_grad():
        plain = (net(xt).argmax(1) == yt).double().mean().item()
        x, y = data.training_subset(DS, N, 0)
        train_loss = F.cross_entropy(net(x), y).item()
    assert row["test_accuracy"] == pytest.approx(plain, abs=1e-12) and 0.2 < plain < 1
    assert row["train_loss"] == pytest.approx(train_loss, rel=1e-5)


def test_train_second_run_skips_and_changes_nothing(tiny_pipeline, capsys):
    store = tiny_pipeline.store
    before = snapshot(store.root / "train")
    common, section = tiny_pipeline.stage("train")
    (again,) = train_stage.run(store, common, section)
    (first,) = tiny_pipeline.out["train"]
    assert again["skipped"] is True and again["test_accuracy"] == first["test_accuracy"]
    assert "skipped (already trained with identical parameters)" in capsys.readouterr().out
    assert snapshot(store.root / "train") == before and len(before) == 2   # payload + meta, untouched


def test_spectrum_projection_and_curves_skip_on_a_second_run(tiny_pipeline):
    store = tiny_pipeline.store
    kept = {f: _files(store.root / f) for f in ("spectrum", "solvers", "projection", "curves", "terms", "scales",
                                                "full_space", "speed")}
    plan_payload = (store.root / "plan" / "monte_carlo.json").read_bytes()
    rows = [*spectrum_stage.run(store, *tiny_pipeline.stage("spectrum")),
            *projection_stage.run(store, *tiny_pipeline.stage("projection")),
            *mc_stage.run(store, *tiny_pipeline.stage("monte_carlo"))]
    assert len(rows) == 1 + 1 + 16 + 8 and all(r["skipped"] for r in rows)     # 8: the full_space comparisons
    assert {f: _files(store.root / f) for f in kept} == kept
    assert (store.root / "plan" / "monte_carlo.json").read_bytes() == plan_payload


# ------------------------------------------------------------------------------------------------ spectrum
def test_spectrum_eigenvalues_are_rayleigh_quotients_of_the_saved_eigenvectors(tiny_pipeline):
    store = tiny_pipeline.store
    (row,) = tiny_pipeline.out["spectrum"]
    p = spectrum_records.load_spectrum(store, DS, MODEL, SEED)
    ev, vecs = p["eigenvalues"].numpy(), p["eigenvectors"]
    assert ev.shape == (4,) and np.all(np.diff(ev) <= 0) and ev[-1] > 0
    assert vecs.shape == (2, row["n_params"]) and vecs.dtype == torch.float32
    torch.testing.assert_close(vecs.double() @ vecs.double().T, torch.eye(2, dtype=torch.float64), atol=1e-5,
                               rtol=0)
    assert row["lambda_1"] == ev[0] and row["lambda_4"] == ev[-1] and row["skipped"] is False
    assert row["max_residual"] == pytest.approx(float(p["residuals"].max()))
    net, x, y = _net64(store)
    for d in range(2):
        v = vecs[d].double()
        hv = _hvp(net, x, y, v)
        assert float(v @ hv / (v @ v)) == pytest.approx(ev[d], rel=2e-5)
        residual = float(torch.linalg.norm(hv - ev[d] * v)) / abs(ev[0])
        assert residual == pytest.approx(float(p["residuals"][d]), abs=1e-4)
        assert residual < 2e-2                       # spectrum.tol = 1e-2


def test_spectrum_trace_and_density_match_the_hutchinson_probes(tiny_pipeline):
    """The trace is the mean of z^T H z over the seeded Rademacher probes (recomputed here with a plain double
    backward); SLQ starts from the same first probe, so its first moment sum(w * nodes) is z^T H z / n_params."""
    store = tiny_pipeline.store
    p = spectrum_records.load_spectrum(store, DS, MODEL, SEED)
    samples = np.asarray(p["trace_samples"])
    assert samples.shape == (4,)
    assert p["trace"] == pytest.approx(samples.mean(), rel=1e-12)
    assert p["trace_stderr"] == pytest.approx(samples.std(ddof=1) / 2, rel=1e-12)
    net, x, y = _net64(store)
    n = sum(q.numel() for q in net.parameters())
    gen = torch.Generator().manual_seed(SEED)
    for s in samples:
        z = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
        assert float(z @ _hvp(net, x, y, z)) == pytest.approx(s, rel=1e-4)
    nodes, weights = np.asarray(p["slq_nodes"]), np.asarray(p["slq_weights"])
    assert nodes.shape == weights.shape == (1, 8)
    assert weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert float((weights * nodes).sum()) == pytest.approx(samples[0] / n, rel=1e-4)
    ev = p["eigenvalues"].numpy()
    assert nodes.max() <= ev[0] * (1 + 1e-3) and nodes.max() > ev[-1]   # Ritz values inside the spectrum
    assert p["smallest"] < 0 and p["smallest"] <= nodes.min() + 1e-2 * ev[0]
    assert np.all(np.asarray(p["density"]) >= 0) and len(p["grid"]) == len(p["density"]) == 2000
    assert p["hvp_counts"]["trace"] == 4 and p["hvp_counts"]["density"] == 8


def test_spectrum_pyhessian_trace_and_density_on_the_same_probes(tiny_pipeline):
    p = spectrum_records.load_spectrum(tiny_pipeline.store, DS, MODEL, SEED)
    ph = p["pyhessian"]
    np.testing.assert_allclose(ph["trace"]["samples"], p["trace_samples"], rtol=1e-5)    # shared probes
    assert ph["trace"]["estimate"] == pytest.approx(np.mean(ph["trace"]["samples"]), rel=1e-12)
    assert ph["trace"]["products"] == ph["trace"]["n_probes"] == 4
    d = ph["density"]
    np.testing.assert_allclose(d["nodes"], p["slq_nodes"], rtol=1e-4, atol=1e-4 * abs(p["slq_nodes"]).max())
    assert np.asarray(d["weights"]).sum() == pytest.approx(1.0, abs=1e-6) and d["products"] == 8
    diff = np.abs(np.asarray(d["density"]) - np.asarray(p["density"]))
    assert ph["l1_difference"] == pytest.approx(np.trapezoid(diff, p["grid"]), rel=1e-2, abs=1e-9)
    assert ph["max_difference"] == pytest.approx(diff.max() / np.max(p["density"]), rel=1e-9)
    summary = tiny_pipeline.store.meta("spectrum", RUN)["summary"]
    assert summary["pyhessian_trace"] == ph["trace"]["estimate"]


def test_spectrum_solver_comparison_rows(tiny_pipeline):
    """Lanczos, our power iteration and PyHessian 0.1 on the same operator: k = solver_k eigenvalues each, Rayleigh
    quotients (never above lambda_1), residuals and counts as saved; Lanczos agrees with the spectrum's."""
    store = tiny_pipeline.store
    common, section = tiny_pipeline.stage("spectrum")
    assert spectrum_records.solver_runs(store) == [(DS, MODEL, SEED)]
    res = load(store, "solvers", RUN)
    rows = res.payload["rows"]
    assert [r["method"] for r in rows] == ["lanczos (ours)", "power (ours)", "PyHessian 0.1"]
    ev = spectrum_records.load_spectrum(store, DS, MODEL, SEED)["eigenvalues"].numpy()
    for r in rows:
        values, residuals = np.asarray(r["eigenvalues"]), np.asarray(r["residuals"])
        assert (r["k"], r["n"]) == (section.solver_k, N) == (2, N) and values.shape == residuals.shape == (2,)
        assert np.all(np.diff(values) <= 0) and values[0] <= ev[0] * (1 + 1e-3) and values[-1] > 0
        assert r["max_residual"] == residuals.max() and np.all(np.isfinite(residuals)) and r["hvp_count"] > 2
    np.testing.assert_allclose(rows[0]["eigenvalues"], ev[:2], rtol=2e-3)
    assert rows[0]["max_residual"] < 2e-2                                    # spectrum.tol = 1e-2
    meta_rows = res.meta["summary"]["rows"]
    assert [{k: r[k] for k in ("method", "k", "n", "hvp_count", "max_residual")} for r in meta_rows] == [
        {k: r[k] for k in ("method", "k", "n", "hvp_count", "max_residual")} for r in rows]
    assert all(r["seconds"] > 0 for r in meta_rows) and not any("seconds" in r for r in rows)   # timings: meta only


# ------------------------------------------------------------------------------------------------ projection
def test_projection_grids_are_prefix_means_of_plain_losses(tiny_pipeline):
    store = tiny_pipeline.store
    (row,) = tiny_pipeline.out["projection"]
    assert row["N"] == N and row["grid_points"] == 3 and row["skipped"] is False
    p = projection_records.load_projection(store, DS, MODEL, SEED)
    assert p["k"] == [10, 11, N - 1, N] and p["N"] == N
    net, _ = load_trained(store, DS, MODEL, SEED)
    x, y = data.training_subset(DS, N, 0)
    w0 = _flat(net)
    hess = spectrum_records.load_spectrum(store, DS, MODEL, SEED)["eigenvectors"][:2]
    planes = {"hessian": hess, "filter_normalized": filter_normalized_directions(net, n=2, seed=SEED)}
    for plane, directions in planes.items():
        g = p[plane]
        np.testing.assert_array_equal(g["axis"], [-1.0, 0.0, 1.0])
        for i, j in ((1, 1), (0, 2), (2, 0)):            # the minimum and two corners (a transpose would show)
            w = w0 + g["axis"][i] * directions[0] + g["axis"][j] * directions[1]
            losses = explicit_losses(net, x, y, w).double()
            for k in p["k"]:
                assert g[f"L_{k}"].shape == (3, 3)
                assert g[f"L_{k}"][i, j] == pytest.approx(losses[:k].mean().item(), rel=1e-5), (plane, i, j, k)
    assert p["hessian"]["L_10"][0, 2] != pytest.approx(p["hessian"]["L_10"][2, 0], rel=1e-3)


# ------------------------------------------------------------------------------------------------ Monte Carlo
def _gap_sigma(store):
    return float(f"{store.load('scales', RUN).payload['sigma']:.4g}")


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


# ------------------------------------------------------------------------------------------------ convergence
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


def _hessian_curves(plan):
    return [s for g, s in plan if g in ("main", "gap") and s.subspace == "hessian"]


def _learning(store):
    rows = convergence_records.load_table(store, "learning_curve")
    sizes = sorted({r["n"] for r in rows})
    return sizes, [float(np.mean([r["test_accuracy"] for r in rows if r["n"] == n])) for n in sizes]


def _k_of_orders(k, suffix, threshold):
    """K(Delta) of every order from its suffix maxima (NaN: not below at the last k)."""
    out = []
    for row in np.asarray(suffix, dtype=np.float64):
        below = row < threshold
        out.append(float(k[np.argmax(below)]) if below[-1] else np.nan)
    return np.array(out)


def _quantile(values, q):
    v = np.sort(np.where(np.isnan(values), np.inf, values))
    x = v[max(0, int(np.ceil(q * len(v))) - 1)]                     # inverted CDF
    return None if np.isinf(x) else float(x)


def test_convergence_saves_every_table_as_returned(tiny_pipeline):
    store = tiny_pipeline.store
    out = tiny_pipeline.out["convergence"]
    assert list(out) == list(convergence_records.TABLES)
    assert store.names("analysis") == sorted(convergence_records.TABLES)
    has_cnn = "cnn" in tiny_pipeline.profile.common.models
    for table, rows in out.items():
        assert bool(rows) == (table != "cnn_bound" or has_cnn), f"table {table}: {len(rows)} rows"
        assert convergence_records.load_table(store, table) == json.loads(json_bytes(rows))
    assert json.loads((store.root / "summary.json").read_text()) == json.loads(json_bytes(out["summary"]))


def test_convergence_slopes_and_loss_correlation_from_the_saved_curves(tiny_pipeline):
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    slopes = convergence_records.load_table(store, "slopes")
    corr = convergence_records.load_table(store, "loss_correlation")
    assert [r["subspace"] for r in slopes] == [r["subspace"] for r in corr] == ["hessian", "random"]
    for row, rho in zip(slopes, corr):
        c = mc_records.load_curve(store, _spec(plan, "main", subspace=row["subspace"]))
        fit = fit_slope(c["k"], c["delta"], k_min=10)
        assert row["slope"] == pytest.approx(fit.slope, rel=1e-12) and -3 < row["slope"] < -1
        assert row["slope_se"] == pytest.approx(fit.slope_stderr, rel=1e-12)
        k2 = (c["k"] ** 2 * c["delta"])[c["k"] >= 10]
        assert row["k2_median"] == pytest.approx(np.median(k2), rel=1e-12)
        assert row["k2_q25"] == pytest.approx(np.quantile(k2, 0.25), rel=1e-12)
        assert row["vbar"] == c["vbar"] and row["vbar_se"] == c["vbar_stderr"]
        assert (row["dataset"], row["model"], row["seed"], row["D"], row["sigma"]) == (DS, MODEL, SEED, 2, 0.3)
        L = np.cumsum(c["losses0"]) / np.arange(1, N + 1)
        ref = spearmanr(c["delta"], L[:-1])
        assert rho["rho"] == pytest.approx(ref.statistic, rel=1e-12) and rho["n"] == N - 1
        assert rho["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_convergence_theory_rows_from_the_saved_curves(tiny_pipeline):
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    rows = convergence_records.load_table(store, "theory")
    distinct = list(dict.fromkeys(s for _, s in plan))
    assert len(rows) == len(distinct) == 14
    for row, spec in zip(rows, distinct):
        assert (row["subspace"], row["D"], row["distribution"], row["sigma"], row["estimator"]) == (
            spec.subspace, spec.D, spec.distribution, spec.sigma, spec.estimator)
        c = mc_records.load_curve(store, spec)
        assert row["median_mc_over_q"] == pytest.approx(np.median(c["delta"] / c["Q"]), rel=1e-12)
        within = np.mean(np.abs(c["delta"] - c["Q"]) <= 3 * c["stderr"])
        assert row["share_within_3se"] == pytest.approx(within, abs=1e-12)
        assert ("median_mc_over_t" in row) == (c["T"] is not None)


def test_convergence_sample_size_rows_from_the_saved_curves(tiny_pipeline):
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    rows = convergence_records.load_table(store, "sample_size")
    specs = _hessian_curves(plan)
    assert [(r["scale"], r["delta"]) for r in rows] == [(s.scale, d) for s in specs for d in (0.01, 0.001)]
    trained = store.meta("train", RUN)["summary"]
    sizes, acc = _learning(store)
    for r in rows:
        spec = next(s for s in specs if s.scale == r["scale"])
        c = mc_records.load_curve(store, spec)
        thr = r["delta"]
        wall = store.meta("spectrum", RUN)["seconds"] + store.meta("curves", spec.name)["seconds"]
        assert (r["dataset"], r["model"], r["seed"], r["N"], r["n_params"]) == (DS, MODEL, SEED, N,
                                                                                trained["n_params"])
        assert r["sigma"] == spec.sigma and r["vbar"] == c["vbar"]
        assert r["test_accuracy_N"] == trained["test_accuracy"]
        assert r["K_fixed"] == _first_below(c["delta"], thr)
        assert r["band_multiplier"] == c["band_multiplier"]
        assert r["K_band"] == _first_below(c["delta"] + c["band_multiplier"] * c["band_se"], thr)
        assert r["K_band"] >= r["K_fixed"]
        assert r["K_closed"] == _k_closed_brute(c["vbar"], N, thr) == k_closed_form(c["vbar"], N, thr)
        orders = _k_of_orders(c["k"], c["order_suffix_max"], thr)
        assert r["n_orders"] == 2 and r["orders_reached"] == pytest.approx(np.isfinite(orders).mean())
        assert r["K_order_median"] == _quantile(orders, 0.5)
        assert r["K_order_q05"] == _quantile(orders, 0.05) and r["K_order_q95"] == _quantile(orders, 0.95)
        assert r["K_order_upper"] is None           # 2 orders are too few for a 95 % conformal bound
        K = r["K_fixed"]
        expected = float(np.interp(np.log(K), np.log(sizes), acc)) if K and sizes[0] <= K <= sizes[-1] else None
        assert r["test_accuracy_K"] == (pytest.approx(expected, rel=1e-12) if expected is not None else None)
        assert r["wall_seconds"] == pytest.approx(wall, rel=1e-12)
    assert any(r["test_accuracy_K"] is not None for r in rows), "no K inside the learning curve: untested"


def test_convergence_learning_curve_trainings(tiny_pipeline):
    store = tiny_pipeline.store
    rows = convergence_records.load_table(store, "learning_curve")
    assert [(r["dataset"], r["model"], r["seed"], r["n"]) for r in rows] == [(DS, MODEL, SEED, n)
                                                                             for n in (25, 50, 100, 200)]
    # n = n_train is the main trained model, reused
    assert store.names("learning_curve") == [f"{RUN}_n100", f"{RUN}_n25", f"{RUN}_n50"]
    main = store.meta("train", RUN)
    assert rows[-1]["test_accuracy"] == main["summary"]["test_accuracy"] and rows[-1]["seconds"] == main["seconds"]
    xt, yt = data.load(DS, "test")
    recipe = tiny_pipeline.stage("train")[1]
    for r in rows[:-1]:
        res = load(store, "learning_curve", f"{RUN}_n{r['n']}")
        assert res.meta["params"] == train_stage.training_params(DS, MODEL, SEED, r["n"], 0, recipe)
        net = models.build(res.payload["model"], SEED)
        net.load_state_dict(res.payload["state_dict"])
        on_test = evaluate(net.eval(), xt, yt)
        assert r["test_accuracy"] == pytest.approx(on_test["accuracy"], abs=1e-12)
        assert r["test_loss"] == pytest.approx(on_test["loss"], rel=1e-6)
        x, y = data.training_subset(DS, r["n"], 0)
        with torch.no_grad():
            assert r["train_loss"] == pytest.approx(F.cross_entropy(net(x), y).item(), rel=1e-5)


@pytest.mark.parametrize("n0", [50, 100])
def test_convergence_pilot_sees_only_its_first_n0_samples(tiny_pipeline, n0):
    """The pilot is the recipe retrained on the first n0 samples (bitwise: training is deterministic), evaluated
    on them and on the test set; its lambda_1 is the top eigenvalue of its own n0-sample Hessian and its V-bar the
    across-sample loss variance at sigma = 0.3 in that Hessian subspace."""
    store = tiny_pipeline.store
    row = next(r for r in convergence_records.load_table(store, "pilots") if r["n0"] == n0)
    res = load(store, "pilots", f"{RUN}_n{n0}")
    recipe = tiny_pipeline.stage("train")[1]
    x, y = data.training_subset(DS, n0, 0)
    net = models.build(MODEL, SEED)
    train(net, x, y, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=SEED, progress=False)
    for key, value in net.state_dict().items():
        assert torch.equal(res.payload["state_dict"][key], value), key
    on_train, on_test = evaluate(net, x, y), evaluate(net, *data.load(DS, "test"))
    assert row["train_accuracy"] == pytest.approx(on_train["accuracy"], abs=1e-12)
    assert row["test_accuracy"] == pytest.approx(on_test["accuracy"], abs=1e-12)
    assert row["gap"] == pytest.approx(on_test["loss"] - on_train["loss"], rel=1e-5)
    assert (row["seed"], row["sigma"]) == (SEED, 0.3)
    assert row["cost"]["trainings"] == 1 and row["cost"]["training_samples_seen"] == n0 * recipe.epochs
    assert row["lambda_1"] == float(res.payload["eigenvalues"][0])
    net64, x64 = net.double(), x.double()
    v = torch.randn(sum(q.numel() for q in net64.parameters()), generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    for _ in range(60):                                    # power iteration: a lower bound that converges
        v = _hvp(net64, x64, y, v)
        v = v / torch.linalg.norm(v)
    rq = float(v @ _hvp(net64, x64, y, v))
    assert 0.95 * row["lambda_1"] < rq <= row["lambda_1"] * (1 + 1e-3)
    basis = hessian.top_eigenpairs(hessian.HessianOperator(net64, x64, y), 2, tol=1e-6, seed=SEED).eigenvectors
    z = make_sampler("gaussian", sigma=1.0).sample(4, 2, seed=SEED)
    w0 = _flat(net64)
    # an eigenvector's sign is arbitrary (the solver's may differ with the thread count): V-bar of the 4 thetas
    # for each choice of signs, the pilot's is one of them
    vbars = []
    for signs in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        P = torch.tensor(signs, dtype=torch.float64)[:, None] * basis
        L = np.stack([explicit_losses(net64, x64, y, w0 + 0.3 * th @ P).numpy() for th in z])
        vbars.append(L.var(axis=1).mean())
    assert min(abs(row["vbar_sigma"] / v - 1) for v in vbars) < 1e-3, (row["vbar_sigma"], vbars)


def test_convergence_calibration_and_predictors(tiny_pipeline):
    store = tiny_pipeline.store
    cal = convergence_records.load_table(store, "calibration")
    pred = convergence_records.load_table(store, "predictors")
    sizes, acc = _learning(store)
    gaps = [0.01, 0.005]
    sample = {r["scale"]: r for r in convergence_records.load_table(store, "sample_size")}
    assert sorted((r["scale"], r["gap"]) for r in cal) == sorted((s, g) for s in ("loss_gap", "sigma") for g in gaps)
    for r in cal:
        ok = np.asarray(acc) >= acc[-1] - r["gap"]
        bad = np.flatnonzero(~ok)
        n_obs = float(sizes[0] if len(bad) == 0 else sizes[bad[-1] + 1])
        assert r["n_within"] == n_obs and r["plateau"] == acc[-1] and r["n_max"] == sizes[-1]
        assert r["vbar"] == sample[r["scale"]]["vbar"] and r["N"] == N
        assert r["delta_star"] == pytest.approx(r["vbar"] * N / ((N - 1) * n_obs * (n_obs + 1)), rel=1e-12)
    pilots = {p["n0"]: p for p in convergence_records.load_table(store, "pilots")}
    lc = convergence_records.load_table(store, "learning_curve")
    assert sorted((p["gap"], p["n0"]) for p in pred) == sorted((g, n0) for g in gaps for n0 in (50, 100))
    for p in pred:
        used = [r for r in lc if r["n"] <= p["n0"]]
        assert p["cost_learning_curve"] == {"trainings": len(used),
                                            "training_samples_seen": sum(r["n"] for r in used),
                                            "seconds": pytest.approx(sum(r["seconds"] for r in used), rel=1e-12)}
        pilot = pilots[p["n0"]]
        assert p["cost_landscape"]["trainings"] == 1
        assert p["cost_landscape"]["hessian_products"] == pilot["cost"]["hessian_products"]
        assert p["n_within"] == next(c["n_within"] for c in cal if c["gap"] == p["gap"])
        # one (dataset, model) only: no other run to calibrate Delta* on (leave-one-out)
        assert p["delta_star_sigma"] is None and p["n_landscape_sigma"] is None
        if len({r["n"] for r in used}) < 3:               # a 3-parameter power law needs 3 sizes
            assert p["power_law"] is None and p["n_learning_curve"] is None
        else:
            law = p["power_law"]
            assert law["n_points"] == len(used) and law["n_max"] == p["n0"]
            assert p["n_learning_curve"] == pytest.approx((law["a"] / p["gap"]) ** (1 / law["b"]), rel=1e-12)


def test_convergence_summary_pools_orders_and_quotes_the_predictors(tiny_pipeline):
    store = tiny_pipeline.store
    plan = mc_records.load_plan(store)
    rows = convergence_records.load_table(store, "summary")
    pred = convergence_records.load_table(store, "predictors")
    cal = convergence_records.load_table(store, "calibration")
    pilot = next(p for p in convergence_records.load_table(store, "pilots") if p["n0"] == 100)
    assert sorted((r["scale"], r["delta"]) for r in rows) == sorted(
        (s, d) for s in ("loss_gap", "sigma") for d in (0.01, 0.001))
    for r in rows:
        spec = next(s for s in _hessian_curves(plan) if s.scale == r["scale"])
        c = mc_records.load_curve(store, spec)
        orders = _k_of_orders(c["k"], c["order_suffix_max"], r["delta"])
        assert r["K_n"] == 2 and r["K_median"] == _quantile(orders, 0.5)
        assert r["K_q05"] == _quantile(orders, 0.05) and r["K_q95"] == _quantile(orders, 0.95)
        assert r["sigma"] == spec.sigma and r["pilot_n0"] == 100
        vbar = pilot["vbar_sigma"] if r["scale"] == "sigma" else pilot["vbar_gap"]
        assert r["K_pilot"] == _k_closed_brute(vbar, N, r["delta"])
        p = next(p for p in pred if (p["n0"], p["gap"]) == (100, 0.01))
        assert r["n_learning_curve"] == p["n_learning_curve"]
        assert r["n_within_1pt"] == next(x["n_within"] for x in cal if (x["scale"], x["gap"]) == (r["scale"], 0.01))


def test_convergence_r0_curve_bound_and_measured_norms(tiny_pipeline):
    store = tiny_pipeline.store
    (row,) = convergence_records.load_table(store, "r0")
    name = "mnist_mlp8_nobias_s0"
    assert row["name"] == name and row["hidden"] == [8] and row["n_params"] == 784 * 8 + 8 * 10
    p = convergence_records.load_r0_curve(store, name)
    losses = np.asarray(p["losses"])
    assert losses.shape == (100,) and np.all(losses > 0)
    np.testing.assert_array_equal(p["k"], np.arange(1, 100))
    g = torch.Generator().manual_seed(SEED)
    diffs = np.stack([np.abs(_differences(losses[torch.randperm(100, generator=g).numpy()])) for _ in range(2)])
    np.testing.assert_allclose(p["mean"], diffs.mean(0), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(p["stderr"], diffs.std(0, ddof=1) / np.sqrt(2), rtol=1e-4, atol=1e-9)
    assert row["M_l"] == pytest.approx(losses.max(), rel=1e-12)
    np.testing.assert_allclose(p["bound_curve"], 2 * losses.max() / (p["k"] + 1), rtol=1e-12)
    x, _ = data.training_subset(DS, 100, 0)
    assert row["M_x"] == pytest.approx(float(x.flatten(1).double().norm(dim=1).max()), rel=1e-12)
    L, MW, Mx = row["n_layers"], row["M_W"], row["M_x"]
    bound = L * 2 ** 0.5 * Mx ** 2 * MW ** (2 * L) + 2 ** 0.5 * MW ** 2 * (MW ** (2 * L) - 1) / (MW ** 2 - 1)
    assert L == 2 and row["hessian_bound"] == pytest.approx(bound, rel=1e-12)
    norms = np.asarray(p["hessian_norms"])
    assert norms.shape == (1,) and row["max_measured_norm"] == norms.max() > 0
    assert row["hessian_bound"] >= row["max_measured_norm"]          # the bound holds for the measured sample
    assert p["hessian_indices"] == torch.randperm(100, generator=torch.Generator().manual_seed(SEED))[:1].tolist()
    assert row["slope"] == pytest.approx(fit_slope(p["k"], p["mean"], k_min=10).slope, rel=1e-12)


# ------------------------------------------------------------------------------------------------ figures
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


# ------------------------------------------------------------------------------------------------ plumbing
@pytest.mark.parametrize("result_folder", [f for info in REGISTRY.values() for f in info.folders])
def test_load_of_a_missing_result_names_the_notebook_and_the_command(tmp_path, monkeypatch, result_folder):
    monkeypatch.delenv("LANDSCAPE_RUNNER", raising=False)            # outside the runner: the make command
    store = ResultStore("nothing", root=tmp_path)
    info = writer_of(result_folder)
    with pytest.raises(MissingResultError) as err:
        load(store, result_folder, "absent")
    msg = str(err.value)
    assert f"result {result_folder}/absent of profile 'nothing' is missing" in msg
    assert f"run notebook notebooks/{info.notebook}.py first" in msg
    assert f"(make stage STAGE={info.notebook} PROFILE=nothing)" in msg


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


def test_cnn_bound_rows_save_the_measured_norms_of_a_cnn_run(tmp_path, monkeypatch, one_thread):
    """The CNN-bound stage on a (tiny, untrained) CNN run: every summary key the paper reads is saved and equals
    the core comparison on the same net and samples (the pipeline's tiny profile has no CNN to exercise it)."""
    from lib.core.landscape import bounds
    from lib.infra.config import validate
    from tests.conftest import TINY_PROFILE

    profile = validate({**TINY_PROFILE, "common": {**TINY_PROFILE["common"], "models": ["cnn"]},
                        "spectrum": {**TINY_PROFILE["spectrum"], "solver_models": ["cnn"]},
                        "monte_carlo": {**TINY_PROFILE["monte_carlo"], "sweep_models": ["cnn"],
                                        "full_space_models": ["cnn"]},
                        "convergence": {**TINY_PROFILE["convergence"], "learning_models": ["cnn"],
                                        "cnn_bound_samples": 2}}, source="test")
    common, section = profile.stage("convergence")
    net = models.build("cnn", 0).eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 1, 28, 28, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    monkeypatch.setattr(convergence_bounds, "trained_run", lambda *a, **k: (net, x, y, {"train/x": "0"}))
    store = ResultStore("cnn_bound_test", root=tmp_path / "cnn_bound_test")
    rows = convergence_bounds.cnn_bound_rows(store, common, section)
    assert len(rows) == 1
    ref = bounds.cnn_bound_comparison(net, x, y, 2, common.seeds[0])
    row = rows[0]
    assert row["outer_norms_max"] == pytest.approx(ref["outer_max"], rel=1e-6)
    assert row["full_norms_max"] == pytest.approx(ref["full_max"], rel=1e-6)
    assert row["outer_norms_median"] == pytest.approx(ref["outer_median"], rel=1e-6)
    assert row["bound"] == pytest.approx(ref["bound"], rel=1e-9) and row["bound"] >= row["outer_norms_max"]


def test_specification_note_names_each_trimmed_value_read_from_the_results(tiny_pipeline, monkeypatch):
    store, common = tiny_pipeline.store, tiny_pipeline.stage("figures")[0]
    plan = registry.Inputs.of(store, common).plan
    args = (store, common.datasets, common.models, common.seeds, plan)
    assert tiny_pipeline.out["figures"]["numbers"]["SpecificationNote"] == paper_numbers.specification_note(*args)
    # the tiny profile: T = 8, 4 probes, 8 SLQ steps, 3 x 3 surfaces against the specification's values
    assert paper_numbers.specification_note(*args, {"mlp1": 1, "cnn": 1}) == (
        "The profile trims the specification to fit a 2-core CPU: the main curves use $T=8$ draws rather than "
        "1{,}024, the trace 4 Hutchinson probes rather than 30, the density 8 Lanczos steps rather than 80, "
        "the surfaces a $3\\times3$ grid rather than $21\\times21$ (\\texttt{make reproduce FULL=1} runs it in "
        "full)")                                                          # one seed of one: nothing capped
    three = [0, 1, 2]
    assert ", the MLP-1 spectrum 1 seed of 3 (" in paper_numbers.specification_note(
        store, common.datasets, common.models, three, plan, {"mlp1": 1})
    # a build at (or above) every value of the specification says so
    monkeypatch.setattr(paper_numbers, "FULL_SPECIFICATION", {"monte_carlo.n_samples": 8, "spectrum.trace_probes": 4,
                                                       "spectrum.slq_iter": 8, "projection.grid_points": 3,
                                                       "common.spectrum_max_seeds": {}})
    assert paper_numbers.specification_note(*args).startswith("The profile runs the specification in full ($T=8$")

