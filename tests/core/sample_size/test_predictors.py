"""The benchmark's predictors (``lib.core.sample_size.predictors``): on tasks whose target is the landscape's K, a
perfect landscape wins, a noisy one does not; the shipped calibration recovers Delta*."""
import math

import pytest

from lib.core.sample_size.predictors import decide, fit_shipped_calibration, predict_tasks
from tests.core.sample_size.conftest import _rows


def test_a_perfect_landscape_wins_and_a_noisy_one_does_not():
    good = predict_tasks(_rows())
    s = good["scores"]
    assert s["landscape_gap"]["median_abs_log2"] < 0.1 and s["power_law"]["median_abs_log2"] == pytest.approx(
        math.log2(3), abs=0.1)
    assert s["high_shot_power_law"]["fallbacks"] == s["high_shot_power_law"]["n_tasks"]
    assert decide(s)["landscape_helps"] is True
    bad = predict_tasks(_rows(landscape_noise=3.0, seed=1))
    assert decide(bad["scores"])["landscape_helps"] is False
    cal = fit_shipped_calibration(_rows())
    assert cal["n_tasks"] == good["n_resolved"] and math.exp(cal["landscape_gap"]["coef"][0]) == pytest.approx(
        1e-6, rel=0.05)
