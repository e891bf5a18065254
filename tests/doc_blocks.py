"""The shell blocks of README.md and docs/*.md, for the tests that run them.

Every ```sh block carries a marker on the line before its fence:
    <!-- run: NAME -->      a test runs it: `block("NAME")` gives its text (tests/test_docs.py checks that some test
                            file asks for every NAME, so a renamed or new block cannot go unrun)
    <!-- check: REASON -->  it cannot run in a test (the test suite itself, a maintainer's own data); it is only
                            checked, as every block is: `bash -n`, each `dvc` command parsed by DVC's own argument
                            parser, each `ham` command resolved by click, each `make` target present
Keep `check` rare: a block that needs a server runs against the real local SeaweedFS, as tests/test_remotes.py does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHELL_FENCES = ("```sh", "```bash", "```shell", "```console")
MARKER = re.compile(r"<!--\s*(run|check):\s*(.*?)\s*-->", re.S)


@dataclass
class Block:
    file: Path
    line: int  # of the opening fence, 1-based
    kind: str  # "run", "check" or "" (unmarked)
    name: str  # the run NAME, or the check's reason
    text: str
    fence: str

    def where(self) -> str:
        return f"{self.file.relative_to(REPO_ROOT)}:{self.line}"


def documents() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def blocks(path: Path, fences: tuple[str, ...] = SHELL_FENCES) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    lines = text.splitlines(keepends=True)
    offset = 0
    starts = []
    for line in lines:
        starts.append(offset)
        offset += len(line)
    number = 0
    while number < len(lines):
        stripped = lines[number].strip()
        if stripped.startswith("```") and len(stripped) > 3:
            end = number + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            if stripped in fences:
                before = text[:starts[number]].rstrip()
                marker = MARKER.search(before[before.rfind("<!--"):]) if before.endswith("-->") else None
                kind, name = (marker.group(1), " ".join(marker.group(2).split())) if marker else ("", "")
                found.append(Block(path, number + 1, kind, name, "".join(lines[number + 1:end]), stripped))
            number = end + 1
        else:
            number += 1
    return found


def all_blocks(fences: tuple[str, ...] = SHELL_FENCES) -> list[Block]:
    return [block for path in documents() for block in blocks(path, fences)]


def block(name: str, fences: tuple[str, ...] = SHELL_FENCES) -> str:
    """The text of the block marked `<!-- run: NAME -->` (exactly one in README.md and docs/)."""
    (found,) = [b for b in all_blocks(fences) if b.kind == "run" and b.name == name] or [None]
    if found is None:
        raise KeyError(f"no block marked `<!-- run: {name} -->` in README.md or docs/*.md")
    return found.text
