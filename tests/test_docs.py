"""The documents keep their promises about themselves: every link resolves, and README stays a
guide one reads (the reference lives in docs/, dated results in benchmarks/LOG.md)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def markdown_files() -> list[Path]:
    """The Markdown files git tracks (or would: untracked, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [REPO / name for name in listed if (REPO / name).is_file()]


DOCUMENTS = markdown_files()
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", markdown), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def links(path: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(document: Path):
    broken = []
    for target in links(document):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        resolved = (document.parent / file).resolve() if file else document
        if not resolved.exists() or REPO not in resolved.parents:
            broken.append(target)
        elif anchor and resolved.suffix == ".md":
            if anchor not in anchors(resolved.read_text(encoding="utf-8")):
                broken.append(target)
    assert not broken, f"{document.name}: links that resolve to nothing: {broken}"


def test_the_readme_is_among_them():
    assert REPO / "README.md" in DOCUMENTS


def test_the_guides_stay_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 450
    assert len((REPO / "benchmarks" / "README.md").read_text().splitlines()) <= 200
