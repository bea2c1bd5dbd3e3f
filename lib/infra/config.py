"""Profiles: one typed section per notebook stage, the single source of every parameter's default and rules.

A profile (``configs/<profile>.yaml``) has a ``common`` section shared by every notebook and one section per
stage (``train``, ``spectrum``, ``projection``, ``monte_carlo``, ``convergence``, ``your_model``, ``figures``; in
the order the runner runs them). Each section is a
frozen dataclass below; a field's default, its rule (``lib.core.checks``) and its help text are declared once, in
``param(...)``. The defaults are the smoke profile; ``configs/paper.yaml`` lists what it changes.

``load_profile`` validates a whole profile once, before any compute, and reports every error at once (unknown
sections or keys with a "did you mean", values outside their rule, constraints across sections, a device the
machine does not have). Stage functions receive the typed objects (``Common`` + their section), never a dozen
keyword arguments. Notebooks keep a papermill ``parameters`` cell and turn it into the same objects with
``from_namespace``.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lib import REPO_ROOT
from lib.core import checks
from lib.core.hessian.trace_estimators import TRACE_ESTIMATORS
from lib.core.landscape.delta import FULL_SPACE_SCALES
from lib.core.landscape.sampling import DEFAULT_SOBOL_REPLICATES
from lib.core.tensors import n_params
from lib.core.training.models import MODELS, build
from lib.infra.data import DATASETS, DIGITS_TRAIN_SIZE, TRAIN_SIZE
from lib.infra.device import DEVICES, resolve_device
from lib.infra.tasks import SMOKE_TASKS, TASKS

CONFIG_DIR = REPO_ROOT / "configs"
DISTRIBUTIONS = ("gaussian", "ball", "sphere", "curvature")
ESTIMATORS = ("plain", "antithetic", "sobol")

Rule = Callable[[str, Any], Any]


class ProfileError(ValueError):
    """Every problem found in a profile, one per line (each names the parameter, the value read and the fix)."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# ------------------------------------------------------------------------------------------------- rules
def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    return lambda key, v: checks.check_int(key, v, lo, hi)


def number(gt: float | None = None, ge: float | None = None, le: float | None = None) -> Rule:
    return lambda key, v: checks.check_number(key, v, gt=gt, ge=ge, le=le)


def choice(allowed) -> Rule:
    return lambda key, v: checks.check_choice(key, v, allowed)


def boolean(key, v):
    return checks.check_bool(key, v)


def plain_name(key, v):
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
        raise checks.ParameterError(key, v, "a non-empty name of letters, digits, '_', '.', '-'")
    return v


def list_of(item: Rule, min_len: int = 1, unique: bool = True) -> Rule:
    def rule(key, v):
        if not isinstance(v, list) or len(v) < min_len:
            raise checks.ParameterError(key, v, f"a list with at least {min_len} item(s), e.g. [a, b]")
        out = [item(f"{key}[{i}]", x) for i, x in enumerate(v)]
        if unique and len({repr(x) for x in out}) != len(out):
            raise checks.ParameterError(key, v, "a list without repeated items")
        return out
    return rule


def mapping_of(keys: Rule, values: Rule) -> Rule:
    def rule(key, v):
        if not isinstance(v, dict):
            raise checks.ParameterError(key, v, "a mapping (possibly empty) of key: value, e.g. {cnn: 1}")
        return {keys(f"{key} key", k): values(f"{key}[{k}]", x) for k, x in v.items()}
    return rule


def param(default, rule: Rule, doc: str):
    """A section field: its default (the smoke profile), its rule and one line of help."""
    kw = {"default_factory": lambda d=default: _copy(d)} if isinstance(default, (list, dict)) else {"default": default}
    return field(metadata={"rule": rule, "doc": doc}, **kw)


def _copy(v):
    return [_copy(x) for x in v] if isinstance(v, list) else ({k: _copy(x) for k, x in v.items()}
                                                              if isinstance(v, dict) else v)


