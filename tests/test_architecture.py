"""The layers of ``lib`` import one way, no private name crosses a module, imports sit at module top, and every
module's docstring says its one job."""
import ast
from pathlib import Path

import pytest

from lib import REPO_ROOT

LIB = REPO_ROOT / "lib"
MODULES = sorted(p for p in LIB.rglob("*.py"))
#: package -> packages of lib it may import (notebooks -> stages -> outputs-readers -> core / infra)
ALLOWED = {
    "core": {"core"},
    "infra": {"core", "infra"},
    "stages": {"core", "infra", "stages"},
    "outputs": {"core", "infra", "stages", "outputs"},
}
#: the only imports allowed inside functions: optional dependencies
OPTIONAL = {"pyhessian", "pyhessian.hessian", "pyhessian.utils", "sklearn.datasets"}


def _layer(path: Path) -> str:
    rel = path.relative_to(LIB).parts
    return rel[0] if len(rel) > 1 else "top"


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name, []


def _lib_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "lib" and len(parts) > 1 else None


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIB)))
def test_imports_run_one_way_and_at_module_top(path):
    tree = ast.parse(path.read_text())
    layer = _layer(path)
    top_level = {id(n) for n in tree.body}
    for node, module, names in _imports(tree):
        assert not module.startswith("."), f"{path.name}: relative import {module}"
        pkg = _lib_package(module)
        allowed = ALLOWED.get(layer, set()) | ({"outputs"} if path == LIB / "stages" / "figures.py" else set())
        if layer in ALLOWED and pkg is not None and pkg in ALLOWED:
            assert pkg in allowed, f"{path.relative_to(LIB)} ({layer}) imports lib.{pkg}: {module}"
        if layer == "stages" and path.stem != "figures":
            assert pkg != "outputs", f"{path.name}: computing stages never import lib.outputs"
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{path.name} imports private names {private} from {module}"
        if id(node) not in top_level and module not in OPTIONAL:
            guarded = any(isinstance(n, ast.If) and id(node) in {id(x) for x in ast.walk(n)} for n in tree.body)
            assert guarded, f"{path.name}:{node.lineno} imports {module} inside a function"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIB)))
def test_each_module_says_its_one_job(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.splitlines()[0]) > 20, f"{path.relative_to(LIB)} has no one-line docstring"


def test_one_stage_module_per_notebook():
    from lib.infra.config import STAGES
    from lib.infra.runner import notebooks as run_order
    from lib.stages import REGISTRY

    notebooks = [p.stem for p in run_order()]          # by number, 06_figures last (it reads every other stage)
    assert sorted(notebooks) == sorted(p.stem for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    assert [REGISTRY[s].notebook for s in STAGES] == notebooks
    for stage in STAGES:
        assert (LIB / "stages" / f"{stage}.py").is_file()
        assert f"from lib.stages import {stage}" in (REPO_ROOT / "notebooks" / f"{REGISTRY[stage].notebook}.py"
                                                     ).read_text()
