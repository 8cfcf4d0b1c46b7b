"""Every relative link in the project's Markdown files reaches a file that exists, and a link with an
anchor reaches a heading of that file (GitHub's anchors: lower case, punctuation dropped, spaces to
hyphens). Docs moved between files (docs/clock.md, docs/dispatch.md) must not leave links behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from file_modules import github_anchor

ROOT = Path(__file__).resolve().parents[2]
FENCED = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    return sorted(
        path
        for path in ROOT.rglob("*.md")
        if not any(part.startswith(".") or part == "node_modules" for part in path.relative_to(ROOT).parts)
    )


def anchors(path: Path) -> set[str]:
    text = FENCED.sub("", path.read_text())
    return {github_anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_the_anchor_rule_is_github_s() -> None:
    assert (
        github_anchor(" The schedulers (`scheduler.py`, `RTRL_SCHEDULER`)")
        == "the-schedulers-schedulerpy-rtrl_scheduler"
    )
    assert github_anchor(" a scheduler (when observations go to which replica)") == (
        "a-scheduler-when-observations-go-to-which-replica"
    )


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_a_heading(path: Path) -> None:
    broken = []
    for match in LINK.finditer(FENCED.sub("", path.read_text())):
        target = match.group(1)
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{path.relative_to(ROOT)} links to {broken}"