# ---------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class Common:
    profile: str = param("smoke", plain_name, "name of the profile; results go to results/<profile>/")
    device: str = param("cpu", choice(DEVICES), "cpu, cuda or auto (cuda when available)")
    datasets: list = param(["mnist"], list_of(choice(sorted(DATASETS))), "datasets of the main runs")
    models: list = param(["mlp2"], list_of(choice(MODELS)), "models of the main runs")
    seeds: list = param([0, 1], list_of(integer(0)), "training seeds")
    n_train: int = param(1000, integer(2, TRAIN_SIZE), "N: training samples (first N of the insertion order)")
    data_seed: int = param(0, integer(0), "seed of the insertion order of the training split")
    progress: bool = param(False, boolean, "progress bars in long loops")
    workers: int = param(1, integer(1, 64), "processes that run independent trainings and pilots side by side "
                         "(results do not depend on it: each task fixes its own threads)")
    spectrum_max_seeds: dict = param({}, mapping_of(choice(MODELS), integer(1)),
                                     "per model, how many of the first seeds get a spectrum (others: all)")


@dataclass(frozen=True)
class Train:
    epochs: int = param(1, integer(1), "training epochs")
    batch_size: int = param(64, integer(1), "minibatch size")
    lr: float = param(0.001, number(gt=0), "Adam learning rate")
    threads: int = param(1, integer(1, 256), "intra-op CPU threads of each training (part of the result: float "
                         "rounding depends on it; one thread lets common.workers trainings run side by side)")


@dataclass(frozen=True)
class Spectrum:
    k_top: int = param(10, integer(1), "top eigenpairs computed (Lanczos)")
    tol: float = param(0.0001, number(gt=0), "eigen-solver tolerance")
    n_vectors: int = param(4, integer(1), "top eigenvectors kept for the subspace of later stages (<= k_top)")
    trace_probes: int = param(10, integer(2), "products of the trace estimate (probes of its Hutchinson part)")
    trace_estimator: str = param("deflated", choice(TRACE_ESTIMATORS),
                                 "the trace: 'deflated' (the top-k_top eigenvalues plus Hutchinson off their "
                                 "eigenvectors; the least error per product in make bench), 'hutchinson' or "
                                 "'hutchpp'; all spend trace_probes products")
    slq_runs: int = param(1, integer(1), "stochastic Lanczos quadrature runs")
    slq_iter: int = param(30, integer(2), "Lanczos steps per SLQ run")
    full_seeds: int = param(1, integer(1), "the first seeds that also get smallest eigenvalue, trace, density")
    pyhessian_density: bool = param(True, boolean, "with the extras, on the solver_datasets, also PyHessian's "
                                    "own trace and density (through lib.core.hessian.pyhessian) on the same probes")
    solver_k: int = param(4, integer(1), "eigenpairs of the solver comparison (Lanczos, PyHessian, fixed power)")
    solver_datasets: list = param(["mnist"], list_of(choice(sorted(DATASETS)), min_len=0),
                                  "datasets whose first-seed models get the solver comparison")
    solver_models: list = param(["mlp2"], list_of(choice(MODELS), min_len=0), "models of the solver comparison")


@dataclass(frozen=True)
class Projection:
    grid_points: int = param(9, integer(3), "grid points per axis of the loss surfaces")
    hessian_span: float = param(1.0, number(gt=0), "half-width of the grid along the top-2 eigenvectors")
    random_span: float = param(1.0, number(gt=0), "half-width along two filter-normalised directions")
    k_small: int = param(10, integer(1), "the small k of the surfaces L_k, L_{k+1}")


