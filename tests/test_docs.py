"""The README and docs/ as a clone has them: every relative link resolves, every setting is listed.

A link to a file a clone lacks (the README once linked ``../shared/SPEC.md``)
or to a page that was renamed fails here, as does a ``GATEWAY_*`` setting
the code reads but the README's settings table does not list.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.servers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
SETTING = re.compile(r"\bGATEWAY_[A-Z0-9_]+\b")


def links(page: Path) -> list[str]:
    """The targets of the page's Markdown links, outside code blocks."""
    return LINK.findall(FENCE.sub("", page.read_text()))


def relative_targets(page: Path) -> list[tuple[str, Path]]:
    """Each relative link of ``page`` and the file it names (any ``#anchor`` dropped)."""
    found = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto:; an anchor on the same page
        path = target.split("#", 1)[0]
        found.append((target, (page.parent / path).resolve()))
    return found


def anchors(page: Path) -> set[str]:
    """The ids GitHub gives the page's headings: lowercase, punctuation dropped, spaces as -."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def settings_table(readme: str) -> set[str]:
    """The names in the first column of the README's settings table."""
    section = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| `([A-Z0-9_]+)` \|", section, re.MULTILINE)}


def test_every_relative_link_names_a_file_in_the_repository():
    missing = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in PAGES
        for target, path in relative_targets(page)
        if not path.exists()
    ]
    assert missing == []


def test_every_anchor_names_a_heading_of_its_page():
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in PAGES
        for target, path in relative_targets(page)
        if "#" in target
        and path.suffix == ".md"
        and path.exists()
        and target.split("#", 1)[1] not in anchors(path)
    ]
    assert broken == []


def test_the_pages_link_to_each_other_and_nothing_outside_the_clone():
    """Every page of docs/ is reached from the README; no link leaves the repository."""
    from_readme = {path for _, path in relative_targets(ROOT / "README.md")}
    assert [p.name for p in PAGES[1:] if p.resolve() not in from_readme] == []
    outside = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in PAGES
        for target, path in relative_targets(page)
        if not path.is_relative_to(ROOT.resolve())
    ]
    assert outside == []


def test_every_gateway_setting_the_code_reads_is_in_the_readme_table():
    in_code = {
        name
        for source in (ROOT / "gateway").rglob("*")
        if source.suffix in (".py", ".lua")
        for name in SETTING.findall(source.read_text())
    }
    listed = settings_table((ROOT / "README.md").read_text())
    assert len(in_code) > 20  # the search found the settings at all
    assert sorted(in_code - listed) == []
    assert "REDIS_URL" in listed
