"""Validation of the repository's tables (metadata, manifest, candidates, decisions CSVs).

A table is a CSV file whose rows are validated as objects of strings (an empty cell is an empty string) against one
row schema each (``schemas/<kind>-row.schema.json``); rules that span rows or fields (unique IDs, a lesion's images
agreeing with each other, lesion-disjoint splits, ...) are checked here in code. Row numbers: 1 is the first data
row, 0 the header; ``None`` means the whole file.
"""
from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from pathlib import Path

from .schema_messages import Problem, is_number as _is_number, load_schema, message as _message, show as _show
from .schema_messages import validator as _validator
from .vocabulary import DATASETS, HISTO_ONLY_DATASETS, PUBLIC_KINDS, TRUNK_PARTS  # noqa: F401 (re-exported)

# Table kind -> row schema name (schemas/<name>.schema.json).
TABLE_SCHEMAS = {
    "metadata": "metadata-row",
    "manifest": "manifest-row",
    "candidates": "candidates-row",
    "decisions": "decisions-row",
    # The ID and split registries committed under registry/ (images.csv and lesions.csv share the header key,id).
    "image-registry": "image-registry-row",
    "lesion-registry": "lesion-registry-row",
    "split-registry": "split-registry-row",
}

BOM = b"\xef\xbb\xbf"
# Fields on which all images of one lesion must agree.
LESION_FIELDS = ("dx", "sex", "age", "localization")


def _first(item: tuple) -> str:
    return str(item[0])


class ValidRows:
    """Digests of rows a schema check found valid, kept in `path` between runs, so a re-run checks only rows that are
    new or changed against the schema (jsonschema costs about 0.2 ms a row: 4 s for the 10k bench's metadata);
    the table-wide rules always run. The digests cover the row, every schema file and jsonschema's version, so a
    change of either checks every row again. A missing or damaged file only means every row is checked."""

    def __init__(self, path: Path | None):
        import hashlib
        import json

        from importlib.metadata import version

        from .schema_messages import schema_path

        self.path, self._json = (Path(path) if path else None), json
        schemas = sorted(schema_path("metadata-row").parent.glob("*.json"))
        self._seed = hashlib.sha256(version("jsonschema").encode() + b"".join(
            p.name.encode() + p.read_bytes() for p in schemas)).digest()
        self._hash = hashlib.blake2b
        self.old: set[str] = set()
        self.used: set[str] = set()
        try:
            self.old = set(json.loads(self.path.read_text(encoding="utf-8"))["valid"])
        except (TypeError, AttributeError, OSError, ValueError, KeyError):
            pass

    def key(self, schema: str, row: dict) -> str:
        # repr of the sorted items: the same digest for the same row whatever its key order, a third of the cost
        # of sorted JSON (the rows are dicts of strings as read from or written to a CSV)
        text = repr((schema, sorted(row.items(), key=_first))).encode("utf-8", "surrogatepass")
        return self._hash(text, key=self._seed[:32], digest_size=12).hexdigest()

    def known(self, key: str) -> bool:
        if key in self.old:
            self.used.add(key)
            return True
        return False

    def add(self, key: str) -> None:
        self.used.add(key)

    def save(self) -> None:
        if self.path is not None and self.used != self.old:
            from .common import atomic_write_bytes

            atomic_write_bytes(self.path, self._json.dumps({"valid": sorted(self.used)}).encode())


def _table_problems(kind: str, header: list[str], rows: list[dict], file: str,
                    numbers: list[int] | None = None, valid: ValidRows | None = None) -> list[Problem]:
    """Header, per-row schema and table-wide checks of one table. ``numbers``: row numbers of ``rows``;
    ``valid``: rows found valid before (`ValidRows`), not checked against the schema again."""
    name = TABLE_SCHEMAS[kind]
    schema = load_schema(name)
    known = schema["properties"]
    problems = []

    seen = set()
    for column in header:
        if column in seen:
            problems.append(Problem(file, 0, column, column, f"column {column!r} appears twice"))
        seen.add(column)
    for column in schema["required"]:
        if column not in seen:
            problems.append(Problem(file, 0, column, "", f"missing required column {column!r}"))
    for column in header:
        if column not in known:
            problems.append(Problem(file, 0, column, column, f"unexpected column {column!r}"))

    if numbers is None:
        numbers = list(range(1, len(rows) + 1))
    columns = set(header)
    validator = _validator(name)
    for number, row in zip(numbers, rows):
        if set(row) != columns:
            for column in header:
                if column not in row:
                    problems.append(Problem(file, number, column, "", "missing here but present in the first row"))
            for column in row:
                if column not in columns:
                    problems.append(Problem(file, number, column, _show(row[column]), "not a column of the first row"))
        checked = {k: v for k, v in row.items() if k in known}
        key = valid.key(name, checked) if valid is not None else None
        if key is not None and valid.known(key):
            continue
        errors = list(validator.iter_errors(checked))
        if key is not None and not errors:
            valid.add(key)
        for error in errors:
            if error.validator in ("required", "additionalProperties"):
                continue  # reported once for the header
            field = str(error.absolute_path[0]) if error.absolute_path else ""
            problems.append(Problem(file, number, field, _show(checked.get(field, error.instance)), _message(error)))

    numbered = list(zip(numbers, rows))
    if kind == "metadata":
        # A value the schema already rejected is not compared again (one bad age gives one problem, not two).
        invalid = {(p.row, p.field) for p in problems}
        problems += _metadata_rules(numbered, file, invalid)
    elif kind == "manifest":
        problems += _manifest_rules(numbered, file)
    elif kind == "decisions":
        problems += _decisions_rules(numbered, file)
    elif kind in ("image-registry", "lesion-registry", "split-registry"):
        problems += _registry_rules(kind, numbered, file)
    return _sorted(problems)


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: -1 if p.row is None else p.row)


