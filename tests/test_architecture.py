"""The floors of ``lib`` import one way, no private name crosses a module, imports sit at module top, every
module's docstring says its one job, and every module has its test file (which imports it); a planted wrong-way
import and a planted module without its test are caught."""
import ast
import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest

from lib import REPO_ROOT

LIB = REPO_ROOT / "lib"
TESTS = REPO_ROOT / "tests"
MODULES = sorted(p for p in LIB.rglob("*.py"))
#: floor -> floors of lib it may import. A floor is a package of lib or a top-level module (api, __main__); "lib" is
#: lib/__init__.py (REPO_ROOT). Stages compute, outputs render, and both read what the stages saved through records;
#: notebooks, tests and bench sit above every floor.
ALLOWED = {
    "lib": set(),
    "core": {"core"},
    "infra": {"lib", "core", "infra"},
    "api": {"core"},
    "records": {"lib", "core", "infra", "records"},
    "stages": {"lib", "core", "infra", "api", "records", "stages"},
    "outputs": {"lib", "core", "infra", "records", "outputs"},
    "__main__": {"infra"},
}
#: the only imports allowed inside functions: optional dependencies
OPTIONAL = {"pyhessian", "pyhessian.hessian", "pyhessian.utils", "sklearn.datasets"}


def floor_of(path: Path) -> str:
    """The floor of a module of lib: its package, or for a top-level module its name (``lib`` for __init__)."""
    rel = path.relative_to(LIB).parts
    if len(rel) > 1:
        return rel[0]
    return "lib" if rel[0] == "__init__.py" else Path(rel[0]).stem


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):        # a relative import keeps its dots: "." * level + module
            yield node, "." * node.level + (node.module or ""), [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name, []


def _floors_imported(module: str, names: list[str]) -> set[str]:
    """The floors of lib an import reaches: ``lib.<floor>...``, or for ``from lib import x`` the floor x names
    (a package or top-level module of lib) or else lib itself."""
    parts = module.split(".")
    if parts[0] != "lib":
        return set()
    if len(parts) > 1:
        return {parts[1]}
    return {n if (LIB / n).is_dir() or (LIB / f"{n}.py").is_file() else "lib" for n in names} or {"lib"}


def violations(source: str, floor: str, name: str = "<source>") -> list[str]:
    """Every breach of the house rules in the module ``source`` of floor ``floor``: an import of a floor it may not
    use, a relative import, a private name imported, an import inside a function (other than optional
    dependencies)."""
    tree = ast.parse(source)
    out = []
    if floor not in ALLOWED:
        return [f"{name}: floor {floor!r} is not in ALLOWED; give it its place there"]
    top_level = {id(n) for n in tree.body}
    for node, module, names in _imports(tree):
        if module.startswith("."):
            out.append(f"{name}: relative import {module}")
        for reached in _floors_imported(module, names) - ALLOWED[floor]:
            out.append(f"{name} ({floor}) imports floor {reached!r}: {module}; {floor} may import "
                       f"{sorted(ALLOWED[floor])}")
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        if private:
            out.append(f"{name} imports private names {private} from {module}")
        if id(node) not in top_level and module not in OPTIONAL:
            guarded = any(isinstance(n, ast.If) and id(node) in {id(x) for x in ast.walk(n)} for n in tree.body)
            if not guarded:
                out.append(f"{name}:{node.lineno} imports {module} inside a function")
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIB)))
def test_imports_run_one_way_and_at_module_top(path):
    assert violations(path.read_text(), floor_of(path), str(path.relative_to(LIB))) == []


def test_the_floors_form_one_order_and_cover_every_module():
    """ALLOWED names exactly the floors lib has, and its arrows (a floor to another) have no cycle: nothing imports
    back up."""
    assert {floor_of(p) for p in MODULES} == set(ALLOWED)
    assert all(used <= set(ALLOWED) for used in ALLOWED.values())
    done, order = set(), []
    while len(done) < len(ALLOWED):
        ready = [f for f in ALLOWED if f not in done and ALLOWED[f] - {f} <= done]
        assert ready, f"the floors {sorted(set(ALLOWED) - done)} import each other in a cycle"
        done |= set(ready)
        order += sorted(ready)
    assert order.index("records") < min(order.index("stages"), order.index("outputs"))
    assert "outputs" not in ALLOWED["stages"] and "stages" not in ALLOWED["outputs"]


