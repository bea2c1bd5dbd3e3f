"""The prediction benchmark's tasks (``lib.infra.tasks``): the task table, class subsets, label noise and resolution
of the task data."""
import pytest
import torch

from lib.infra.tasks import SMOKE_TASKS, TASKS, task_data


def test_task_data_classes_noise_and_resolution():
    assert len(TASKS) >= 24 and set(SMOKE_TASKS) <= set(TASKS)
    assert len({t.family for t in TASKS.values()}) >= 4 and {t.model for t in TASKS.values()} == {
        "linear", "mlp", "cnn", "vit"}
    clean = task_data(TASKS["mnist3_mlp"])
    assert clean["x"].shape[1:] == (1, 14, 14) and set(clean["y"].unique().tolist()) == {0, 1, 2}
    assert clean["n_classes"] == 3 and set(clean["y_test"].unique().tolist()) == {0, 1, 2}
    noisy, base = task_data(TASKS["mnist10_mlp_noise20"]), task_data(TASKS["mnist10_mlp"])
    assert torch.equal(noisy["x"], base["x"]) and torch.equal(noisy["y_test"], base["y_test"])
    assert float((noisy["y"] != base["y"]).double().mean()) == pytest.approx(0.2, abs=0.01)
    assert task_data(TASKS["mnist10_mlp_28px"])["x"].shape[1:] == (1, 28, 28)
    teacher = task_data(TASKS["teacher_g8_b8_mlp"])
    assert teacher["x"].shape == (32_000, 20) and 0.25 < teacher["bayes_accuracy"] < 1
