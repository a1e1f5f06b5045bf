"""The project's documentation stands alone: no document, docstring or comment refers to a file
outside the repository, and every relative link of a Markdown file reaches a file in it. The
site (mkdocs.yml) builds strictly, a broken link, anchor or API reference fails that build, and
the Python sessions of its pages print what the pages show."""

from __future__ import annotations

import doctest
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# a contract kept outside the repository, by its name or by its section sign
OUTSIDE = re.compile(r"SPEC\.md|STYLE\.md|\.\./shared|SPEC §|SPEC section|§\s*\d")


def tracked(*patterns: str) -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an unpacked sdist): the files are not listed")
    return [ROOT / p for p in out.split()]


def test_no_text_refers_to_a_file_outside_the_repository():
    hits = [
        f"{path.relative_to(ROOT)}:{k}: {line.strip()}"
        for path in tracked("*.md", "*.py", "*.toml", "Makefile", "*.txt")
        for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line) and path.name != "test_docs.py"
    ]
    assert not hits, "\n".join(hits)


# a Sphinx role (``:func:`x```): the site renders docstrings as Markdown, where it shows literally
SPHINX_ROLE = re.compile(r":(func|mod|class|meth|data|attr|obj|math|exc|ref):`")


def test_docstrings_use_no_sphinx_roles_the_site_would_show_literally():
    hits = [
        f"{path.relative_to(ROOT)}:{k}: {line.strip()}"
        for path in tracked("src/*.py")
        for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SPHINX_ROLE.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_markdown_links_reach_files_of_the_repository():
    broken = []
    for page in tracked("*.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address, an anchor in the same page
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists() or ROOT not in path.parents:
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "\n".join(broken)


# ```pycon blocks of the site's pages: Python sessions whose output must be exactly what the
# page shows (the blocks of one page share their names, as one session)
PYCON = re.compile(r"^```pycon\n(.*?)^```", re.S | re.M)
FLAGS = 0  # exactly what the page shows: no flag relaxes the comparison


def pages_with_sessions() -> list[Path]:
    return [p for p in sorted((ROOT / "docs").rglob("*.md")) if PYCON.search(p.read_text("utf-8"))]


def test_the_backprop_guide_has_sessions_to_run():
    assert ROOT / "docs" / "guide" / "backprop.md" in pages_with_sessions()


@pytest.mark.parametrize("page", pages_with_sessions(), ids=lambda p: p.name)
def test_doc_page_sessions_print_what_the_page_shows(page):
    text = page.read_text(encoding="utf-8")
    examples = []
    for block in PYCON.finditer(text):
        for example in doctest.DocTestParser().get_examples(block.group(1)):
            example.lineno += text.count("\n", 0, block.start(1))  # the line in the page
            examples.append(example)
    test = doctest.DocTest(examples, {}, page.name, str(page), 0, None)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out: list[str] = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)


def build_site(tmp_path: Path, extra: str = "") -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of a copy of the site (plus `extra` at the end of a page) into
    tmp_path; mkdocs.yml reads `docs/` and the API from `src/` next to it."""
    pytest.importorskip("mkdocs", reason="the docs requirements (requirements/docs.txt)")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "src").symlink_to(ROOT / "src")
    with (tmp_path / "docs" / "levels.md").open("a", encoding="utf-8") as page:
        page.write(extra)
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)


def test_site_builds_strictly(tmp_path):
    result = build_site(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "guide" / "backprop" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "softmaxce" / "index.html").read_text(encoding="utf-8")
    assert 'id="softmaxce.softmax_cross_entropy_with_grad"' in api  # rendered from docstrings


def test_strict_site_build_fails_on_a_broken_link_anchor_or_reference(tmp_path):
    broken = {
        "no-such-anchor": "[x](internals.md#no-such-anchor)",
        "no_such_page.md": "[x](no_such_page.md)",
        "softmaxce.no_such_name": "[x][softmaxce.no_such_name]",
    }
    result = build_site(tmp_path, "".join(f"\nSee {link}.\n" for link in broken.values()))
    assert result.returncode != 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    for target in broken:
        assert any(target in line for line in warnings), result.stderr


# The site's pages that repeat sections of the README (which must read on its own, on PyPI and
# GitHub): every paragraph of the section is on the page, links aside (their targets differ).
README_SECTIONS = {
    "index.md": ["What `make demo` shows", "Tests"],
    "levels.md": ["Three levels", "Backends"],
    "semantics.md": ["The loss", "Semantics where frameworks disagree"],
    "compat/index.md": ["Porting from another framework: `softmaxce.compat`"],
    "benchmarks.md": ["Speed", "Fused linear + cross-entropy"],
}


def paragraphs(markdown: str) -> list[str]:
    unlinked = re.sub(r"\[([^\]]*)\]\([^)]*\)", "LINK", markdown)
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", unlinked) if p.strip()]


def readme_section(title: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert found, f"README.md has no section {title!r}"
    return found.group(1)


@pytest.mark.parametrize("page", sorted(README_SECTIONS))
def test_site_page_says_what_the_readme_says(page):
    text = set(paragraphs((ROOT / "docs" / page).read_text(encoding="utf-8")))
    missing = [
        f"README.md, {title!r}: {paragraph[:100]}"
        for title in README_SECTIONS[page]
        for paragraph in paragraphs(readme_section(title))
        if paragraph not in text
    ]
    assert not missing, "\n".join(missing)