@pytest.mark.parametrize("floor, source, caught", [
    ("outputs", "from lib.stages.base import cached\n", "(outputs) imports floor 'stages'"),
    ("stages", "from lib.outputs import latex\n", "(stages) imports floor 'outputs'"),
    ("records", "import lib.stages.train\n", "(records) imports floor 'stages'"),
    ("records", "from lib import stages\n", "(records) imports floor 'stages'"),
    ("core", "from lib.infra.config import Common\n", "(core) imports floor 'infra'"),
    ("core", "from lib import REPO_ROOT\n", "(core) imports floor 'lib'"),
    ("infra", "from lib.records import REGISTRY\n", "(infra) imports floor 'records'"),
    ("api", "from lib.stages import train\n", "(api) imports floor 'stages'"),
    ("outputs", "from lib.outputs.latex import _plain\n", "imports private names ['_plain']"),
    ("stages", "def f():\n    from lib.records import REGISTRY\n    return REGISTRY\n",
     ":2 imports lib.records inside"),
    ("records", "from .runs import load\n", "relative import"),
    ("records", "from . import runs\n", "relative import"),
    ("hessian", "import torch\n", "floor 'hessian' is not in ALLOWED"),
])
def test_a_planted_wrong_way_import_is_caught(floor, source, caught):
    found = violations(source, floor, "planted.py")
    assert len(found) == 1 and caught in found[0], found


def test_the_checker_passes_imports_that_run_down():
    source = ("from lib import REPO_ROOT\nfrom lib.core import models\nfrom lib.infra.results import ResultStore\n"
              "from lib.records.runs import load\nimport numpy as np\n\n\ndef f():\n"
              "    import pyhessian.hessian  # noqa: F401\n    return np\n")
    assert violations(source, "outputs") == []
    assert violations(source, "stages") == []
    assert len(violations(source, "infra")) == 1          # records is above infra


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIB)))
def test_each_module_says_its_one_job(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.splitlines()[0]) > 20, f"{path.relative_to(LIB)} has no one-line docstring"


