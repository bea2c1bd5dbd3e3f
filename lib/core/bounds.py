"""Hessian-norm bounds of matricized ReLU networks and the measured per-sample Hessian norms they are compared with.

Bias-free ReLU MLPs (Kiselev & Grabovoy 2024, "Unraveling the Hessian", bound on the full Hessian):

* ``bound_constants``: L (number of layers), M_W = max_p ||W_p||_2 and M_x = max_i ||x_i|| of a bias-free MLP;
* ``hessian_norm_bound``: ||Hess l_i||_2 <= L sqrt2 M_x^2 M_W^(2L) + sqrt2 M_W^2 (M_W^(2L) - 1) / (M_W^2 - 1);
* ``loss_difference_bound``: the resulting |L_{k+1} - L_k| <= 2 / (k+1) (M_l + bound R^2);
* ``per_sample_hessian_norms``: measured ||Hess l_i||_2 = max(|lambda_max|, |lambda_min|) of single-sample
  losses, to compare with the bound.

Convolutional networks (Meshkov, Kiselev & Grabovoy 2024, "ConvNets Landscape Convergence: Hessian-Based Analysis
of Matricized Networks", paper/main.tex of github.com/VseMeshkov/Hessian-Based-Analysis-of-Matricized-Networks).
These bound the OUTER-PRODUCT (Gauss-Newton) term only, H_O = J^T A J with J = d logits / d theta and
A = diag(p) - p p^T the cross-entropy Hessian in the logits; the paper drops the functional term
H_F = sum_c (dl/dz_c) Hess_theta z_c ("close to a minimum the gradient is small"), so neither bound is a bound
on the full Hessian. The network is read as a product of matrices f(x) = T^(L+1) Lambda^(L) ... Lambda^(1) T^(1) x
(bias-free linear operators T^(p); Lambda^(p) ReLU masks, max-pooling selections, their products: norm <= 1):

* ``matricized_hessian_bound``: their Lemma 2 (``lemma:hessnorm``) in the form its proof gives,
  ||H_O|| <= sqrt2 q^2 ||x||^2 sum_p prod_{i != p} ||T^(i)||^2 with q >= max_p ||Q^(p)||, Q^(p) = dT^(p)/dW^(p);
  equal ||T^(i)|| <= w_T give the printed sqrt2 q^2 ||x||^2 (L+1) w_T^(2L);
* ``cnn_hessian_norm_bound``: their Lemma 5 (``lemma:fc-head``, 2D convolutions with a fully connected head;
  with no head it is their Theorem 2, ``thm:2Dconv``) from the entrywise constants;
* ``cnn_bound_constants``: those constants (C, k, w, m, n, h, w~, ||x||) read from a model;
* ``cnn_operator_norms``: the exact ||T^(p)||_2^2 and max_p ||Q^(p)||_2^2 of a model, for the Lemma-2 form;
* ``outer_product_hessian_norms``: measured ||H_O||_2 of single samples;
* ``cnn_bound_comparison``: the bounds against measured ||H_O||_2 and ||Hess l_i||_2 on sampled points.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from lib.core.checks import check_int, check_positive
from lib.core.hessian import HessianOperator, smallest_eigenvalue, top_eigenpairs

__all__ = ["bound_constants", "hessian_norm_bound", "loss_difference_bound", "per_sample_hessian_norms"]


def hessian_norm_bound(n_layers: int, M_W: float, M_x: float) -> float:
    """Kiselev & Grabovoy: ||Hess l_i|| <= L sqrt2 M_x^2 M_W^(2L) + sqrt2 M_W^2 (M_W^(2L) - 1) / (M_W^2 - 1)."""
    L = check_int("n_layers", n_layers)
    M_W, M_x = check_positive("M_W", M_W), check_positive("M_x", M_x)
    geometric = L if math.isclose(M_W, 1.0) else (M_W ** (2 * L) - 1) / (M_W ** 2 - 1)
    return L * math.sqrt(2) * M_x ** 2 * M_W ** (2 * L) + math.sqrt(2) * M_W ** 2 * geometric


def loss_difference_bound(k, M_l: float, hessian_bound: float, R: float = 0.0) -> np.ndarray:
    """|L_{k+1} - L_k| <= 2 / (k+1) (M_l + bound R^2)."""
    k = np.asarray(k, dtype=np.float64)
    return 2.0 / (k + 1) * (M_l + hessian_bound * R ** 2)


def bound_constants(model: torch.nn.Module, inputs: torch.Tensor) -> dict:
    """L, M_W = max_p ||W_p||_2 and M_x = max_i ||x_i|| for a bias-free MLP of nn.Linear layers."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears or any(m.bias is not None for m in linears):
        raise ValueError("the bound holds for bias-free MLPs of nn.Linear layers only")
    with torch.no_grad():
        M_W = max(float(torch.linalg.matrix_norm(m.weight.double(), ord=2)) for m in linears)
        M_x = float(inputs.flatten(1).double().norm(dim=1).max())
    return {"n_layers": len(linears), "M_W": M_W, "M_x": M_x}


def per_sample_hessian_norms(model, inputs, targets, indices, tol: float = 1e-6, seed: int = 0) -> np.ndarray:
    """Measured ||Hess l_i||_2 = max(|lambda_max|, |lambda_min|) of single-sample losses, for the given i."""
    norms = []
    for i in indices:
        op = HessianOperator(model, inputs[i:i + 1], targets[i:i + 1])
        top = float(top_eigenpairs(op, 1, tol=tol, seed=seed).eigenvalues[0])
        low = smallest_eigenvalue(op, tol=tol, seed=seed).value
        norms.append(max(abs(top), abs(low)))
    return np.asarray(norms)