def _first_seen(numbered: list[tuple[int, dict]], field: str, file: str, what: str) -> list[Problem]:
    """Problems for repeated non-empty values of ``field``."""
    problems, first = [], {}
    for number, row in numbered:
        value = row.get(field)
        if not value:
            continue
        if value in first:
            problems.append(Problem(file, number, field, value, f"duplicate {what} (first in row {first[value]})"))
        else:
            first[value] = number
    return problems


def values_agree(field: str, a: str, b: str) -> bool:
    if a == b:
        return True
    if field == "age" and _is_number(a) and _is_number(b):
        return float(a) == float(b)
    if field == "localization":
        return "trunk" in (a, b) and {a, b} - {"trunk"} <= TRUNK_PARTS
    return False


def _metadata_rules(numbered: list[tuple[int, dict]], file: str, invalid: set = frozenset()) -> list[Problem]:
    """Rules across rows and fields; ``invalid``: (row, field) pairs whose values the schema rejected."""
    problems = _first_seen(numbered, "image_id", file, "image ID")
    lesions = defaultdict(list)
    for number, row in numbered:
        dx, dx_type, dataset = row.get("dx"), row.get("dx_type"), row.get("dataset")
        if dx_type == "follow_up" and dx is not None and dx != "nv":
            problems.append(Problem(file, number, "dx_type", dx_type,
                                    f"follow_up ground truth is only for nevi (nv), not {dx}"))
        if dataset in HISTO_ONLY_DATASETS and dx_type is not None and dx_type != "histo":
            problems.append(Problem(file, number, "dx_type", dx_type,
                                    f"{dataset} images are all histopathology: expected histo"))
        if row.get("lesion_id"):
            lesions[row["lesion_id"]].append((number, row))

    for lesion, images in lesions.items():
        for field in LESION_FIELDS:
            valid = [(number, row) for number, row in images if field in row and (number, field) not in invalid]
            for i, (number, row) in enumerate(valid):
                value = row[field]
                for other_number, other in valid[:i]:
                    if not values_agree(field, value, other[field]):
                        problems.append(Problem(file, number, field, value,
                                                f"lesion {lesion} has {field} {other[field]!r} in row {other_number}"))
                        break
    return problems


def _manifest_rules(numbered: list[tuple[int, dict]], file: str) -> list[Problem]:
    problems = _first_seen(numbered, "path", file, "path")
    problems += _first_seen(numbered, "image_id", file, "image ID")
    split_of = {}
    for number, row in numbered:
        lesion, split = row.get("lesion_id"), row.get("split")
        if not lesion or not split:
            continue
        if lesion in split_of and split_of[lesion][0] != split:
            first_split, first_number = split_of[lesion]
            problems.append(Problem(file, number, "split", split,
                                    f"lesion {lesion} is also in {first_split} (row {first_number}): "
                                    "splits must not share lesions"))
        split_of.setdefault(lesion, (split, number))
    return problems


def _decisions_rules(numbered: list[tuple[int, dict]], file: str) -> list[Problem]:
    problems = _first_seen(numbered, "candidate_id", file, "candidate ID")
    for number, row in numbered:
        for field in ("confidence", "p_dsc", "p_macro", "p_clinic"):
            value = row.get(field)
            if value and _is_number(value) and not 0 <= float(value) <= 1:
                problems.append(Problem(file, number, field, value, "must be from 0 to 1"))
    return problems


def _registry_rules(kind: str, numbered: list[tuple[int, dict]], file: str) -> list[Problem]:
    """A registry maps each key to one ID and each ID to one key; an official lesion ID (a key of the form
    HAM_ + 7 digits) is recorded as its own ID. The split registry lists each lesion once."""
    if kind == "split-registry":
        return _first_seen(numbered, "lesion_id", file, "lesion ID")
    problems = _first_seen(numbered, "key", file, "key") + _first_seen(numbered, "id", file, "ID")
    if kind == "lesion-registry":
        for number, row in numbered:
            key, id_ = row.get("key", ""), row.get("id", "")
            if re.fullmatch(r"HAM_[0-9]{7}", key) and id_ != key:
                problems.append(Problem(file, number, "id", id_, f"official lesion ID {key} must keep its own ID"))
    return problems