def test_one_stage_entry_per_notebook():
    from lib.infra.config import STAGES
    from lib.infra.runner import notebooks as run_order
    from lib.records import REGISTRY

    notebooks = [p.stem for p in run_order()]          # by number, 06_figures last (it reads every other stage)
    assert sorted(notebooks) == sorted(p.stem for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    assert [REGISTRY[s].notebook for s in STAGES] == notebooks
    for stage in STAGES:
        entry = REGISTRY[stage].entry
        assert importlib.util.find_spec(entry) is not None, f"stage {stage}: no module {entry}"
        assert callable(importlib.import_module(entry).run), f"{entry} has no run(store, common, section)"
        notebook = ast.parse((REPO_ROOT / "notebooks" / f"{REGISTRY[stage].notebook}.py").read_text())
        imported = {f"{n.module}.{a.name}" for n in ast.walk(notebook) if isinstance(n, ast.ImportFrom)
                    for a in n.names}
        assert entry in imported, f"notebooks/{REGISTRY[stage].notebook}.py does not import {entry}"
        assert entry.startswith(("lib.stages.", "lib.outputs."))


# ------------------------------------------------------------------------------------------ tests mirror the code
def _lib_attribute(module: str, name: str):
    """``getattr(module, name)`` for a module of lib (None for other modules, or when there is no such attribute)."""
    if module != "lib" and not module.startswith("lib."):
        return None
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _reached(obj) -> set[str]:
    """The module an object of lib stands for: itself for a module, else the module that defines it."""
    if obj is None:
        return set()
    return {obj.__name__} if inspect.ismodule(obj) else {getattr(obj, "__module__", None) or ""}


def modules_reached(source: str) -> set[str]:
    """The dotted names a test file's source reaches: every module it imports (``import lib.a.b``,
    ``from lib.a.b import f``, ``from lib.a import b``) and the module that defines each object it takes from a
    package that re-exports it (``from lib.core.hessian import trace``, or ``H.trace`` after
    ``from lib.core import hessian as H``). Imports inside functions count; a name in a comment or string does not."""
    tree = ast.parse(source)
    reached, aliases = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                reached.add(a.name)
                if a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                reached |= {node.module, f"{node.module}.{a.name}"}
                obj = _lib_attribute(node.module, a.name)
                reached |= _reached(obj)
                if inspect.ismodule(obj):
                    aliases[a.asname or a.name] = obj.__name__
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            reached |= _reached(_lib_attribute(aliases[node.value.id], node.attr))
    return reached - {""}


def mirrored_test_file(module: Path, lib: Path = LIB, tests: Path = TESTS) -> Path:
    """``tests/<path>/test_<name>.py`` of ``lib/<path>/<name>.py`` (``tests/test_api.py`` of ``lib/api.py``)."""
    rel = module.relative_to(lib)
    return tests / rel.parent / f"test_{rel.stem}.py"


def mirror_problems(lib: Path = LIB, tests: Path = TESTS) -> list[str]:
    """Every module of ``lib`` (not ``__init__``/``__main__``) whose test file is missing or does not reach it
    (``modules_reached``), one line each, paths relative to the folder that holds ``lib``."""
    out = []
    for module in sorted(lib.rglob("*.py")):
        if module.name in ("__init__.py", "__main__.py"):
            continue
        dotted = ".".join((lib.name, *module.relative_to(lib).with_suffix("").parts))
        test = mirrored_test_file(module, lib, tests)
        where, rel_test = module.relative_to(lib.parent), test.relative_to(lib.parent)
        if not test.is_file():
            out.append(f"{where}: no test file {rel_test}")
        elif not any(r == dotted or r.startswith(dotted + ".") for r in modules_reached(test.read_text())):
            out.append(f"{where}: {rel_test} does not import {dotted} (nor use an object defined in it)")
    return out


def test_every_module_has_its_test_file():
    """Tests mirror the code: lib/<path>/<name>.py is tested in tests/<path>/test_<name>.py, which imports it."""
    assert mirror_problems() == []


def test_a_planted_module_without_its_test_file_is_caught(tmp_path):
    files = {"lib/__init__.py": "", "lib/__main__.py": "", "lib/api.py": "", "lib/core/__init__.py": "",
             "lib/core/widget.py": "", "lib/core/gadget.py": "", "lib/core/gizmo.py": "", "lib/core/sprocket.py": "",
             "tests/test_api.py": "from lib.api import analyze\n",
             "tests/core/test_widget.py": "def test_w():\n    from lib.core import widget\n    assert widget\n",
             "tests/core/test_sprocket.py": "import lib.core.sprocket\n",
             "tests/core/test_gadget.py": "import numpy\n# lib.core.gadget named in a comment is no import\n"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert mirror_problems(tmp_path / "lib", tmp_path / "tests") == [
        "lib/core/gadget.py: tests/core/test_gadget.py does not import lib.core.gadget (nor use an object defined "
        "in it)",
        "lib/core/gizmo.py: no test file tests/core/test_gizmo.py"]


def test_objects_taken_from_a_package_count_for_the_module_that_defines_them():
    via_alias = modules_reached("from lib.core import hessian as H\n\nop = H.HessianOperator(model, x, y)\n")
    assert "lib.core.hessian.operator" in via_alias and "lib.core.hessian.solvers" not in via_alias
    by_name = modules_reached("from lib.core.hessian import top_eigenpairs\n")
    assert "lib.core.hessian.solvers" in by_name and "lib.core.hessian.operator" not in by_name
    assert modules_reached("from lib.core.hessian import solvers as S\nS.trace\n") >= {"lib.core.hessian.solvers"}
    assert modules_reached("import numpy as np\nnp.trace\n") == {"numpy"}
