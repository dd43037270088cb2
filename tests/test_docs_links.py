"""The README and docs/ hold together: every relative link lands on a file (and heading), the layout table is the tree."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").rglob("*.md")])

FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(page: Path) -> str:
    """The page without its code, where brackets and parentheses are not links."""
    return INLINE_CODE.sub("", FENCED_BLOCK.sub("", page.read_text()))


def anchors(page: Path) -> set[str]:
    """The heading anchors GitHub gives a page: lower case, punctuation dropped, spaces to hyphens."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCED_BLOCK.sub("", page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:: not this repository's
            continue
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(
                f"{target}: no {destination.relative_to(REPO_ROOT) if destination.is_relative_to(REPO_ROOT) else destination}"
            )
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading #{anchor} in {destination.relative_to(REPO_ROOT)}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(REPO_ROOT)) for page in PAGES])
def test_every_relative_link_lands_on_a_file_and_heading(page: Path):
    assert broken_links(page) == []


def layout_table() -> list[str]:
    """The first column of the README's layout table: each cell's backticked paths."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [path.rstrip("/") for row in rows for path in re.findall(r"`([^`]+)`", row.split("|")[1])]


def ignored(name: str) -> bool:
    patterns = [
        line.strip().strip("/")
        for line in (REPO_ROOT / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def test_readme_layout_table_names_every_top_level_folder_and_nothing_else():
    listed = layout_table()
    folders = sorted(
        entry.name
        for entry in REPO_ROOT.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and not ignored(entry.name)
    )
    assert [path for path in listed if not (REPO_ROOT / path).exists()] == [], "the table names paths that are gone"
    assert [folder for folder in folders if folder not in listed] == [], "top-level folders missing from the table"


USER_FACING = [
    "README.md",
    "docs/*.md",
    "inference/**/*.py",
    "roles/*/defaults/main.yml",
    "roles/*/meta/argument_specs.yml",
    "inventory/example/**/*.yml",
    "playbooks/*.yml",
]
SEED_AS_A_NAME = re.compile(r"\bthe seed\b(?!\s*=)|\bseed's\b|\bseed (?:notebook|formula)\b", re.IGNORECASE)


def test_user_facing_text_and_cli_help_never_call_the_reference_deployment_the_seed():
    """'The seed' meant the reference manual deployment to the project, not to a reader; random seeds stay."""
    files = sorted({path for pattern in USER_FACING for path in REPO_ROOT.glob(pattern)})
    found = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SEED_AS_A_NAME.search(line)
    ]
    assert found == []
