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

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn
from torch.func import functional_call, jacrev

from lib.core.checks import check_bool, check_int, check_number, check_positive
from lib.core.hessian import HessianOperator, smallest_eigenvalue, top_eigenpairs
from lib.core.tensors import eval_mode, flat_params, unflatten

__all__ = ["bound_constants", "hessian_norm_bound", "loss_difference_bound", "per_sample_hessian_norms",
           "matricized_hessian_bound", "cnn_hessian_norm_bound", "cnn_bound_constants", "cnn_operator_norms",
           "outer_product_hessian_norms", "cnn_bound_comparison"]

#: the paper's bound on ||A|| = ||diag(p) - p p^T||_2 of cross-entropy (from Kiselev & Grabovoy; the true
#: maximum is 1/2, kept as printed)
A_NORM_BOUND = math.sqrt(2)
#: conv operators with at most this many matrix entries get an explicit matrix and an exact SVD; larger ones
#: Lanczos (ARPACK) on T^T T through conv2d / conv_transpose2d
EXPLICIT_MAX_ENTRIES = 1 << 16


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


# ------------------------------------------------------------------------------------ convolutional networks
def matricized_hessian_bound(layer_norms_sq, q_sq: float, x_norm: float) -> float:
    """Meshkov, Kiselev & Grabovoy, Lemma 2 (proof form): ||H_O||_2 <= sqrt2 q^2 ||x||^2 sum_p prod_{i != p} t_i^2.

    Covers the outer-product (Gauss-Newton) term H_O = J^T A J of one sample's cross-entropy only, not the full
    Hessian. ``layer_norms_sq`` = (t_1^2, ..., t_{L+1}^2) bound ||T^(p)||_2^2 of the network's L+1 bias-free
    linear operators (convolutions as matrices, linear layers), ``q_sq`` bounds max_p ||dT^(p)/dW^(p)||_2^2,
    ``x_norm`` bounds ||x||; every nonlinearity between them must be a map of norm <= 1 (ReLU mask, non-
    overlapping max pooling). With all t_i = w_T this is the lemma as printed, sqrt2 q^2 ||x||^2 (L+1) w_T^(2L).
    The proof: ||H_O|| <= ||A|| ||Q||^2 ||F||^2, ||A|| <= sqrt2, ||F||^2 <= sum_p ||G^(p)||^2 ||R^(p-1) x||^2.
    """
    t_sq = [check_number("layer_norms_sq", t, ge=0.0) for t in layer_norms_sq]
    if not t_sq:
        raise ValueError("layer_norms_sq must hold one entry per linear operator (at least one)")
    q_sq, x_norm = check_positive("q_sq", q_sq), check_positive("x_norm", x_norm)
    prefix, suffix = [1.0], [1.0]
    for t in t_sq:
        prefix.append(prefix[-1] * t)
    for t in reversed(t_sq):
        suffix.append(suffix[-1] * t)
    leave_one_out = sum(prefix[p] * suffix[len(t_sq) - 1 - p] for p in range(len(t_sq)))
    return A_NORM_BOUND * q_sq * x_norm ** 2 * leave_one_out


