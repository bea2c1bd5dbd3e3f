"""Prerequisites of the make targets, checked in the first seconds (before any compute), installed as root with apt.

    python3 -m lib.infra.prereqs --goals "reproduce"      # what `make reproduce` runs first
    python3 -m lib.infra.prereqs --goals "test" --dry-run # report only, install nothing

Run with the *system* ``python3`` (the one that builds ``.venv``): this module uses the standard library only and
imports nothing else from ``lib``. What is checked depends on the make goals:

* ``.venv`` (every goal that needs it): a ``.venv`` whose interpreter does not run or has no pip (left by a failed
  ``python3 -m venv``) is removed so that ``make setup`` rebuilds it; building it needs Python >= 3.11 with venv
  support (``ensurepip``, Debian package ``python3-venv``) and about 6 GB of free disk (torch is a 5.7 GB build).
* TeX (``setup``, ``reproduce``, ``test``, ``paper``, ``slides``): ``latexmk``, ``pdflatex``, ``bibtex`` and every
  class, package, theme and bibliography style that ``paper/main.tex`` and ``slides/main.tex`` load (``kpsewhich``).
* poppler (``setup``, ``reproduce``, ``test``, ``paper-test``): ``pdftotext`` and ``pdfinfo`` for the PDF checks.
* a browser (``test``, ``pytest``): ``chromium`` and ``chromedriver`` for the JupyterLab browser test; optional
  (the test is skipped without them) except in CI (``CI=true``).

As root on a machine with ``apt-get`` the missing Debian packages are installed (one ``apt-get update``, one
``apt-get install``; ``dataset-fashion-mnist`` comes along when it is absent). Otherwise the run stops at once with
exit status 2 and the one command to run.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lib import REPO_ROOT

MIN_PYTHON = (3, 11)
#: free disk needed to build .venv (torch 2.14.1 is a 5.7 GB CUDA build; pip needs room to unpack it)
VENV_GB = 6.0
TEX_TOOLS = ("latexmk", "pdflatex", "bibtex", "kpsewhich")
TEX_PACKAGES = ("latexmk", "texlive-latex-recommended", "texlive-latex-extra", "texlive-fonts-recommended",
                "texlive-science", "texlive-bibtex-extra")
POPPLER_TOOLS = ("pdftotext", "pdfinfo")
BROWSER_PACKAGES = ("chromium", "chromium-driver")
DATA_PACKAGE, DATA_DIR = "dataset-fashion-mnist", Path("/usr/share/datasets/fashion-mnist")
TEX_SOURCES = ("paper/main.tex", "slides/main.tex")

#: what each make goal needs (a goal not listed needs nothing); ``prereqs`` alone checks everything
NEEDS = {
    "setup": {"venv", "tex", "poppler"},
    "reproduce": {"venv", "tex", "poppler"},
    "test": {"venv", "tex", "poppler", "browser"},
    "pytest": {"venv", "browser"},
    "paper": {"tex"}, "slides": {"tex"}, "check-tex": {"tex"},
    "paper-test": {"venv", "poppler"},
    "prereqs": {"venv", "tex", "poppler", "browser"},
    **{g: {"venv"} for g in ("data", "lint", "notebooks-smoke", "stage", "lab", "bench", "update-reference")},
}


@dataclass
class Report:
    """What is missing: Debian packages to install, problems no package fixes, optional extras, notes."""
    packages: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)      # human-readable, one per missing prerequisite
    fatal: list[str] = field(default_factory=list)        # cannot be fixed by installing a package
    optional: list[str] = field(default_factory=list)     # missing but not required here (browser outside CI)
    notes: list[str] = field(default_factory=list)

    def need(self, what: str, *packages: str) -> None:
        self.missing.append(what)
        self.packages += [p for p in packages if p not in self.packages]


def needs_of(goals: list[str]) -> set[str]:
    out: set[str] = set()
    for goal in goals:
        out |= NEEDS.get(goal, set())
    return out


# ------------------------------------------------------------------------------------------------- .venv
def venv_problem(venv: Path) -> str | None:
    """Why an existing ``venv`` is unusable (None when it works or does not exist)."""
    if not venv.exists():
        return None
    py = venv / "bin" / "python"
    if not (py.is_file() and os.access(py, os.X_OK)):
        return f"{py} is missing"
    try:
        out = subprocess.run([str(py), "-m", "pip", "--version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{py} does not run ({exc})"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{py} has no working pip ({last})"
    return None


def venv_package() -> str:
    """The Debian package that gives this interpreter ``ensurepip``."""
    system = shutil.which("python3")
    if system and Path(system).resolve() == Path(sys.executable).resolve():
        return "python3-venv"
    return f"python{sys.version_info[0]}.{sys.version_info[1]}-venv"


def free_gb(path: Path) -> float:
    while not path.exists():
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 1e9


def check_venv(venv: Path, report: Report, *, fix: bool, min_gb: float = VENV_GB) -> None:
    problem = venv_problem(venv)
    if problem:
        if fix:
            report.notes.append(f"{venv} is broken: {problem}; removed it, `make setup` rebuilds it")
            shutil.rmtree(venv)
        else:
            report.fatal.append(f"{venv} is broken: {problem}; remove it (rm -rf {venv}) and run make setup")
            return
    if venv.exists():
        return
    if sys.version_info < MIN_PYTHON:
        report.fatal.append(f"{sys.executable} is Python {sys.version.split()[0]}; the project needs "
                            f">= {'.'.join(map(str, MIN_PYTHON))}: run make with PYTHON=python3.11 (or newer)")
    if importlib.util.find_spec("ensurepip") is None or importlib.util.find_spec("venv") is None:
        report.need(f"venv support for {sys.executable} (ensurepip)", venv_package())
    have = free_gb(venv.parent)
    if have < min_gb:
        report.fatal.append(f"building {venv} needs ~{min_gb:.0f} GB of free disk (torch is a 5.7 GB build), "
                            f"{have:.1f} GB free on the disk of {venv.parent}: free some space")


# ---------------------------------------------------------------------------------------------------- TeX
def tex_files(sources=TEX_SOURCES, root: Path = REPO_ROOT) -> list[str]:
    """Classes, packages, beamer themes and bibliography styles that the TeX sources load."""
    files: list[str] = []

    def add(name):
        if name not in files:
            files.append(name)

    for rel in sources:
        path = root / rel
        if not path.is_file():
            continue
        text = re.sub(r"(?<!\\)%.*", "", path.read_text())
        for kind, names in re.findall(r"\\(documentclass|usepackage|RequirePackage|usetheme|usecolortheme|"
                                      r"usefonttheme|useinnertheme|useoutertheme|bibliographystyle)"
                                      r"\s*(?:\[[^\]]*\])?\s*\{([^}]*)\}", text):
            for name in (n.strip() for n in names.split(",")):
                if not name:
                    continue
                if kind == "documentclass":
                    add(f"{name}.cls")
                elif kind == "bibliographystyle":
                    add(f"{name}.bst")
                elif kind.startswith("use") and kind.endswith("theme"):
                    prefix = {"usetheme": "", "usecolortheme": "color", "usefonttheme": "font",
                              "useinnertheme": "inner", "useoutertheme": "outer"}[kind]
                    add(f"beamer{prefix}theme{name}.sty")
                else:
                    add(f"{name}.sty")
    return files


def missing_tex_files(files: list[str]) -> list[str]:
    if not files:
        return []
    try:
        out = subprocess.run(["kpsewhich", *files], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return list(files)
    found = {Path(line.strip()).name for line in out.splitlines() if line.strip()}
    return [f for f in files if f not in found]


def check_tex(report: Report) -> None:
    tools = [t for t in TEX_TOOLS if shutil.which(t) is None]
    if tools:
        report.need(f"TeX tools {', '.join(tools)}", *TEX_PACKAGES)
        return
    files = missing_tex_files(tex_files())
    if files:
        report.need(f"TeX files the paper and slides load: {', '.join(files)}", *TEX_PACKAGES)


def check_poppler(report: Report) -> None:
    tools = [t for t in POPPLER_TOOLS if shutil.which(t) is None]
    if tools:
        report.need(f"{', '.join(tools)} (poppler)", "poppler-utils")


def browser_paths() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) on PATH, or None for each one that is absent."""
    return (shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver"))


def check_browser(report: Report, *, required: bool) -> None:
    browser, driver = browser_paths()
    absent = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if path is None]
    if not absent:
        return
    what = f"{' and '.join(absent)} (the JupyterLab browser test)"
    if required:
        report.need(what, *BROWSER_PACKAGES)
    else:
        report.optional.append(what)


