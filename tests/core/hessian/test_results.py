"""What the solvers return (``lib.core.hessian.results``): the Gaussian smoothing of quadrature nodes and weights
into a density, on a given grid and sigma."""
import numpy as np

from lib.core import hessian as H
from lib.core.hessian.results import smooth_density
from tests.core.hessian.conftest import operator


def test_density_on_given_grid_and_sigma():
    grid = np.linspace(-1, 1, 4001)
    d = H.density(operator("relu"), n_runs=2, n_iter=10, grid=grid, sigma_sq=1e-4)
    assert d.sigma_sq == 1e-4 and np.array_equal(d.grid, grid)
    expected = sum(w * np.exp(-(grid - t) ** 2 / 2e-4) / np.sqrt(2e-4 * np.pi)
                   for t, w in zip(d.nodes.ravel(), d.weights.ravel(), strict=True))
    np.testing.assert_allclose(d.density, expected, rtol=1e-10, atol=1e-12)
    assert np.abs(d.density).max() > 1.0


def test_smooth_density_is_the_weighted_sum_of_normal_densities():
    """One node of weight 1: the normal density N(grid; node, sigma_sq); several runs' nodes with zero weights (Lanczos
    breakdown padding) among them: the weighted sum over the others, on a grid longer than one block of 1,000
    points."""
    grid = np.linspace(-3.0, 5.0, 2501)
    single = smooth_density(np.array([[1.0]]), np.array([[1.0]]), grid, 0.25)
    np.testing.assert_allclose(single, np.exp(-(grid - 1.0) ** 2 / 0.5) / np.sqrt(0.5 * np.pi), rtol=1e-13)
    assert abs(np.trapezoid(single, grid) - 1.0) < 1e-9                  # the grid spans +-8 standard deviations
    nodes, weights = np.array([[-1.0, 0.5, 2.0], [0.0, 3.0, 9.0]]), np.array([[0.3, 0.2, 0.0], [0.4, 0.1, 0.0]])
    mixed = smooth_density(nodes, weights, grid, 0.1)
    by_hand = sum(w * np.exp(-(grid - t) ** 2 / 0.2) / np.sqrt(0.2 * np.pi)
                  for t, w in zip(nodes.ravel(), weights.ravel()) if w > 0)
    np.testing.assert_allclose(mixed, by_hand, rtol=1e-12, atol=1e-300)
