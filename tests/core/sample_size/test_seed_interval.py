"""lib.core.sample_size.seed_interval: the variance parts of log K recover known variances of simulated seeds,
orders and Monte Carlo; the new-seed interval covers new seeds at its level; a one-seed order range does not."""
import math

import numpy as np
import pytest

from lib.core.checks import ParameterError
from lib.core.sample_size.seed_interval import leave_one_seed_out, new_seed_interval, order_range, variance_parts

SD = {"seed": 0.5, "mc_seed": 0.1, "order": 0.3, "mc_order": 0.05}


MU = math.log(500.0)


def simulate(rng, S, R, mu=MU):
    """log K = mu + a_s + m_s + e_sr + u_sr and its repeat with new Monte Carlo (m', u'), same a and e."""
    a = rng.normal(0, SD["seed"], (S, 1))
    e = rng.normal(0, SD["order"], (S, R))

    def mc():
        return rng.normal(0, SD["mc_seed"], (S, 1)) + rng.normal(0, SD["mc_order"], (S, R))
    return mu + a + e + mc(), mu + a + e + mc()


def test_variance_parts_recover_the_simulated_variances():
    rng = np.random.default_rng(0)
    x, rep = simulate(rng, 400, 20)
    p = variance_parts(x, rep)
    assert p.seed == pytest.approx(SD["seed"] ** 2, rel=0.15)
    assert p.order == pytest.approx(SD["order"] ** 2, rel=0.05)
    assert p.monte_carlo == pytest.approx(SD["mc_seed"] ** 2 + SD["mc_order"] ** 2, rel=0.1)
    assert p.total == pytest.approx(p.seed + p.order + p.monte_carlo)
    assert sum(p.shares().values()) == pytest.approx(1.0)


def test_without_seed_effect_the_seed_part_is_near_zero():
    rng = np.random.default_rng(1)
    x = 5.0 + rng.normal(0, 0.3, (300, 10))
    p = variance_parts(x, x + rng.normal(0, 1e-3, x.shape))
    assert p.seed < 0.01 * p.order and p.monte_carlo < 1e-5


def test_new_seed_interval_covers_new_seeds_at_its_level():
    rng = np.random.default_rng(2)
    hits = []
    for _ in range(400):
        x, _ = simulate(rng, 12, 20)
        lo, hi = new_seed_interval(x, 0.9)
        new, _ = simulate(rng, 1, 1)
        hits.append(lo <= math.exp(new[0, 0]) <= hi)
    assert np.mean(hits) == pytest.approx(0.9, abs=0.04)


def test_leave_one_seed_out_new_seed_holds_and_order_range_does_not():
    rng = np.random.default_rng(3)
    x, _ = simulate(rng, 30, 40)
    loso = leave_one_seed_out(x, 0.9)
    assert loso["new_seed"] == pytest.approx(0.9, abs=0.06)
    assert loso["order_range"] < 0.7                       # the seed effect dominates one seed's order range
    assert len(loso["new_seed_per_seed"]) == 30


def test_order_range_is_the_quantiles_of_one_seed():
    v = np.log(np.arange(1, 102, dtype=float))
    lo, hi = order_range(v, 0.9)
    assert (lo, hi) == pytest.approx((6.0, 96.0))


@pytest.mark.parametrize("bad, what", [(np.ones((1, 5)), "seeds"), (np.ones(5), "seeds"),
                                       (np.array([[1.0, np.nan], [1.0, 2.0]]), "finite")])
def test_bad_inputs_name_the_problem(bad, what):
    with pytest.raises(ParameterError, match=what):
        new_seed_interval(bad)


def test_repeat_must_match():
    with pytest.raises(ParameterError, match="log_k_repeat"):
        variance_parts(np.ones((3, 4)), np.ones((3, 5)))
