"""lib.api.predict_sample_size on a tiny task: every predictor's point and interval from a pilot, the calibration it
used, and a clear refusal of every bad argument before any training."""
import math

import pytest
import torch

from lib.api import CALIBRATION_FILE, predict_sample_size
from lib.core.checks import ParameterError
from lib.core.sample_size.predictors import PREDICTORS, fit_shipped_calibration
from lib.core.training.task_models import build_task_model
from lib.core.training.teacher import teacher_task
from tests.core.sample_size.conftest import _rows


def _factory(seed):
    return build_task_model("mlp", (6,), 3, seed, width=8)


@pytest.fixture(scope="module")
def task():
    return teacher_task(400, 10, d=6, n_classes=3, beta=4.0, seed=0)


@pytest.fixture(scope="module")
def calibration():
    return {"source": {"profile": "test"}, "n0=160,eps=0.01": fit_shipped_calibration(_rows()),
            "n0=1000,eps=0.02": fit_shipped_calibration(_rows())}


def test_predicts_with_every_predictor_from_the_pilot_only(task, calibration):
    x, y = task["x"].clone(), task["y"].clone()
    x[160:] = float("nan")                                  # past n0: never read
    r = predict_sample_size(_factory, x, y, n0=160, n_max=5000, eps=0.01, steps=40, batch_size=16, D=3,
                            n_thetas=8, n_boot=20, calibration=calibration)
    assert set(r.predictions) == set(PREDICTORS) and r.n0 == 160 and r.calibration["key"] == "n0=160,eps=0.01"
    pl = r.predictions["power_law"]
    if pl["point"] is not None:
        assert 0 < pl["point"] <= 5000
    const = r.predictions["constant"]
    assert const["low"] <= const["point"] <= const["high"]
    assert const["point"] == pytest.approx(math.exp(calibration["n0=160,eps=0.01"]["constant"]["coef"][0]))
    assert r.landscape["N"] == 120 and r.landscape["vbar_sigma"] > 0
    assert len(r.pilot_curve["sizes"]) == len(r.pilot_curve["error"]) and r.to_dict()["eps"] == 0.01


def test_other_eps_or_n0_is_said(task, calibration):
    r = predict_sample_size(_factory, task["x"], task["y"], n0=160, n_max=5000, eps=0.005, steps=5,
                            batch_size=16, D=2, n_thetas=4, n_boot=10, calibration=calibration)
    assert r.predictions["constant"]["point"] is None and "no shipped calibration for eps" in r.notes[0]
    r = predict_sample_size(_factory, task["x"], task["y"], n0=160, n_max=5000, eps=0.02, steps=5,
                            batch_size=16, D=2, n_thetas=4, n_boot=10, calibration=calibration)
    assert r.calibration["key"] == "n0=1000,eps=0.02" and "n0 = 1000" in r.notes[0]


def test_a_custom_training_function_is_used(task, calibration):
    calls = []

    def train_fn(model, x, y, seed):
        calls.append(len(x))
        return model

    r = predict_sample_size(_factory, task["x"], task["y"], n0=160, n_max=5000, train_fn=train_fn, D=2, n_thetas=4,
                            n_boot=10, calibration=calibration)
    assert len(calls) == 4 * len(r.pilot_curve["sizes"]) and max(calls) == 120
    assert any("train_fn" in n for n in r.notes)


@pytest.mark.parametrize("kwargs,name", [
    ({"model_factory": 3}, "model_factory"),
    ({"model_factory": lambda s: "not a module"}, "model_factory"),
    ({"y": torch.zeros(5, dtype=torch.long)}, "x, y"),
    ({"n0": 10}, "n0"),
    ({"n_max": 100}, "n_max"),
    ({"eps": 1.5}, "eps"),
    ({"eps": -0.01}, "eps"),
    ({"train_fn": "sgd"}, "train_fn"),
    ({"y": torch.full((400,), 7)}, "y"),
    ({"y": torch.zeros(400)}, "y"),
    ({"x": torch.zeros(400, 5)}, "x"),
    ({"x": torch.full((400, 6), float("nan"))}, "x"),
    ({"calibration": "/nonexistent/calibration.json"}, "calibration"),
])
def test_bad_arguments_are_refused_with_their_name(task, calibration, kwargs, name):
    args = {"model_factory": _factory, "x": task["x"], "y": task["y"], "n0": 160, "n_max": 5000,
            "calibration": calibration, **kwargs}
    with pytest.raises(ParameterError) as err:
        predict_sample_size(args.pop("model_factory"), args.pop("x"), args.pop("y"), **args)
    assert str(err.value).startswith(name) or f"{name}" in str(err.value).split(":")[0]


def test_the_shipped_calibration_is_a_benchmark_result():
    if not CALIBRATION_FILE.is_file():
        pytest.skip("lib/prediction_calibration.json is written by `make readme-results` after the paper profile")
    import json
    cal = json.loads(CALIBRATION_FILE.read_text())
    assert cal["source"]["profile"] == "paper" and any(k.startswith("n0=") for k in cal)
