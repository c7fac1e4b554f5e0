"""The project's documents stand in the repository, and what cites them points at something that exists.

Invariants checked here (no database, broker or network needed):
- No tracked file cites a document users of this repository do not have: the team's reference notes outside the
  repo (by file name or by their section/trap numbers). Facts live in ``docs/`` and are cited as
  ``docs/<file>.md#<anchor>``.
- Every ``docs/<file>.md#<anchor>`` cited anywhere (code, tests, bench, scripts, README, docs) names an existing
  file and one of its headings, with GitHub's anchor rules; same-page ``(#anchor)`` and relative
  ``(<file>.md#anchor)`` links inside ``docs/`` and the README too. Links without an anchor are not checked (some
  documents are written on other branches).
- ``docs/configuration.md`` holds the table ``scripts/config_table.py`` generates from ``config.py``.
- The README stays a front door: at most 200 lines, no build history.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()
SKIP_DIRS = {".git", ".venv", "var", "node_modules", "__pycache__"}
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".txt", ".html", ".cfg", ".ini", ".yaml", ".yml", ".json", ""}

# Outside documents by name, and the numbering schemes of those documents (spec sections, trap numbers, "upstream"
# followed by a section number). Written as pieces so this file does not match itself.
_FORBIDDEN = re.compile(
    "|".join([
        r"\.\." + "/shared", "/work" + "/shared", "shared" + "/reference",
        "infra" + r"[- ]notes", "field" + r"[- ]notes", "upstream" + r"[-_]spec", "upstream" + r"[-_]schema",
        r"\bspec\s+§?\d", r"\btraps?\s+\d", r"\bsections?\s+\d", r"\bupstream(?:\s+spec)?\s+\d+\.\d",
        r"\bREADME(?:\.md)?(?:\s+|\s*\()\"",  # a README section quoted by name: those sections moved into docs/
    ]),
    re.IGNORECASE,
)
_DOC_CITATION = re.compile(r"\bdocs/([A-Za-z0-9_./-]+?\.md)#([A-Za-z0-9_-]+)")
_RELATIVE_LINK = re.compile(r"\]\((?!https?:)([A-Za-z0-9_./-]*?\.md)?#([A-Za-z0-9_-]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def tracked_files() -> list[str]:
    """Repository files (git's list when available, else a walk that skips virtualenvs and run data)."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for base, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            files += [Path(base, n).relative_to(ROOT).as_posix() for n in names]
    return sorted(f for f in files if Path(f).suffix in TEXT_SUFFIXES and (ROOT / f).is_file())


def read(path: str) -> str:
    return (ROOT / path).read_text(encoding="utf-8", errors="replace")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Anchors of every heading outside fenced code blocks (repeated headings get ``-1``, ``-2``, ... as on GitHub)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_slug_follows_github_rules() -> None:
    assert slug("Tansu and Apache Kafka") == "tansu-and-apache-kafka"
    assert slug("UTF-8-safe error text") == "utf-8-safe-error-text"
    assert slug("Version v1 accepted") == "version-v1-accepted"
    assert slug("`active_schedule.triggered` (v1)") == "active_scheduletriggered-v1"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_no_tracked_file_cites_documents_outside_the_repo() -> None:
    files = tracked_files()
    assert "README.md" in files and any(f.startswith("smartflow_streams/") for f in files)
    hits = []
    for path in files:
        if path == THIS:
            continue
        for lineno, line in enumerate(read(path).splitlines(), 1):
            match = _FORBIDDEN.search(line)
            if match:
                hits.append(f"{path}:{lineno}: {match.group(0)!r} in {line.strip()[:100]}")
    assert not hits, "cite docs/<file>.md#<anchor> or state the fact inline:\n" + "\n".join(hits)


def test_the_forbidden_pattern_catches_each_form() -> None:
    # Built from pieces so that a repository-wide grep for these forms finds no hit in this file either.
    forms = ["see spec| 9.6", "trap| 19", "traps| 11 and 16", "upstream| 8.4", "Upstream spec| 2.3", "section| 11",
             "..|/shared/x", "infra|-notes 1.4", "field no|tes C.4", "upstream|-spec.md",
             'README| "Fault injection"', 'README.md (|"Configuration")']
    for form in forms:
        text = form.replace("|", "")
        assert _FORBIDDEN.search(text), text
    for text in ("docs/upstream.md#relay-loop", "upstream 40014", "Python 3.11.7", "step 3", "<section>"):
        assert not _FORBIDDEN.search(text), text


def test_every_cited_docs_anchor_exists() -> None:
    cited: dict[tuple[str, str], list[str]] = {}
    for path in tracked_files():
        text = read(path)
        for match in _DOC_CITATION.finditer(text):
            cited.setdefault((f"docs/{match.group(1)}", match.group(2)), []).append(path)
        if path.endswith(".md") and (path.startswith("docs/") or path == "README.md"):
            for match in _RELATIVE_LINK.finditer(text):
                target = (Path(path).parent / match.group(1)).as_posix() if match.group(1) else path
                cited.setdefault((os.path.normpath(target), match.group(2)), []).append(path)
    code_citations = [key for key, where in cited.items() if any(w.endswith(".py") for w in where)]
    assert len(code_citations) >= 20, "code should cite docs/ sections"  # guards against a pattern that finds none
    missing = []
    cache: dict[str, set[str]] = {}
    for (doc, anchor), where in sorted(cited.items()):
        if doc not in cache:
            cache[doc] = anchors(read(doc)) if (ROOT / doc).is_file() else set()
        if anchor not in cache[doc]:
            state = "no such heading" if (ROOT / doc).is_file() else "no such file"
            missing.append(f"{doc}#{anchor} ({state}), cited in {', '.join(sorted(set(where)))}")
    assert not missing, "\n".join(missing)


def test_configuration_table_is_generated_from_config() -> None:
    result = subprocess.run([sys.executable, "scripts/config_table.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout
    assert "`SMARTFLOW_RELAY__BATCH_SIZE`" in read("docs/configuration.md")


@pytest.mark.parametrize("pattern", [r"\bsessions? \d", r"earlier sessions?", r"what changed", r"before 20\d\d-"])
def test_readme_is_a_front_door(pattern: str) -> None:
    text = read("README.md")
    assert len(text.splitlines()) <= 200
    assert "./scripts/run.sh --demo" in text and "./scripts/test.sh" in text
    assert not re.search(pattern, text, re.IGNORECASE), pattern
