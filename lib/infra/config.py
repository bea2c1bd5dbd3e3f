"""Profiles (``configs/<profile>.yaml``): loading and validation before any compute.

A profile has a ``common`` section (shared by every notebook) and one section per notebook stage
(``train``, ``spectrum``, ...). Each notebook receives ``common`` plus its own section as papermill
parameters. Unknown sections or keys, wrong types and values outside the allowed range fail fast with a
message that names the parameter and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from lib import REPO_ROOT
from lib.infra.data import DATASETS, TRAIN_SIZE
from lib.infra.device import DEVICES
from lib.core.models import MODELS

CONFIG_DIR = REPO_ROOT / "configs"

Validator = Callable[[str, Any], None]


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"parameter {key}={value!r} is not allowed: {allowed}")


def integer(lo: int | None = None, hi: int | None = None) -> Validator:
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) or (
                hi is not None and value > hi):
            _fail(key, value, f"an integer in [{lo if lo is not None else '-inf'}, "
                              f"{hi if hi is not None else 'inf'}]")
    return check


def number(lo: float = 0.0, strict: bool = True) -> Validator:
    def check(key, value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            value > lo if strict else value >= lo)
        if not ok:
            _fail(key, value, f"a number {'>' if strict else '>='} {lo}")
    return check


def choice(allowed) -> Validator:
    def check(key, value):
        if value not in allowed:
            _fail(key, value, f"one of {list(allowed)}")
    return check


def boolean(key, value):
    if not isinstance(value, bool):
        _fail(key, value, "true or false")


def list_of(item: Validator, min_len: int = 1, unique: bool = True) -> Validator:
    def check(key, value):
        if not isinstance(value, list) or len(value) < min_len:
            _fail(key, value, f"a list with at least {min_len} item(s)")
        for i, v in enumerate(value):
            item(f"{key}[{i}]", v)
        if unique and len({repr(v) for v in value}) != len(value):
            _fail(key, value, "a list without repeated items")
    return check


def mapping_of(keys: Validator, values: Validator) -> Validator:
    def check(key, value):
        if not isinstance(value, dict):
            _fail(key, value, "a mapping (possibly empty) of key: value")
        for k, v in value.items():
            keys(f"{key} key", k)
            values(f"{key}[{k}]", v)
    return check


def name(key, value):
    if not isinstance(value, str) or not value or "/" in value:
        _fail(key, value, "a non-empty name without '/'")


SCHEMA: dict[str, dict[str, Validator]] = {
    "common": {
        "profile": name,
        "device": choice(DEVICES),
        "datasets": list_of(choice(sorted(DATASETS))),
        "models": list_of(choice(MODELS)),
        "seeds": list_of(integer(0)),
        "n_train": integer(2, TRAIN_SIZE),
        "data_seed": integer(0),
        "progress": boolean,
        # per model, how many of the first ``seeds`` get a spectrum (02) and enter the spectrum figure and
        # numbers (06); models not listed use all seeds
        "spectrum_max_seeds": mapping_of(choice(MODELS), integer(1)),
    },
    "train": {
        "epochs": integer(1),
        "batch_size": integer(1),
        "lr": number(0.0),
    },
    "spectrum": {
        "k_top": integer(1),
        "tol": number(0.0),
        "n_vectors": integer(1),
        "trace_probes": integer(2),
        "slq_runs": integer(1),
        "slq_iter": integer(2),
        "full_seeds": integer(1),
    },
    "projection": {
        "grid_points": integer(3),
        "hessian_span": number(0.0),
        "random_span": number(0.0),
        "k_small": integer(1),
    },
    "monte_carlo": {
        "D": integer(1),
        "sigma": number(0.0),
        "n_samples": integer(2),
        "n_orders": integer(0),
        "sweep_datasets": list_of(choice(sorted(DATASETS)), min_len=0),
        "sweep_models": list_of(choice(MODELS), min_len=0),
        "sweep_samples": integer(2),
        "sigmas": list_of(number(0.0)),
        "dims": list_of(integer(1)),
        "distributions": list_of(choice(("gaussian", "ball", "sphere", "curvature"))),
        "estimators": list_of(choice(("plain", "antithetic", "sobol"))),
        "theory_max_D": integer(0),
    },
    "convergence": {
        "delta_grid": list_of(number(0.0)),
        "pilot_k0": integer(3),
        "learning_sizes": list_of(integer(2, TRAIN_SIZE)),
        "learning_models": list_of(choice(MODELS)),
        "r0_dataset": choice(sorted(DATASETS)),
        "r0_n_train": integer(2, TRAIN_SIZE),
        "r0_architectures": list_of(list_of(integer(1), unique=False)),
        "r0_orders": integer(2),
        "r0_hessian_samples": integer(1),
        "r0_epochs": integer(1),
    },
    "figures": {},
}

# Keys of ``common`` read by some stages only (the runner passes each notebook the names it declares).
COMMON_USED_BY = {"spectrum_max_seeds": ("spectrum", "figures")}

# Keys of ``common`` that a stage section may override for that stage only (e.g. fewer models).
STAGE_OVERRIDABLE = ("datasets", "models", "seeds", "device", "progress")


def validate_section(section: str, params: dict) -> dict:
    """Check the keys and values of one section; returns ``params`` unchanged."""
    if section not in SCHEMA:
        raise ValueError(f"unknown profile section {section!r}; allowed: {list(SCHEMA)}")
    if not isinstance(params, dict):
        raise ValueError(f"profile section {section!r} must be a mapping of parameter: value")
    allowed = SCHEMA[section]
    if section != "common":
        allowed = {**{k: SCHEMA["common"][k] for k in STAGE_OVERRIDABLE}, **allowed}
    for key, value in params.items():
        if key not in allowed:
            raise ValueError(f"unknown parameter {section}.{key}; allowed in {section}: {sorted(allowed)}")
        allowed[key](f"{section}.{key}", value)
    return params


def validate_profile(cfg: dict) -> dict:
    """Validate every section and require every key of ``common``."""
    if not isinstance(cfg, dict):
        raise ValueError("a profile must be a YAML mapping with sections " + ", ".join(SCHEMA))
    for section, params in cfg.items():
        validate_section(section, params)
    missing = sorted(set(SCHEMA["common"]) - set(cfg.get("common", {})))
    if missing:
        raise ValueError(f"profile section common lacks {missing}")
    _check_across_sections(cfg)
    return cfg


def _stage(cfg: dict, section: str) -> dict:
    return {**cfg["common"], **cfg.get(section, {})}


def _check_across_sections(cfg: dict) -> None:
    """Constraints that tie sections together, checked before any compute (each names what to change)."""
    from lib.core.models import build, n_params

    spec, mc, conv, proj = (_stage(cfg, s) for s in ("spectrum", "monte_carlo", "convergence", "projection"))
    if "k_top" in spec:
        sizes = {m: n_params(build(m, 0)) for m in spec["models"]}
        smallest = min(sizes, key=sizes.get)
        size = sizes[smallest]
        if spec["k_top"] >= size:
            raise ValueError(f"spectrum.k_top={spec['k_top']} must be smaller than the number of parameters of "
                             f"{smallest} ({size}); lower spectrum.k_top")
        if spec.get("n_vectors", 0) > spec["k_top"]:
            raise ValueError(f"spectrum.n_vectors={spec['n_vectors']} must be <= spectrum.k_top={spec['k_top']}")
    if "n_vectors" in spec and "D" in mc:
        for key, D in [("monte_carlo.D", mc["D"]), ("monte_carlo.dims", max(mc.get("dims", [1])))]:
            if D > spec["n_vectors"]:
                raise ValueError(f"{key}={D} exceeds spectrum.n_vectors={spec['n_vectors']} (the Hessian "
                                 "eigenvectors kept for the subspace); raise spectrum.n_vectors or lower D")
    if "pilot_k0" in conv and not conv["pilot_k0"] < conv["n_train"]:
        raise ValueError(f"convergence.pilot_k0={conv['pilot_k0']} must be smaller than n_train={conv['n_train']}")
    if "k_small" in proj and not proj["k_small"] <= proj["n_train"] - 2:
        raise ValueError(f"projection.k_small={proj['k_small']} must be <= n_train - 2 = {proj['n_train'] - 2}")


def load_profile(profile: str, overrides: dict[str, Any] | None = None) -> dict:
    """Read ``configs/<profile>.yaml``, apply ``{"section.key": value}`` overrides, validate."""
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"unknown profile {profile!r}: no configs/{profile}.yaml; known: {known}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path.name} is not valid YAML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ValueError(f"override {dotted!r} must look like section.key=value")
        cfg.setdefault(section, {})[key] = value
    cfg.setdefault("common", {}).setdefault("profile", profile)
    return validate_profile(cfg)


def stage_parameters(cfg: dict, stage: str) -> dict:
    """The papermill parameters of a notebook stage: ``common`` plus the stage's own section."""
    return {**cfg["common"], **cfg.get(stage, {})}


def check_parameters(stage: str, namespace: dict) -> dict:
    """Validate a notebook's parameters and return them as a dict.

    ``namespace`` is the notebook's ``globals()`` (or any mapping): the names of the ``common`` section and of the
    stage's section are picked from it, everything else is ignored. Every name of the stage's own section must be
    present (a notebook that does not declare one would silently ignore the profile's value).
    """
    if stage not in SCHEMA or stage == "common":
        raise ValueError(f"unknown stage {stage!r}; allowed: {[s for s in SCHEMA if s != 'common']}")
    missing = sorted(set(SCHEMA[stage]) - set(namespace))
    if missing:
        raise ValueError(f"the {stage} notebook does not define parameter(s) {missing}")
    params = {k: namespace[k] for k in (*SCHEMA["common"], *SCHEMA[stage]) if k in namespace}
    common = {k: v for k, v in params.items() if k in SCHEMA["common"]}
    own = {k: v for k, v in params.items() if k not in SCHEMA["common"] or k in STAGE_OVERRIDABLE}
    validate_section("common", common)
    validate_section(stage, own)
    return params


def read_yaml(path: str | Path) -> Any:
    return yaml.safe_load(Path(path).read_text())