def validate_metadata_rows(rows: list[dict], file: str, valid: ValidRows | None = None) -> list[Problem]:
    """Validate HAM10000 metadata rows (dicts of strings, as written to the CSV) against the schema and the
    table-wide rules. The first row's keys serve as the header. ``file`` names the table in the problems;
    ``valid``: rows found valid by an earlier run (`ValidRows`)."""
    header = list(rows[0]) if rows else list(load_schema("metadata-row")["required"])
    return _table_problems("metadata", header, rows, file, valid=valid)


def validate_table(rows: list[dict], kind: str, file: str) -> list[Problem]:
    """Validate rows of a table of the given kind (a key of TABLE_SCHEMAS)."""
    header = list(rows[0]) if rows else list(load_schema(TABLE_SCHEMAS[kind])["required"])
    return _table_problems(kind, header, rows, file)


# ---------------------------------------------------------------------------------------------------------- CSV

def detect_kind(header: list[str], rows: list[dict] = ()) -> str | None:
    """Which table a header belongs to: the kind whose schema has exactly its columns, else the kind whose schema
    shares the most columns with it (None if unclear). The image and lesion registries share their header; the
    rows' keys tell them apart (content hashes for images, '<source>/<key>' or HAM_ IDs for lesions)."""
    exact = [kind for kind, name in TABLE_SCHEMAS.items() if set(header) == set(load_schema(name)["properties"])]
    if exact == ["image-registry", "lesion-registry"]:
        hashes = sum(bool(re.fullmatch(r"[0-9a-f]{64}", row.get("key", ""))) for row in rows)
        return "image-registry" if 2 * hashes >= len(rows) else "lesion-registry"
    if len(exact) == 1:
        return exact[0]
    scores = {kind: len(set(header) & set(load_schema(name)["properties"])) for kind, name in TABLE_SCHEMAS.items()}
    ranked = sorted(scores.values(), reverse=True)
    if ranked[0] < 2 or ranked[0] == ranked[1]:
        return None
    return max(scores, key=scores.get)


def _read_csv(path: Path, file: str):
    """(header, rows, row numbers, problems) of a CSV file; header is None when the file cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return None, [], [], [Problem(file, None, "", "", f"cannot read: {e.strerror}")]
    problems = []
    if data.startswith(BOM):
        problems.append(Problem(file, None, "", "\\ufeff", "starts with a byte-order mark; save as UTF-8 without BOM"))
        data = data[len(BOM):]
    if not data.strip():
        return None, [], [], problems + [Problem(file, None, "", "", "file is empty")]
    if b"\r\n" in data:
        problems.append(Problem(file, None, "", "\\r\\n", "has CRLF (Windows) line ends; use LF"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        problems.append(Problem(file, line - 1, "", f"0x{data[e.start]:02x}",
                                f"not UTF-8: undecodable byte on line {line}"))
        return None, [], [], problems

    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        rows, numbers = [], []
        for number, cells in enumerate(reader, 1):
            if len(cells) != len(header):
                message = "empty line" if not cells else f"has {len(cells)} fields, the header has {len(header)}"
                problems.append(Problem(file, number, "", ",".join(cells)[:80], message))
                continue
            rows.append(dict(zip(header, cells)))
            numbers.append(number)
    except csv.Error as e:
        problems.append(Problem(file, None, "", "", f"unreadable CSV at line {reader.line_num}: {e}"))
        return None, [], [], problems
    if not header or header == [""]:
        problems.append(Problem(file, 0, "", "", "first line is empty; expected a header"))
        return None, [], [], problems
    return header, rows, numbers, problems


def validate_csv(path: str | Path, kind: str | None = None) -> list[Problem]:
    """Validate a CSV table: metadata, manifest, candidates, decisions or one of the registries (detected from the
    header if not given)."""
    file = str(path)
    if kind is not None and kind not in TABLE_SCHEMAS:
        raise ValueError(f"unknown table kind {kind!r}; expected one of {', '.join(TABLE_SCHEMAS)}")
    header, rows, numbers, problems = _read_csv(Path(path), file)
    if header is None:
        return problems
    kind = kind or detect_kind(header, rows)
    if kind is None:  # row-level problems of an unknown table would only be noise
        return [p for p in problems if p.row is None] + [Problem(file, 0, "", ",".join(header)[:80],
                                   "cannot tell which table this is from its header (expected a metadata, "
                                   "manifest, candidates or decisions table, or a registry)")]
    return _sorted(problems + _table_problems(kind, header, rows, file, numbers))
