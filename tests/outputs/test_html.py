"""The static HTML page of a profile (``lib.outputs.html``, ``make report``): every ``<img>`` is a file that decodes
as a PNG, every registered table is there with the rows of the saved results, the notebook links resolve and each
executed notebook is rendered to HTML with its figures embedded; in a headless Chromium (when installed) every image
loads with a nonzero natural width."""
import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from lib import REPO_ROOT
from lib.infra.config import load_profile
from lib.infra.results import ResultStore
from lib.outputs import html, latex, registry
from lib.records.convergence import load_table

pytestmark = pytest.mark.usefixtures("one_thread")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.tables, self._rows, self._row, self._cell = [], [], [], None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "a" and not a.get("href", "#").startswith("#"):
            self.links.append(a["href"])
        elif tag == "table":
            self._rows = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self._rows.append(self._row)
        elif tag == "table":
            self.tables.append(self._rows)


def _parse(path):
    page = _Page()
    page.feed(path.read_text())
    return page


def _check_images(page, folder, names):
    assert len(page.images) == len(names) and page.images
    for src, name in zip(page.images, names):
        path = (folder / src).resolve()
        assert path.name == f"{name}.png" and path.is_file(), src
        with Image.open(path) as im:
            im.load()                                         # decodes the whole image
            assert im.format == "PNG" and im.width > 100 and im.height > 100


@pytest.fixture
def tiny_report(tiny_pipeline, tmp_path, monkeypatch):
    monkeypatch.setattr(latex, "FIGURES", tiny_pipeline.figures_dir.parent)
    monkeypatch.setattr(latex, "GENERATED", tiny_pipeline.generated_dir.parent)
    common, _ = tiny_pipeline.stage("figures")
    out = html.build(tiny_pipeline.store, common, tmp_path / "site" / "report.html")
    return out, tiny_pipeline


def test_report_of_the_tiny_pipeline_has_every_figure_and_table(tiny_report):
    out, pipe = tiny_report
    page = _parse(out)
    names = json.loads((pipe.generated_dir / "source.json").read_text())["figures"]
    _check_images(page, out.parent, names)
    assert len(page.tables) == len(registry.TABLES)
    sizes = page.tables[list(registry.TABLES).index("sample_size")]
    saved = load_table(pipe.store, "sample_size")
    assert len(sizes) == 1 + len(saved) and sizes[0][:5] == ["data", "model", "seed", "scale", "Δ"]
    for cells, r in zip(sizes[1:], saved):                   # the paper's cells, LaTeX turned into text
        assert cells[:3] == ["MNIST", "MLP-1", str(r["seed"])]
        assert cells[5] == str(r["K_fixed"]) and cells[10] == str(r["K_closed"])
    solvers = page.tables[list(registry.TABLES).index("solvers")]
    assert [c[2] for c in solvers[1:4]] == ["lanczos (ours)", "power (ours)", "PyHessian 0.1"]
    assert "Executed notebooks" in out.read_text() and page.links == []   # run in-process: no notebooks


@pytest.mark.parametrize("tex, text", [
    (r"\ensuremath{1.23\times 10^{5}}", "1.23×10<sup>5</sup>"), ("1{,}246", "1,246"),
    (r"$\sigma=0.3$ (gap)", "σ=0.3 (gap)"), ("12--40", "12–40"), (r"$\bar V_{s}/\bar V$", "V̄<sub>s</sub>/V̄"),
    (r"MC/$Q_k$", "MC/Q<sub>k</sub>"),
    (r"\% in 3 SE", "% in 3 SE"), (r"acc.\ $K$", "acc. K"), ("a<b", "a&lt;b")])
def test_latex_cells_become_html(tex, text):
    assert html.latex_cell(tex) == text


def test_missing_figures_are_an_error_naming_the_command(tiny_pipeline, tmp_path, monkeypatch):
    monkeypatch.setattr(latex, "FIGURES", tmp_path / "no_figures")
    monkeypatch.setattr(latex, "GENERATED", tiny_pipeline.generated_dir.parent)
    with pytest.raises(FileNotFoundError, match="make paper PROFILE=pipeline_test"):
        html.build(tiny_pipeline.store, tiny_pipeline.stage("figures")[0], tmp_path / "r.html")


