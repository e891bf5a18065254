"""Validation of the repository's tables and params.yaml against the JSON Schemas in ``schemas/``.

Tables are CSV files whose rows are validated as objects of strings (an empty cell is an empty string) against one
row schema each; rules that span rows or fields (unique IDs, a lesion's images agreeing with each other, ...) are
checked here in code. Every problem, whatever found it, comes back as a :class:`Problem` naming the file, the row, the
field and the offending value, so that the command line, CI and the pipeline stages all report the same way.

Row numbers: 1 is the first data row, 0 the header; ``None`` means the whole file. For params YAML files the row
is the line number of the offending key.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

import click
import yaml
from jsonschema import Draft202012Validator

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

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
# The study's four collections (the `dataset` column); 'unknown' is also valid, for public images whose
# collection no source records (the ISIC 2018 test set).
DATASETS = ("rosendahl", "vidir_modern", "vidir_molemax", "vienna_dias")
# Sources whose images were all confirmed by histopathology (Tschandl et al. 2018, table 1).
HISTO_ONLY_DATASETS = ("rosendahl", "vienna_dias")
# Fields on which all images of one lesion must agree.
LESION_FIELDS = ("dx", "sex", "age", "localization")
# 'trunk' (used by the MoleMax series) is the coarser site of these; a lesion may be 'back' on one image and 'trunk'
# on another. The real release has two such lesions (HAM_0000871, HAM_0001726).
TRUNK_PARTS = {"abdomen", "back", "chest"}


@dataclass(frozen=True)
class Problem:
    """One validation problem. ``row``: 1-based data row (0 = header, None = whole file; line number for YAML)."""

    file: str
    row: int | None
    field: str
    value: str
    message: str


# ---------------------------------------------------------------------------------------------------------- schemas

def schema_path(name: str) -> Path:
    """Path of a schema file in the repository's ``schemas/`` folder, e.g. ``schema_path("metadata-row")``."""
    if not name.endswith(".json"):
        name = f"{name}.schema.json"
    return SCHEMA_DIR / name


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    with open(schema_path(name), encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=None)
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name))


# ---------------------------------------------------------------------------------------------------------- messages

_TYPE_NAMES = {
    "integer": "an integer", "number": "a number", "string": "text", "object": "a mapping", "array": "a list",
    "boolean": "true or false", "null": "nothing",
}


def _type_of(value) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _show(value) -> str:
    """The offending value as text for a Problem."""
    if isinstance(value, str):
        return value
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:79] + "…"


def _message(error) -> str:
    """A short human message for one jsonschema error."""
    kind, expected, schema = error.validator, error.validator_value, error.schema
    if kind == "enum":
        return "expected one of: " + ", ".join(v if v != "" else "(empty)" for v in map(str, expected))
    if kind == "const":
        return f"expected {expected!r}"
    if kind == "pattern":
        return f"expected {schema['title']}" if "title" in schema else f"does not match {expected}"
    if kind == "type":
        types = expected if isinstance(expected, list) else [expected]
        wanted = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
        message = f"expected {wanted}, got {_type_of(error.instance)}"
        if "number" in types and isinstance(error.instance, str) and _is_number(error.instance):
            message += " (YAML reads 1e-4 as text: write 1.0e-4)"
        return message
    if kind == "minimum":
        return f"must be at least {expected}"
    if kind == "maximum":
        return f"must be at most {expected}"
    if kind == "exclusiveMinimum":
        return f"must be more than {expected}"
    if kind == "exclusiveMaximum":
        return f"must be less than {expected}"
    if kind == "minLength" and expected == 1:
        return "must not be empty"
    if kind == "uniqueItems":
        return "has repeated items"
    return error.message


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------------- tables

def _table_problems(kind: str, header: list[str], rows: list[dict], file: str,
                    numbers: list[int] | None = None) -> list[Problem]:
    """Header, per-row schema and table-wide checks of one table. ``numbers``: row numbers of ``rows``."""
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
        for error in validator.iter_errors(checked):
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


