"""The spectrum stage (``lib.stages.spectrum``) on the tiny pipeline: eigenpairs, trace, density, PyHessian's passes and
the solver comparison against plain double-backward Hessian-vector products."""
import numpy as np
import pytest
import torch

from lib.records import spectrum as spectrum_records
from lib.records.runs import load
from lib.stages import spectrum as spectrum_stage
from tests.cases import MatrixOperator, case
from tests.stages.conftest import DS, MODEL, RUN, SEED, N, _hvp, _net64

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


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
    """The reported trace is the deflated one: the sum of the top-k eigenvalues plus the mean of its projected
    probes' z^T H z; our Hutchinson trace (kept where PyHessian's is compared) is the mean of z^T H z over the seeded
    Rademacher probes (recomputed here with a plain double backward), and both agree within their errors; SLQ starts
    from the same first probe, so its first moment sum(w * nodes) is z^T H z / n_params."""
    store = tiny_pipeline.store
    p = spectrum_records.load_spectrum(store, DS, MODEL, SEED)
    ev = p["eigenvalues"].numpy()
    samples = np.asarray(p["trace_samples"])
    assert samples.shape == (4,) and p["trace_estimator"] == "deflated" and p["trace_rank"] == len(ev)
    assert p["trace_exact_part"] == pytest.approx(ev.sum(), rel=1e-12)
    assert p["trace"] == pytest.approx(ev.sum() + samples.mean(), rel=1e-12)
    assert p["trace_stderr"] == pytest.approx(samples.std(ddof=1) / 2, rel=1e-12)
    hutch = np.asarray(p["trace_hutchinson_samples"])
    assert p["trace_hutchinson"] == pytest.approx(hutch.mean(), rel=1e-12)
    assert p["trace_hutchinson_stderr"] == pytest.approx(hutch.std(ddof=1) / 2, rel=1e-12)
    assert abs(p["trace"] - p["trace_hutchinson"]) < 4 * np.hypot(p["trace_stderr"], p["trace_hutchinson_stderr"])
    net, x, y = _net64(store)
    n = sum(q.numel() for q in net.parameters())
    gen = torch.Generator().manual_seed(SEED)
    for s in hutch:
        z = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
        assert float(z @ _hvp(net, x, y, z)) == pytest.approx(s, rel=1e-4)
    nodes, weights = np.asarray(p["slq_nodes"]), np.asarray(p["slq_weights"])
    assert nodes.shape == weights.shape == (1, 8)
    assert weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert float((weights * nodes).sum()) == pytest.approx(hutch[0] / n, rel=1e-4)
    assert nodes.max() <= ev[0] * (1 + 1e-3) and nodes.max() > ev[-1]   # Ritz values inside the spectrum
    assert p["smallest"] < 0 and p["smallest"] <= nodes.min() + 1e-2 * ev[0]
    assert np.all(np.asarray(p["density"]) >= 0) and len(p["grid"]) == len(p["density"]) == 2000
    assert p["hvp_counts"]["trace"] == 4 and p["hvp_counts"]["trace_hutchinson"] == 4
    assert p["hvp_counts"]["density"] == 8


def test_spectrum_pyhessian_trace_and_density_on_the_same_probes(tiny_pipeline):
    p = spectrum_records.load_spectrum(tiny_pipeline.store, DS, MODEL, SEED)
    ph = p["pyhessian"]
    np.testing.assert_allclose(ph["trace"]["samples"], p["trace_hutchinson_samples"], rtol=1e-5)   # shared probes
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


def test_residuals_are_measured_with_one_fresh_product_per_vector():
    """``residuals(op, values, vectors)``: ||H v - lambda v|| / |lambda_1| of the rows scaled to unit length, on an
    explicit Hessian: zero for its eigenpairs, 0.1 |lambda_i| / (1.1 |lambda_1|) for eigenvalues 10 % off."""
    model, _, _, hess, vals, vecs = case("relu")
    op = MatrixOperator(model, hess)
    exact = spectrum_stage.residuals(op, vals[:3], 2.0 * vecs[:, :3].T)
    assert exact.shape == (3,) and exact.max() < 1e-10 and op.hvp_count == 3
    off = spectrum_stage.residuals(op, 1.1 * vals[:3], vecs[:, :3].T)
    np.testing.assert_allclose(off, 0.1 * np.abs(vals[:3]) / (1.1 * abs(vals[0])), rtol=1e-8)
