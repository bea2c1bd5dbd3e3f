"""The real-curve coverage of the band (lib.stages.band_coverage_real) on a tiny seeded model: a replicate's kept
values against explicit loops over thetas and k, the leave-one-out reference, the coverage indicator and its
multipliers against a direct check, the tail estimators on samples of known tail, and the command on N = 200."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from lib.core.landscape.sampling import make_sampler
from lib.core.landscape.subspace import SubspaceLosses, random_basis
from lib.core.sample_size.band_coverage import DISTRIBUTIONS
from lib.core.sample_size.sufficient import simultaneous_multiplier
from lib.core.tensors import n_params
from lib.core.training.models import mlp
from lib.stages import band_coverage_real as bcr

pytestmark = pytest.mark.usefixtures("one_thread")

N, D, T, B = 200, 3, 64, 8


@pytest.fixture(scope="module")
def losses():
    """SubspaceLosses of a seeded 16-8-10 ReLU MLP on 200 random images and labels, random 3-dimensional basis; in
    float64, so that one theta at a time and the batched blocks agree to rounding in float64."""
    torch.manual_seed(0)
    net = mlp((8,), n_in=16).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (N,), generator=g)
    return SubspaceLosses(net, x, y, random_basis(n_params(net), D, seed=2, dtype=torch.float64))


def explicit_dsq(losses, thetas) -> np.ndarray:
    """(T, N-1) d_k^2 with L_k = (l_1 + ... + l_k) / k summed in a loop, theta by theta (no cumsum, no formula)."""
    out = np.empty((len(thetas), N - 1))
    for t, theta in enumerate(thetas):
        l = losses(theta[None]).double().numpy()[0]
        running, prev = 0.0, None
        for k in range(1, N + 1):
            running += l[k - 1]
            L = running / k
            if prev is not None:
                out[t, k - 2] = (L - prev) ** 2
            prev = L
    return out


def test_a_replicate_keeps_the_batch_means_sum_and_raw_values_of_an_explicit_loop(losses):
    thetas = make_sampler("gaussian", sigma=0.7).sample(T, D, seed=3)
    rep = bcr.replicate(losses, thetas, B, chunk=24, keep_k=(10, 100, 1000))     # chunks across batch edges
    dsq = explicit_dsq(losses, thetas)
    per = T // B
    means = np.stack([dsq[b * per:(b + 1) * per].mean(axis=0) for b in range(B)])
    assert rep["keep_k"] == [10, 100]                                          # k = 1,000 > N - 1: left out
    np.testing.assert_allclose(rep["batch_means"], means, rtol=1e-9, atol=0)
    np.testing.assert_allclose(rep["sum"], dsq.sum(axis=0), rtol=1e-9, atol=0)
    np.testing.assert_allclose(rep["raw"], dsq[:, [9, 99]], rtol=1e-9, atol=0)
    assert rep["batch_means"].shape == (B, N - 1) and rep["batch_means"].min() > 0
    with pytest.raises(ValueError, match="multiple of n_batches"):
        bcr.replicate(losses, thetas[:60], B)


def test_the_leave_one_out_reference_is_the_mean_over_the_other_replicates_thetas():
    rng = np.random.default_rng(5)
    raw = rng.lognormal(0, 1.5, size=(6, 16, 7))                               # (R, T, k)
    ref = bcr.leave_one_out(raw.sum(axis=1), 16)
    for r in range(6):
        others = np.concatenate([raw[j] for j in range(6) if j != r])          # (5 x 16, k)
        np.testing.assert_allclose(ref[r], others.mean(axis=0), rtol=1e-12)
    assert not np.allclose(ref[0], ref[1])


def test_the_coverage_indicator_and_multipliers_equal_a_direct_check(losses):
    reps, sigma, n_boot = 12, 0.7, 200
    res = bcr.measure(losses, sigma, reps=reps, n_thetas=T, n_batches=B, chunk=40, n_boot=n_boot, seed=4,
                      keep_k=(10, 100), progress=False)
    dsq = [explicit_dsq(losses, make_sampler("gaussian", sigma=sigma).sample(T, D, seed=4 + 1 + r))
           for r in range(reps)]
    pooled = np.concatenate(dsq)
    np.testing.assert_allclose(res["reference"], pooled.mean(axis=0), rtol=1e-9)
    replicate_means = np.stack([d.mean(axis=0) for d in dsq])
    np.testing.assert_allclose(res["reference_rel_se"], replicate_means.std(axis=0, ddof=1) / math.sqrt(reps)
                               / pooled.mean(axis=0), rtol=1e-7)
    per = T // B
    for method in ("max_t", "bootstrap_t"):
        cell = res["cells"][method]
        hits, cs, min_ratio, max_ratio, worst = [], [], [], [], []
        for r in range(reps):
            bm = np.stack([dsq[r][b * per:(b + 1) * per].mean(axis=0) for b in range(B)])
            c = simultaneous_multiplier(bm, level=0.95, n_boot=n_boot, seed=4 + r, method=method)
            ref = np.concatenate([dsq[j] for j in range(reps) if j != r]).mean(axis=0)
            ratios = []
            for k in range(N - 1):
                upper = bm[:, k].mean() + c * bm[:, k].std(ddof=1) / math.sqrt(B)
                ratios.append(upper / ref[k])
            hits.append(all(q >= 1 for q in ratios))
            cs.append(c)
            min_ratio.append(min(ratios))
            worst.append(1 + int(np.argmin(ratios)))
            max_ratio.append(max(ratios))
        assert cell["hits"] == hits and cell["worst_k"] == worst
        np.testing.assert_allclose(cell["c"], cs, rtol=1e-6)
        assert cell["covered"] == pytest.approx(np.mean(hits), abs=1e-12)
        assert cell["covered_se"] == pytest.approx(math.sqrt(np.mean(hits) * (1 - np.mean(hits)) / reps), abs=1e-12)
        assert cell["median_min_ratio"] == pytest.approx(np.median(min_ratio), rel=1e-6)
        assert cell["median_max_ratio"] == pytest.approx(np.median(max_ratio), rel=1e-6)
    assert res["cells"]["max_t"]["c"] != res["cells"]["bootstrap_t"]["c"]
    # tails of the raw values at k = 10 and 100 over the 12 x 64 thetas
    for k in (10, 100):
        expected = bcr.tail_statistics(np.stack([d[:, k - 1] for d in dsq]))
        for key, value in expected.items():
            assert res["tails"][k][key] == pytest.approx(value, rel=1e-6), (k, key)


def test_coverage_cell_counts_a_single_k_below_the_reference_as_a_miss():
    ref = np.ones((4, 5))
    upper = np.full((4, 5), 2.0)
    upper[1, 3] = 0.999
    upper[2] = 1.0                                                              # equal counts as covered
    cell = bcr.coverage_cell(upper, [1.0, 2.0, 3.0, 4.0], ref)
    assert cell["hits"] == [True, False, True, True]
    assert cell["covered"] == 0.75 and cell["covered_se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert cell["median_c"] == 2.5 and cell["median_max_ratio"] == 2.0 and cell["median_min_ratio"] == 1.5
    assert cell["worst_k"][1] == 4


def test_the_tail_estimators_recover_known_values():
    rng = np.random.default_rng(0)
    assert bcr.hill_alpha(rng.pareto(2.0, 40_000) + 1.0) == pytest.approx(2.0, abs=0.12)   # Pareto(alpha = 2)
    assert bcr.hill_alpha(rng.pareto(0.8, 40_000) + 1.0) == pytest.approx(0.8, abs=0.05)
    t3 = DISTRIBUTIONS["t(3)^2"][0](rng, (200_000,))                                        # alpha = 3 / 2
    assert 1.2 < bcr.hill_alpha(t3) < 1.8
    assert bcr.hill_alpha(rng.standard_normal(200_000) ** 2) > 2.5                         # chi2(1): light
    assert bcr.excess_kurtosis(rng.standard_normal(200_000)) == pytest.approx(0.0, abs=0.05)
    assert bcr.excess_kurtosis(rng.uniform(size=200_000)) == pytest.approx(-1.2, abs=0.02)
    small = rng.lognormal(size=50)
    assert bcr.excess_kurtosis(small) == pytest.approx(stats.kurtosis(small, fisher=True, bias=True), rel=1e-10)
    v = np.arange(1.0, 101.0)                                                   # top 5 of 100: 96..100 above 95
    assert bcr.hill_alpha(v) == pytest.approx(1 / (np.mean(np.log(v[95:])) - math.log(95.0)), rel=1e-12)
    tails = bcr.synthetic_tails(4, 256, seed=1)
    assert list(tails) == list(DISTRIBUTIONS) and tails["gaussian"]["n_pooled"] == 1024
    assert tails["t(3)^2"]["kurtosis_pooled"] > tails["gaussian"]["kurtosis_pooled"] + 10


def test_the_command_measures_a_tiny_real_run(tmp_path, capsys):
    out = tmp_path / "coverage.json"
    res = bcr.main(["--reps", "4", "--thetas", "32", "--n", "200", "--D", "2", "--n-batches", "4", "--n-boot", "50",
                    "--epochs", "1", "--gap-thetas", "8", "--out", str(out)])
    text = capsys.readouterr().out
    assert "| max_t | 1 | 4 | 0.95 |" in text and "| bootstrap_t | loss gap " in text and "synthetic t(3)^2" in text
    saved = json.loads(out.read_text())
    assert [r["scale"] for r in saved["results"]] == ["sigma", "loss_gap"]
    gap_sigma = saved["results"][1]["sigma"]
    assert gap_sigma == pytest.approx(res["results"][1]["sigma"]) and gap_sigma > 0
    assert saved["gap"] == pytest.approx(saved["run"]["test_loss"] - saved["run"]["train_loss"]) and saved["gap"] > 0
    assert set(saved["results"][0]["tails"]) == {"10", "100"}                   # k = 1,000 > N - 1
    assert len(saved["results"][0]["cells"]["max_t"]["hits"]) == 4
