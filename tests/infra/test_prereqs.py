"""Prerequisites are checked in the first seconds of make setup / reproduce / test: a missing tool stops the run at
once with the one command to run (or, as root with apt, gets installed), a broken .venv is removed so that it is
rebuilt. Tools are made absent by running the checker with a PATH of stubs; no test touches the real .venv."""
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib import REPO_ROOT
from lib.infra import prereqs

#: the interpreter that builds .venv (the venv's base Python): the checker must run there, standard library only
SYSTEM_PYTHON = Path(sys.base_prefix) / "bin" / "python3"


def _stub(folder: Path, name: str, script: str = "exit 0") -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def _bin(tmp_path, *, tex=True, poppler=True, browser=True, apt=None, kpsewhich_missing=()):
    """A PATH folder with stubs of the tools the flags ask for (nothing else); ``apt``: an apt-get stub logging its
    arguments to that file."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    if tex:
        for tool in ("latexmk", "pdflatex", "bibtex"):
            _stub(folder, tool)
        skip = " ".join(kpsewhich_missing)
        _stub(folder, "kpsewhich", f'for f in "$@"; do case " {skip} " in *" $f "*) ;; *) echo "/tex/$f";; esac; done')
    if poppler:
        for tool in ("pdftotext", "pdfinfo"):
            _stub(folder, tool)
    if browser:
        for tool in ("chromium", "chromedriver"):
            _stub(folder, tool)
    if apt is not None:
        _stub(folder, "apt-get", f'echo "$@" >> {apt}')
    return folder


def _run(tmp_path, goals, path, *extra, venv=None, env=None):
    venv = venv or tmp_path / "no-venv-needed"
    environ = {"PATH": str(path), "HOME": str(tmp_path), **(env or {})}
    t0 = time.monotonic()
    out = subprocess.run([str(SYSTEM_PYTHON), "-E", "-s", "-m", "lib.infra.prereqs", "--goals", goals,
                          "--venv", str(venv), *extra], cwd=REPO_ROOT, env=environ, capture_output=True, text=True)
    out.seconds = time.monotonic() - t0
    return out


@pytest.fixture
def healthy_venv(tmp_path):
    """A venv stand-in whose python has pip (a link to this interpreter)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    return venv


def test_everything_present_passes_quickly_with_the_system_python(tmp_path, healthy_venv):
    out = _run(tmp_path, "test", _bin(tmp_path), venv=healthy_venv)
    assert out.returncode == 0, out.stderr
    assert out.seconds < 10 and out.stderr == ""


def test_missing_latexmk_stops_with_the_one_command(tmp_path, healthy_venv):
    folder = _bin(tmp_path, tex=False, poppler=False)
    out = _run(tmp_path, "reproduce", folder, "--dry-run", venv=healthy_venv)
    assert out.returncode == 2
    assert "latexmk" in out.stderr and "pdftotext, pdfinfo (poppler)" in out.stderr
    assert "make reproduce" in out.stderr
    # no apt-get on this PATH: the Debian command is given as the example
    assert ("sudo apt-get update && sudo apt-get install -y latexmk texlive-latex-recommended texlive-latex-extra "
            "texlive-fonts-recommended texlive-science texlive-bibtex-extra poppler-utils") in out.stderr


def test_missing_tex_package_is_named(tmp_path, healthy_venv):
    folder = _bin(tmp_path, kpsewhich_missing=("enumitem.sty", "beamerthemeMadrid.sty"))
    out = _run(tmp_path, "paper", folder, "--dry-run", venv=healthy_venv)
    assert out.returncode == 2
    assert "enumitem.sty" in out.stderr and "beamerthemeMadrid.sty" in out.stderr
    assert "texlive-latex-extra" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs as root")
