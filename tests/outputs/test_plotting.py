"""The one plotting style (``lib.outputs.plotting``): the style applies inside its block only, figure sizes follow
width and aspect, bands clip their lower edge on log axes, colours along the map, and ``save`` writes a PDF and a PNG
and closes the figure."""
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from lib.outputs import plotting


def test_the_style_applies_inside_its_block_only():
    before = {key: matplotlib.rcParams[key] for key in ("font.size", "axes.prop_cycle")}
    with plotting.style():
        assert matplotlib.rcParams["font.size"] == 8 and matplotlib.rcParams["savefig.bbox"] == "tight"
        assert matplotlib.rcParams["axes.prop_cycle"].by_key()["color"] == plotting.PALETTE
    assert matplotlib.rcParams["font.size"] == before["font.size"]
    assert matplotlib.rcParams["axes.prop_cycle"] == before["axes.prop_cycle"]


def test_figure_size_follows_width_panels_and_aspect():
    with plotting.style():
        fig, axes = plotting.figure(ncols=2, nrows=3, width=7.0, aspect=0.5)
        one, single = plotting.figure()
    assert axes.shape == (3, 2) and single.shape == (1, 1)
    assert tuple(fig.get_size_inches()) == pytest.approx((7.0, 7.0 / 2 * 0.5 * 3))
    assert tuple(one.get_size_inches()) == pytest.approx((plotting.COLUMN_WIDTH, plotting.COLUMN_WIDTH * 0.75))
    plt.close(fig)
    plt.close(one)


def test_band_shades_mean_plus_minus_the_half_width_and_clips_at_zero_on_log_axes():
    with plotting.style():
        fig, axes = plotting.figure(ncols=2)
    linear, log = axes[0]
    log.set_yscale("log")
    x, mean, half = [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [2.0, 0.5, 1.0]
    for ax in (linear, log):
        line = plotting.band(ax, x, mean, half, label="mean")
        np.testing.assert_array_equal(line.get_ydata(), mean)
        assert line.get_label() == "mean" and len(ax.collections) == 1
    lin_y = np.concatenate([p.vertices[:, 1] for p in linear.collections[0].get_paths()])
    log_v = np.concatenate([p.vertices for p in log.collections[0].get_paths()])
    assert lin_y.min() == pytest.approx(-1.0) and lin_y.max() == pytest.approx(4.0)
    assert log_v[:, 1].min() == pytest.approx(1.5) and log_v[:, 0].min() == pytest.approx(2.0)   # 1 - 2 < 0: gone
    plt.close(fig)


def test_sequential_colours_run_along_the_colour_map():
    cmap = plt.get_cmap("viridis")
    assert plotting.sequential(0, 3) == cmap(0.05) and plotting.sequential(2, 3) == cmap(0.95)
    assert plotting.sequential(1, 3) == cmap(0.5) and plotting.sequential(0, 1) == cmap(0.05)


def test_save_writes_a_pdf_and_a_png_and_closes_the_figure(tmp_path):
    with plotting.style():
        fig, axes = plotting.figure()
        axes[0, 0].plot([0, 1], [1, 0])
    paths = plotting.save(fig, tmp_path / "sub" / "line")
    assert paths == [tmp_path / "sub" / "line.pdf", tmp_path / "sub" / "line.png"]
    assert paths[0].read_bytes()[:5] == b"%PDF-" and paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