@dataclass(frozen=True)
class MonteCarlo:
    D: int = param(4, integer(1), "subspace dimension of the main curves")
    sigma: float = param(0.3, number(gt=0), "scale of theta for the main curves")
    n_samples: int = param(32, integer(2), "thetas T per main curve")
    n_orders: int = param(20, integer(0), "random insertion orders R per main curve (>= 19 for a 95 % bound on K)")
    sweep_datasets: list = param(["mnist"], list_of(choice(sorted(DATASETS)), min_len=0), "datasets of sweeps")
    sweep_models: list = param(["mlp2"], list_of(choice(MODELS), min_len=0), "models of the sweeps")
    sweep_samples: int = param(16, integer(2), "thetas per sweep curve")
    sigmas: list = param([0.1, 1.0], list_of(number(gt=0)), "sigma sweep")
    dims: list = param([1, 4], list_of(integer(1)), "D sweep")
    distributions: list = param(list(DISTRIBUTIONS), list_of(choice(DISTRIBUTIONS)), "theta distributions")
    estimators: list = param(list(ESTIMATORS), list_of(choice(ESTIMATORS)), "Monte-Carlo estimators")
    theory_max_D: int = param(4, integer(0), "curves with D <= this also get Q_k, T_k, V-bar parts")
    gap_scale: bool = param(True, boolean, "also compute the main Hessian curves at the loss-gap sigma of each run")
    gap_thetas: int = param(8, integer(2), "common normal draws for the loss-gap sigma search")
    full_space_models: list = param(["mlp2"], list_of(choice(MODELS), min_len=0),
                                    "models (of common.models; every dataset, first seed) of the full-space "
                                    "criterion eps ~ N(0, s^2 I_n) against the top-D subspace ([] = none)")
    full_space_samples: int = param(8, integer(2), "thetas per full-space and matching subspace curve (a full-space "
                                    "theta costs one forward pass over N)")
    full_space_scales: list = param(list(FULL_SPACE_SCALES), list_of(choice(FULL_SPACE_SCALES)),
                                    "per-parameter scale s of the full-space criterion: norm = sigma sqrt(D/n) "
                                    "(equal expected squared perturbation norm), coordinate = sigma")


@dataclass(frozen=True)
class Convergence:
    delta_grid: list = param([0.01, 0.001, 0.0001], list_of(number(gt=0)), "thresholds Delta of K(Delta)")
    pilot_sizes: list = param([200, 400], list_of(integer(10, TRAIN_SIZE)),
                              "pilot sizes n0: train, spectrum and V-bar on the first n0 samples only (< n_train)")
    pilot_samples: int = param(32, integer(2), "thetas of the pilot's Monte-Carlo V-bar")
    learning_sizes: list = param([100, 200, 400, 1000, 2000], list_of(integer(2, TRAIN_SIZE)),
                                 "learning-curve sizes (every seed; the largest is the plateau)")
    learning_models: list = param(["mlp2"], list_of(choice(MODELS)), "models of the learning curve")
    accuracy_gaps: list = param([0.01, 0.005], list_of(number(gt=0)),
                                "accuracy gaps to the plateau of the learning-curve targets (0.01 = 1 point)")
    r0_dataset: str = param("mnist", choice(sorted(DATASETS)), "dataset of the R = 0 bias-free MLP sweep")
    r0_n_train: int = param(500, integer(2, TRAIN_SIZE), "training samples of the R = 0 sweep")
    r0_architectures: list = param([[32], [32, 32]], list_of(list_of(integer(1), min_len=0, unique=False)),
                                   "hidden widths of the bias-free ReLU MLPs ([] = no hidden layer)")
    r0_orders: int = param(4, integer(2), "random orders of the R = 0 curves")
    r0_hessian_samples: int = param(2, integer(1), "samples whose per-sample Hessian norm is measured")
    r0_epochs: int = param(1, integer(1), "training epochs of the R = 0 sweep")
    cnn_bound_samples: int = param(4, integer(1), "samples whose Gauss-Newton and full Hessian norms are compared "
                                   "with the CNN bound (first seed of every CNN run)")
    seed_study_seeds: int = param(4, integer(3), "training seeds of the seed study (K's seed / order / Monte-Carlo "
                                  "variance, the new-seed interval and its leave-one-seed-out coverage; >= 10 for "
                                  "the paper)")
    seed_study_dataset: str = param("mnist", choice(sorted(DATASETS)), "dataset of the seed study")
    seed_study_model: str = param("mlp1", choice(MODELS), "model of the seed study")
    seed_study_n: int = param(300, integer(10, TRAIN_SIZE), "training samples of the seed study (the first n)")
    seed_study_thetas: int = param(32, integer(4), "thetas T of each of the seed study's two curves per scale")
    seed_study_orders: int = param(20, integer(2), "insertion orders R of the seed study (shared by both theta sets)")
    seed_study_gap_repeats: int = param(5, integer(2), "independent repeats of the loss-gap sigma search per seed "
                                        "(its standard error)")
    seed_study_k_ref: float = param(0.125, number(gt=0, le=0.9), "the seed study's threshold: the median seed's "
                                    "order-mean Delta_k at k = k_ref x N (K then sits inside N)")
    seed_study_level: float = param(0.9, number(gt=0, le=0.99), "level of the new-seed interval and of the order "
                                    "range it is compared with (0.9: 5-95 %)")


