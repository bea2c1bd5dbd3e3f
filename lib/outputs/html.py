"""One static HTML page per profile: every figure (PNG), the paper's tables and each notebook's key numbers.

    python -m lib.outputs.html --profile smoke     # writes paper/build/smoke/report.html (make report PROFILE=smoke)

The figures are the PNGs notebook 06 wrote into ``paper/figures/<profile>/`` (listed in its ``source.json``), linked
by relative paths; the tables are the registry's table functions (``lib.outputs.registry.TABLES``, the same LaTeX the
paper inputs) turned into HTML; the page links each executed notebook ``results/<profile>/notebooks/*.ipynb``,
rendered by nbconvert to a standalone page with its figures embedded (``paper/build/<profile>/notebooks/*.html``),
and the ``.ipynb`` itself. Nothing is copied by hand: rerun it after ``make paper PROFILE=<profile>``.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
from pathlib import Path

from nbconvert import HTMLExporter

from lib import REPO_ROOT
from lib.infra.config import Common, load_profile
from lib.infra.results import RESULTS_ROOT, ResultStore, atomic_write_bytes
from lib.outputs import figures, key_numbers, latex, registry, tables

#: where ``make report`` writes: next to the profile's PDF, ``paper/build/<profile>/report.html``
BUILD = REPO_ROOT / "paper" / "build"
TABLE_TITLES = {"sample_size": ("Sufficient sample size K(Delta) per run", tables.sample_size_table),
                "solvers": ("Hessian solvers (first seed)", tables.solver_table),
                "theory": ("Monte Carlo against the quadratic model and the surrogate", tables.theory_table),
                "predictors": ("Predicting the plateau of the learning curve", tables.predictor_table)}
_SYMBOLS = {r"\sigma": "σ", r"\Delta": "Δ", r"\lambda": "λ", r"\rho": "ρ", r"\%": "%", r"\ ": " ", r"\bar V": "V̄",
            r"\times": "×", r"\,": " "}


def report_path(profile: str) -> Path:
    return BUILD / latex.generated_dir(profile).name / "report.html"


def latex_cell(tex: str) -> str:
    """One table cell of the generated LaTeX as HTML: ``\\ensuremath{1.2\\times 10^{5}}`` -> 1.2×10<sup>5</sup>,
    ``1{,}246`` -> 1,246, ``$\\sigma=0.3$`` -> σ=0.3, ``a_{k}`` -> a<sub>k</sub>, ``--`` -> an en dash."""
    s = html.escape(tex.strip(), quote=False)
    s = re.sub(r"\\ensuremath\{(.*)\}", r"\1", s)
    s = s.replace("{,}", ",").replace("$", "").replace("--", "–")
    s = re.sub(r"\s*\\times\s*", "×", s)
    for k, v in _SYMBOLS.items():
        s = s.replace(k, v)
    s = re.sub(r"\^\{([^{}]*)\}", r"<sup>\1</sup>", s)
    s = re.sub(r"_\{([^{}]*)\}", r"<sub>\1</sub>", s)
    s = re.sub(r"_([A-Za-z0-9])", r"<sub>\1</sub>", s)
    return re.sub(r"\s+", " ", s.replace("{", "").replace("}", "")).strip()


def tabular_cells(tex: str) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of a booktabs tabular written by ``latex.tabular``."""
    lines = tex.splitlines()
    header = lines[lines.index(r"\toprule") + 1]
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    split = [line.removesuffix(r" \\").split(" & ") for line in [header, *body]]
    return split[0], split[1:]


