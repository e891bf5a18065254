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

Each kind declares its options as one typed, frozen dataclass (a subclass of `SourceOptions`, in its reader
module, registered beside the reader in `KINDS`), built by `from_options(source_name, options)`: an unknown key
(with the closest known one suggested) or a bad value (a regex that does not compile, a column mapping that is not
a mapping of text, text where a number belongs) raises `OptionError`, one line naming the source and the key.
`schemas/params.schema.json` describes the same options per kind; a test keeps the two equal.

Links: `link_outside(root, origin)` is the one check that a raw file does not leave its source folder: a file
link, or a folder link on the way to it, that resolves outside the root gives the reason ingest writes to the
ledger (ingest applies it to every item and unit of every reader, before anything is read or taken from a cache).
Links that stay inside the source are followed.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import importlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Union

from ..common import PipelineError
from ..vocabulary import IMAGE_TYPES

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


# Within one ingest run a file is resolved and stat-ed once (10k members of one zip share one stamp's path and one
# link check): `new_run()` empties both, so a file changed between runs is seen anew.
_RUN_MEMO: dict[tuple, object] = {}


def new_run() -> None:
    _RUN_MEMO.clear()


def link_outside(root: Path, origin: str) -> str | None:
    """Why `root/origin` may not be read: it is (or passes through) a link resolving outside `root`, or its links
    loop; None when it stays inside. `origin` is the reader's path of the raw file relative to the root."""
    key = ("outside", str(root), origin)
    if key not in _RUN_MEMO:
        _RUN_MEMO[key] = _link_outside(Path(root), origin)
    return _RUN_MEMO[key]


def _link_outside(root: Path, origin: str) -> str | None:
    root = Path(root)
    path = root / origin
    try:
        resolved, real_root = path.resolve(strict=False), root.resolve(strict=False)
    except (OSError, RuntimeError) as error:  # a link loop
        return f"{origin}: its links cannot be resolved ({error}); not read"
    if resolved == real_root or real_root in resolved.parents:
        return None
    link, target = origin, str(resolved)
    for candidate in [path, *path.parents]:
        if candidate == root or root not in candidate.parents:
            break
        if candidate.is_symlink():
            link, target = candidate.relative_to(root).as_posix(), os.readlink(candidate)
    return (f"{origin}: link {link} -> {target} resolves outside the source folder; links are not followed out "
            f"of a source (copy the file in)")


def tree_stamp(root: Path, unreadable: list | None = None) -> str:
    """A cheap identity of everything under a source folder: each entry's relative path, kind, size, modification
    time in ns and inode (a link's target instead of its stat), sha256 over all of it. Any file added, removed,
    rewritten, touched, replaced or re-linked changes it, as `file_stamp` does for one file; reading the stats of
    11k files costs tens of milliseconds, where listing and stamping them through the readers costs seconds.
    `unreadable`: a list that gets (relative path, reason) of each folder that cannot be listed and each entry
    whose stat fails (ingest refuses such a source, naming the first, rather than lose its files unseen)."""
    root = os.fspath(root)
    digest = hashlib.sha256()
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, relative) if relative else root), key=lambda e: e.name)
        except OSError as error:
            digest.update(f"{relative}\0unreadable {error.errno}\n".encode("utf-8", "surrogateescape"))
            if unreadable is not None:
                unreadable.append((relative or ".", error.strerror or str(error)))
            continue
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            try:
                if entry.is_symlink():
                    line = f"{path}\0link\0{os.readlink(entry.path)}"
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                    line = f"{path}\0dir"
                else:
                    info = entry.stat(follow_symlinks=False)
                    line = f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ino}"
            except OSError as error:
                line = f"{path}\0unreadable {error.errno}"
                if unreadable is not None:
                    unreadable.append((path, error.strerror or str(error)))
            digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def file_stamp(path: Path, *context) -> str:
    """A cheap identity of a file's current content (as DVC's own state cache uses) plus what the reader adds.

    Path, size, modification time in ns and inode: a file rewritten, touched, replaced or checked out anew gets
    a new stamp. `context` (fields joined from an index, options) is serialised as sorted JSON."""
    key = ("stamp", str(path))
    if key not in _RUN_MEMO:
        resolved = Path(path).resolve()
        info = resolved.stat()
        _RUN_MEMO[key] = [str(resolved), info.st_size, info.st_mtime_ns, info.st_ino]
    return json.dumps([*_RUN_MEMO[key], list(context)], sort_keys=True, ensure_ascii=False, default=str)


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


# ---------------------------------------------------------------------------------------------- typed options

class OptionError(PipelineError):
    """A source option that is unknown or has a bad value: one line naming the source and the key."""

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key, self.message = source, key, message
        super().__init__(f"source {source}: option {key}: {message}")


def _what(value) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true or false"
    return {int: "an integer", float: "a number", str: "text", dict: "a mapping", list: "a list"}.get(
        type(value), "a mapping" if isinstance(value, Mapping) else type(value).__name__)


def _did_you_mean(word, known) -> str:
    match = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def text(nullable: bool = False, null=None):
    """Checker of a non-empty text option; with ``nullable``, null (or "") gives ``null``."""
    def check(value):
        if nullable and value in (None, ""):
            return null
        if not isinstance(value, str):
            return _fail(f"expected text, got {_what(value)}")
        if not value:
            return _fail("must not be empty")
        return value
    return check


