"""Reference numbers of the original work (docs/specification.md 8; k counted in batches of 64 there, MNIST, mlp2).

Kept in one place so notebooks and the paper compare against the same values.
"""
# Top Hessian eigenvalues, mean of 50 networks (index 0..9), and index 31.
TOP_EIGENVALUES = [3.9, 2.35, 1.88, 1.49, 1.25, 1.04, 0.85, 0.69, 0.56, 0.45]
EIGENVALUE_31 = 0.14

# Eigen directions, D = 10, sigma = 1: Delta_k at k (in batches of 64).
DELTA_EIGEN_D10_SIGMA1 = {10: 1.8e-2, 50: 8.7e-4, 100: 2.9e-4, 154: 1.0e-4}
K2_DELTA_EIGEN_RANGE = (2.0, 3.2)
K2_DELTA_RANDOM_SIGMA_LE1 = 1.1e-4
K2_DELTA_RANDOM_SIGMA10 = 1e-3

# Table 1 of the original paper (no code behind it).
TABLE1 = {"mnist": {"delta": 0.025}, "fashion_mnist": {"delta": 0.030}, "K_batches": (40, 120),
          "seconds_per_row": (1800, 4400)}
