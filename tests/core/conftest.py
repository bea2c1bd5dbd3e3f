"""Shared references of the core tests: loss differences by explicit loops (used by the Monte Carlo's and the
insertion-order kernel's tests)."""
import numpy as np


def explicit_d(losses):
    """L_{k+1} - L_k with explicit loops over k (no cumulative sums)."""
    N = len(losses)
    out = np.empty(N - 1)
    for k in range(1, N):
        out[k - 1] = sum(float(v) for v in losses[:k + 1]) / (k + 1) - sum(float(v) for v in losses[:k]) / k
    return out
