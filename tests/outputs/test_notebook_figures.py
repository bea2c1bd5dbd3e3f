"""Executed notebooks embed every figure they show: each ``plt.show()`` a cell runs leaves an ``image/png`` output.

The expected count of a cell is read from its source: each ``plt.show()`` call times the length of every loop around
it (a literal tuple or list, or an expression of the notebook's parameters such as ``common.datasets``); a branch
whose condition is a false expression of the parameters counts nothing. A tiny notebook run through the runner with
``MPLBACKEND=Agg`` in the caller's environment (as CI and these tests set it) shows that the kernels draw inline
and that ``plotting.save`` still writes the PDF and PNG files; the same notebook with an Agg kernel embeds nothing,
so the count fails when figures are missing. The executed smoke notebooks of ``make test`` (``make notebooks-smoke``)
are checked when they exist.
"""
import ast
import base64
import io
import json
import os
from types import SimpleNamespace

import jupytext
import pytest
from PIL import Image

from lib import REPO_ROOT
from lib.infra import runner

SMOKE_NOTEBOOKS = REPO_ROOT / "results" / "smoke" / "notebooks"


def _is_show(node) -> bool:
    """``plt.show()``."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "show"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "plt")


def _evaluate(node, namespace):
    """The value of ``node`` with the notebook's parameters in ``namespace``; None when it uses anything else."""
    try:
        return eval(compile(ast.Expression(node), "<cell>", "eval"), {"__builtins__": {"len": len, "range": range}},
                    dict(namespace))
    except Exception:
        return None


def _loop_length(node, namespace) -> int:
    """Iterations of a ``for`` loop: a literal tuple or list, else its iterable evaluated on the parameters; 1 when
    neither is known (a loop that shows a figure is taken to show it at least once)."""
    if isinstance(node.iter, (ast.Tuple, ast.List)):
        return len(node.iter.elts)
    value = _evaluate(node.iter, namespace)
    try:
        return len(value)
    except TypeError:
        return 1


def shown_figures(source: str, namespace: dict | None = None) -> int:
    """How many figures a cell's ``plt.show()`` calls show when it runs with ``namespace``'s parameters."""
    namespace = namespace or {}

    def count(nodes) -> int:
        total = 0
        for node in nodes:
            if isinstance(node, ast.For):
                total += _loop_length(node, namespace) * count(node.body)
            elif isinstance(node, ast.If):
                test = _evaluate(node.test, namespace)
                branches = ([node.body] if test else [node.orelse]) if test is not None else [node.body, node.orelse]
                total += min(count(b) for b in branches)   # an unknown condition: the branch that shows fewer
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue                                     # a definition shows nothing until it is called
            elif isinstance(node, (ast.With, ast.Try, ast.While)):   # not an except clause: an error path
                total += count([*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])])
            else:
                total += sum(_is_show(n) for n in ast.walk(node))
        return total

    return count(ast.parse(source).body)


def image_outputs(cell: dict) -> list[bytes]:
    """The decoded ``image/png`` outputs of an executed code cell."""
    return [base64.b64decode(out["data"]["image/png"]) for out in cell.get("outputs", [])
            if "image/png" in out.get("data", {})]


def parameters(nb: dict) -> dict:
    """The notebook's parameters as it ran: its ``parameters`` cell, then papermill's ``injected-parameters``."""
    values = {}
    for tag in ("parameters", "injected-parameters"):
        for cell in nb["cells"]:
            if tag in cell.get("metadata", {}).get("tags", []):
                exec("".join(cell["source"]), {}, values)      # plain assignments of literals
    return values


def figure_deficits(nb: dict) -> list[str]:
    """One line per code cell with fewer embedded images than the figures its source shows (empty: none missing)."""
    params = parameters(nb)
    namespace = {**params, "common": SimpleNamespace(**params), "section": SimpleNamespace(**params)}
    out = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        expected, found = shown_figures("".join(cell["source"]), namespace), len(image_outputs(cell))
        if found < expected:
            out.append(f"cell {i}: {found} image(s), its source shows {expected}")
    return out


def _check_png(data: bytes, min_side: int = 100):
    with Image.open(io.BytesIO(data)) as im:
        im.load()                                                # decodes the whole image
        assert im.format == "PNG" and im.width >= min_side and im.height >= min_side, im.size