def cnn_hessian_norm_bound(n_conv: int, n_linear: int, C: int, k: int, w: float, m: int, n: int, h: int,
                           w_linear: float, x_norm: float, printed: bool = False) -> float:
    """Meshkov, Kiselev & Grabovoy, Lemma 5 (conv net with a fully connected head; Theorem 2 when n_linear = 0).

    ||H_O||_2 <= sqrt2 ||x||^2 q^2 (h^2 w~^2)^P c^L (L + 1 + P c / (h^2 w~^2)),  c = C^2 k^2 w^2 m n,
    q^2 = C^2 k^2 m n, for L+1 = ``n_conv`` 2D convolutions (stride 1) followed by P = ``n_linear`` linear layers,
    all bias-free, with ReLU (or norm-<=1 pooling) between them. Constants: every channel count <= C, kernel
    sides <= k, conv outputs <= m x n, |conv weight| <= w, every linear layer's widths <= h, |linear weight| <= w~
    (``w_linear``), ||x|| <= ``x_norm``.

    Covers the outer-product (Gauss-Newton) term H_O = J^T A J of one sample's cross-entropy only, not the full
    Hessian. The printed lemma has P h^2 w~^2 / c in the last factor; its own proof (sum over the L+1 conv terms
    c^L (h^2 w~^2)^P and the P linear terms c^(L+1) (h^2 w~^2)^(P-1)) gives P c / (h^2 w~^2), which is the
    default; ``printed=True`` returns the formula as printed. With P = 0: sqrt2 ||x||^2 q^2 (L+1) c^L.

    Readings of the statement: Theorem 2 assumes no padding; zero padding only deletes entries of T^(p) and
    Q^(p), so the Frobenius bounds behind c and q^2 still hold. "Linear layers with h_i hidden units, h_p <= h"
    is read as every width (in and out) of a head layer <= h, so that ||T||_2^2 <= ||T||_F^2 <= h^2 w~^2. Max
    pooling enters as a Lambda of norm 1 (the proof of their Lemma 3); that lemma's factor
    (1/k_pool^2)^(L-l+2) is not applied: it is stated for one pooling layer in a net without a head, and its
    argument (smaller m n after the pool) supports an exponent of at most L-l+1.
    """
    L = check_int("n_conv", n_conv) - 1
    P = check_int("n_linear", n_linear, 0)
    C, k, m, n = (check_int(name, v) for name, v in (("C", C), ("k", k), ("m", m), ("n", n)))
    w, x_norm = check_positive("w", w), check_positive("x_norm", x_norm)
    printed = check_bool("printed", printed)
    q_sq = float(C ** 2 * k ** 2 * m * n)
    conv = q_sq * w ** 2
    try:
        if P == 0:
            return A_NORM_BOUND * x_norm ** 2 * q_sq * (L + 1) * conv ** L
        lin = check_int("h", h) ** 2 * check_positive("w_linear", w_linear) ** 2
        ratio = lin / conv if printed else conv / lin
        return A_NORM_BOUND * x_norm ** 2 * q_sq * lin ** P * conv ** L * (L + 1 + P * ratio)
    except OverflowError:
        return math.inf


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _matricized_layers(model: nn.Module, inputs: torch.Tensor, allow_bias: bool) -> list[dict]:
    """The model's linear operators in order (conv: input/output shapes; linear: widths), validated for the
    matricized form: a Sequential of Conv2d (stride 1, no dilation/groups, zero padding), ReLU, non-overlapping
    MaxPool2d, Flatten, then Linear layers."""
    if not isinstance(model, nn.Sequential):
        raise ValueError("the CNN bound reads an nn.Sequential of Conv2d, ReLU, MaxPool2d, Flatten, Linear")
    allow_bias = check_bool("allow_bias", allow_bias)
    leaves = [mod for mod in model.modules() if not any(True for _ in mod.children())]
    seen_linear = False
    for mod in leaves:
        if isinstance(mod, nn.Conv2d):
            if seen_linear:
                raise ValueError("the bound needs every Conv2d before the fully connected head")
            if (mod.stride != (1, 1) or mod.dilation != (1, 1) or mod.groups != 1 or mod.padding_mode != "zeros"
                    or isinstance(mod.padding, str)):
                raise ValueError(f"{mod}: the bound holds for stride-1, undilated, ungrouped convolutions with "
                                 "numeric zero padding")
        elif isinstance(mod, nn.Linear):
            seen_linear = True
        elif isinstance(mod, nn.MaxPool2d):
            if (_pair(mod.kernel_size) != _pair(mod.stride or mod.kernel_size) or _pair(mod.padding) != (0, 0)
                    or _pair(mod.dilation) != (1, 1) or mod.ceil_mode):
                raise ValueError(f"{mod}: only non-overlapping max pooling (stride = kernel, no padding) has norm 1")
        elif not isinstance(mod, (nn.ReLU, nn.Flatten)):
            raise ValueError(f"{type(mod).__name__} is not covered by the matricized-network bound "
                             "(Conv2d, ReLU, MaxPool2d, Flatten, Linear only)")
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.bias is not None and not allow_bias:
            raise ValueError("the CNN bound holds for bias-free networks (pass allow_bias=True to read the "
                             "weights of a network with biases anyway)")
    if not any(isinstance(mod, nn.Conv2d) for mod in leaves):
        raise ValueError("the CNN bound needs at least one Conv2d")
    shapes = {}
    with torch.no_grad():                  # layer by layer (a Sequential subclass may fuse its own forward)
        p = next(model.parameters())
        act = inputs[:1].to(device=p.device, dtype=p.dtype)
        for mod in leaves:
            before = act.shape[1:]
            act = mod(act)
            shapes[mod] = (before, act.shape[1:])
    layers = []
    for mod in leaves:
        if isinstance(mod, nn.Conv2d):
            layers.append({"module": mod, "kind": "conv", "in_shape": tuple(shapes[mod][0]),
                           "out_shape": tuple(shapes[mod][1])})
        elif isinstance(mod, nn.Linear):
            layers.append({"module": mod, "kind": "linear"})
    return layers


