"""Records of notebook 05: its result folders, the names of its analysis tables and their loaders."""
from __future__ import annotations

from lib.infra.results import ResultStore
from lib.records import folder
from lib.records.runs import load

ANALYSIS = folder("convergence", "analysis")
PILOTS = folder("convergence", "pilots")
LEARNING = folder("convergence", "learning_curve")
R0 = folder("convergence", "r0")
CNN_BOUND = folder("convergence", "cnn_bound")
SEEDS = folder("convergence", "seeds")
TABLES = ("slopes", "theory", "loss_correlation", "learning_curve", "sample_size", "pilots", "calibration",
          "predictors", "summary", "r0", "cnn_bound", "seed_study")


def load_table(store: ResultStore, name: str) -> list[dict]:
    return load(store, ANALYSIS, name).payload["rows"]


def load_r0_curve(store: ResultStore, name: str) -> dict:
    return load(store, R0, name).payload
