"""The tasks of the prediction benchmark: which data, classes, resolution, label noise and model family each uses.

A task is a pool of training samples in a fixed insertion order (its first n samples are "n samples"), a test set,
a model family (``lib.core.training.task_models``) and a *family* label, the unit of leave-one-family-out
calibration (one
data source: a new family is a new data set to a practitioner). ``TASKS`` lists every task by name; a profile's
``prediction.tasks`` picks some. ``task_data(spec)`` builds the tensors; it only reads verified local files
(``lib.infra.data``) or draws synthetic data (``lib.core.training.teacher``).

Variation that moves the needed n: class subsets (2, 3, 5, 10 classes), 14 x 14 average-pooled images against the
28 x 28 originals, label noise (10 or 20 % of the pool's labels replaced by a uniformly drawn other class; the test
labels stay clean), teacher-student tasks (input structure, teacher width, label temperature) and four model
families (softmax regression, MLP, CNN, one-block ViT).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lib.core.training.teacher import teacher_task
from lib.infra import data

__all__ = ["TaskSpec", "TASKS", "SMOKE_TASKS", "task_data"]

TEACHER_TEST = 10_000


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str                   # calibration unit: the data source
    source: str                   # mnist | fashion_mnist | digits | teacher
    model: str                    # linear | mlp | cnn | vit
    classes: tuple = ()           # class subset of an image source (empty: all)
    side: int = 14                # image side (14: 2x2 average pooling of the 28 x 28 images)
    noise: float = 0.0            # share of pool labels replaced by another class
    pool: int | None = None       # pool size cap (None: every training image of the classes)
    teacher: dict = field(default_factory=dict)   # lib.core.training.teacher.teacher_task keywords (source = teacher)
    widths: dict = field(default_factory=dict)    # lib.core.training.task_models keywords

    def params(self) -> dict:
        return {"name": self.name, "family": self.family, "source": self.source, "model": self.model,
                "classes": list(self.classes), "side": self.side, "noise": self.noise, "pool": self.pool,
                "teacher": dict(self.teacher), "widths": dict(self.widths)}


def _image_tasks(source: str, family: str, short: str) -> list[TaskSpec]:
    hard_pair = (3, 5) if source == "mnist" else (0, 6)         # 3 vs 5; T-shirt vs shirt
    easy_pair = (4, 9) if source == "mnist" else (2, 4)         # 4 vs 9; pullover vs coat
    three = (3, 5, 8) if source == "mnist" else (0, 2, 6)
    return [
        TaskSpec(f"{short}2a_linear", family, source, "linear", hard_pair),
        TaskSpec(f"{short}2b_mlp", family, source, "mlp", easy_pair),
        TaskSpec(f"{short}3_mlp", family, source, "mlp", three),
        TaskSpec(f"{short}5_mlp", family, source, "mlp", (0, 1, 2, 3, 4)),
        TaskSpec(f"{short}10_mlp", family, source, "mlp"),
        TaskSpec(f"{short}10_linear", family, source, "linear"),
        *([TaskSpec(f"{short}10_cnn", family, source, "cnn", widths={"channels": (4, 8)})] if source == "mnist"
          else []),           # one CNN task: its vmapped training costs ~15x an MLP's per step on a CPU
        TaskSpec(f"{short}10_vit", family, source, "vit", widths={"patch": 7, "dim": 32, "heads": 2}),
        TaskSpec(f"{short}10_mlp_noise10", family, source, "mlp", noise=0.1),
        TaskSpec(f"{short}10_mlp_noise20", family, source, "mlp", noise=0.2),
        TaskSpec(f"{short}10_mlp_28px", family, source, "mlp", side=28),
    ]


def _teacher_tasks() -> list[TaskSpec]:
    out = []
    for i, (inputs, width, beta, model) in enumerate([("gaussian", 8, 8.0, "mlp"), ("gaussian", 32, 4.0, "mlp"),
                                                      ("gaussian", 8, 2.0, "linear"), ("structured", 32, 8.0, "mlp"),
                                                      ("structured", 8, 4.0, "mlp"),
                                                      ("structured", 32, 2.0, "linear")]):
        out.append(TaskSpec(f"teacher_{inputs[0]}{width}_b{beta:g}_{model}", f"teacher_{inputs}", "teacher", model,
                            pool=32_000, teacher={"d": 20, "width": width, "n_classes": 4, "beta": beta,
                                                  "inputs": inputs, "seed": 100 + i}))
    return out


#: every task the benchmark knows, by name (the paper profile uses all of them)
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    *_image_tasks("mnist", "mnist", "mnist"), *_image_tasks("fashion_mnist", "fashion_mnist", "fashion"),
    *_teacher_tasks(),
    TaskSpec("digits_mlp", "digits", "digits", "mlp", side=8),
    TaskSpec("digits_linear", "digits", "digits", "linear", side=8),
)}

#: the smoke profile's tasks: small pools (prediction.max_pool), five families, two model families
SMOKE_TASKS = ["mnist2b_mlp", "mnist2a_linear", "fashion2a_linear", "teacher_g8_b8_mlp", "teacher_s8_b4_mlp",
               "digits_linear"]


def _relabel(y: torch.Tensor, classes: tuple) -> torch.Tensor:
    lookup = torch.full((10,), -1, dtype=torch.int64)
    lookup[list(classes)] = torch.arange(len(classes))
    return lookup[y]


def _noisy(y: torch.Tensor, share: float, n_classes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < share
    other = (y + torch.randint(1, n_classes, (len(y),), generator=g)) % n_classes
    return torch.where(flip, other, y)


def task_data(spec: TaskSpec, data_seed: int = 0) -> dict:
    """{'x', 'y' (pool in insertion order), 'x_test', 'y_test', 'n_classes', 'input_shape', 'bayes_accuracy'}."""
    if spec.source == "teacher":
        t = teacher_task(spec.pool, TEACHER_TEST, **spec.teacher)
        return {"x": t["x"], "y": t["y"], "x_test": t["x_test"], "y_test": t["y_test"],
                "n_classes": spec.teacher["n_classes"], "input_shape": (spec.teacher["d"],),
                "bayes_accuracy": t["bayes_accuracy"]}
    if spec.source == "digits":
        x, y = data.digits("train")
        xt, yt = data.digits("test")
    else:
        x, y = data.load(spec.source, "train")
        order = data.insertion_order(len(x), data_seed)
        x, y = x[order], y[order]
        xt, yt = data.load(spec.source, "test")
    if spec.side == 14:
        x, xt = F.avg_pool2d(x, 2), F.avg_pool2d(xt, 2)
    n_classes = 10
    if spec.classes:
        keep, keep_t = torch.isin(y, torch.tensor(spec.classes)), torch.isin(yt, torch.tensor(spec.classes))
        x, y, xt, yt = x[keep], _relabel(y[keep], spec.classes), xt[keep_t], _relabel(yt[keep_t], spec.classes)
        n_classes = len(spec.classes)
    if spec.pool is not None:
        x, y = x[:spec.pool], y[:spec.pool]
    if spec.noise > 0:
        y = _noisy(y, spec.noise, n_classes, seed=1000 + data_seed)
    return {"x": x.contiguous(), "y": y, "x_test": xt.contiguous(), "y_test": yt, "n_classes": n_classes,
            "input_shape": tuple(x.shape[1:]), "bayes_accuracy": None}
