"""`ham validate`'s dispatch: which validator a file goes to (.yaml/.yml: params, .csv: a table).

The validators live in their own modules: ``tables`` (metadata, manifest, candidates and decisions CSVs),
``params`` (params.yaml), ``dvcfile`` (what dvc.yaml and the .dvc files say about the raw sources) and
``schema_messages`` (the JSON Schemas, the `Problem` every validator reports, the wording of schema errors).
The names below are re-exported so that ``from pipeline.validate import validate_csv`` keeps working.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .params import params_problems
from .schema_messages import SCHEMA_DIR, Problem, format_table, load_schema, schema_path
from .tables import (DATASETS, TABLE_SCHEMAS, TRUNK_PARTS, detect_kind, validate_csv, validate_metadata_rows,
                     validate_table, values_agree)

__all__ = ["DATASETS", "SCHEMA_DIR", "TABLE_SCHEMAS", "TRUNK_PARTS", "Problem", "detect_kind", "format_table",
           "load_schema", "schema_path", "validate_csv", "validate_metadata_rows", "validate_params",
           "validate_path", "validate_table", "values_agree"]


def validate_params(path: str | Path, section: str | None = None, stage: bool = False) -> list[Problem]:
    """Problems of a params YAML file, the sources' rules included (what `ham validate params.yaml` reports)."""
    from .source_rules import ingest_rules

    return params_problems(path, section, stage, ingest_rules)


def validate_path(path: str | Path) -> list[Problem]:
    """Validate one file: .yaml/.yml as params, .csv as a table; other names by their first line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return validate_params(path)
    if suffix == ".csv":
        from .isic_export import validate_isic_file

        isic = validate_isic_file(path)  # None unless the header is ISIC contribution metadata or an isic-cli export
        return validate_csv(path) if isic is None else [Problem(**asdict(p)) for p in isic]
    try:
        with open(path, "rb") as f:
            first_line = f.readline()
    except OSError as e:
        return [Problem(str(path), None, "", "", f"cannot read: {e.strerror}")]
    if b"," in first_line and b": " not in first_line:
        return validate_csv(path)
    return validate_params(path)
