"""The documentation as tests read it: README.md and docs/*.md, their fenced blocks, the
section of each command and their relative links."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
README_PATH = REPO / "README.md"
DOC_PATHS = [README_PATH, *sorted((REPO / "docs").glob("*.md"))]
LINKED_PATHS = [*DOC_PATHS, REPO / "CHANGELOG.md"]

README = README_PATH.read_text(encoding="utf-8")
DOCUMENTATION = "\n".join(path.read_text(encoding="utf-8") for path in DOC_PATHS)

HEADING = re.compile(r"^(#+) ")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def fenced_blocks(language: str, text: str = DOCUMENTATION) -> list[str]:
    """The bodies of the text's fenced blocks of one language (`bash`, `text`; `""` for none)."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.M)


def headings(text: str) -> list[tuple[int, int]]:
    """(line index, level) of each Markdown heading outside fenced blocks."""
    found, fenced = [], False
    for index, line in enumerate(text.split("\n")):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            found.append((index, len(match.group(1))))
    return found


def section(title: str, text: str = DOCUMENTATION) -> str:
    """The section whose heading starts with `ckpttool TITLE`, up to the next heading of its
    level or above; subsections included."""
    lines = text.split("\n")
    marks = headings(text)
    for number, (start, level) in enumerate(marks):
        if lines[start].lstrip("#").strip().startswith(f"`ckpttool {title}"):
            end = next((i for i, lv in marks[number + 1 :] if lv <= level), len(lines))
            return "\n".join(lines[start:end])
    raise LookupError(f"no section about `ckpttool {title}` in the documentation")


def link_targets(path: Path) -> list[str]:
    """Where a Markdown file's links go, URLs left out; fenced blocks and inline code are
    not read for links."""
    text = path.read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.M)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return [t for t in LINK.findall(prose) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def relative_links(path: Path) -> list[str]:
    """The files a Markdown file links to, as written (anchors dropped, in-page links left out)."""
    return [target for target in (t.split("#", 1)[0] for t in link_targets(path)) if target]


def anchored_links(path: Path) -> list[tuple[Path, str]]:
    """(file, anchor) of each link with an anchor; an in-page link's file is `path` itself."""
    found = []
    for target in link_targets(path):
        file, _, anchor = target.partition("#")
        if anchor:
            found.append(((path.parent / file).resolve() if file else path, anchor))
    return found


def anchors(path: Path) -> set[str]:
    """The anchors a Markdown renderer gives the file's headings, as GitHub makes them."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    titles = [lines[index].lstrip("#").strip().lower() for index, _ in headings(text)]
    return {re.sub(r"[^\w\- ]", "", title).replace(" ", "-") for title in titles}
