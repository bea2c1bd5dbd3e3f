"""Helpers of the stage tests on the tiny pipeline (``conftest.tiny_pipeline``): the pipeline's run, its
trained net in float64, plain double-backward Hessian-vector products, explicit prefix-mean differences and the
first-below / quantile rules the stages' tables use, written independently of lib."""
import numpy as np
import torch
import torch.nn.functional as F

from lib.infra import data
from lib.records import convergence as convergence_records
from lib.records import monte_carlo as mc_records
from lib.records.runs import load_trained, run_name

#: the tiny pipeline's one run
DS, MODEL, SEED, N = "mnist", "mlp1", 0, 200
RUN = run_name(DS, MODEL, SEED)


def _net64(store):
    net, _ = load_trained(store, DS, MODEL, SEED, dtype=torch.float64)
    x, y = data.training_subset(DS, N, 0)
    return net, x.double(), y


def _flat(net) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def _hvp(net, x, y, v: torch.Tensor) -> torch.Tensor:
    """H v of the mean cross-entropy by a plain double backward (no lib.core.hessian)."""
    params = list(net.parameters())
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    hv = torch.autograd.grad(flat @ v, params)
    return torch.cat([h.reshape(-1) for h in hv]).detach()


def _differences(L: np.ndarray) -> np.ndarray:
    """d_k = L_{k+1} - L_k for k = 1..N-1 of per-sample losses (..., N), from explicit prefix means."""
    n = L.shape[-1]
    prefix = np.cumsum(L, axis=-1) / np.arange(1, n + 1)
    return prefix[..., 1:] - prefix[..., :-1]


def _first_below(values, threshold):
    """min{k : values_j < threshold for every j >= k} (k = index + 1), None when the last value is not below."""
    values = np.asarray(values)
    if not values[-1] < threshold:
        return None
    bad = np.flatnonzero(~(values < threshold))
    return 1 if len(bad) == 0 else int(bad[-1] + 2)


def _k_closed_brute(vbar, n, threshold):
    k = np.arange(1, 100 * n)
    return int(k[np.argmax(vbar * n / ((n - 1) * k * (k + 1)) < threshold)])


def _spec(plan, grp, **match):
    found = [s for s in mc_records.group(plan, grp) if all(getattr(s, a) == v for a, v in match.items())]
    assert len(found) == 1, (grp, match, found)
    return found[0]


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _gap_sigma(store):
    return float(f"{store.load('scales', RUN).payload['sigma']:.4g}")


def _hessian_curves(plan):
    return [s for g, s in plan if g in ("main", "gap") and s.subspace == "hessian"]


def _learning(store):
    rows = convergence_records.load_table(store, "learning_curve")
    sizes = sorted({r["n"] for r in rows})
    return sizes, [float(np.mean([r["test_accuracy"] for r in rows if r["n"] == n])) for n in sizes]


def _k_of_orders(k, suffix, threshold):
    """K(Delta) of every order from its suffix maxima (NaN: not below at the last k)."""
    out = []
    for row in np.asarray(suffix, dtype=np.float64):
        below = row < threshold
        out.append(float(k[np.argmax(below)]) if below[-1] else np.nan)
    return np.array(out)


def _quantile(values, q):
    v = np.sort(np.where(np.isnan(values), np.inf, values))
    x = v[max(0, int(np.ceil(q * len(v))) - 1)]                     # inverted CDF
    return None if np.isinf(x) else float(x)
