"""Small helpers every stage shares: hashing, deterministic CSV I/O, params, progress."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TypeVar

import yaml

T = TypeVar("T")
# libyaml's loader where PyYAML was built with it: the same documents, about 15x faster than the pure-Python one
# (every stage reads params.yaml, the metadata stage its rules, `ham diff` two dvc.lock files).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def yaml_load(text):
    """yaml.safe_load, with libyaml where available."""
    return yaml.load(text, Loader=YAML_LOADER)


class PipelineError(Exception):
    """A problem with the input that stops a stage; the message names the file, row or field."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(value) -> str:
    """Hash of any JSON-serialisable value, independent of dict order."""
    return sha256_bytes(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a killed run never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; outputs (release files included) are readable by all
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """Deterministic CSV: fixed column order, '\\n' line ends, UTF-8 without BOM. Keys of a row that are not
    columns are left out (the stages carry working fields such as `_candidate` in their rows)."""
    columns = list(columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if (value := row.get(column)) is None else value for column in columns])
    atomic_write_bytes(Path(path), buffer.getvalue().encode("utf-8"))


def read_csv(path: Path, required: Sequence[str] = ()) -> list[dict]:
    """Rows as dicts, as csv.DictReader gives them (blank lines skipped; a short row's missing fields None, a long
    row's extra values in a list under the key None), read without DictReader's per-row Python work."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        while header == []:
            header = next(reader, None)
        missing = [column for column in required if column not in (header or [])]
        if missing:
            raise PipelineError(f"{path}: missing column(s) {', '.join(missing)}")
        if header is None:
            return []
        width = len(header)
        rows = []
        append = rows.append
        for row in reader:
            if len(row) == width:
                append(dict(zip(header, row)))
            elif row:
                entry = dict(zip(header, row))
                if len(row) > width:
                    entry[None] = row[width:]
                else:
                    entry.update((column, None) for column in header[len(row):])
                append(entry)
        return rows


def load_params(path: Path | str = "params.yaml", section: str | None = None) -> dict:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: params file not found")
    with open(path, encoding="utf-8") as handle:
        params = yaml_load(handle) or {}
    if section is None:
        return params
    if section not in params:
        raise PipelineError(f"{path}: no '{section}' section")
    return params[section]


def progress(items: Iterable[T], label: str, total: int | None = None, stream=None) -> Iterator[T]:
    """Yield items, printing 'label: i/n' to stderr about every 10 % (every 100 items when n is unknown)."""
    stream = stream or sys.stderr
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    step = max(1, total // 10) if total else 100
    index = 0
    for index, item in enumerate(items, start=1):
        yield item
        if index % step == 0 or index == total:
            print(f"{label}: {index}/{total if total else '?'}", file=stream, flush=True)
    if not total and index % step:
        print(f"{label}: {index} done", file=stream, flush=True)


def is_training_material(candidate: dict) -> bool:
    """A candidate of a source with `role: training` (ingest marks it in the row's `extra` JSON): the filter's own
    material, never released."""
    extra = candidate.get("extra") or ""
    return '"role"' in extra and json.loads(extra).get("role") == "training"
