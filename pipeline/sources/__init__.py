"""Readers for each kind of raw source.

A reader turns one raw source folder into a stream of `RawItem` (an image file's bytes plus what the source says
about it) and `Reject` (a raw item that could not be used, with the reason). Readers never decide whether bytes
are a usable image: ingest checks every item the same way. Register a new kind in `KINDS`.

The costly part of a reader (reading an image file, unpacking a zip member, opening a deck, cropping a scan) goes
into a `Unit`: its `stamp` names everything the unit's items depend on (the file's path, size, modification time
and inode, the fields the reader joined onto it, the options that shape it), and ingest calls `read()` only when
it has not seen that stamp with the same reader code before. That is how a re-run after one new deck or folder
only reads the new material. The catalogue work around the units (listing files, reading index tables, matching
rows to files) stays in the reader and runs every time: it is cheap, and it is where rejects across files arise.
"""
from __future__ import annotations

import csv
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Union

# What a source may say about an image; every candidate row carries these columns (empty where unknown).
ITEM_FIELDS = (
    "lesion_key",  # the source's own lesion identifier (deck slide text, export column, series folder, ...)
    "image_id",  # an official image ID to keep (public release), else empty
    "diagnosis",  # free-text pathology, unified to a class in the metadata stage
    "dx",  # a diagnosis class already given by the source
    "dx_type",
    "age",
    "sex",
    "localization",
    "visit_date",  # YYYY-MM-DD
    "image_type_hint",  # dsc / macro / clinic where the source says so
    "split_hint",  # train / val / test where the source fixes it (the official ISIC 2018 test set)
)


@dataclass
class RawItem:
    data: bytes
    origin: str  # path of the raw file relative to the source root
    member: str = ""  # archive member, slide reference or sheet row inside the origin file
    fields: dict = field(default_factory=dict)


@dataclass
class Reject:
    origin: str
    member: str
    reason: str


@dataclass
class Unit:
    """Items of one raw file that ingest may take from its read cache instead of calling `read()`.

    `read()` is called, if at all, before the reader is asked for its next element (so it may use an archive the
    reader holds open), and returns the file's items and rejects."""

    origin: str
    stamp: str
    read: Callable[[], "list[Union[RawItem, Reject]]"]


class BadTable(Exception):
    """An index table that cannot be used at all; the message names the file (and the missing column)."""


def read_table(root: Path, name: str, required: tuple[str, ...] = ()) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header and (spreadsheet row number, row) pairs of the CSV `root/name`, header and cells stripped.

    Raises BadTable naming the file when it is missing or unreadable, and naming the columns of `required` that
    it lacks (with the columns it has, so a renamed column is easy to spot)."""
    path = Path(root) / name
    if not path.is_file():
        raise BadTable(f"{name} not found in {root}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [column.strip() for column in reader.fieldnames or []]
            reader.fieldnames = header
            missing = [column for column in required if column not in header]
            if missing:
                raise BadTable(f"{name}: missing column {', '.join(repr(c) for c in missing)} "
                               f"(found: {', '.join(header) or 'no header'})")
            rows = [(number, {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)})
                    for number, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BadTable(f"{name}: unreadable ({error})") from None
    return header, rows


def read_sheet(path: Path, name: str, sheet: str | None = None,
               header_row: int = 1) -> tuple[str, tuple, list[tuple[int, tuple]]]:
    """The title, header cells and (row number as Excel shows it, cells) rows of one sheet of an .xlsx workbook
    (the first sheet unless `sheet` names one), with formulas' cached values. Cells come as openpyxl gives them;
    each reader turns them into text its own way. Raises BadTable naming the file (and the sheets it has)."""
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as error:  # openpyxl raises many types on a damaged or foreign file
        raise BadTable(f"{name}: unreadable workbook ({type(error).__name__}: {error})") from None
    try:
        if sheet is not None and sheet not in workbook.sheetnames:
            raise BadTable(f"{name}: no sheet {sheet!r} (sheets: {', '.join(workbook.sheetnames)})")
        worksheet = workbook[sheet] if sheet is not None else workbook.worksheets[0]
        lines = worksheet.iter_rows(min_row=header_row, values_only=True)
        header = next(lines, ())
        return worksheet.title, header, list(enumerate(lines, start=header_row + 1))
    except BadTable:
        raise
    except Exception as error:  # a damaged sheet can fail in many ways while its rows are read
        raise BadTable(f"{name}: unreadable workbook ({type(error).__name__}: {error})") from None
    finally:
        workbook.close()


def file_stamp(path: Path, *context) -> str:
    """A cheap identity of a file's current content (as DVC's own state cache uses) plus what the reader adds.

    Path, size, modification time in ns and inode: a file rewritten, touched, replaced or checked out anew gets
    a new stamp. `context` (fields joined from an index, options) is serialised as sorted JSON."""
    path = Path(path).resolve()
    info = path.stat()
    return json.dumps([str(path), info.st_size, info.st_mtime_ns, info.st_ino, list(context)], sort_keys=True,
                      ensure_ascii=False, default=str)


def file_unit(path: Path, origin: str, member: str, fields: dict, unreadable: str) -> Unit:
    """The commonest unit: one image file read whole, yielded with the fields the reader matched to it.
    `unreadable` starts the reject's reason if the file cannot be read."""
    def read() -> list:
        try:
            return [RawItem(Path(path).read_bytes(), origin, member, fields)]
        except OSError as error:
            return [Reject(origin, member, f"{unreadable} ({error.strerror or error})")]

    return Unit(origin, file_stamp(path, member, fields), read)


def expand(elements) -> Iterator[Union[RawItem, Reject]]:
    """A reader's output with every unit read: what ingest sees on a first run (for tests and tools)."""
    for element in elements:
        if isinstance(element, Unit):
            yield from element.read()
        else:
            yield element


Reader = Callable[[Path, dict], Iterator[Union[RawItem, Reject, Unit]]]

# kind -> (module in this package, reader function). A reader takes (source root folder, options dict).
KINDS = {
    "export": ("export", "read_export"),
    "folder": ("export", "read_export"),
    "pptx": ("pptx", "read_pptx"),
    "series": ("series", "read_series"),
    "slides": ("slides", "read_slides"),
    "ham10000": ("ham10000", "read_ham10000"),
    "isic": ("isic", "read_isic"),
}


def reader_for(kind: str) -> Reader:
    if kind not in KINDS:
        raise KeyError(kind)
    module_name, function = KINDS[kind]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, function)


def known_kinds() -> list[str]:
    return sorted(KINDS)