def test_as_root_with_apt_the_missing_packages_are_installed(tmp_path, healthy_venv):
    log = tmp_path / "apt.log"
    folder = _bin(tmp_path, tex=False, browser=False, apt=log)
    out = _run(tmp_path, "test", folder, venv=healthy_venv)
    calls = log.read_text().splitlines()
    assert calls[0] == "update -q"
    installed = calls[1].split()
    assert installed[:3] == ["install", "-y", "-q"]
    assert {"latexmk", "texlive-latex-extra", "texlive-science", "chromium", "chromium-driver"} <= set(installed)
    assert "poppler-utils" not in installed      # present: not asked for
    # the stub installed nothing, so the re-check stops the run
    assert out.returncode == 2 and "still missing after apt-get install" in out.stderr


def test_browser_is_optional_outside_ci_and_required_in_ci(tmp_path, healthy_venv):
    folder = _bin(tmp_path, browser=False)
    out = _run(tmp_path, "test", folder, "--dry-run", venv=healthy_venv)
    assert out.returncode == 0 and "browser test" in out.stdout and "skipped" in out.stdout
    out = _run(tmp_path, "test", folder, "--dry-run", venv=healthy_venv, env={"CI": "true"})
    assert out.returncode == 2 and "chromium-driver" in out.stderr


def test_goals_decide_what_is_checked(tmp_path, healthy_venv):
    folder = _bin(tmp_path, tex=False, poppler=False, browser=False)
    for goals in ("lab", "stage", "data", "help", "clean-results"):
        assert _run(tmp_path, goals, folder, "--dry-run", venv=healthy_venv).returncode == 0, goals
    assert prereqs.needs_of(["setup"]) == {"venv", "tex", "poppler"}
    assert prereqs.needs_of(["paper", "slides"]) == {"tex"}


def test_venv_without_pip_is_removed_for_a_rebuild(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True)
    assert (venv / "bin" / "python").exists()
    assert "no working pip" in prereqs.venv_problem(venv)
    folder = _bin(tmp_path)
    out = _run(tmp_path, "lab", folder, "--dry-run", venv=venv)
    assert out.returncode == 2 and "is broken" in out.stderr and venv.exists()    # dry run: reported, kept
    # the rebuild's disk check is tested on its own below: this one must not depend on the disk it runs on
    out = _run(tmp_path, "lab", folder, "--min-free-gb", "0", venv=venv)
    assert out.returncode == 0, out.stderr
    assert "removed it" in out.stdout and not venv.exists()


