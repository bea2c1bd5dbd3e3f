"""Shared cases of the sample-size tests: benchmark rows whose targets are known (``_rows``), used by the predictors'
tests and the API's calibration."""
import math

import numpy as np

from lib.core.sample_size.prediction import k_closed, size_grid, snap


def _rows(n_tasks=15, landscape_noise=0.0, seed=0):
    """Tasks whose target is exactly the landscape's K at one Delta* (times noise); power law off by 3x."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_tasks):
        grid = size_grid(60_000, 32, 1.05)
        vbar, N = float(np.exp(rng.uniform(-3, 2))), 750
        n = snap(k_closed(vbar, N, 1e-6) * math.exp(landscape_noise * rng.standard_normal()), grid)
        rows.append({"name": f"t{i}", "family": f"f{i % 5}", "grid": grid.tolist(), "n_max": 60_000,
                     "target": n if n < 15_000 else None, "power_law": [3.0 * n, n, 9.0 * n],
                     "high_shot_power_law": [None, None, None], "vbar_sigma": vbar, "vbar_gap": vbar, "N": N})
    return rows