def number(minimum=None, maximum=None, above=None, below=None, integer: bool = False):
    """Checker of a number option (an integer with ``integer``; a float otherwise) within the given bounds."""
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            return _fail(f"expected {'an integer' if integer else 'a number'}, got {_what(value)}")
        if minimum is not None and value < minimum:
            return _fail(f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            return _fail(f"must be at most {maximum}")
        if above is not None and value <= above:
            return _fail(f"must be more than {above}")
        if below is not None and value >= below:
            return _fail(f"must be less than {below}")
        return value if integer else float(value)
    return check


def mapping(keys: tuple[str, ...] | None = None):
    """Checker of a mapping of text to text (null: empty); ``keys``: the only keys allowed."""
    def check(value):
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            return _fail(f"expected a mapping, got {_what(value)}")
        for key, item in value.items():
            if keys is not None and key not in keys:
                return _fail(f"unknown key {key!r}{_did_you_mean(key, keys)}; expected some of: {', '.join(keys)}")
            if not isinstance(item, str) or not item:
                return _fail(f"{key}: expected text, got {_what(item) if item != '' else 'nothing'}")
        return {str(key): item for key, item in value.items()}
    return check


def text_list(default: tuple[str, ...]):
    """Checker of a list of text (null or empty: ``default``)."""
    def check(value):
        if value in (None, []):
            return default
        if not isinstance(value, list):
            return _fail(f"expected a list, got {_what(value)}")
        if not all(isinstance(item, str) and item for item in value):
            return _fail("expected a list of file names (text)")
        return tuple(value)
    return check


def regex(groups: int = 0, nullable: bool = False, named: tuple[str, ...] = (), default: str | None = None):
    """Checker of a regular expression option, compiled; it needs ``groups`` groups (or all of ``named``).
    Null (or ""): ``default`` compiled, else None where ``nullable``."""
    def check(value):
        if value in (None, ""):
            if default is not None:
                return re.compile(default)
            if nullable:
                return None
        if not isinstance(value, str):
            return _fail(f"expected a regular expression (text), got {_what(value)}")
        try:
            pattern = re.compile(value)
        except re.error as error:
            return _fail(f"'{value}' is not a valid regular expression ({error})")
        if named and set(named) <= set(pattern.groupindex):
            return pattern
        if pattern.groups < groups:
            wanted = (f"named groups {', '.join(named)} (or {groups} groups in that order)" if named
                      else f"{groups} group{'s' * (groups != 1)} (...)")
            return _fail(f"'{value}' needs {wanted}")
        return pattern
    return check


def choice(*values: str, nullable: bool = True):
    def check(value):
        if nullable and value is None:
            return None
        if value not in values:
            return _fail(f"expected one of: {', '.join(values)}")
        return value
    return check


class _BadValue(ValueError):
    pass


def _fail(message: str):
    raise _BadValue(message)


def option(default=None, check=None, factory=None):
    """A dataclass field of a typed options object: its default and the checker of a given value."""
    metadata = {"check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class SourceOptions:
    """The options every kind of source takes; each kind's options class adds its own."""

    KIND = "any"
    # dsc / macro / clinic: the type of every image of the source; ingest writes it as each candidate's
    # image_type_hint (the reader's own hint is overridden)
    image_type: str | None = option(None, choice(*IMAGE_TYPES))

    @classmethod
    def from_options(cls, source: str, options: Mapping | None):
        """The typed options of source ``source`` from its params mapping; raises OptionError naming the key."""
        if isinstance(options, cls):
            return options
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise OptionError(source, "options", f"expected a mapping of option names to values, got {_what(options)}")
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in options.items():
            if key not in known:
                raise OptionError(source, str(key), f"unknown option of {cls.KIND} sources"
                                                    f"{_did_you_mean(key, known)}; known: {', '.join(known)}")
            check = known[key].metadata.get("check")
            try:
                values[key] = check(value) if check else value
            except _BadValue as error:
                raise OptionError(source, key, str(error)) from None
        return cls(**values)

    @classmethod
    def of(cls, options):
        """Typed options from a typed object or a plain mapping (readers called directly, by tests and tools)."""
        return cls.from_options(f"({cls.KIND})", options)


Reader = Callable[[Path, SourceOptions], Iterator[Union[RawItem, Reject, Unit]]]

# kind -> (module in this package, reader function, options class). A reader takes (source root folder, options).
KINDS = {
    "export": ("export", "read_export", "ExportOptions"),
    "folder": ("export", "read_export", "ExportOptions"),
    "pptx": ("pptx", "read_pptx", "PptxOptions"),
    "series": ("series", "read_series", "SeriesOptions"),
    "slides": ("slides", "read_slides", "SlideOptions"),
    "ham10000": ("ham10000", "read_ham10000", "Ham10000Options"),
    "isic": ("isic", "read_isic", "IsicOptions"),
}


def _member(kind: str, position: int):
    if kind not in KINDS:
        raise KeyError(kind)
    module = importlib.import_module(f"{__name__}.{KINDS[kind][0]}")
    return getattr(module, KINDS[kind][position])


def reader_for(kind: str) -> Reader:
    return _member(kind, 1)


def options_for(kind: str) -> type[SourceOptions]:
    """The typed options class of a kind of source."""
    return _member(kind, 2)


def known_kinds() -> list[str]:
    return sorted(KINDS)