@dataclass(frozen=True)
class Figures:
    """Notebook 06 reads results only."""
    allow_placeholders: bool = param(True, boolean, "numbers the paper needs but the results lack become 'n/a' "
                                     "(listed in paper/generated/placeholders.txt); false: stop with their names")


@dataclass(frozen=True)
class YourModel:
    """Notebook 07: the method through ``lib.api.analyze`` on a model family and a dataset the main pipeline does not
    use (a residual tanh CNN defined in ``lib.stages.your_model``, scikit-learn's 8x8 digits), every seed."""
    n_train: int = param(500, integer(10, DIGITS_TRAIN_SIZE), "training samples: the first n of the digits "
                         "training split (its insertion order; 1,500 in all)")
    channels: int = param(8, integer(1), "channels of every convolution of the residual CNN "
                          "(36 c^2 + 24 c + 10 parameters)")
    epochs: int = param(20, integer(1), "training epochs (Adam, seeded shuffling)")
    batch_size: int = param(32, integer(1), "training minibatch size")
    lr: float = param(0.003, number(gt=0), "Adam learning rate")
    D: int = param(4, integer(1), "subspace dimension: top-D Hessian eigenvectors (< the parameter count)")
    sigma: float = param(0.05, number(gt=0), "scale of theta ~ N(0, sigma^2 I_D) (0.05: the mean loss rises by about "
                         "the generalisation gap of the paper-profile model)")
    n_samples: int = param(16, integer(2), "thetas T of the Monte-Carlo curve")
    n_orders: int = param(20, integer(0), "random insertion orders R (>= 19 for a 95 % bound on K)")
    thresholds: list = param([0.00001, 0.000001, 0.0000001], list_of(number(gt=0)), "thresholds Delta of K(Delta)")
    tol: float = param(0.001, number(gt=0), "Lanczos tolerance of the top-D eigenpairs")
    quadratic: bool = param(True, boolean, "also Q_k of the quadratic model (exact, per-sample terms)")


@dataclass(frozen=True)
class Prediction:
    """Notebook 08: the prediction benchmark. For every task, a learning curve on a fine size grid (the target
    n*(eps)), pilots on the first n0 samples (their own learning curve and landscape), every predictor and the
    scores (docs/sample_size.md, "Prediction benchmark"; the decision rule is fixed there)."""
    tasks: list = param(list(SMOKE_TASKS), list_of(choice(list(TASKS))), "task names (lib.infra.tasks.TASKS)")
    n_seeds: int = param(3, integer(2), "training seeds per size of a task's learning curve (init and minibatches)")
    steps: int = param(300, integer(1), "Adam steps of every training, whatever its size (one fixed budget)")
    batch_size: int = param(64, integer(1), "minibatch size (drawn with replacement from the training set)")
    lr: float = param(0.001, number(gt=0), "Adam learning rate")
    grid_ratio: float = param(1.25, number(gt=1), "ratio of consecutive sizes of the target grid (<= 1.25)")
    n_min: int = param(32, integer(1), "smallest size of the target grid")
    max_pool: int = param(4000, integer(64), "cap on a task's pool (the plateau is measured at the pool size)")
    plateau_factor: float = param(4.0, number(ge=1), "a target is resolved only if n* <= pool / plateau_factor")
    eps: list = param([0.005, 0.01, 0.02], list_of(number(gt=0)), "accuracy gaps eps (fractions: 0.01 = 1 point)")
    primary_eps: float = param(0.01, number(gt=0), "the eps of the pre-registered decision (one of eps)")
    pilot_sizes: list = param([250, 500], list_of(integer(16)), "pilot sizes n0 (capped at pool / plateau_factor "
                              "per task); the first is the decision's")
    pilot_folds: int = param(4, integer(2), "folds of a pilot's own learning curve (validation inside the n0)")
    pilot_ratio: float = param(1.5, number(gt=1), "ratio of consecutive sizes of a pilot's learning curve")
    pilot_n_min: int = param(24, integer(1), "smallest size of a pilot's learning curve")
    D: int = param(5, integer(1), "subspace dimension of the landscape pilot (top-D Hessian eigenvectors)")
    sigma: float = param(1.0, number(gt=0), "fixed theta scale of the landscape pilot (the original study's 1)")
    n_thetas: int = param(32, integer(2), "thetas of the pilot's V-bar")
    gap_thetas: int = param(8, integer(1), "thetas of the loss-gap sigma's bisection")
    n_boot: int = param(100, integer(10), "bootstrap draws of the power-law intervals")
    level: float = param(0.9, number(gt=0), "nominal level of every predictor's interval")
    threads: int = param(1, integer(1, 256), "intra-op threads of each task (tasks run common.workers at a time)")


