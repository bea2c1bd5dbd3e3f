"""Run the numbered notebooks in order through papermill with a profile's parameters.

    python -m lib.infra.runner --profile smoke                      # every notebook
    python -m lib.infra.runner --profile paper --only 02_spectrum   # one stage
    python -m lib.infra.runner --profile smoke --set train.epochs=2 # override a parameter (YAML value)
    python -m lib.infra.runner --profile paper --full-specification # T = 1,024, 30 probes, 80 SLQ steps, ...
    python -m lib.infra.runner --write-parameter-cells              # after adding or changing a parameter

Notebooks run in number order, except ``06_figures`` (it reads every other stage's results), which runs last.
The profile is validated before anything runs. Executed notebooks are saved under
``results/<profile>/notebooks/``, each figure a notebook shows embedded as a PNG (the kernels draw inline,
``KERNEL_ENV``); per-stage wall times go to ``results/<profile>/timings.json``.
A failing cell stops the run with a non-zero exit and the cell's error.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import jupytext
import papermill
import yaml

from lib import REPO_ROOT
from lib.infra.config import (
    COMMON_KEYS,
    FULL_SPECIFICATION,
    STAGES,
    ProfileError,
    defaults,
    fields_of,
    load_profile,
    parse_yaml,
    stage_parameters,
)
from lib.infra.results import RESULTS_ROOT, RUNNER_ENV, atomic_write_json, cpu_info

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
KERNEL_NAME = "landscape-hessian"
#: on x86-64 CPUs with AVX2: the AVX2 code paths of ATen, MKL (conditional numerical reproducibility) and oneDNN, so
#: that CPUs with newer instructions compute the same bits (docs/reproducibility.md); the Makefile sets the same.
#: A variable already set wins; NATIVE_NUMERICS=1 turns the pins off.
PINNED_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
#: the matplotlib backend of every kernel the runner starts, whatever the caller's MPLBACKEND (CI and the tests set
#: Agg, which in a kernel would draw nothing): ``plt.show()`` embeds each figure as a PNG in the executed notebook
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}


#: the stage whose notebook reads every other stage's results (figures, tables, numbers of the paper): it runs last,
#: whatever its number, so that a later-numbered stage (07_your_model) has saved its results before it
REPORT_STAGE = "figures"


def notebooks() -> list[Path]:
    """The numbered notebooks in run order: by number, the ``REPORT_STAGE`` notebook (06_figures) last."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"), key=lambda p: (stage_of(p) == REPORT_STAGE, p.name))


def stage_of(path: Path) -> str:
    """``01_train.py`` -> ``train``."""
    return path.stem.split("_", 1)[1]


def select(only: list[str] | None) -> list[Path]:
    books = notebooks()
    if not only:
        return books
    chosen = []
    for item in only:
        match = [p for p in books if p.stem == item or p.stem.startswith(item + "_") or stage_of(p) == item]
        if not match:
            raise ValueError(f"--only {item!r} matches no notebook; choose from {[p.stem for p in books]}")
        chosen += match
    return [p for p in books if p in chosen]      # run order, each once


def declared_parameters(nb) -> set[str]:
    """Names assigned in the notebook's cell tagged ``parameters``."""
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)}
    raise ValueError("the notebook has no cell tagged 'parameters'")


PARAMETERS_MARK = '# %% tags=["parameters"]\n'


def parameters_cell(stage: str) -> str:
    """The parameters cell a notebook of ``stage`` ships: its `common` keys and its whole section, smoke defaults."""
    values = {**defaults("common"), **defaults(stage)}
    keys = list(COMMON_KEYS[stage]) + list(fields_of(stage))
    return (PARAMETERS_MARK + "# Defaults = the smoke profile (lib/infra/config.py); papermill replaces them with the "
            "profile's values.\n" + "".join(f"{k} = {values[k]!r}\n" for k in keys))


def write_parameter_cells() -> list[Path]:
    """Rewrite every notebook's parameters cell from the config (the one source of truth); returns those changed."""
    changed = []
    for path in notebooks():
        text = path.read_text()
        head, rest = text.split(PARAMETERS_MARK, 1)
        new = head + parameters_cell(stage_of(path)) + rest[rest.index("\n# %%"):]
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def run_notebook(path: Path, params: dict, out_dir: Path, kernel: str = KERNEL_NAME) -> float:
    """Execute one jupytext notebook with papermill; returns wall seconds.

    Of ``params`` (already validated against the profile schema) only the names the notebook declares in its
    parameters cell are passed, so a ``common`` key that only some stages use is not injected elsewhere.
    """
    nb = jupytext.read(path)
    declared = declared_parameters(nb)
    params = {k: v for k, v in params.items() if k in declared}
    nb.metadata.setdefault("kernelspec", {"name": kernel, "display_name": kernel, "language": "python"})
    nb.metadata["kernelspec"].setdefault("language", "python")
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{path.stem}.ipynb"
    t0 = time.perf_counter()
    papermill.execute_notebook(nb, str(output), parameters=params, kernel_name=kernel, cwd=str(REPO_ROOT),
                               progress_bar=False, log_output=True, request_save_on_cell_execute=False)
    return time.perf_counter() - t0