def _input_norm(inputs: torch.Tensor) -> float:
    return float(inputs.flatten(1).double().norm(dim=1).max())


def cnn_bound_constants(model: nn.Module, inputs: torch.Tensor, allow_bias: bool = False) -> dict:
    """The constants of ``cnn_hessian_norm_bound`` read from a Sequential conv net and its inputs.

    n_conv, n_linear; C = max channel count (input channels included); k = max kernel side; m, n = max conv
    output height, width; w = max |conv weight|; h = max width (in or out) of the linear layers (0 if none) and
    w_linear = max |linear weight| (0.0 if none); x_norm = max_i ||x_i||. Biases are refused unless
    ``allow_bias``; then they are ignored (the bound's product form has none, so it is no longer proved).
    Returns a dict to pass as ``cnn_hessian_norm_bound(**constants)``.
    """
    layers = _matricized_layers(model, inputs, allow_bias)
    convs = [lay for lay in layers if lay["kind"] == "conv"]
    linears = [lay["module"] for lay in layers if lay["kind"] == "linear"]
    with torch.no_grad():
        return {
            "n_conv": len(convs), "n_linear": len(linears),
            "C": max(max(lay["module"].in_channels, lay["module"].out_channels) for lay in convs),
            "k": max(max(lay["module"].kernel_size) for lay in convs),
            "w": max(float(lay["module"].weight.abs().max()) for lay in convs),
            "m": max(lay["out_shape"][1] for lay in convs), "n": max(lay["out_shape"][2] for lay in convs),
            "h": max((max(mod.in_features, mod.out_features) for mod in linears), default=0),
            "w_linear": max((float(mod.weight.abs().max()) for mod in linears), default=0.0),
            "x_norm": _input_norm(inputs),
        }