def html_table(tex: str) -> str:
    header, rows = tabular_cells(tex)
    head = "".join(f"<th>{latex_cell(c)}</th>" for c in header)
    body = "\n".join("<tr>" + "".join(f"<td>{latex_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _caption(name: str) -> str:
    base = ("surfaces" if name.startswith("surfaces_") else "sweep" if name.startswith("sweep_")
            else "delta_main" if name == "k2_delta_main" else name)
    fn = getattr(figures, base, None)
    return " ".join(((fn.__doc__ if fn else None) or "").split())


def _figures(n: int) -> str:
    return f"{n} figure{'s' * (n != 1)}"


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def embedded_figures(book: Path) -> int:
    """How many ``image/png`` outputs an executed notebook holds."""
    cells = json.loads(book.read_text())["cells"]
    return sum("image/png" in out.get("data", {}) for c in cells for out in c.get("outputs", []))


def render_notebooks(books: list[Path], folder: Path) -> list[Path]:
    """Each executed notebook as a standalone HTML page ``folder/<stem>.html`` (nbconvert's lab template: inputs,
    outputs, figures as embedded PNGs); pages of notebooks no longer there are removed. Returns the pages."""
    exporter = HTMLExporter()
    pages = []
    for book in books:
        body, _ = exporter.from_filename(str(book))
        pages.append(folder / f"{book.stem}.html")
        atomic_write_bytes(pages[-1], body.encode())
    if folder.is_dir():
        for stale in set(folder.glob("*.html")) - set(pages):
            stale.unlink()
    return pages


def build(store: ResultStore, common: Common, out: Path | None = None, notebooks: Path | None = None) -> Path:
    """Write the page of ``store``'s profile to ``out`` (default ``report_path(profile)``); returns its path."""
    profile = store.profile
    out = Path(out) if out is not None else report_path(profile)
    source = latex.generated_dir(profile) / "source.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: run 'make paper PROFILE={profile}' (notebook 06) first")
    names = json.loads(source.read_text())["figures"]
    figs = latex.figures_dir(profile)
    absent = [n for n in names if not (figs / f"{n}.png").is_file()]
    if absent:
        raise FileNotFoundError(f"figures {absent} are missing in {figs}: run 'make paper PROFILE={profile}' first")
    inputs = registry.Inputs.of(store, common)
    parts = [f"<h1>Results of profile <code>{html.escape(profile)}</code></h1>",
             f"<p>Datasets {', '.join(common.datasets)}; models {', '.join(common.models)}; seeds "
             f"{', '.join(map(str, common.seeds))}. Figures from <code>{html.escape(_rel(figs, REPO_ROOT))}</code>, "
             f"tables computed from <code>results/{html.escape(profile)}/</code> by the functions the paper uses.</p>",
             "<h2>Contents</h2><ul><li><a href='#figures'>Figures</a></li><li><a href='#tables'>Tables</a></li>"
             "<li><a href='#numbers'>Key numbers</a></li><li><a href='#notebooks'>Notebooks</a></li></ul>",
             "<h2 id='figures'>Figures</h2>"]
    for n in names:
        src = _rel(figs / f"{n}.png", out.parent)
        parts.append(f"<figure id='fig-{n}'><img src='{html.escape(src)}' alt='{n}'>"
                     f"<figcaption><b>{n}</b>: {html.escape(_caption(n))}</figcaption></figure>")
    parts.append("<h2 id='tables'>Tables</h2>")
    for name, make in registry.TABLES.items():
        title, fn = TABLE_TITLES.get(name, (name, make))
        doc = html.escape(" ".join((fn.__doc__ or "").split()))
        parts.append(f"<h3 id='table-{name}'>{html.escape(title)}</h3><p class='doc'>{doc}</p>"
                     f"{html_table(make(inputs))}")
    parts.append("<h2 id='numbers'>Key numbers</h2>")
    for stage in key_numbers.STAGES:
        parts.append(f"<details><summary>{stage}</summary><pre>"
                     f"{html.escape(key_numbers.text(stage, store, common))}</pre></details>")
    notebooks = Path(notebooks) if notebooks is not None else store.root / "notebooks"
    books = sorted(notebooks.glob("*.ipynb")) if notebooks.is_dir() else []
    pages = render_notebooks(books, out.parent / "notebooks")
    parts.append("<h2 id='notebooks'>Executed notebooks</h2><p>Each notebook as it ran for this profile, with its "
                 f"outputs and figures (from <code>{html.escape(_rel(notebooks, REPO_ROOT))}</code>).</p><ul>"
                 + "".join(f"<li><a href='{html.escape(_rel(page, out.parent))}'>{b.stem}</a> "
                           f"({_figures(embedded_figures(b))}; <a href='{html.escape(_rel(b, out.parent))}'>{b.name}"
                           "</a>)</li>" for b, page in zip(books, pages)) + "</ul>"
        + ("" if books else f"<p>none in {html.escape(str(notebooks))}</p>"))
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>landscape-hessian: profile {html.escape(profile)}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "img{max-width:100%;height:auto;border:1px solid #ddd}figure{margin:1.5em 0}"
            "table{border-collapse:collapse;font-size:0.85em;margin-bottom:1em}"
            "th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}"
            ".doc{color:#555;font-size:0.9em}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    atomic_write_bytes(out, page.encode())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--out", help="where to write (default paper/build/<profile>/report.html)")
    args = parser.parse_args(argv)
    if not (RESULTS_ROOT / args.profile).is_dir():
        print(f"error: no results for profile {args.profile!r}; run make reproduce PROFILE={args.profile} first",
              file=sys.stderr)
        return 2
    common, _ = load_profile(args.profile).stage("figures")
    try:
        path = build(ResultStore(args.profile), common, args.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