def numerics_pins() -> dict[str, str]:
    """The ``PINNED_NUMERICS`` a kernel started now gets (a re-execution must get the same to repeat its bits): on a
    CPU with AVX2 unless NATIVE_NUMERICS is set, each variable the caller has not set itself (the caller's win)."""
    if "avx2" not in cpu_info()["isa_flags"] or os.environ.get("NATIVE_NUMERICS"):
        return {}
    return {k: v for k, v in PINNED_NUMERICS.items() if k not in os.environ}


@contextlib.contextmanager
def marked_as_runner(profile: str, overrides: list[str]):
    """Mark the notebooks executed inside this block (their kernels inherit the environment) as run by the
    runner: their result store may replace results whose parameters changed (an edited profile or ``--set`` is
    an intended change; ``lib.infra.results``), a missing upstream result names this same command
    (``lib.records.runs``), their numerics are pinned (``PINNED_NUMERICS``) unless the caller set them, and their
    figures are drawn inline (``KERNEL_ENV``)."""
    values = {RUNNER_ENV: json.dumps({"profile": profile, "set": list(overrides)}), **KERNEL_ENV, **numerics_pins()}
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def parse_overrides(items: list[str]) -> dict:
    """``["section.key=value", ...]`` -> ``{"section.key": value}`` (values are YAML; 1e-3 is a number)."""
    out, errors = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            errors.append(f"--set {item!r} must look like section.key=value (e.g. train.epochs=2)")
            continue
        try:
            out[key.strip()] = parse_yaml(value, f"the value of --set {item!r}")
        except ProfileError as exc:
            errors += exc.errors
    if errors:
        raise ProfileError(errors)
    return out


def show(profile) -> str:
    """The resolved profile as YAML, one section per stage (``--show``)."""
    out = {"common": dataclasses.asdict(profile.common)}
    for stage in STAGES:
        common, section = profile.stage(stage)
        values = dataclasses.asdict(section)
        values.update(profile.overrides.get(stage, {}))
        out[stage] = values
    return yaml.safe_dump(out, sort_keys=False, default_flow_style=None)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("traitlets", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper", help="configs/<profile>.yaml (default: paper)")
    parser.add_argument("--only", action="append", help="notebook stem or stage name; repeatable")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--full-specification", action="store_true",
                        help="override what the profile trims of docs/specification.md section 7 "
                             f"({', '.join(f'{k}={json.dumps(v)}' for k, v in FULL_SPECIFICATION.items())}); "
                             "--set still wins")
    parser.add_argument("--kernel", default=KERNEL_NAME)
    parser.add_argument("--show", action="store_true", help="print the resolved profile and exit")
    parser.add_argument("--write-parameter-cells", action="store_true",
                        help="rewrite each notebook's parameters cell from lib/infra/config.py and exit")
    args = parser.parse_args(argv)
    if args.write_parameter_cells:
        for path in write_parameter_cells():
            print(f"rewrote the parameters cell of {path.relative_to(REPO_ROOT)}")
        return 0

    if args.full_specification:
        args.overrides = [f"{k}={json.dumps(v)}" for k, v in FULL_SPECIFICATION.items()] + args.overrides
    try:
        cfg = load_profile(args.profile, parse_overrides(args.overrides))
        books = select(args.only)
    except ValueError as exc:
        for line in (exc.errors if isinstance(exc, ProfileError) else [str(exc)]):
            print(f"error: {line}", file=sys.stderr)
        return 2
    if args.show:
        print(show(cfg), end="")
        return 0
    profile = cfg.common.profile
    out_dir = RESULTS_ROOT / profile / "notebooks"
    timings_path = RESULTS_ROOT / profile / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for path in books:
        params = stage_parameters(cfg, stage_of(path))
        print(f"=== {path.name} (profile {profile})", flush=True)
        try:
            with marked_as_runner(args.profile, args.overrides):
                seconds = run_notebook(path, params, out_dir, args.kernel)
        except Exception as exc:  # papermill's PapermillExecutionError carries the failing cell's error
            print(f"\nerror: {path.name} failed; executed notebook saved in {out_dir / (path.stem + '.ipynb')}"
                  f"\n{exc}", file=sys.stderr)
            return 1
        timings[path.stem] = round(seconds, 2)
        atomic_write_json(timings_path, timings)
        print(f"=== {path.name} done in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
