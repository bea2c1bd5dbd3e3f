"""One plotting style for every figure: column-width sizes, labelled axes, colour-blind-safe palette.

Figures are saved as PDF (for LaTeX) and PNG (for looking) with ``save``, which renders through the file format's
own canvas whatever the backend. No backend is chosen here: a Jupyter kernel keeps its inline backend (so that
``plt.show()`` embeds the figure in the notebook; the runner sets it for the kernels it starts), and a script or
test without a display gets matplotlib's own headless default (Agg).
"""
from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from lib.infra.results import atomic_write_bytes

# Okabe & Ito (2008) colour-blind-safe palette.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
LINESTYLES = ["-", "--", "-.", ":"]
COLUMN_WIDTH = 3.4   # inches, one column of a two-column paper
FULL_WIDTH = 7.0

STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.2,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "figure.dpi": 150,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "legend.frameon": False,
    "image.cmap": "viridis",
}


@contextmanager
def style():
    """Apply the project style inside a ``with`` block."""
    with plt.rc_context(STYLE):
        yield


def sequential(i: int, n: int):
    """The i-th of n colours along a perceptually uniform colour map (for more curves than the palette has)."""
    return plt.get_cmap("viridis")(0.05 + 0.9 * i / max(n - 1, 1))


def figure(ncols: int = 1, nrows: int = 1, width: float = COLUMN_WIDTH, aspect: float = 0.75, **kw):
    """A figure of ``width`` inches with panels ``aspect`` as tall as wide (style must be active)."""
    height = width / ncols * aspect * nrows
    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kw)


def band(ax, x, mean, half_width, label=None, color=None, **kw):
    """A line with a shaded band mean +- half_width (clipped to positive values on log axes)."""
    x, mean, half_width = map(np.asarray, (x, mean, half_width))
    (line,) = ax.plot(x, mean, label=label, color=color, **kw)
    lo = mean - half_width
    if ax.get_yscale() == "log":
        lo = np.where(lo > 0, lo, np.nan)
    ax.fill_between(x, lo, mean + half_width, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def save(fig, path_stem: str | Path) -> list[Path]:
    """Write ``<stem>.pdf`` and ``<stem>.png``; returns both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("pdf", "png"):
        path = stem.with_suffix(f".{ext}")
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext)
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths
