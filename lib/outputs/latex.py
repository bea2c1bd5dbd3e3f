"""LaTeX text from results: macro names, number formatting, tabulars, the macros the paper and slides need, and the
per-profile folders (``paper/generated/<profile>/``, ``paper/figures/<profile>/``) that numbers, tables and figures
are written into, so that building one profile never touches another's."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from lib import REPO_ROOT
from lib.infra.results import atomic_write_bytes

#: roots of the generated LaTeX inputs and of the figures; each profile writes only into ``<root>/<profile>/``
GENERATED = REPO_ROOT / "paper" / "generated"
FIGURES = REPO_ROOT / "paper" / "figures"
_DIGITS = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]
NAMES = {"mnist": "Mnist", "fashion_mnist": "Fashion", "mlp1": "MlpOne", "mlp2": "MlpTwo", "cnn": "Cnn",
         "hessian": "Hess", "random": "Rand"}
TEX_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "mlp1": "MLP-1", "mlp2": "MLP-2", "cnn": "CNN"}


def macro(*parts) -> str:
    """A LaTeX macro name from parts: letters only, digits spelled out (``macro('acc', 'mnist', 'mlp2')``)."""
    out = ""
    for p in parts:
        p = NAMES.get(str(p), str(p))
        for word in re.split(r"[^A-Za-z0-9]+", p):
            if word:
                out += word[0].upper() + word[1:]
    return "".join(_DIGITS[int(ch)] if ch.isdigit() else ch for ch in out)


def fmt(x, digits: int = 3) -> str:
    """Significant-digit formatting for text; large/small values in LaTeX scientific notation."""
    if x is None:
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}".replace(",", "{,}")
    x = float(x)
    if not np.isfinite(x):
        return "n/a"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        mant, exp = f"{x:.{digits - 1}e}".split("e")
        return f"\\ensuremath{{{mant}\\times 10^{{{int(exp)}}}}}"
    s = f"{x:.{digits}g}"
    if "e" in s:   # 10**digits <= |x| < 1e5: whole number with a thin thousands separator
        s = f"{round(x):,}".replace(",", "{,}")
    return s


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}"


def fmt_k(value, missing: str = "--") -> str:
    """A sample size (rounded to a whole number) for text, ``missing`` where it is None (not reached)."""
    return fmt(int(round(value))) if value is not None else missing


def tex_text(text: str) -> str:
    """Plain text (a bench row's label, a machine name) with LaTeX's special characters escaped."""
    text = re.sub(r"([_%&#$])", r"\\\1", str(text))
    return text.replace("<=", r"$\le$").replace(">=", r"$\ge$").replace("~", r"\textasciitilde{}")


def tabular(header: list[str], rows: list[list[str]], align: str) -> str:
    """A booktabs ``tabular`` of ``rows`` under ``header`` with column alignment ``align``."""
    body = [" & ".join(header) + r" \\", r"\midrule"] + [" & ".join(r) + r" \\" for r in rows]
    return "\n".join([f"\\begin{{tabular}}{{{align}}}", r"\toprule", *body, r"\bottomrule", r"\end{tabular}"]) + "\n"


def generated_dir(profile: str) -> Path:
    """``paper/generated/<profile>/``: the numbers, tables and ``source.json`` of one profile."""
    return GENERATED / _plain(profile)


def figures_dir(profile: str) -> Path:
    """``paper/figures/<profile>/``: the figures (PDF + PNG) of one profile."""
    return FIGURES / _plain(profile)


def _plain(profile: str) -> str:
    if not profile or "/" in profile or "\\" in profile or profile.startswith("."):
        raise ValueError(f"profile={profile!r} is not a plain folder name; use a profile name such as 'smoke'")
    return profile


def prune_figures(made, folder: Path) -> list[str]:
    """Delete figure files (PDF/PNG) directly in ``folder`` (one profile's ``figures_dir``) that this run did not
    write, so that every file there traces back to the results of the last 06 run; nothing outside ``folder``
    (another profile's folder) is looked at. Returns the removed names."""
    folder = Path(folder)
    removed = []
    for path in sorted(folder.glob("*")):
        if path.suffix in (".pdf", ".png") and path.stem not in made:
            path.unlink()
            removed.append(path.name)
    return removed

def write_table(name: str, tex: str, folder: Path) -> Path:
    """Write one table as ``<folder>/<name>.tex`` (``folder``: one profile's ``generated_dir``)."""
    path = Path(folder) / f"{name}.tex"
    atomic_write_bytes(path, tex.encode())
    return path


#: LaTeX's own commands that start with a capital letter and appear in paper/ or slides/ (not generated numbers)
LATEX_COMMANDS = {"Delta", "Gamma", "Sigma", "Lambda", "Theta", "Omega", "Phi", "Psi", "Pi", "Xi", "Upsilon", "S",
                  "Longrightarrow", "Rightarrow", "Leftarrow", "IfFileExists", "FloatBarrier", "Large", "LARGE",
                  "Huge", "LaTeX", "TeX", "Big", "Bigg", "Bigl", "Bigr", "Biggl", "Biggr", "Alph", "Roman"}
TEX_SOURCES = (REPO_ROOT / "paper" / "main.tex", REPO_ROOT / "slides" / "main.tex")


def required_macros(sources=TEX_SOURCES) -> set[str]:
    """Capitalised commands the LaTeX sources use but do not define themselves: the generated numbers."""
    used, defined = set(), set()
    for path in sources:
        text = Path(path).read_text()
        used |= set(re.findall(r"\\([A-Z][A-Za-z]*)", text))
        defined |= set(re.findall(r"\\(?:re)?newcommand\{\\([A-Za-z]+)\}", text))
    return used - defined - LATEX_COMMANDS


def placeholders(values: dict, sources=TEX_SOURCES) -> list[str]:
    """Macros the sources need that ``values`` lacks or holds only as "n/a"."""
    return sorted(m for m in required_macros(sources) if values.get(m, "n/a") == "n/a")


def write_numbers(values: dict, path: Path, allow_placeholders: bool = True) -> list[str]:
    """Write one \\newcommand per value to ``path`` (``generated_dir(profile) / "numbers.tex"``, and
    ``numbers.json`` next to it); every macro the paper or slides use but the results do not give is a placeholder
    "n/a", listed in ``placeholders.txt``. With ``allow_placeholders=False`` a placeholder is an error naming them.
    Returns the placeholders."""
    path = Path(path)
    # the sentence of the setup paragraph that explains "n/a" entries: only in a build that has them
    values = {**values, macro("placeholder", "note"): ""}
    missing = placeholders(values)
    if missing:
        values[macro("placeholder", "note")] = "; entries ``n/a'' are not run in it"
    if missing and not allow_placeholders:
        raise ValueError(f"{len(missing)} number(s) the paper or slides use have no result: {missing}; run the "
                         "stages that make them, or set figures.allow_placeholders=true for a draft build")
    values = {**values, **{m: "n/a" for m in missing}}
    atomic_write_bytes(path.with_name("placeholders.txt"), ("\n".join(missing) + "\n" if missing else "").encode())
    lines = ["% Generated by notebooks/06_figures.py from results; do not edit."]
    lines += [f"\\newcommand{{\\{k}}}{{{v}}}" for k, v in sorted(values.items())]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(values, indent=1, sort_keys=True) + "\n").encode())
    return missing