def validate_metadata_rows(rows: list[dict], file: str) -> list[Problem]:
    """Validate HAM10000 metadata rows (dicts of strings, as written to the CSV) against the schema and the
    table-wide rules. The first row's keys serve as the header. ``file`` names the table in the problems."""
    header = list(rows[0]) if rows else list(load_schema("metadata-row")["required"])
    return _table_problems("metadata", header, rows, file)


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


# ---------------------------------------------------------------------------------------------------------- params

def _dotted(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_of(node, path) -> int | None:
    """Line (1-based) of the YAML node at ``path`` or of its nearest existing parent."""
    if node is None:
        return None
    for part in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


def _duplicate_keys(node, file: str, path=()) -> list[Problem]:
    problems = []
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            if key.value in seen:
                problems.append(Problem(file, key.start_mark.line + 1, _dotted((*path, key.value)), key.value,
                                        "duplicate key; the later one silently wins"))
            seen.add(key.value)
            problems += _duplicate_keys(value, file, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, file, (*path, i))
    return problems


def validate_params(path: str | Path) -> list[Problem]:
    """Validate a params YAML file against schemas/params.schema.json plus a few rules across keys."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        return [Problem(file, None, "", "", f"cannot read: {e.strerror}")]
    except UnicodeDecodeError:
        return [Problem(file, None, "", "", "not UTF-8")]
    if not text.strip():
        return [Problem(file, None, "", "", "file is empty")]
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        return [Problem(file, mark.line + 1 if mark else None, "", "", f"not valid YAML: {getattr(e, 'problem', e)}")]

    problems = _duplicate_keys(root, file)
    reported = set()
    for error in _validator("params").iter_errors(data):
        path_ = list(error.absolute_path)
        if error.validator == "required":
            missing = [key for key in error.validator_value if key not in error.instance]
            found = [(key, "", f"missing required key {key!r}") for key in missing]
        elif error.validator == "additionalProperties":
            extra = [key for key in error.instance if key not in error.schema.get("properties", {})]
            found = [(key, key, f"unexpected key {key!r}") for key in extra]
        else:
            problems.append(Problem(file, _line_of(root, path_), _dotted(path_), _show(error.instance),
                                    _message(error)))
            continue
        for key, value, message in found:
            if (tuple(path_), key) not in reported:
                reported.add((tuple(path_), key))
                line = _line_of(root, [*path_, key] if value else path_)
                problems.append(Problem(file, line, _dotted([*path_, key]), value, message))

    if isinstance(data, dict):
        problems += _params_rules(data, root, file)
        problems += [Problem(file, _line_of(root, ["ingest", "sources", index, "path"]),
                             f"ingest.sources[{index}].path", path, message)
                     for index, path, message in ingest_dependency_problems(data, Path(path).parent)]
    return sorted(problems, key=lambda p: p.row or 0)


def _dvc_stages(repo: Path) -> dict:
    try:
        stages = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8")).get("stages")
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    return stages if isinstance(stages, dict) else {}


def _covers(parent: str, path: str) -> bool:
    parent, path = PurePosixPath(parent), PurePosixPath(path)
    return parent == path or parent in path.parents


def ingest_dependency_problems(params: dict, repo: Path) -> list[tuple[int, str, str]]:
    """(source index, path, message) for each raw source that DVC would not see change.

    Where a dvc.yaml sits beside params.yaml, every `ingest.sources[].path` must be a dependency of its `ingest`
    stage (or lie inside one); otherwise `dvc repro` would skip ingest after that source changed."""
    stages = _dvc_stages(repo)
    if "ingest" not in stages:
        return []
    deps = [str(dep) for dep in stages["ingest"].get("deps") or [] if isinstance(dep, str)]
    found = []
    for index, source in enumerate(((params.get("ingest") or {}).get("sources") or [])):
        path = source.get("path") if isinstance(source, dict) else None
        if isinstance(path, str) and not any(_covers(dep, path) for dep in deps):
            found.append((index, path, f"not a dependency of stage ingest in dvc.yaml, so `dvc repro` would not "
                                       f"see it change: add `- {path}` under stages.ingest.deps"))
    return found


def untracked_sources(params: dict, repo: Path) -> list[str]:
    """Raw source paths that no .dvc file tracks (`<path>.dvc` or one for a folder above it), nor a stage output:
    such a source is not versioned, cannot be pushed or pulled, and a release built from it cannot be rebuilt."""
    outs = []
    for stage in _dvc_stages(repo).values():
        for out in (stage.get("outs") or []) if isinstance(stage, dict) else []:
            outs.append(next(iter(out)) if isinstance(out, dict) else str(out))
    missing = []
    for source in ((params.get("ingest") or {}).get("sources") or []):
        path = PurePosixPath(source["path"]) if isinstance(source, dict) and source.get("path") else None
        if path is None or path.is_absolute():
            continue
        tracked = any((repo / f"{candidate}.dvc").is_file() for candidate in (path, *path.parents)
                      if str(candidate) != ".")
        if not tracked and not any(_covers(out, str(path)) for out in outs):
            missing.append(str(path))
    return missing


def _params_rules(data: dict, root, file: str) -> list[Problem]:
    problems = []
    sources = (data.get("ingest") or {}).get("sources") if isinstance(data.get("ingest"), dict) else None
    if isinstance(sources, list):
        first = {}
        for i, source in enumerate(sources):
            name = source.get("name") if isinstance(source, dict) else None
            if not isinstance(name, str):
                continue
            if name in first:
                path_ = ["ingest", "sources", i, "name"]
                problems.append(Problem(file, _line_of(root, path_), _dotted(path_), name,
                                        f"duplicate source name (also ingest.sources[{first[name]}])"))
            first.setdefault(name, i)
    split = data.get("split")
    if isinstance(split, dict):
        test, val = split.get("test_fraction"), split.get("val_fraction")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (test, val))
        if numbers and test + val >= 1:
            problems.append(Problem(file, _line_of(root, ["split", "val_fraction"]), "split.val_fraction", _show(val),
                                    f"test_fraction + val_fraction is {test + val:g}; it must be below 1"))
    return problems


# ---------------------------------------------------------------------------------------------------------- dispatch

def validate_path(path: str | Path) -> list[Problem]:
    """Validate one file: .yaml/.yml as params, .csv as a table; other names by their first line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return validate_params(path)
    if suffix == ".csv":
        return validate_csv(path)
    try:
        with open(path, "rb") as f:
            first_line = f.readline()
    except OSError as e:
        return [Problem(str(path), None, "", "", f"cannot read: {e.strerror}")]
    if b"," in first_line and b": " not in first_line:
        return validate_csv(path)
    return validate_params(path)


def format_table(problems: list[Problem], max_value: int = 40) -> str:
    """Problems as an aligned text table: file, row, field, value, message."""
    def cell(text: str, width: int) -> str:
        return text if len(text) <= width else text[:width - 1] + "…"

    lines = [("FILE", "ROW", "FIELD", "VALUE", "MESSAGE")]
    for p in problems:
        lines.append((p.file, "" if p.row is None else str(p.row), p.field, cell(p.value, max_value), p.message))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(line[:4], widths)), line[4]]).rstrip()
                     for line in lines)


@click.command("validate")
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: aligned text for people; json: a list of problems (file, row, field, value, message).")
def validate_command(paths: tuple[Path, ...], fmt: str) -> None:
    """Check metadata, manifest, candidates and decisions CSVs and params.yaml against the JSON Schemas in
    schemas/ and the rules across rows (unique IDs, a lesion's images agreeing, lesion-disjoint splits, ...).

    Prints every problem with its file, row, field and value and exits 1 if there is any; otherwise prints how
    many files are valid and exits 0. Rows count from 1 after the header (0 is the header itself).
    """
    problems = []
    for path in paths:
        problems += validate_path(path)
    if fmt == "json":
        click.echo(json.dumps([asdict(p) for p in problems], indent=2, ensure_ascii=False))
    elif problems:
        click.echo(format_table(problems))
        bad_files = len({p.file for p in problems})
        click.echo(f"{len(problems)} problem{'s' * (len(problems) != 1)} in {bad_files} of {len(paths)} "
                   f"file{'s' * (len(paths) != 1)}")
    else:
        click.echo(f"{len(paths)} file{'s' * (len(paths) != 1)} valid")
    if problems:
        click.get_current_context().exit(1)