def _conv_norm_sq(conv: nn.Conv2d, in_shape: tuple) -> float:
    """||T||_2^2 of the (bias-free) convolution as a matrix on inputs of ``in_shape``."""
    weight = conv.weight.detach().double()
    d_in = math.prod(in_shape)
    apply = lambda v: F.conv2d(v.reshape(-1, *in_shape), weight, padding=conv.padding)
    out_shape = apply(torch.zeros(1, d_in, dtype=torch.float64)).shape[1:]
    d_out = math.prod(out_shape)
    if d_in * d_out <= EXPLICIT_MAX_ENTRIES or d_in < 3:
        matrix = apply(torch.eye(d_in, dtype=torch.float64)).reshape(d_in, d_out)
        return float(torch.linalg.matrix_norm(matrix, ord=2)) ** 2

    def gram(v):
        t = torch.as_tensor(v, dtype=torch.float64).reshape(1, *in_shape)
        return F.conv_transpose2d(apply(t), weight, padding=conv.padding).reshape(-1).numpy()  # T^T (T v)

    op = LinearOperator((d_in, d_in), matvec=gram, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(d_in)
    return float(eigsh(op, k=1, which="LA", tol=1e-10, v0=v0, return_eigenvectors=False)[0])


def _conv_q_sq(conv: nn.Conv2d, in_shape: tuple, out_shape: tuple) -> float:
    """||dT/dW||_2^2 of a convolution: each entry of T is one weight or zero, so (dT/dW)^T (dT/dW) is diagonal
    with, per kernel tap, the number of output positions where the tap falls inside the (unpadded) input."""
    counts = []
    for axis in (0, 1):
        size_in, size_out = in_shape[1 + axis], out_shape[1 + axis]
        pad, side = conv.padding[axis], conv.kernel_size[axis]
        counts.append(max(sum(0 <= i - pad + a < size_in for i in range(size_out)) for a in range(side)))
    return float(counts[0] * counts[1])


def cnn_operator_norms(model: nn.Module, inputs: torch.Tensor, allow_bias: bool = False) -> dict:
    """Exact constants of ``matricized_hessian_bound`` for a Sequential conv net: layer_norms_sq =
    [||T^(p)||_2^2 per conv (as a matrix on its input size, padding included) and linear layer], q_sq =
    max_p ||dT^(p)/dW^(p)||_2^2 (conv: output positions a tap reaches, <= m_p n_p; linear: 1) and x_norm =
    max_i ||x_i||. Biases as in ``cnn_bound_constants``."""
    layers = _matricized_layers(model, inputs, allow_bias)
    norms, q_sq = [], 1.0
    with torch.no_grad():
        for lay in layers:
            mod = lay["module"]
            if lay["kind"] == "conv":
                norms.append(_conv_norm_sq(mod, lay["in_shape"]))
                q_sq = max(q_sq, _conv_q_sq(mod, lay["in_shape"], lay["out_shape"]))
            else:
                norms.append(float(torch.linalg.matrix_norm(mod.weight.detach().double(), ord=2)) ** 2)
    return {"layer_norms_sq": norms, "q_sq": q_sq, "x_norm": _input_norm(inputs)}


def outer_product_hessian_norms(model: nn.Module, inputs: torch.Tensor, indices) -> np.ndarray:
    """Measured ||H_O||_2 = ||J^T A J||_2 of single samples i (float64, eval mode), J = d logits / d theta over
    all parameters, A = diag(p) - p p^T at p = softmax(logits); computed as the top eigenvalue of the K x K
    matrix A^(1/2) J J^T A^(1/2), which has the same nonzero spectrum. Labels do not enter H_O."""
    net = copy.deepcopy(model).double()
    if hasattr(net, "fused"):              # models.CNN: its layer-by-layer forward (same numbers) suits jacrev
        net.fused = False
    w0 = flat_params(net)
    norms = []
    with eval_mode(net):
        for i in indices:
            x = inputs[i:i + 1].to(device=w0.device, dtype=torch.float64)
            logits = lambda w, x=x: functional_call(net, unflatten(net, w), (x,))[0]
            J = jacrev(logits)(w0)
            with torch.no_grad():
                p = torch.softmax(logits(w0), dim=0)
                vals, vecs = torch.linalg.eigh(torch.diag(p) - torch.outer(p, p))
                root = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
                norms.append(float(torch.linalg.eigvalsh(root @ (J @ J.T) @ root)[-1]))
    return np.asarray(norms)


def cnn_bound_comparison(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, n_samples: int,
                         seed: int, tol: float = 1e-4) -> dict:
    """Meshkov, Kiselev & Grabovoy's bound on ||H_O||_2 against measured per-sample norms of a conv net.

    Samples: the first ``n_samples`` of ``torch.randperm(len(inputs), seed)``. Returns ``bound`` (Lemma 5 from
    ``cnn_bound_constants``; ``bound_printed``: its printed last factor), ``bound_exact_norms`` (Lemma 2 with the
    exact ||T^(p)||_2 and ||Q^(p)||_2 of ``cnn_operator_norms``), both with x_norm = max over all ``inputs``;
    ``outer_norms``: measured ||H_O||_2, the part the bound covers; ``full_norms``: measured full ||Hess l_i||_2
    (``per_sample_hessian_norms`` at ``tol``); their ``*_max`` and ``*_median``; ``bias_free`` (False: the model
    has biases, the bound's proof does not cover it and its constants come from the weights only; the measured
    norms are over all parameters, biases included); ``constants``, ``operator_norms``, ``indices`` and
    ``seconds`` (bounds, outer, full).
    """
    n_samples = check_int("n_samples", n_samples, 1, len(inputs))
    bias_free = not any(getattr(mod, "bias", None) is not None for mod in model.modules()
                        if isinstance(mod, (nn.Conv2d, nn.Linear)))
    t0 = time.perf_counter()
    constants = cnn_bound_constants(model, inputs, allow_bias=True)
    exact = cnn_operator_norms(model, inputs, allow_bias=True)
    out = {"bound": cnn_hessian_norm_bound(**constants),
           "bound_printed": cnn_hessian_norm_bound(**constants, printed=True),
           "bound_exact_norms": matricized_hessian_bound(**exact), "bias_free": bias_free,
           "constants": constants, "operator_norms": exact}
    seconds = {"bounds": time.perf_counter() - t0}
    idx = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(int(seed)))[:n_samples].tolist()
    t0 = time.perf_counter()
    outer = outer_product_hessian_norms(model, inputs, idx)
    seconds["outer"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = per_sample_hessian_norms(model, inputs, targets, idx, tol=tol, seed=seed)
    seconds["full"] = time.perf_counter() - t0
    out.update({"indices": idx, "outer_norms": outer, "full_norms": full,
                "outer_max": float(outer.max()), "outer_median": float(np.median(outer)),
                "full_max": float(full.max()), "full_median": float(np.median(full)), "seconds": seconds})
    return out
