"""The README is what a newcomer reads first: its `make help` block is the real output, its first screen has the
sentence, the figure, prerequisites, quick start and results, every link resolves inside the repository, nothing
tracked points outside it, and the licence and citation files are complete."""
import re
import subprocess

import pytest
import yaml

from lib import REPO_ROOT

README = REPO_ROOT / "README.md"
HELP_MARKER = "<!-- make help"


def _tracked() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [line for line in out.stdout.splitlines() if (REPO_ROOT / line).is_file()]


def test_make_help_block_is_the_real_output():
    text = README.read_text()
    assert HELP_MARKER in text, "README lost its make help block"
    block = re.search(r"```text\n(.*?)\n```", text[text.index(HELP_MARKER):], re.S).group(1)
    real = subprocess.run(["make", "--no-print-directory", "-s", "help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True).stdout.rstrip("\n")
    assert block == real, "README's make help block differs from `make help`: paste the real output"
    assert "$(" not in real, "a help line shows an unexpanded make variable"


def test_first_screen_sentence_figure_prerequisites_quick_start_results():
    text = README.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# ")
    image = re.search(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert image and (REPO_ROOT / image.group(1)).is_file(), "the headline figure is missing"
    assert image.start() < text.index("## Prerequisites") < text.index("## Quick start") < text.index("## Results")
    quick = text[text.index("## Quick start"):text.index("## Results")]
    assert quick.index("make reproduce PROFILE=smoke") < quick.index("make test"), "smoke first"
    assert not re.search(r"\b(FRESH|WARM)_SMOKE\b", text), "a measured time was left as a placeholder"
    assert "| K(1e-3) |" in text


@pytest.mark.parametrize("page", ["README.md", *sorted(p.relative_to(REPO_ROOT).as_posix()
                                                       for p in (REPO_ROOT / "docs").glob("*.md"))])
def test_links_resolve_inside_the_repository(page):
    path = REPO_ROOT / page
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+://|mailto:|#", target):
            continue
        file = (path.parent / target.split("#", 1)[0]).resolve()
        assert file.exists(), f"{page} links to {target}, which does not exist"
        assert REPO_ROOT.resolve() in file.parents or file == REPO_ROOT.resolve(), f"{page}: {target} is outside"


def test_nothing_tracked_points_outside_the_repository():
    outside = re.compile("|".join([r"\.\./shared", "SCIENCE" + r"(\.md|\s+\d)", r"\bshared/seeds"]))
    hits = []
    for rel in _tracked():
        if rel.endswith((".png", ".pdf", ".gz", ".pt")):
            continue
        try:
            text = (REPO_ROOT / rel).read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{rel}:{n}" for n, line in enumerate(text.splitlines(), 1) if outside.search(line)]
    assert not hits, f"references to files outside the repository (use docs/specification.md): {hits}"


def test_licence_and_citation():
    licence = (REPO_ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "Copyright (c) 2026 the landscape-hessian authors" in licence
    cff = yaml.safe_load((REPO_ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["version"] == "0.1.0" and str(cff["date-released"]) == "2026-12-01"
    assert cff["authors"] == [{"name": "The landscape-hessian authors"}] and cff["title"] and cff["message"]
    assert "repository-code" not in cff
    titles = {r["title"] for r in cff["references"]}
    assert titles == {"Neural Networks Loss Landscape Convergence in Hessian Low-Dimensional Space",
                      "Unraveling the Hessian: A Key to Smooth Convergence in Loss Function Landscapes"}
    years = {r["title"].split()[0]: r["year"] for r in cff["references"]}
    assert years == {"Neural": 2025, "Unraveling": 2024}
