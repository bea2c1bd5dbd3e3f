"""The pip pins and environment.yml stay in step; the installed packages are the pinned ones."""
from importlib import metadata

import yaml

from lib import REPO_ROOT


def _pins_from_requirements():
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    return dict(l.split("==") for l in (l.split("#")[0].strip() for l in lines) if l)


def _pins_from_environment():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return dict(p.split("==") for p in pip if "==" in p)


def test_requirements_and_environment_yml_agree():
    req, env = _pins_from_requirements(), _pins_from_environment()
    assert req == env
    for must in ["torch", "torchvision", "pyhessian", "numpy", "scipy", "matplotlib", "jupytext", "papermill",
                 "nbval", "ipykernel", "jupyterlab", "tqdm", "pyyaml", "pytest"]:
        assert must in req, f"{must} is not pinned"
    assert all(v and v[0].isdigit() for v in req.values()), "every pin is an exact version"


def test_installed_versions_are_the_pins():
    for name, version in _pins_from_requirements().items():
        installed = metadata.version(name)
        assert installed.split("+")[0] == version, f"{name}: installed {installed}, pinned {version}"
