"""The records of notebook 04 (``lib.records.monte_carlo``): curve and full-space spec names, the plan's groups and
main curves, and the loaders of the plan, terms and optional tables through a store."""
import dataclasses

import pytest
import torch

from lib.core.landscape.quadratic import PerSampleTerms
from lib.infra.results import MissingResultError
from lib.records import monte_carlo as mc_records
from lib.records.monte_carlo import CurveSpec, FullSpaceSpec

SPEC = {"dataset": "mnist", "model": "mlp1", "seed": 0, "subspace": "hessian", "D": 2, "distribution": "gaussian",
        "sigma": 0.3, "estimator": "plain", "n_samples": 8, "n_orders": 2, "theory": True}


def test_spec_names_are_readable_and_differ_with_every_field():
    spec = CurveSpec(**SPEC)
    readable, tag = spec.name.rsplit("_", 1)
    assert readable == "mnist_mlp1_s0_hessian_D2_gaussian_s0.3_plain_T8" and len(tag) == 8
    assert spec.terms_name == "mnist_mlp1_s0_hessian_D2" and CurveSpec(**SPEC).name == spec.name
    gap = CurveSpec(**{**SPEC, "sigma": 0.123456, "scale": "loss_gap"})
    assert "_s0.1235_gap_plain_T8_" in gap.name and gap.terms_name == spec.terms_name
    assert CurveSpec(**{**SPEC, "n_orders": 3}).name.rsplit("_", 1)[0] == readable      # same readable part ...
    assert CurveSpec(**{**SPEC, "n_orders": 3}).name != spec.name                       # ... another name
    full = FullSpaceSpec("mnist", "mlp1", 0, "full", 0, 1e-3, 4)
    assert full.name.rsplit("_", 1)[0] == "mnist_mlp1_s0_full_D0_s0.001_T4"
    assert FullSpaceSpec(**{**dataclasses.asdict(full), "kind": "subspace"}).name != full.name


def test_groups_and_the_main_curves_of_a_plan():
    h, r, h1 = CurveSpec(**SPEC), CurveSpec(**{**SPEC, "subspace": "random"}), CurveSpec(**{**SPEC, "seed": 1})
    plan = [("main", h1), ("main", h), ("main", r), ("sigma", h)]
    assert mc_records.group(plan, "main") == [h1, h, r] and mc_records.group(plan, "dim") == []
    assert mc_records.main_curves(plan) == [h, r]                     # the seed that has a random-subspace curve
    assert mc_records.main_curves([("main", h1)]) == [h1] and mc_records.main_curves([]) == []


def test_plan_terms_and_optional_tables_through_a_store(tmp_store):
    spec = CurveSpec(**SPEC)
    assert mc_records.load_full_space_plan(tmp_store) == [] and mc_records.load_speed(tmp_store) == []
    with pytest.raises(MissingResultError, match=r"result plan/monte_carlo .* run notebook notebooks/"
                                                 r"04_monte_carlo.py first"):
        mc_records.load_plan(tmp_store)
    tmp_store.save(mc_records.PLAN, "monte_carlo", {"plan": [["main", dataclasses.asdict(spec)]]}, {"specs": 1})
    assert mc_records.load_plan(tmp_store) == [("main", spec)]
    a, b, C = torch.arange(3.0), torch.ones(3, 2), torch.eye(2).expand(3, 2, 2).clone()
    tmp_store.save(mc_records.TERMS, spec.terms_name, {"a": a, "b": b, "C": C, "method": "jet"}, {}, ext="pt")
    terms = mc_records.load_terms(tmp_store, spec)
    assert isinstance(terms, PerSampleTerms) and terms.method == "jet"
    assert torch.equal(terms.a, a) and torch.equal(terms.b, b) and torch.equal(terms.C, C)
    rows = [{"group": "main", "name": spec.name, "speedup": 3.5}]
    tmp_store.save(mc_records.SPEED, "closed_form", {"rows": rows}, {})
    assert mc_records.load_speed(tmp_store) == rows
    full = FullSpaceSpec("mnist", "mlp1", 0, "full", 0, 1e-3, 4)
    tmp_store.save(mc_records.FULL_SPACE, full.name, {"delta": [1.0, 0.5]}, {})
    assert mc_records.load_full_space_curve(tmp_store, dataclasses.asdict(full)) == {"delta": [1.0, 0.5]}
    assert mc_records.load_full_space_curve(tmp_store, full) == {"delta": [1.0, 0.5]}