SECTIONS: dict[str, type] = {"common": Common, "train": Train, "spectrum": Spectrum, "projection": Projection,
                             "monte_carlo": MonteCarlo, "convergence": Convergence, "your_model": YourModel,
                             "prediction": Prediction, "figures": Figures}
STAGES = tuple(s for s in SECTIONS if s != "common")

#: the values docs/specification.md section 7 asks of the paper profile that a faster build may trim (configs/
#: paper.yaml has all of them; a test keeps the two equal). ``python -m lib --full-specification`` (``make reproduce
#: FULL=1``) applies them to any profile as overrides (an explicit ``--set`` still wins), and the paper's
#: limitations paragraph states which of them its build trimmed (``numbers.specification_note``).
FULL_SPECIFICATION: dict[str, Any] = {"monte_carlo.n_samples": 1024, "spectrum.trace_probes": 30,
                                      "spectrum.slq_iter": 80, "projection.grid_points": 21,
                                      "common.spectrum_max_seeds": {}}

#: keys of ``common`` that a stage section may override for that stage only (e.g. fewer models in projection)
STAGE_OVERRIDABLE = ("datasets", "models", "seeds", "device", "progress")
#: the keys of ``common`` each stage reads (its notebook declares exactly these, plus its own section)
_RUNS = ("profile", "device", "datasets", "models", "seeds", "progress")
COMMON_KEYS: dict[str, tuple[str, ...]] = {
    "train": (*_RUNS, "n_train", "data_seed", "workers"),
    "spectrum": (*_RUNS, "spectrum_max_seeds"),
    "projection": _RUNS,
    "monte_carlo": (*_RUNS, "spectrum_max_seeds"),
    "convergence": (*_RUNS, "n_train", "data_seed", "spectrum_max_seeds", "workers"),
    "your_model": ("profile", "device", "seeds", "progress", "workers"),
    "prediction": ("profile", "device", "progress", "workers", "data_seed"),
    "figures": ("profile", "datasets", "models", "seeds", "spectrum_max_seeds"),
}


