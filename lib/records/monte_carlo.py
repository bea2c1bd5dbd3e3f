"""Records of notebook 04: its result folders, the curve specs (``CurveSpec``, ``FullSpaceSpec``) whose names are
the result names, the saved curve plan and the loaders of curves, per-sample terms and speed rows."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from lib.core.landscape.quadratic import PerSampleTerms
from lib.infra.results import ResultStore
from lib.records import folder
from lib.records.runs import load, run_name

CURVES = folder("monte_carlo", "curves")
TERMS = folder("monte_carlo", "terms")
PLAN = folder("monte_carlo", "plan")
SCALES = folder("monte_carlo", "scales")
FULL_SPACE = folder("monte_carlo", "full_space")
SPEED = folder("monte_carlo", "speed")
GROUPS = ("main", "gap", "sigma", "dim", "distribution", "estimator")   # of the curve plan; + the full_space group


@dataclass(frozen=True)
class CurveSpec:
    dataset: str
    model: str
    seed: int
    subspace: str
    D: int
    distribution: str
    sigma: float            # gaussian/ball/sphere: sigma; curvature: eps is matched to gaussian(sigma)
    estimator: str
    n_samples: int
    n_orders: int
    theory: bool
    scale: str = "sigma"    # "sigma": the profile's fixed sigma; "loss_gap": sigma matched to the run's loss gap

    @property
    def name(self) -> str:
        key = json.dumps(asdict(self), sort_keys=True)
        tag = "_gap" if self.scale == "loss_gap" else ""
        return (f"{run_name(self.dataset, self.model, self.seed)}_{self.subspace}_D{self.D}_{self.distribution}"
                f"_s{self.sigma:.4g}{tag}_{self.estimator}_T{self.n_samples}_"
                + hashlib.sha1(key.encode()).hexdigest()[:8])

    @property
    def terms_name(self) -> str:
        return f"{run_name(self.dataset, self.model, self.seed)}_{self.subspace}_D{self.D}"


@dataclass(frozen=True)
class FullSpaceSpec:
    """One curve of the ``full_space`` group: ``kind`` "subspace" (theta ~ N(0, sigma^2 I_D) in the top-D Hessian
    subspace, with the pointwise criterion) or "full" (eps ~ N(0, s^2 I_n) in all n parameters; ``D`` = 0 and
    ``sigma`` = the per-parameter s)."""
    dataset: str
    model: str
    seed: int
    kind: str
    D: int
    sigma: float
    n_samples: int

    @property
    def name(self) -> str:
        key = json.dumps(asdict(self), sort_keys=True)
        return (f"{run_name(self.dataset, self.model, self.seed)}_{self.kind}_D{self.D}_s{self.sigma:.4g}"
                f"_T{self.n_samples}_" + hashlib.sha1(key.encode()).hexdigest()[:8])


def load_curve(store: ResultStore, spec: CurveSpec) -> dict:
    return load(store, CURVES, spec.name).payload


def load_terms(store: ResultStore, spec: CurveSpec) -> PerSampleTerms:
    """The per-sample (a_i, b_i, C_i) saved for a curve's (run, subspace, D)."""
    p = load(store, TERMS, spec.terms_name).payload
    return PerSampleTerms(a=p["a"], b=p["b"], C=p["C"], method=p["method"])


def load_plan(store: ResultStore) -> list[tuple[str, CurveSpec]]:
    """The (group, curve) plan the stage computed (``plan/monte_carlo.json``)."""
    p = load(store, PLAN, "monte_carlo").payload
    return [(g, CurveSpec(**s)) for g, s in p["plan"]]


def group(curves: list[tuple[str, CurveSpec]], name: str) -> list[CurveSpec]:
    return [s for g, s in curves if g == name]


def main_curves(curves: list[tuple[str, CurveSpec]]) -> list[CurveSpec]:
    """The main curves of the first seed (the seed that has both a Hessian and a random-subspace curve)."""
    main = group(curves, "main")
    first = next((s.seed for s in main if s.subspace == "random"), main[0].seed if main else None)
    return [s for s in main if s.seed == first]


def load_full_space_plan(store: ResultStore) -> list[dict]:
    """The comparisons the ``full_space`` group computed ([] for a store without them)."""
    if store.meta(PLAN, "full_space") is None:
        return []
    return load(store, PLAN, "full_space").payload["pairs"]


def load_full_space_curve(store: ResultStore, spec: dict | FullSpaceSpec) -> dict:
    spec = spec if isinstance(spec, FullSpaceSpec) else FullSpaceSpec(**spec)
    return load(store, FULL_SPACE, spec.name).payload


def load_speed(store: ResultStore) -> list[dict]:
    """The rows of the closed-form vs Monte-Carlo speed comparison ([] for a store without them)."""
    if store.meta(SPEED, "closed_form") is None:
        return []
    return load(store, SPEED, "closed_form").payload["rows"]
