"""MkDocs hook: the benchmark tables of docs/benchmarks.md, rendered from bench/results.json at build time.

A line `<!-- bench: PREFIX [PREFIX ...] -->` in a page becomes the table (`benchmarks.results.table`: figure, value,
target, verdict, note) of every figure whose name starts with one of the prefixes; `<!-- bench: targets -->` the
figures that have a target. Nothing is pasted by hand, so the page is as current as the committed results file.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MARKER = re.compile(r"^<!--[ \t]*bench:[ \t]*(.*?)[ \t]*-->[ \t]*$", re.M)  # not across lines: the blank line after stays


def _results_module(root: Path):
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import results

    return results


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- bench:" not in markdown:
        return markdown
    root = Path(config["config_file_path"]).resolve().parent
    results = _results_module(root)
    figures = json.loads((root / "bench" / "results.json").read_text(encoding="utf-8"))

    def render(match: re.Match) -> str:
        prefixes = match.group(1).split()
        if prefixes == ["targets"]:
            names = [name for name in results.TARGETS if name in figures]
        else:
            names = sorted(name for name in figures if name.startswith(tuple(prefixes)))
        if not names:
            raise ValueError(f"{page.file.src_path}: no figure in bench/results.json starts with {prefixes}")
        return results.table(figures, names)

    return MARKER.sub(render, markdown)