# ------------------------------------------------------------------------------------------------ driver
def check(goals: list[str], venv: Path, *, fix_venv: bool = True, browser_required: bool = False,
          min_gb: float = VENV_GB) -> Report:
    """Everything the goals need that this machine lacks (nothing is installed here). The browser is required
    in CI and wherever it can be installed; elsewhere its absence only skips the browser test."""
    report = Report()
    needs = needs_of(goals)
    if "venv" in needs:
        check_venv(venv, report, fix=fix_venv, min_gb=min_gb)
    if "tex" in needs:
        check_tex(report)
    if "poppler" in needs:
        check_poppler(report)
    if "browser" in needs:
        check_browser(report, required=browser_required)
    return report


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def install_command(packages: list[str], *, root: bool) -> str:
    sudo = "" if root else "sudo "
    return f"{sudo}apt-get update && {sudo}apt-get install -y {' '.join(packages)}"


def apt_install(packages: list[str]) -> int:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"[prereqs] installing with apt-get: {' '.join(packages)} (a few minutes the first time) ...",
          flush=True)
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"error: `{' '.join(cmd)}` failed:\n{(out.stdout + out.stderr)[-3000:]}", file=sys.stderr)
            return out.returncode
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goals", default="prereqs", help="the make goals, space-separated (default: all checks)")
    parser.add_argument("--venv", default=str(REPO_ROOT / ".venv"))
    parser.add_argument("--dry-run", action="store_true", help="report only: install and remove nothing")
    parser.add_argument("--min-free-gb", type=float, default=VENV_GB,
                        help=f"free disk that building .venv needs (default {VENV_GB:g} GB: torch is a 5.7 GB build)")
    args = parser.parse_args(argv)
    goals = args.goals.split() or ["help"]
    venv = Path(args.venv) if Path(args.venv).is_absolute() else Path.cwd() / args.venv
    install = can_install() and not args.dry_run
    browser_required = install or os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if args.min_free_gb < 0:
        parser.error(f"--min-free-gb must be >= 0 (read {args.min_free_gb:g}); the default is {VENV_GB:g}")
    report = check(goals, venv, fix_venv=not args.dry_run, browser_required=browser_required,
                   min_gb=args.min_free_gb)
    for note in report.notes:
        print(f"[prereqs] {note}", flush=True)
    if report.fatal:
        for line in report.fatal:
            print(f"error: {line}", file=sys.stderr)
        return 2
    target = f"make {' '.join(goals)}"
    packages = list(report.packages)
    if report.missing and install:
        if not DATA_DIR.is_dir():
            packages.append(DATA_PACKAGE)
        if apt_install(packages):
            return 2
        report = check(goals, venv, fix_venv=False, browser_required=browser_required, min_gb=args.min_free_gb)
        if report.missing or report.fatal:
            for line in report.missing + report.fatal:
                print(f"error: still missing after apt-get install: {line}", file=sys.stderr)
            return 2
    elif report.missing:
        print(f"error: `{target}` needs what this machine lacks:", file=sys.stderr)
        for line in report.missing:
            print(f"  - {line}", file=sys.stderr)
        if shutil.which("apt-get"):
            print(f"Install it with this one command, then run `{target}` again:\n  "
                  f"{install_command(packages, root=os.geteuid() == 0)}", file=sys.stderr)
        else:
            print(f"Install them with your package manager (Debian/Ubuntu: "
                  f"{install_command(packages, root=False)}), then run `{target}` again.", file=sys.stderr)
        return 2
    for line in report.optional:
        print(f"[prereqs] note: {line} not installed: that test is skipped "
              f"({install_command(list(BROWSER_PACKAGES), root=os.geteuid() == 0)} to run it)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