def test_venv_whose_python_is_gone_is_broken(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(tmp_path / "deleted-interpreter")
    assert "missing" in prereqs.venv_problem(venv)
    assert prereqs.venv_problem(tmp_path / "absent") is None


def test_building_a_venv_needs_ensurepip_and_disk(tmp_path, monkeypatch):
    report = prereqs.Report()
    prereqs.check_venv(tmp_path / "new", report, fix=True, min_gb=1e9)
    assert report.fatal and "GB of free disk" in report.fatal[0]
    monkeypatch.setattr(prereqs.importlib.util, "find_spec", lambda name: None)
    report = prereqs.Report()
    prereqs.check_venv(tmp_path / "new", report, fix=True, min_gb=0)
    assert report.packages and report.packages[0].endswith("-venv") and "ensurepip" in report.missing[0]


def test_free_disk_threshold_reaches_the_check_from_the_command_line(tmp_path):
    folder = _bin(tmp_path)
    out = _run(tmp_path, "lab", folder, "--dry-run", "--min-free-gb", "1e9", venv=tmp_path / "new")
    assert out.returncode == 2 and "GB of free disk" in out.stderr
    out = _run(tmp_path, "lab", folder, "--dry-run", "--min-free-gb", "-1", venv=tmp_path / "new")
    assert out.returncode == 2 and "--min-free-gb must be >= 0 (read -1)" in out.stderr


def test_tex_files_cover_the_paper_and_the_slides():
    files = prereqs.tex_files()
    assert {"article.cls", "beamer.cls", "natbib.sty", "hyperref.sty", "plainnat.bst",
            "beamerthemeMadrid.sty"} <= set(files)


# ------------------------------------------------------------------------------------------------- Makefile
def _make(*args, cwd=REPO_ROOT, env=None, **kw):
    """make in a clean make context (these tests also run under `make test`, whose MAKEFLAGS must not leak)."""
    env = {k: v for k, v in (env or os.environ).items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", "-s", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, **kw)


def test_make_stage_without_stage_prints_usage_before_anything():
    t0 = time.monotonic()
    out = _make("stage", stdin=subprocess.DEVNULL)
    assert out.returncode != 0 and time.monotonic() - t0 < 5
    assert out.stdout.startswith("usage: make stage STAGE=01_train") and "02_spectrum" in out.stdout
    assert "pip" not in out.stdout + out.stderr and "prereqs" not in out.stdout


def test_make_runs_the_prerequisite_check_first():
    for goal in ("reproduce", "test", "setup"):
        first = _make("-n", goal, "PROFILE=smoke").stdout.splitlines()[0]
        assert "lib.infra.prereqs" in first and f'--goals "{goal}' in first, (goal, first)


def _results(tmp_path, profile="p1"):
    folder = tmp_path / "results" / profile / "train"
    folder.mkdir(parents=True)
    (folder / "x.json").write_text("{}")
    return tmp_path / "results" / profile


def _clean(tmp_path, *args, **kw):
    return _make("-f", str(REPO_ROOT / "Makefile"), "clean-results", *args, cwd=tmp_path, **kw)


def test_clean_results_needs_an_explicit_profile_and_confirmation(tmp_path):
    target = _results(tmp_path)
    out = _clean(tmp_path, stdin=subprocess.DEVNULL)
    assert out.returncode != 0 and "usage: make clean-results PROFILE=<profile>" in out.stdout and "p1" in out.stdout
    out = _clean(tmp_path, stdin=subprocess.DEVNULL, env={**os.environ, "PROFILE": "p1"})
    assert out.returncode != 0 and target.exists()            # from the environment is not explicit enough
    out = _clean(tmp_path, "PROFILE=p1", stdin=subprocess.DEVNULL)
    assert out.returncode != 0 and "YES=1" in out.stdout and target.exists()
    out = _clean(tmp_path, "PROFILE=../p1", stdin=subprocess.DEVNULL)
    assert out.returncode != 0 and target.exists()
    out = _clean(tmp_path, "PROFILE=p1", "YES=1", stdin=subprocess.DEVNULL)
    assert out.returncode == 0 and not target.exists() and "deleted results/p1" in out.stdout


@pytest.mark.parametrize("answer,kept", [("n", True), ("y", False)])
def test_clean_results_asks_on_a_terminal(tmp_path, answer, kept):
    target = _results(tmp_path)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(["make", "-s", "-f", str(REPO_ROOT / "Makefile"), "clean-results", "PROFILE=p1"],
                            cwd=tmp_path, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen, deadline = b"", time.monotonic() + 20
    while b"[y/N]" not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen
        if select.select([controller], [], [], 0.5)[0]:
            seen += os.read(controller, 1024)
    os.write(controller, f"{answer}\n".encode())
    proc.wait(timeout=20)
    os.close(controller)
    assert b"delete results/p1 (1 files" in seen
    assert target.exists() == kept



def test_make_pins_numerics_on_avx2_cpus_unless_turned_off():
    names = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
    env = {k: v for k, v in os.environ.items() if k not in (*names, "NATIVE_NUMERICS")}

    def exported(*args):
        out = _make("-pn", "help", *args, env=env).stdout
        return {k: v for k, _, v in (line.partition(" = ") for line in out.splitlines()) if k in names}

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx2" in cpuinfo:
        assert exported() == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
        assert exported("MKL_CBWR=COMPATIBLE")["MKL_CBWR"] == "COMPATIBLE"
    assert exported("NATIVE_NUMERICS=1") == {}
