"""`export` sources: a folder of images plus an index exported from a clinical database (the ViDIR route).

Options:
  index:   the index file, relative to the source root (default `index.csv`): a CSV file, or an Excel workbook
           (`.xlsx`) whose first row holds the column names; null: no index, every image file under the images
           folder is an item whose lesion_key is its folder relative to the images folder (a collection or
           condition; empty at the top), as for a folder of labelled material (`role: training`)
  sheet:   for a workbook, the sheet to read (default: the first sheet)
  columns: mapping from our field names (`file`, `lesion_key`, `diagnosis`, `dx`, ...) to the export's column
           names; fields not mapped are looked up under their own name and left empty where absent; columns
           not used are ignored
  images:  folder holding the images, relative to the source root (default: the source root)
  image_type: dsc / macro / clinic, the type of every image of the source (every kind takes it)

Workbook cells are read as strings the same way every time: text stripped; numbers as floats, the way the
release CSV writes ages (`45.0`, `47.5`; Excel stores every number as a float, so a cell showing 45 also reads
`45.0`: keep IDs in text cells); dates as `YYYY-MM-DD` (a time of day is dropped); TRUE/FALSE; empty cells as
empty strings. Formulas give their cached values.

Every file under the images folder that no index row names is rejected, so nothing is silently dropped. An index
that cannot be used (not found, unreadable, no such sheet, the `file` column or a column named in `columns`
missing) is rejected with the reason naming the file, sheet and column, and so is every image file, since none
can be matched with its row.
"""
from __future__ import annotations

import csv
import datetime
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Union

from ..vocabulary import IMAGE_SUFFIXES

from . import (ITEM_FIELDS, BadTable, RawItem, Reject, SourceOptions, Unit, file_unit, link_outside, mapping, option,
               read_sheet, text)

INDEX_SKIP = {".csv", ".xlsx", ".xls", ".md", ".txt", ".json", ".yaml", ".yml"}
COLUMN_KEYS = ("file", *ITEM_FIELDS)  # what `columns` may map


@dataclass(frozen=True)
class ExportOptions(SourceOptions):
    KIND = "export"
    index: str | None = option("index.csv", lambda value: None if value is None else text()(value))
    sheet: str | None = option(None, text(nullable=True))
    columns: dict = option(check=mapping(COLUMN_KEYS), factory=dict)
    images: str = option(".", text())


class UnusableIndex(Exception):
    pass


def _safe_relative(name: str) -> str | None:
    """The export's file name as a path inside the source, or None if it points outside (absolute, '..')."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name or path.is_absolute() or ".." in path.parts or (len(name) >= 2 and name[1] == ":"):
        return None
    return str(path)


def cell_text(value) -> str:
    """One spreadsheet cell as the string a CSV export would hold."""
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return value.date().isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return str(float(value))  # Excel holds every number as a float: 45 and 45.0 -> "45.0", 45.5 -> "45.5"
    return str(value).strip()


def read_csv_index(path: Path, name: str) -> tuple[str, list[str], list[tuple[str, dict]]]:
    """(label for reasons, header, [(member, row)]) of a CSV index."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [column.strip() for column in next(reader, [])]
            rows = [(f"row {number}", dict(zip(header, values)))
                    for number, values in enumerate(reader, start=2) if any(v.strip() for v in values)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UnusableIndex(f"{name}: unreadable CSV ({error})") from None
    return name, header, rows


def read_xlsx_index(path: Path, name: str, sheet: str | None) -> tuple[str, list[str], list[tuple[str, dict]]]:
    """(label for reasons, header, [(member, row)]) of one sheet of a workbook; row numbers as Excel shows them."""
    try:
        title, header_cells, lines = read_sheet(path, name, sheet)
    except BadTable as error:
        raise UnusableIndex(str(error)) from None
    header = [cell_text(value) for value in header_cells]
    rows = []
    for number, values in lines:
        texts = [cell_text(value) for value in values]
        if any(texts):
            rows.append((f"{title} row {number}", dict(zip(header, texts))))
    return f"{name} sheet {title!r}", header, rows


def read_index(root: Path, name: str, options: ExportOptions) -> tuple[str, list[tuple[str, dict]]]:
    """The index's label and rows; raise UnusableIndex if it is missing, unreadable or lacks a needed column."""
    path = root / name
    if not path.is_file():
        raise UnusableIndex(f"export index {name} not found in {root}")
    if path.suffix.lower() == ".xlsx":
        label, header, rows = read_xlsx_index(path, name, options.sheet)
    else:
        label, header, rows = read_csv_index(path, name)
    columns = options.columns
    file_column = columns.get("file", "file")
    if file_column not in header:
        raise UnusableIndex(f"{label}: missing column '{file_column}' (the image file name)")
    for field_name, column in columns.items():
        if column not in header:
            raise UnusableIndex(f"{label}: missing column '{column}' (mapped to {field_name})")
    return label, rows


def read_export(root: Path, options: ExportOptions | dict) -> Iterator[Union[RawItem, Reject, Unit]]:
    options = ExportOptions.of(options)
    index_name = options.index
    columns = options.columns
    images_dir = root / options.images
    if index_name is None:
        yield from _read_unindexed(root, images_dir, options)
        return
    index_path = root / index_name
    file_column = columns.get("file", "file")
    named: set[str] = set()
    try:
        label, rows = read_index(root, index_name, options)
    except UnusableIndex as problem:
        yield Reject(index_name, "", str(problem))
        rows, unlisted = [], f"cannot be matched with an index row: {problem}"
    else:
        unlisted = f"is not listed in {label}"

    for member, row in rows:
        relative = _safe_relative((row.get(file_column) or "").strip())
        if relative is None:
            yield Reject(index_name, member, f"{label} {member}: bad file name {row.get(file_column)!r}")
            continue
        origin = str(PurePosixPath(options.images) / relative).removeprefix("./")
        named.add(origin)
        path = images_dir / relative
        if not path.is_file():  # a link that loops or leaves the source says so rather than "not found"
            yield Reject(origin, member, link_outside(root, origin) or f"{label} {member}: image file {relative} "
                                                                       f"not found")
            continue
        fields = {name: (row.get(columns.get(name, name)) or "").strip() for name in ITEM_FIELDS}
        yield file_unit(path, origin, member, fields, f"{label} {member}: image file {relative} cannot be read")

    for path in sorted(p for p in images_dir.rglob("*") if p.is_file()):
        origin = path.relative_to(root).as_posix()
        if origin in named or path == index_path:
            continue
        if path.name.startswith("."):  # a hidden file no row names (an image saved as .x.jpg, .DS_Store): ledgered
            yield Reject(origin, "", f"{origin}: hidden file, {unlisted.removeprefix('is ')}; not read")
            continue
        if path.suffix.lower() in INDEX_SKIP:
            continue
        yield Reject(origin, "", f"{origin} {unlisted}")


def _read_unindexed(root: Path, images_dir: Path, options: ExportOptions) -> Iterator[Union[RawItem, Reject, Unit]]:
    """Every file under the images folder: an image by its suffix is an item (lesion_key: its folder), any other
    file is rejected with its reason, so nothing is silently dropped."""
    for path in sorted(p for p in images_dir.rglob("*") if p.is_file()):
        origin = path.relative_to(root).as_posix()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            yield Reject(origin, "", f"{origin}: not an image file by its suffix (no index names the source's files)")
            continue
        folder = path.parent.relative_to(images_dir).as_posix()
        fields = {name: "" for name in ITEM_FIELDS}
        fields["lesion_key"] = "" if folder == "." else folder
        yield file_unit(path, origin, "", fields, f"image file {origin} cannot be read")