def _png(width, height, colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _embedded_pngs(page: Path) -> list[bytes]:
    """The PNGs a rendered notebook page carries inline (``<img src="data:image/png;base64,...">``)."""
    return [base64.b64decode(b) for b in re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', page.read_text())]


def test_executed_notebooks_are_rendered_to_html_with_their_figures(tiny_pipeline, tmp_path, monkeypatch):
    monkeypatch.setattr(latex, "FIGURES", tiny_pipeline.figures_dir.parent)
    monkeypatch.setattr(latex, "GENERATED", tiny_pipeline.generated_dir.parent)
    books = tmp_path / "results" / "notebooks"
    books.mkdir(parents=True)
    figures = [_png(160, 120, "red"), _png(200, 100, "blue")]
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# A worked run"),
        nbformat.v4.new_code_cell("print(k)", outputs=[nbformat.v4.new_output("stream", text="K = 253\n")]),
        nbformat.v4.new_code_cell("plt.show()", outputs=[
            nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(f).decode(),
                                                         "text/plain": "<Figure>"}) for f in figures])])
    nbformat.write(nb, books / "01_train.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), books / "02_spectrum.ipynb")
    stale = tmp_path / "site" / "notebooks" / "09_gone.html"
    stale.parent.mkdir(parents=True)
    stale.write_text("a page of a notebook that no longer exists")
    out = html.build(tiny_pipeline.store, tiny_pipeline.stage("figures")[0], tmp_path / "site" / "report.html",
                     notebooks=books)
    page = _parse(out)
    assert page.links == ["notebooks/01_train.html", "../results/notebooks/01_train.ipynb",
                          "notebooks/02_spectrum.html", "../results/notebooks/02_spectrum.ipynb"]
    assert all((out.parent / href).is_file() for href in page.links) and not stale.exists()
    assert "01_train</a> (2 figures;" in out.read_text() and "02_spectrum</a> (0 figures;" in out.read_text()
    rendered = out.parent / "notebooks" / "01_train.html"
    assert _embedded_pngs(rendered) == figures                    # the notebook's own bytes, in order
    assert "K = 253" in rendered.read_text() and "A worked run" in rendered.read_text()
    assert _embedded_pngs(out.parent / "notebooks" / "02_spectrum.html") == []


SMOKE_SOURCE = latex.generated_dir("smoke") / "source.json"


@pytest.mark.skipif(not SMOKE_SOURCE.is_file() or not (REPO_ROOT / "results" / "smoke" / "notebooks").is_dir(),
                    reason="builds the page of the smoke profile from results/smoke/notebooks and paper/generated/"
                           "smoke, which `make notebooks-smoke` writes (make test runs it before pytest; a fresh "
                           "clone's make pytest has none); the same page of the tiny pipeline is checked by "
                           "test_report_of_the_tiny_pipeline_has_every_figure_and_table")
def test_report_of_the_smoke_results(tmp_path):
    common, _ = load_profile("smoke").stage("figures")
    out = html.build(ResultStore("smoke"), common, tmp_path / "smoke" / "report.html")
    page = _parse(out)
    _check_images(page, out.parent, json.loads(SMOKE_SOURCE.read_text())["figures"])
    executed = sorted((REPO_ROOT / "results" / "smoke" / "notebooks").glob("*.ipynb"))
    assert executed and [Path(href).name for href in page.links] == [
        name for p in executed for name in (f"{p.stem}.html", p.name)]          # the rendering, then the notebook
    assert all((out.parent / href).resolve().is_file() for href in page.links)
    for book, href in zip(executed, page.links[::2]):
        cells = json.loads(book.read_text())["cells"]
        shown = [base64.b64decode(o["data"]["image/png"]) for c in cells for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {})]
        assert _embedded_pngs(out.parent / href) == shown, book.name


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_every_image_loads_in_a_headless_browser(tiny_report):
    out, pipe = tiny_report
    probe = out.with_name("probe.html")
    probe.write_text(out.read_text().replace("</body>", (
        "<script>window.addEventListener('load', () => { const p = document.createElement('pre'); p.id = 'widths';"
        " p.textContent = JSON.stringify([...document.images].map(i => i.naturalWidth));"
        " document.body.appendChild(p); });</script></body>")))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "<pre id=\"widths\">" in dom, dom[-2000:]
    widths = json.loads(dom.split("<pre id=\"widths\">", 1)[1].split("</pre>", 1)[0])
    assert len(widths) == len(json.loads((pipe.generated_dir / "source.json").read_text())["figures"])
    assert all(w > 0 for w in widths), widths