def fields_of(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


def defaults(section: str) -> dict:
    """The default value of every parameter of ``section`` (the smoke profile)."""
    return dataclasses.asdict(SECTIONS[section]())


# ------------------------------------------------------------------------------------------- validation
def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _build(section: str, values: dict, errors: list[str], allowed_extra: tuple = ()) -> Any:
    """The typed section from ``values`` (missing keys take their default); problems go to ``errors``."""
    flds = fields_of(section)
    out = {}
    for key, value in values.items():
        if key in allowed_extra:
            continue
        if key not in flds:
            allowed = sorted([*flds, *allowed_extra])
            errors.append(f"unknown parameter {section}.{key}{_did_you_mean(key, allowed)} "
                          f"(allowed in {section}: {allowed})")
            continue
        try:
            out[key] = flds[key].metadata["rule"](f"{section}.{key}", value)
        except checks.ParameterError as exc:
            errors.append(str(exc))
    try:
        return SECTIONS[section](**out)
    except TypeError:  # pragma: no cover - every key was checked above
        return SECTIONS[section]()


@dataclass(frozen=True)
class Profile:
    """A validated profile: ``common``, one typed object per stage, and each stage's overrides of ``common``."""
    common: Common
    sections: dict
    overrides: dict

    def section(self, stage: str):
        return self.sections[stage]

    def stage(self, stage: str) -> tuple[Common, Any]:
        """(``common`` with the stage's overrides applied, the stage's section)."""
        return dataclasses.replace(self.common, **self.overrides.get(stage, {})), self.sections[stage]


def validate(raw: Any, source: str = "profile") -> Profile:
    """Check a whole profile mapping; raise ``ProfileError`` listing every problem."""
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise ProfileError([f"{source}: a profile must be a YAML mapping with sections {list(SECTIONS)}, "
                            f"got {type(raw).__name__}"])
    for section, values in raw.items():
        if section not in SECTIONS:
            errors.append(f"unknown profile section {section!r}{_did_you_mean(section, SECTIONS)} "
                          f"(allowed: {list(SECTIONS)})")
        elif not isinstance(values, dict):
            errors.append(f"profile section {section!r} must be a mapping of parameter: value, got {values!r}")
    raw = {s: v for s, v in raw.items() if s in SECTIONS and isinstance(v, dict)}
    common = _build("common", raw.get("common", {}), errors)
    sections, overrides = {}, {}
    for stage in STAGES:
        values = raw.get(stage, {})
        sections[stage] = _build(stage, values, errors, allowed_extra=STAGE_OVERRIDABLE)
        own = {k: v for k, v in values.items() if k in STAGE_OVERRIDABLE}
        checked = {}
        for key, value in own.items():
            try:
                checked[key] = fields_of("common")[key].metadata["rule"](f"{stage}.{key}", value)
            except checks.ParameterError as exc:
                errors.append(str(exc))
        overrides[stage] = checked
    profile = Profile(common, sections, overrides)
    errors += check_across_sections(profile)
    if errors:
        raise ProfileError([f"{source}: {e}" for e in errors])
    return profile


def check_across_sections(profile: Profile) -> list[str]:
    """Constraints that tie sections together or need the machine; each message names what to change."""
    errors = []
    for stage in ("common", *STAGES):
        common = profile.common if stage == "common" else profile.stage(stage)[0]
        try:
            resolve_device(common.device)
        except ValueError as exc:
            errors.append(f"{stage}.device={common.device!r}: {exc}")
            break
    spec_common, spec = profile.stage("spectrum")
    mc, conv = profile.section("monte_carlo"), profile.section("convergence")
    proj_common, proj = profile.stage("projection")
    sizes = {m: n_params(build(m, 0)) for m in spec_common.models}
    smallest = min(sizes, key=sizes.get)
    if spec.k_top >= sizes[smallest]:
        errors.append(f"spectrum.k_top={spec.k_top} must be smaller than the number of parameters of {smallest} "
                      f"({sizes[smallest]}); lower spectrum.k_top")
    if spec.n_vectors > spec.k_top:
        errors.append(f"spectrum.n_vectors={spec.n_vectors} must be <= spectrum.k_top={spec.k_top}")
    for key, D in (("monte_carlo.D", mc.D), ("monte_carlo.dims", max(mc.dims))):
        if D > spec.n_vectors:
            errors.append(f"{key}={D} exceeds spectrum.n_vectors={spec.n_vectors} (the Hessian eigenvectors kept "
                          "for the subspace); raise spectrum.n_vectors or lower D")
    mc_common = profile.stage("monte_carlo")[0]
    for key, values in (("monte_carlo.sweep_models", mc.sweep_models),
                        ("monte_carlo.full_space_models", mc.full_space_models),
                        ("convergence.learning_models", conv.learning_models)):
        outside = [m for m in values if m not in mc_common.models]
        if outside:
            errors.append(f"{key}={values} names {outside}, which common.models={mc_common.models} does not train; "
                          "add them to common.models or remove them here")
    outside = [d for d in mc.sweep_datasets if d not in mc_common.datasets]
    if outside:
        errors.append(f"monte_carlo.sweep_datasets={mc.sweep_datasets} names {outside}, which common.datasets "
                      f"does not train; add them to common.datasets or remove them here")
    if "sobol" in mc.estimators and mc.sweep_samples % DEFAULT_SOBOL_REPLICATES:
        errors.append(f"monte_carlo.sweep_samples={mc.sweep_samples} must be a multiple of "
                      f"{DEFAULT_SOBOL_REPLICATES} (the Sobol estimator's independent blocks); or drop 'sobol'")
    n_train = profile.common.n_train
    for n0 in conv.pilot_sizes:
        if not n0 < n_train:
            errors.append(f"convergence.pilot_sizes contains {n0}, which must be smaller than n_train={n_train}")
    pred = profile.section("prediction")
    if pred.primary_eps not in pred.eps:
        errors.append(f"prediction.primary_eps={pred.primary_eps} must be one of prediction.eps={pred.eps}")
    if pred.grid_ratio > 1.25:
        errors.append(f"prediction.grid_ratio={pred.grid_ratio} must be <= 1.25 (the targets' resolution)")
    if pred.level >= 1:
        errors.append(f"prediction.level={pred.level} must be < 1 (a nominal coverage such as 0.9)")
    if len(conv.learning_sizes) < 4:
        errors.append(f"convergence.learning_sizes={conv.learning_sizes} needs at least 4 sizes (a power law with "
                      "a plateau has 3 parameters)")
    if not proj.k_small <= proj_common.n_train - 2:
        errors.append(f"projection.k_small={proj.k_small} must be <= n_train - 2 = {proj_common.n_train - 2}")
    return errors


# ------------------------------------------------------------------------------------------------ loading
class _Loader(yaml.SafeLoader):
    """YAML 1.1 with YAML 1.2 floats: ``1e-3`` and ``1E+5`` are numbers, not text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[0-9][0-9_]*\.[0-9_]*|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """YAML text to Python values (numbers like 1e-3 included); ``ProfileError`` naming ``source`` if malformed."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ProfileError([f"{source} is not valid YAML: {exc}"]) from None


def load_profile(profile: str, overrides: dict[str, Any] | None = None) -> Profile:
    """Read ``configs/<profile>.yaml``, apply ``{"section.key": value}`` overrides, validate everything once."""
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ProfileError([f"unknown profile {profile!r}: no configs/{profile}.yaml{_did_you_mean(profile, known)}"
                            f" (known: {known})"])
    raw = parse_yaml(path.read_text(), path.name)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ProfileError([f"{path.name}: a profile must be a YAML mapping with sections {list(SECTIONS)}, "
                            f"got {type(raw).__name__}"])
    errors = []
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            errors.append(f"--set {dotted!r} must look like section.key=value (e.g. train.epochs=2)")
            continue
        target = raw.setdefault(section, {})
        if isinstance(target, dict):
            target[key] = value
    if errors:
        raise ProfileError(errors)
    raw.setdefault("common", {}).setdefault("profile", profile)
    return validate(raw, source=path.name)


def stage_parameters(profile: Profile, stage: str) -> dict:
    """The papermill parameters of a notebook stage: the ``common`` keys it reads (with the stage's overrides)
    and its own section."""
    common, section = profile.stage(stage)
    shared = {k: v for k, v in dataclasses.asdict(common).items() if k in COMMON_KEYS[stage]}
    return {**shared, **dataclasses.asdict(section)}


def from_namespace(stage: str, namespace: dict) -> tuple[Common, Any]:
    """The typed (common, section) of a notebook from its ``globals()`` after the parameters cell.

    Every parameter of the stage's section and every ``common`` key the stage reads must be defined there (the
    other ``common`` keys keep their defaults). Values are checked by the same rules as a profile.
    """
    if stage not in STAGES:
        raise ProfileError([f"unknown stage {stage!r}{_did_you_mean(stage, STAGES)} (allowed: {list(STAGES)})"])
    missing = sorted((set(fields_of(stage)) | set(COMMON_KEYS[stage])) - set(namespace))
    if missing:
        raise ProfileError([f"the {stage} notebook does not define parameter(s) {missing}"])
    errors: list[str] = []
    common = _build("common", {k: namespace[k] for k in COMMON_KEYS[stage]}, errors)
    section = _build(stage, {k: namespace[k] for k in fields_of(stage)}, errors)
    if errors:
        raise ProfileError(errors)
    return common, section


def read_yaml(path: str | Path) -> Any:
    return parse_yaml(Path(path).read_text(), str(path))