# -------------------------------------------------------------------------------------------- the counter
@pytest.mark.parametrize("source, namespace, expected", [
    ("fig = f()\nplt.show()", {}, 1),
    ("fig = f(store)\nfig.savefig('x.png')", {}, 0),
    ("for make in (a, b, c, d):\n    make(store)\n    plt.show()\nfor make in [e, g]:\n    make()\n    plt.show()",
     {}, 6),
    ("for ds in common.datasets:\n    for m in common.models:\n        f(ds, m)\n        plt.show()",
     {"common": SimpleNamespace(datasets=["mnist", "fashion_mnist"], models=["mlp1", "mlp2", "cnn"])}, 6),
    ("for x in unknown_thing():\n    plt.show()", {}, 1),
    ("if 'cnn' in common.models:\n    plt.show()\nelse:\n    print(1)",
     {"common": SimpleNamespace(models=["mlp2"])}, 0),
    ("if 'cnn' in common.models:\n    plt.show()\n    plt.show()", {"common": SimpleNamespace(models=["cnn"])}, 2),
    ("def draw():\n    plt.show()\nwith style():\n    plt.show()", {}, 1),
])
def test_shown_figures_counts_each_show_times_its_loops(source, namespace, expected):
    assert shown_figures(source, namespace) == expected


# -------------------------------------------------------------------------------------------- a tiny run
TINY = '''# %% tags=["parameters"]
profile = "x"
datasets = ["mnist"]

# %%
import matplotlib
import matplotlib.pyplot as plt

from lib.outputs import plotting

print("backend", matplotlib.get_backend())

# %%
with plotting.style():
    fig, axes = plotting.figure()
    axes[0, 0].plot([0, 1, 2], [2, 0, 1])
    paths = plotting.save(fig, STEM)
print([p.suffix for p in paths])

# %%
for width in (1.0, 3.0):
    with plotting.style():
        fig, axes = plotting.figure()
        axes[0, 0].plot([0, 1], [0, width], lw=width)
    plt.show()
'''


def _tiny_run(notebook_dir, tmp_path):
    (notebook_dir / "01_train.py").write_text(TINY.replace("STEM", repr(str(tmp_path / "figs" / "line"))))
    assert runner.main(["--profile", "smoke"]) == 0
    return json.loads((tmp_path / "results" / "smoke" / "notebooks" / "01_train.ipynb").read_text())


@pytest.fixture
def notebook_dir(notebook_dir, monkeypatch):
    """conftest's runner folders, with the backend CI and tests/conftest.py set."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return notebook_dir


def test_runner_kernels_embed_each_shown_figure_and_still_write_the_files(notebook_dir, tmp_path):
    nb = _tiny_run(notebook_dir, tmp_path)
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "injected-parameters" not in c["metadata"].get(
        "tags", [])]
    printed = "".join("".join(o.get("text", "")) for o in code[1]["outputs"])
    assert "backend module://matplotlib_inline.backend_inline" in printed, printed
    assert image_outputs(code[2]) == []                          # saved and closed: a file, not a display
    with Image.open(tmp_path / "figs" / "line.png") as im:
        im.load()
        assert im.format == "PNG" and im.width > 100
    assert (tmp_path / "figs" / "line.pdf").read_bytes().startswith(b"%PDF-")
    shown = image_outputs(code[3])
    assert len(shown) == 2 == shown_figures("".join(code[3]["source"])), len(shown)
    for data in shown:
        _check_png(data)
    assert shown[0] != shown[1]                                  # two different figures, not one twice
    assert figure_deficits(nb) == []
    assert os.environ["MPLBACKEND"] == "Agg"                     # the caller's environment is restored


def test_an_agg_kernel_embeds_nothing_and_the_count_says_so(notebook_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "KERNEL_ENV", {"MPLBACKEND": "Agg"})   # the global switch this project removed
    nb = _tiny_run(notebook_dir, tmp_path)
    assert sum(len(image_outputs(c)) for c in nb["cells"] if c["cell_type"] == "code") == 0
    deficits = figure_deficits(nb)
    assert len(deficits) == 1 and deficits[0].endswith("0 image(s), its source shows 2"), deficits


# -------------------------------------------------------------------------------------------- the smoke notebooks
@pytest.mark.parametrize("stem", sorted(p.stem for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.py")))
def test_executed_smoke_notebook_embeds_every_figure_it_shows(stem):
    path = SMOKE_NOTEBOOKS / f"{stem}.ipynb"
    if not path.is_file():
        pytest.skip(f"{path.relative_to(REPO_ROOT)} does not exist: the smoke run (make notebooks-smoke, a step of "
                    "make test) has not run here")
    nb = json.loads(path.read_text())
    source = jupytext.read(REPO_ROOT / "notebooks" / f"{stem}.py")
    shows = sum(shown_figures(c.source) for c in source.cells if c.cell_type == "code")
    executed_shows = sum(shown_figures("".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code")
    assert executed_shows == shows, (f"{path.name} was executed from another version of notebooks/{stem}.py: "
                                     f"rerun make stage STAGE={stem} PROFILE=smoke")
    assert figure_deficits(nb) == [], f"{path.name}: figures shown but not embedded"
    for cell in nb["cells"]:
        for data in image_outputs(cell):
            _check_png(data)
