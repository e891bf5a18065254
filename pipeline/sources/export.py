"""`export` sources: a folder of images plus a CSV export from a clinical database (the ViDIR route).

Options:
  index:   the CSV file, relative to the source root (default `index.csv`)
  columns: mapping from our field names (`file`, `lesion_key`, `diagnosis`, `dx`, ...) to the export's column
           names; fields not mapped are looked up under their own name and left empty where absent
  images:  folder holding the images, relative to the source root (default: the source root)
Every file under the images folder that no CSV row names is rejected, so nothing is silently dropped.
"""
from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath
from typing import Iterator, Union

from . import ITEM_FIELDS, RawItem, Reject

INDEX_SKIP = {".csv", ".xlsx", ".xls", ".md", ".txt", ".json", ".yaml", ".yml"}


def _safe_relative(name: str) -> str | None:
    """The export's file name as a path inside the source, or None if it points outside (absolute, '..')."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name or path.is_absolute() or ".." in path.parts:
        return None
    return str(path)


def read_export(root: Path, options: dict) -> Iterator[Union[RawItem, Reject]]:
    index_name = options.get("index", "index.csv")
    columns = dict(options.get("columns") or {})
    images_dir = root / options.get("images", ".")
    index_path = root / index_name
    if not index_path.is_file():
        yield Reject(index_name, "", f"export index {index_name} not found in {root}")
        return
    file_column = columns.get("file", "file")
    with open(index_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if file_column not in header:
            yield Reject(index_name, "", f"{index_name}: missing column '{file_column}' (the image file name)")
            return
        rows = list(reader)

    named: set[str] = set()
    for number, row in enumerate(rows, start=2):  # line numbers as a spreadsheet shows them
        member = f"row {number}"
        relative = _safe_relative((row.get(file_column) or "").strip())
        if relative is None:
            yield Reject(index_name, member, f"{index_name} {member}: bad file name {row.get(file_column)!r}")
            continue
        origin = str(PurePosixPath(options.get("images", ".")) / relative).removeprefix("./")
        named.add(origin)
        path = images_dir / relative
        if not path.is_file():
            yield Reject(origin, member, f"{index_name} {member}: image file {relative} not found")
            continue
        fields = {name: (row.get(columns.get(name, name)) or "").strip() for name in ITEM_FIELDS}
        yield RawItem(path.read_bytes(), origin, member, fields)

    for path in sorted(p for p in images_dir.rglob("*") if p.is_file()):
        origin = path.relative_to(root).as_posix()
        if origin in named or path == index_path or path.suffix.lower() in INDEX_SKIP or path.name.startswith("."):
            continue
        yield Reject(origin, "", f"{origin} is not listed in {index_name}")
