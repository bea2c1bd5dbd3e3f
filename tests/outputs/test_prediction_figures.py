"""The prediction benchmark's figures (``lib.outputs.prediction_figures``) on the tiny pipeline: every resolved
target and the worked task's curves."""
from lib.core.sample_size.predictors import PREDICTORS
from lib.records.prediction import load_scores, load_task


def test_figures_show_every_resolved_target_and_the_worked_task(tiny_pipeline):
    import matplotlib.pyplot as plt
    import numpy as np

    from lib.outputs import prediction_figures

    scores = load_scores(tiny_pipeline.store)
    key = f"n0={scores['primary']['n0']},eps={scores['primary']['eps']}"
    fig = prediction_figures.predicted_vs_target(scores, key)
    panels = fig.axes
    assert len(panels) == len(PREDICTORS)
    n_resolved = scores["tables"][key]["n_resolved"]
    for ax in panels:                     # two marker series (predictions, fallbacks) + the diagonal
        points = sum(len(line.get_xdata()) for line in ax.lines if line.get_marker() == "o")
        assert points == n_resolved and "median |log2|" in ax.get_title()
    plt.close(fig)
    task = load_task(tiny_pipeline.store, scores["tasks"][0])
    fig = prediction_figures.task_curve(task, scores["primary"]["n0"])
    left, right = fig.axes[:2]
    mean = next(line for line in left.lines if line.get_label() == "mean over seeds")
    assert np.allclose(mean.get_ydata(), np.asarray(task["accuracy"]).mean(axis=1))
    assert left.get_xlabel() == right.get_xlabel() == "training samples n" and right.get_yscale() == "log"
    plt.close(fig)
