"""The JSON Schemas in ``schemas/`` and how their verdicts are worded for people.

Every problem any validator finds, whatever found it, comes back as a :class:`Problem` naming the file, the row
(or, for YAML files, the line), the field and the offending value, so that ``ham validate``, CI and the pipeline
stages all report the same way. ``message(error)`` turns one jsonschema error into a short human message
("expected an integer, got text", "must be at most 100", "expected one of: ...").
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


@dataclass(frozen=True)
class Problem:
    """One validation problem. ``row``: 1-based data row (0 = header, None = whole file; line number for YAML)."""

    file: str
    row: int | None
    field: str
    value: str
    message: str

    def line(self) -> str:
        """The problem as one line, ``file:row: field: message`` (what a stage prints before it stops)."""
        where = self.file if self.row is None else f"{self.file}:{self.row}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


def schema_path(name: str) -> Path:
    """Path of a schema file in the repository's ``schemas/`` folder, e.g. ``schema_path("metadata-row")``."""
    if not name.endswith(".json"):
        name = f"{name}.schema.json"
    return SCHEMA_DIR / name


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    """A schema file's JSON; a missing, unreadable or broken file is one PipelineError naming it (and the line)."""
    from .common import PipelineError

    path = schema_path(name)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise PipelineError(f"{path}:{error.lineno}: schema file is not valid JSON: {error.msg} (column "
                            f"{error.colno})") from None
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: schema file is not UTF-8") from None
    except OSError as error:
        raise PipelineError(f"{path}: cannot read the schema file: {error.strerror or error}") from None


@lru_cache(maxsize=None)
def validator(name: str) -> "Draft202012Validator":  # noqa: F821
    from jsonschema import Draft202012Validator  # here, not at the top: importing jsonschema takes 0.14 s

    return Draft202012Validator(load_schema(name))


_TYPE_NAMES = {
    "integer": "an integer", "number": "a number", "string": "text", "object": "a mapping", "array": "a list",
    "boolean": "true or false", "null": "nothing",
}


def type_of(value) -> str:
    """What a value is, in the words of the messages ('an integer', 'text', 'a mapping', ...)."""
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


def show(value) -> str:
    """The offending value as text for a Problem."""
    if isinstance(value, str):
        return value
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:79] + "…"


def is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def closest(word: str, known) -> str:
    """' (did you mean 'x'?)' for the known word closest to a misspelt one, else ''."""
    match = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def message(error) -> str:
    """A short human message for one jsonschema error."""
    kind, expected, schema = error.validator, error.validator_value, error.schema
    if kind == "enum":
        return "expected one of: " + ", ".join(v if v != "" else "(empty)" for v in map(str, expected)
                                               if v != "None")
    if kind == "const":
        return f"expected {expected!r}"
    if kind == "pattern":
        return f"expected {schema['title']}" if "title" in schema else f"does not match {expected}"
    if kind == "type":
        types = expected if isinstance(expected, list) else [expected]
        wanted = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
        text = f"expected {wanted}, got {type_of(error.instance)}"
        if "number" in types and isinstance(error.instance, str) and is_number(error.instance):
            text += " (YAML reads 1e-4 as text: write 1.0e-4)"
        return text
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
    if kind == "minItems" and expected == 1:
        return "must not be empty"
    if kind == "uniqueItems":
        return "has repeated items"
    return error.message


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
