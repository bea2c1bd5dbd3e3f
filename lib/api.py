"""Public API: the whole method on your own trained PyTorch model, per-sample loss and data in one call, ``analyze``.

    from lib.api import analyze
    report = analyze(model, loader, loss_fn, D=10, sigma=0.3)   # loader: DataLoader(..., shuffle=False)
    report.sample_sizes[0]       # K(Delta) of the first threshold with its uncertainty
    fig = report.plot()          # Delta_k with bands and K markers
    report.to_dict()             # plain values (json.dumps works)

What ``analyze`` computes (docs/api.md explains every quantity without the paper): at the trained weights w*,

1. the top-D Hessian eigenpairs of the mean loss (1/N) sum_i loss_fn(model(x_i), y_i) (``BatchedHessianOperator``,
   data streamed batch by batch, Lanczos ``top_eigenpairs``);
2. Delta_k = E_theta (L_{k+1} - L_k)^2 (w* + P^T theta), k = 1..N-1, with P the eigenvectors, theta ~ N(0, sigma^2 I)
   (or another ``distribution``), L_k the mean loss of the first k samples in the given insertion order, with its
   Monte-Carlo standard error and V-bar = E_theta V(w* + P^T theta), V the per-sample loss variance
   (``lib.core.landscape.delta.delta_curve``);
3. Q_k, the exact Delta_k of the second-order Taylor model of the losses in the subspace (``quadratic``), when the
   per-sample terms can be computed for the model (otherwise skipped with a note);
4. K(Delta) = the first k after which Delta_k stays below Delta, with its uncertainty: K of the given order, the
   median / 5-95 % range / conformal 95 % upper bound of K over random insertion orders, K from a simultaneous 95 %
   band over k, and the closed form of the order-averaged curve (``convergence``, ``sample_size``).

Everything is computed by the ``lib.core`` functions named above; this module only wires them together. The
solvers and the operator are re-exported (``BatchedHessianOperator``, ``as_batches``, ``top_eigenpairs``,
``trace``, ``density``) for products beyond ``analyze``.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from lib.core.checks import ParameterError, check_choice, check_int, check_number, check_positive
from lib.core.hessian import KEEP_GRAPHS_MB, METHODS, density, top_eigenpairs, trace
from lib.core.hessian.batched import BatchedHessianOperator, as_batches
from lib.core.inputs import REJECTED as REJECTED_INPUTS
from lib.core.inputs import check_device, check_weights, checked_batches
from lib.core.landscape.delta import DeltaCurve, delta_curve
from lib.core.landscape.quadratic import delta_quadratic, per_sample_terms, variance_quadratic
from lib.core.landscape.sampling import ESTIMATORS, make_sampler
from lib.core.landscape.subspace import cross_entropy_per_sample
from lib.core.sample_size.decay import first_k_below, k_closed_form
from lib.core.sample_size.pilot import pilot_estimates
from lib.core.sample_size.predictors import apply_shipped_calibration, nearest_calibration
from lib.core.sample_size.sufficient import BAND_METHODS, k_per_order, order_summary, simultaneous_multiplier
from lib.core.tensors import device_dtype, n_params

#: top-D eigensolvers ``analyze`` offers: the methods of ``top_eigenpairs`` that return the largest algebraic
#: eigenvalues ("power" returns the largest in magnitude, and is kept as PyHessian's reference)
SOLVERS = tuple(m for m in METHODS if m != "power")

__all__ = ["analyze", "LandscapeReport", "SampleSize", "predict_sample_size", "SampleSizePrediction",
           "BatchedHessianOperator", "as_batches", "top_eigenpairs",
           "trace", "density", "DISTRIBUTIONS"]

#: theta distributions ``analyze`` accepts (isotropic, one scale sigma); see lib.core.landscape.sampling
DISTRIBUTIONS = ("gaussian", "ball", "sphere")


@dataclass
class SampleSize:
    """K(Delta) for one threshold Delta and its uncertainty; None = not reached within the N samples.

    K              first k with Delta_k' < Delta for every k' >= k, on the curve of the given insertion order
    K_band         the same on the upper edge Delta_k + c SE_k of the simultaneous band (``band_multiplier`` c:
                   the band covers the whole curve with ~95 % probability): a conservative K
    K_order_median, K_order_q05, K_order_q95   median and 5-95 % quantiles of K over the random insertion orders
    K_order_upper  conformal upper bound: a new random order's K is <= it with probability >= ``level``
    orders_reached share of random orders whose curve falls below Delta within the data
    K_closed       closed form of the order-averaged curve V-bar N / ((N-1) k (k+1)) < Delta; may exceed N - 1
                   (then the data are too few for this threshold)
    """
    threshold: float
    K: int | None
    K_band: int | None
    band_multiplier: float | None
    K_order_median: float | None
    K_order_q05: float | None
    K_order_q95: float | None
    K_order_upper: float | None
    orders_reached: float | None
    n_orders: int
    K_closed: int

    @property
    def reached(self) -> bool:
        return self.K is not None


@dataclass
class LandscapeReport:
    """What ``analyze`` returns. Arrays are float64 numpy; curves are indexed by ``k`` = 1..N-1.

    eigenvalues, residuals   top-D Hessian eigenvalues (largest first) and ||Hv - lambda v|| / max|lambda|
    basis                    (D, n_params) eigenvectors (rows, ``parameters_to_vector`` order), the subspace
    curve                    the full ``lib.core.landscape.delta.DeltaCurve`` (per-order curves, batch means, ...)
    band_se, band_multiplier standard error of the batch means and the simultaneous-band multiplier c
    Q, Q_centred             Q_k of the quadratic model (None when skipped, see ``notes``)
    vbar_quadratic           the quadratic model's V-bar and its parts (dict; None when skipped)
    sample_sizes             one ``SampleSize`` per threshold
    operator                 the Hessian operator (for more solver calls: ``trace(report.operator)``)
    """
    N: int
    D: int
    n_params: int
    eigenvalues: np.ndarray
    residuals: np.ndarray
    basis: torch.Tensor
    curve: DeltaCurve
    band_se: np.ndarray | None
    band_multiplier: float | None
    Q: np.ndarray | None
    Q_centred: np.ndarray | None
    vbar_quadratic: dict | None
    sample_sizes: list[SampleSize]
    notes: list[str]
    settings: dict
    seconds: dict
    hvp_count: int
    operator: BatchedHessianOperator | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ shortcuts
    @property
    def k(self) -> np.ndarray:
        return self.curve.k

    @property
    def delta(self) -> np.ndarray:
        return self.curve.delta

    @property
    def stderr(self) -> np.ndarray:
        return self.curve.stderr

    @property
    def vbar(self) -> float:
        return self.curve.vbar

    @property
    def vbar_stderr(self) -> float:
        return self.curve.vbar_stderr

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict:
        """Plain Python values (lists, floats, ints, None, str): everything but the basis and the operator."""
        c = self.curve

        def arr(a):
            return None if a is None else np.asarray(a, dtype=np.float64).tolist()

        return {
            "N": int(self.N), "D": int(self.D), "n_params": int(self.n_params),
            "eigenvalues": arr(self.eigenvalues), "residuals": arr(self.residuals), "hvp_count": int(self.hvp_count),
            "k": np.asarray(c.k).astype(int).tolist(), "delta": arr(c.delta), "stderr": arr(c.stderr),
            "centred": arr(c.centred), "d0sq": arr(c.d0sq), "v0": float(c.v0),
            "vbar": float(c.vbar), "vbar_stderr": float(c.vbar_stderr),
            "order_median": arr(c.order_median), "order_formula": arr(c.order_formula),
            "band_se": arr(self.band_se),
            "band_multiplier": None if self.band_multiplier is None else float(self.band_multiplier),
            "Q": arr(self.Q), "Q_centred": arr(self.Q_centred), "vbar_quadratic": self.vbar_quadratic,
            "sample_sizes": [asdict(s) for s in self.sample_sizes],
            "notes": list(self.notes), "settings": dict(self.settings), "seconds": dict(self.seconds),
        }

    def plot(self, ax=None, orders: bool = True):
        """Delta_k (log-log) with its pointwise +-1 SE band and the simultaneous band, the 5-95 % range and the
        closed form over random orders (``orders``), Q_k when computed, the thresholds and K markers. Returns the
        matplotlib figure (a new one unless ``ax`` is given)."""
        fig = ax.figure if ax is not None else plt.subplots(figsize=(6.0, 4.0))[0]
        ax = ax if ax is not None else fig.axes[0]
        c = self.curve
        k, d = c.k, c.delta
        floor = max(float(np.min(d[d > 0])) * 1e-3, 1e-300) if np.any(d > 0) else 1e-300
        line = ax.loglog(k, np.maximum(d, floor), lw=1.2, label=r"$\Delta_k$ (given order)")[0]
        ax.fill_between(k, np.maximum(d - c.stderr, floor), d + c.stderr, color=line.get_color(), alpha=0.35, lw=0,
                        label=r"$\pm 1$ SE")
        if self.band_se is not None and self.band_multiplier is not None:
            w = self.band_multiplier * self.band_se
            ax.fill_between(k, np.maximum(d - w, floor), d + w, color=line.get_color(), alpha=0.15, lw=0,
                            label=f"simultaneous band (c = {self.band_multiplier:.2f})")
        if orders and c.order_curves is not None:
            lo, hi = np.quantile(c.order_curves, [0.05, 0.95], axis=0)
            ax.fill_between(k, np.maximum(lo, floor), np.maximum(hi, floor), color="0.5", alpha=0.2, lw=0,
                            label=f"5-95 % over {c.n_orders} random orders")
            ax.loglog(k, c.order_formula, "k--", lw=0.9, label=r"$\bar V N / ((N-1) k (k+1))$")
        if self.Q is not None:
            ax.loglog(k, np.maximum(self.Q, floor), ":", lw=1.2, label=r"$Q_k$ (quadratic model)")
        markers = {"K": ("o", "K (given order)"), "K_band": ("v", "K (simultaneous band)"),
                   "K_order_upper": ("^", "K conformal upper (orders)"), "K_closed": ("x", "K closed form")}
        used = set()
        for s in self.sample_sizes:
            ax.axhline(s.threshold, color="0.6", lw=0.6, ls=":")
            for key, (marker, label) in markers.items():
                value = getattr(s, key)
                if value is None or value > k[-1]:
                    continue
                ax.plot([value], [s.threshold], marker, color="C3" if key == "K" else "0.2", ms=6, mfc="none",
                        label=None if key in used else label)
                used.add(key)
        if np.any(d > 0):
            ax.set_ylim(bottom=float(np.min(d[d > 0])) / 10)
        ax.set_xlabel("k (samples in the given insertion order)")
        ax.set_ylabel(r"$\Delta_k = E_\theta (L_{k+1} - L_k)^2$")
        ax.set_title(f"N = {self.N}, D = {self.D}, {self.settings['distribution']} sigma = {self.settings['sigma']:g}, "
                     f"T = {c.n_samples}")
        ax.legend(fontsize=7, loc="lower left")
        return fig


# ----------------------------------------------------------------------------------------------- entry point
def _sample_sizes(curve: DeltaCurve, thresholds, band_se, band_c, level: float) -> list[SampleSize]:
    orders = (k_per_order(curve.k, curve.order_curves, thresholds) if curve.order_curves is not None else None)
    rows = []
    for g, thr in enumerate(thresholds):
        summary = order_summary(orders[:, g], level) if orders is not None else None
        band = None if band_c is None else first_k_below(curve.k, curve.delta + band_c * band_se, thr)
        rows.append(SampleSize(
            threshold=float(thr), K=first_k_below(curve.k, curve.delta, thr), K_band=band,
            band_multiplier=band_c,
            K_order_median=summary.median if summary else None, K_order_q05=summary.q05 if summary else None,
            K_order_q95=summary.q95 if summary else None, K_order_upper=summary.upper if summary else None,
            orders_reached=summary.reached if summary else None, n_orders=summary.n if summary else 0,
            K_closed=k_closed_form(curve.vbar, curve.N, thr)))
    return rows


def analyze(model: torch.nn.Module, data, loss_fn=None, *, D: int = 10, sigma: float = 0.3,
            n_samples: int = 64, n_orders: int = 20, thresholds=(1e-2, 1e-3, 1e-4), seed: int = 0,
            device: str | torch.device = "cpu", distribution: str = "gaussian", estimator: str = "plain",
            tol: float = 1e-4, batch_size: int | None = None, quadratic: bool = True, level: float = 0.95,
            n_batches: int = 32, band_method: str = BAND_METHODS[0], progress: bool = False,
            keep_state_mb: float = KEEP_GRAPHS_MB, solver: str = "lanczos") -> LandscapeReport:
    """Top eigenpairs, Delta_k with standard errors, V-bar, Q_k and K(Delta) with its uncertainty for a trained
    ``model`` and its training ``data`` in insertion order.

    ``data``: (inputs, targets) tensors, a list of (inputs, targets) batches, a DataLoader with ``shuffle=False``
    (a shuffling one is refused), a map-style Dataset or a function returning a fresh iterator of batches
    (``lib.core.hessian.batched.as_batches``); the order it yields is the insertion order. ``loss_fn(outputs, targets)``
    returns one loss per sample (default: cross-entropy, ``reduction="none"``). ``D``: subspace dimension (top-D
    eigenvectors); ``sigma``: scale of theta (``distribution`` "gaussian": N(0, sigma^2 I); "ball", "sphere": the
    same second moment); ``n_samples`` = T thetas; ``n_orders`` = R random insertion orders (>= 19 for a 95 %
    conformal bound); ``thresholds``: the Delta values of K(Delta); ``seed`` seeds the Lanczos start, the thetas,
    the orders (seed + 1) and the band's bootstrap; ``tol``: Lanczos tolerance; ``solver``: the top-D eigensolver
    (``SOLVERS``, methods of ``lib.core.hessian.top_eigenpairs``: "lanczos", ARPACK, the default; "thick-restart",
    whose basis is max(2D + 2, D + 6) vectors of the model's dtype, for models whose float64 vectors crowd the
    memory); ``quadratic``: also Q_k (skipped
    with a note if the per-sample terms fail for this model); ``level``: coverage of the conformal bound;
    ``band_method``: the simultaneous band's construction (``sample_size.simultaneous_multiplier``: "bootstrap_t",
    the default, whose upper edge holds for heavy-tailed d_k^2 and on real curves, or "max_t", which holds only for
    near-Gaussian batch means; docs/sample_size.md).

    Bad inputs fail before any compute with a ``ParameterError`` naming them (``lib.core.inputs``): a device this
    machine lacks, non-finite weights, inputs or targets, targets outside the model's classes, empty data, inputs
    the model rejects (the batch is named).

    The Hessian products keep each batch's state within ``keep_state_mb`` MiB (``BatchedHessianOperator``; 0: stream
    the batches, memory O(D n_params) plus one batch); the Monte-Carlo curve holds the
    data as tensors on ``device``. The model's weights, ``.grad`` and train/eval flags are left as they were (a
    copy is moved when ``device`` is not the model's).
    """
    t0 = time.perf_counter()
    D = check_int("D", D, 1)
    sigma = check_positive("sigma", sigma)
    check_choice("distribution", distribution, DISTRIBUTIONS)
    check_choice("estimator", estimator, ESTIMATORS)
    level = check_number("level", level, gt=0, le=1)
    thresholds = [check_positive("threshold", float(t)) for t in np.atleast_1d(thresholds)]
    check_choice("band_method", band_method, BAND_METHODS)
    check_choice("solver", solver, SOLVERS)
    dev = check_device(device)
    home, dtype = device_dtype(model)
    check_weights(model)
    n = n_params(model)
    if D >= n:
        raise ParameterError("D", D, f"an integer in [1, {n - 1}] (fewer than the model's {n} parameters)")
    if home.type != dev.type or (dev.index is not None and home != dev):
        model = copy.deepcopy(model).to(dev)
    # every batch through the model and the loss once, so that bad data fail here and not inside a solver
    batches = checked_batches(model, data, loss_fn or cross_entropy_per_sample, batch_size=batch_size,
                              class_targets=loss_fn is None or loss_fn is cross_entropy_per_sample, device=dev,
                              dtype=dtype)
    loss_fn = loss_fn or cross_entropy_per_sample
    seconds, notes = {}, []

    op = BatchedHessianOperator(model, batches, loss_fn, keep_state_mb=keep_state_mb)
    top = top_eigenpairs(op, D, method=solver, tol=tol, seed=seed)
    seconds["hessian"] = top.seconds
    basis = top.eigenvectors

    x, y = op.batches.tensors()
    x, y = x.to(dev), y.to(dev)
    sampler = make_sampler(distribution, sigma=sigma)
    curve = delta_curve(model, x, y, basis, sampler, n_samples, estimator=estimator, seed=seed, n_orders=n_orders,
                        loss_fn=loss_fn, progress=progress, n_batches=n_batches)
    seconds["monte_carlo"] = curve.seconds
    B = curve.batch_means.shape[0]
    band_se = band_c = None
    if B >= 3:
        band_se = curve.batch_means.std(axis=0, ddof=1) / np.sqrt(B)
        band_c = simultaneous_multiplier(curve.batch_means, level=level, seed=seed, method=band_method)
    else:
        notes.append(f"no simultaneous band: {B} batches of thetas (needs >= 3; raise n_samples)")
    if n_orders < 1:
        notes.append("no K over random orders: n_orders = 0")

    Q = Q_centred = vq = None
    if quadratic:
        t1 = time.perf_counter()
        try:
            terms = per_sample_terms(model, x, y, basis, loss_fn=loss_fn, progress=progress)
            q = delta_quadratic(terms, sampler)
            Q, Q_centred = q.Q, q.centred
            vq = asdict(variance_quadratic(terms, sampler))
            vq = {key: (float(v) if isinstance(v, (int, float, np.floating)) else v) for key, v in vq.items()}
            notes.append(f"Q_k from per-sample terms by method {terms.method!r}")
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as err:
            notes.append(f"Q_k skipped: the per-sample terms failed for this model ({type(err).__name__}: {err})")
        seconds["quadratic"] = time.perf_counter() - t1
    else:
        notes.append("Q_k not computed (quadratic=False)")

    sizes = _sample_sizes(curve, thresholds, band_se, band_c, level)
    seconds["total"] = time.perf_counter() - t0
    settings = {"D": D, "sigma": sigma, "distribution": distribution, "estimator": estimator,
                "n_samples": int(n_samples), "n_orders": int(n_orders), "thresholds": thresholds, "seed": int(seed),
                "tol": float(tol), "solver": solver, "level": level, "n_batches": int(n_batches),
                "band_method": band_method, "device": str(dev),
                "loss_fn": getattr(loss_fn, "__name__", type(loss_fn).__name__), "dtype": str(op.dtype)}
    return LandscapeReport(
        N=curve.N, D=D, n_params=n, eigenvalues=top.eigenvalues.numpy().astype(np.float64),
        residuals=top.residuals.numpy().astype(np.float64), basis=basis, curve=curve, band_se=band_se,
        band_multiplier=band_c, Q=Q, Q_centred=Q_centred, vbar_quadratic=vq, sample_sizes=sizes, notes=notes,
        settings=settings, seconds=seconds, hvp_count=op.hvp_count, operator=op)


# ------------------------------------------------------------------------------------ sample-size prediction
#: the calibration shipped with the package: fitted by the prediction benchmark (notebook 08, paper profile) on
#: every resolved task, written by ``make readme-results`` (``lib.outputs.prediction_tables.write_calibration``)
CALIBRATION_FILE = Path(__file__).with_name("prediction_calibration.json")


@dataclass
class SampleSizePrediction:
    """What ``predict_sample_size`` returns: per predictor (``lib.core.sample_size.predictors.PREDICTORS``) a dict with
    ``point``, ``low``, ``high`` (sizes; None where the predictor has no value for this pilot), the pilot's learning
    curve and landscape features, and the calibration used (its source, n0, eps and number of tasks)."""
    eps: float
    n0: int
    n_max: int
    predictions: dict
    pilot_curve: dict
    landscape: dict
    calibration: dict
    notes: list[str]
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _load_calibration(calibration) -> dict:
    if isinstance(calibration, dict):
        return calibration
    path = Path(calibration) if calibration is not None else CALIBRATION_FILE
    if not path.is_file():
        raise ParameterError("calibration", str(path), "a calibration file written by the prediction benchmark",
                             hint="run `make reproduce` then `make readme-results`, or pass calibration=None to "
                             "use the shipped lib/prediction_calibration.json")
    return json.loads(path.read_text())


def predict_sample_size(model_factory, x: torch.Tensor, y: torch.Tensor, *, n_max: int, eps: float = 0.01,
                        n0: int | None = None, train_fn=None, steps: int = 800, batch_size: int = 64,
                        lr: float = 1e-3, folds: int = 4, D: int = 10, sigma: float = 1.0, n_thetas: int = 64,
                        n_boot: int = 200, level: float = 0.9, calibration=None, seed: int = 0) -> SampleSizePrediction:
    """How many samples until test accuracy is within ``eps`` of its value at ``n_max`` samples, predicted from a
    pilot on the first ``n0`` samples of (x, y) only (default: all of them), by every predictor of the prediction
    benchmark (docs/sample_size.md): the power law and its high-shot variant fitted to the pilot's own learning
    curve (validated inside the pilot), the landscape's K(Delta*) of the pilot model's V-bar, and the calibrated
    ones (a constant, the recalibrated power law, the combination) from the shipped calibration.

    ``model_factory(seed)`` returns a freshly initialised ``nn.Module`` (classification: logits over classes);
    ``train_fn(model, x, y, seed)``, if given, trains one model and returns it (default: the benchmark's recipe,
    ``steps`` Adam steps of ``batch_size`` at ``lr``, all the pilot's trainings at once; the shipped calibration
    was fitted with that recipe). ``x``, ``y``: inputs and integer class targets in insertion order. The benchmark
    found which predictors beat which (the paper's scores table); read the intervals with it."""
    t0 = time.perf_counter()
    if not callable(model_factory):
        raise ParameterError("model_factory", model_factory, "a function seed -> freshly initialised nn.Module")
    net = model_factory(seed)
    if not isinstance(net, torch.nn.Module):
        raise ParameterError("model_factory", type(net).__name__, "a function returning a torch.nn.Module")
    if train_fn is not None and not callable(train_fn):
        raise ParameterError("train_fn", train_fn, "None (the recipe) or a function (model, x, y, seed) -> model")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) != len(y) or len(x) == 0:
        raise ParameterError("x, y", (type(x).__name__, type(y).__name__),
                             "two tensors with the same, non-zero number of samples (inputs, class targets)")
    n0 = check_int("n0", len(x) if n0 is None else n0, 8 * folds, len(x))
    check_int("folds", folds, 2)
    n_max = check_int("n_max", n_max, n0 + 1)
    check_number("eps", eps, gt=0)
    if eps >= 1:
        raise ParameterError("eps", eps, "an accuracy gap as a fraction in (0, 1), e.g. 0.01 for 1 point")
    check_number("level", level, gt=0)
    xp, yp = x[:n0], y[:n0]
    if not torch.isfinite(xp).all():
        first = int(torch.nonzero(~torch.isfinite(xp.reshape(len(xp), -1)).any(1))[0])
        raise ParameterError("x", f"non-finite value in sample {first}", "finite inputs in the first n0 samples")
    if yp.dtype not in (torch.int64, torch.int32) or int(yp.min()) < 0:
        raise ParameterError("y", str(yp.dtype), "integer class labels >= 0 (torch.int64)")
    with torch.no_grad():
        try:
            n_out = net(xp[:2]).shape[-1]
        except REJECTED_INPUTS as exc:
            raise ParameterError("x", tuple(xp.shape), f"inputs the model accepts (it raised: {exc})") from None
    if int(yp.max()) >= n_out:
        raise ParameterError("y", int(yp.max()), f"class labels in [0, {n_out}) (the model has {n_out} outputs)")
    cal = _load_calibration(calibration)
    est = pilot_estimates(model_factory, xp, yp, n0, n_max, [eps], folds=folds, steps=steps, batch_size=batch_size,
                          lr=lr, n_boot=n_boot, level=level, D=D, sigma=sigma, n_thetas=n_thetas, seed=seed,
                          train_fn=train_fn)
    sizes, err, se, lf = est["curve"]["sizes"], est["error"], est["stderr"], est["landscape"]
    key, notes = nearest_calibration(cal, n0, eps)
    if train_fn is not None:
        notes.append("train_fn given: the shipped calibration was fitted with the benchmark's recipe")
    row = {"power_law": list(est["power_law"]["predictions"][eps]),
           "high_shot_power_law": list(est["high_shot_power_law"]["predictions"][eps]),
           "vbar_sigma": lf["vbar_sigma"], "vbar_gap": lf["vbar_gap"], "N": lf["N"]}
    predictions = apply_shipped_calibration(cal.get(key) if key else None, row)
    return SampleSizePrediction(eps, n0, n_max, predictions,
                                {"sizes": list(sizes), "error": err.tolist(), "stderr": se.tolist()},
                                {k: v for k, v in lf.items() if k != "eigenvalues"},
                                {"key": key, "source": cal.get("source"), "n_tasks": (cal.get(key) or {}).get(
                                    "n_tasks")}, notes, time.perf_counter() - t0)
