"""Release metadata (HAM10000 columns) -> ISIC Archive vocabulary: the archive as it is today, and its older export.

Today (what the release writes per split, `write_isic_outputs`):

- `isic_contribution.csv`: the metadata a contributor uploads with the images (CONTRIBUTION_COLUMNS: filename,
  lesion_id, age, sex, anatom_site_general, image_type, diagnosis, diagnosis_confirm_type, concomitant_biopsy,
  melanocytic), the fields the archive's validator, the `isic-metadata` package, checks. `diagnosis` is the node of
  the archive's diagnosis hierarchy ("Benign:Benign melanocytic proliferations:Nevus:Nevus, NOS, Junctional"): the
  image's `isic_diagnosis` from the metadata stage (images.csv), else its class's node; either must lie under the
  row's class (vocabulary.ISIC_CLASS_SUBTREES), or the export stops naming the row. `age` is the release's age
  (already binned to 5 years) as an integer.
- `isic_metadata.csv`: the same rows as an archive download by today's isic-cli (`isic image download`) writes its
  metadata.csv (ISIC_CLI_COLUMNS): isic_id, attribution, copyright_license, then the metadata fields sorted by name,
  the diagnosis as one column per level (diagnosis_1 .. diagnosis_5) and the age as age_approx. The `isic` source
  kind reads it back to the same rows (tests/test_isic_export.py).

`validate_contribution_rows` checks rows with the official package, row by row (MetadataRow) and as a batch
(MetadataBatch); `validate_isic_file` does so for a CSV of either kind (the `ham validate` hook). The package is an
optional dependency (extra `isic`, also in `test`): without it they return one problem saying how to install it.

The older export (`to_isic_rows`, `write_isic_csv`, ISIC_COLUMNS) is the flat vocabulary of the archive's earlier
download of the HAM10000 collection, which the archive's validator no longer accepts (its flat `diagnosis`); it is
kept because it is checked field by field against that real export, which tests the mappings the outputs above share
(age, site, sex, confirm type, melanocytic). Its input rows have the release columns ``lesion_id,image_id,dx,dx_type,age,sex,localization`` (``dataset`` and any
other column is ignored), all values strings. Output rows have ``ISIC_COLUMNS``, the columns of the ISIC-archive
export of the HAM10000 collection. The mapping (its tables live in pipeline/vocabulary.py, beside the reverse maps
the `isic` reader uses) was derived from, and is tested against, that export for all 10015 release images (join on
image_id = isic_id):

==================  ==================================================================================
ISIC column         from the release row
==================  ==================================================================================
isic_id             image_id
attribution         argument (the archive has "ViDIR Group, Department of Dermatology, Medical
                    University of Vienna" for every image, all four sources included)
copyright_license   argument (the archive has "CC-BY-NC")
age_approx          age as an integer ("80.0" -> "80"); "" and "0.0" -> "" (the archive has no age 0:
                    all 39 images with age 0, all from vidir_modern, are empty there); read by
                    vocabulary.parse_age, the metadata stage's age parser
anatom_site_general localization, coarser: scalp/face/ear/neck -> head/neck; chest/abdomen -> anterior
                    torso; back -> posterior torso; upper extremity/hand -> upper extremity; lower
                    extremity/foot -> lower extremity; acral -> palms/soles; trunk, genital, unknown -> ""
benign_malignant    nv -> benign, mel -> malignant, every other class "" (the archive leaves it empty)
concomitant_biopsy  histo -> True, follow_up / consensus / confocal -> False
diagnosis           nv nevus, mel melanoma, bcc basal cell carcinoma, bkl pigmented benign keratosis,
                    df dermatofibroma, vasc vascular lesion, akiec actinic keratosis (see below)
diagnosis_confirm_  histo histopathology, follow_up serial imaging showing no change, consensus single
type                image expert consensus, confocal confocal microscopy with consensus dermoscopy
image_type          dermoscopic (every release image is dermoscopic)
lesion_id           lesion_id unchanged (HAM_*; the archive has its own IL_* ids, one to one with ours)
melanocytic         True for nv and mel, else False
sex                 male / female; unknown -> ""
==================  ==================================================================================

Where the archive knows more than the release (so no mapping can reproduce it):

- akiec covers actinic keratosis and intraepithelial carcinoma (Bowen's disease); the archive splits it into
  "actinic keratosis" (130 images) and "squamous cell carcinoma" (197: 186 rosendahl, 11 vidir_modern). We map
  all akiec to "actinic keratosis", the class name, so 197 rows differ.
- sex: 10 images (4 lesions, vidir_modern) are "unknown" in the release but male/female in the archive.
- age: 4 images (2 lesions) have no age in the release but 40 / 50 in the archive; 2 images of a lesion aged 5
  in the release are empty in the archive (its other 2 images are 5 there too).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from pipeline.common import PipelineError, read_csv, write_csv
from pipeline.vocabulary import (HAM_COLUMNS, ISIC_CLASS_NODE, ISIC_CLASS_SUBTREES, ISIC_CONFIRM_TYPE, ISIC_DIAGNOSIS,
                                 ISIC_IMAGE_TYPE, ISIC_LEVELS, ISIC_SEX, ISIC_SITE, isic_class_of, isic_levels,
                                 parse_age)

ISIC_COLUMNS = (
    "isic_id", "attribution", "copyright_license", "age_approx", "anatom_site_general", "benign_malignant",
    "concomitant_biopsy", "diagnosis", "diagnosis_confirm_type", "image_type", "lesion_id", "melanocytic", "sex",
)
VIDIR_ATTRIBUTION = "ViDIR Group, Department of Dermatology, Medical University of Vienna"
CC_BY_NC = "CC-BY-NC"


def to_isic_rows(rows: Iterable[dict], attribution: str, license: str) -> list[dict]:
    """One ISIC-vocabulary row (keys ISIC_COLUMNS, string values) per release row, in input order."""
    return [_to_isic_row(row, number, attribution, license) for number, row in enumerate(rows, start=1)]


def write_isic_csv(rows: Iterable[dict], path: Path | str, attribution: str = VIDIR_ATTRIBUTION,
                   license: str = CC_BY_NC) -> int:
    """Convert release rows and write them as an ISIC-archive CSV; returns the number of rows written."""
    isic_rows = to_isic_rows(rows, attribution, license)
    write_csv(Path(path), isic_rows, ISIC_COLUMNS)
    return len(isic_rows)


def _to_isic_row(row: dict, number: int, attribution: str, license: str) -> dict:
    where = f"row {number} ({row.get('image_id') or 'no image_id'})"
    missing = [column for column in HAM_COLUMNS if column not in row]
    if missing:
        raise PipelineError(f"{where}: missing column(s) {', '.join(missing)}")
    diagnosis, benign_malignant, melanocytic = _lookup(ISIC_DIAGNOSIS, row, "dx", where)
    confirm_type, biopsy = _lookup(ISIC_CONFIRM_TYPE, row, "dx_type", where)
    return {
        "isic_id": row["image_id"],
        "attribution": attribution,
        "copyright_license": license,
        "age_approx": _age(row["age"], where),
        "anatom_site_general": _lookup(ISIC_SITE, row, "localization", where),
        "benign_malignant": benign_malignant,
        "concomitant_biopsy": biopsy,
        "diagnosis": diagnosis,
        "diagnosis_confirm_type": confirm_type,
        "image_type": ISIC_IMAGE_TYPE["dsc"],  # the release holds dermatoscopic images only
        "lesion_id": row["lesion_id"],
        "melanocytic": melanocytic,
        "sex": _lookup(ISIC_SEX, row, "sex", where),
    }


def _lookup(table: dict, row: dict, column: str, where: str):
    value = row[column]
    if value not in table:
        raise PipelineError(f"{where}: unknown {column} {value!r} (expected one of {', '.join(table)})")
    return table[value]


def _age(value: str, where: str) -> str:
    try:
        age = parse_age(value)
    except ValueError as error:
        raise PipelineError(f"{where}: {error}") from None
    if age is None:
        return ""
    if age != int(age):
        raise PipelineError(f"{where}: age {value.strip()!r} is not a whole number of years")
    # Age 0 counts as not known: the archive has no age 0 at all and leaves all 39 such images empty.
    return "" if age == 0 else str(int(age))


# ================================================================================================ the archive today

CONTRIBUTION_CSV = "isic_contribution.csv"
ISIC_CLI_CSV = "isic_metadata.csv"
CONTRIBUTION_COLUMNS = ("filename", "lesion_id", "age", "sex", "anatom_site_general", "image_type", "diagnosis",
                        "diagnosis_confirm_type", "concomitant_biopsy", "melanocytic")
# isic-cli writes isic_id, attribution, copyright_license, then every metadata field of the images, sorted by name;
# these are the fields the release's rows have (all five diagnosis levels always, for a fixed header).
ISIC_CLI_FIELDS = ("age_approx", "anatom_site_general", "concomitant_biopsy", *ISIC_LEVELS, "diagnosis_confirm_type",
                   "image_type", "lesion_id", "melanocytic", "sex")
ISIC_CLI_COLUMNS = ("isic_id", "attribution", "copyright_license", *sorted(ISIC_CLI_FIELDS))
INSTALL_HINT = "pip install 'isic-metadata>=4.12,<5' (or the project's extra: pip install -e '.[isic]')"


def isic_diagnoses(images_csv: Path | str) -> dict[str, str]:
    """image_id -> ISIC node from the metadata stage's images.csv (empty where it has no `isic_diagnosis`)."""
    return {row["image_id"]: row.get("isic_diagnosis") or "" for row in read_csv(Path(images_csv), ("image_id",))}


def isic_diagnosis(row: dict, hierarchy: Mapping[str, str], where: str) -> str:
    """The row's node: hierarchy[image_id] or its class's node; PipelineError if it is not under the row's class."""
    dx = row["dx"]
    if dx not in ISIC_CLASS_NODE:
        raise PipelineError(f"{where}: unknown dx {dx!r} (expected one of {', '.join(ISIC_CLASS_NODE)})")
    node = hierarchy.get(row["image_id"]) or ISIC_CLASS_NODE[dx]
    if isic_class_of(node) != dx:
        raise PipelineError(f"{where}: isic diagnosis {node!r} does not lie under class {dx} "
                            f"({'; '.join(ISIC_CLASS_SUBTREES[dx])})")
    return node


def _common_fields(row: dict, number: int, hierarchy: Mapping[str, str]) -> dict:
    where = f"row {number} ({row.get('image_id') or 'no image_id'})"
    missing = [column for column in HAM_COLUMNS if column not in row]
    if missing:
        raise PipelineError(f"{where}: missing column(s) {', '.join(missing)}")
    _, _, melanocytic = _lookup(ISIC_DIAGNOSIS, row, "dx", where)
    confirm_type, biopsy = _lookup(ISIC_CONFIRM_TYPE, row, "dx_type", where)
    return {
        "lesion_id": row["lesion_id"],
        "age": _age(row["age"], where),
        "sex": _lookup(ISIC_SEX, row, "sex", where),
        "anatom_site_general": _lookup(ISIC_SITE, row, "localization", where),
        "image_type": ISIC_IMAGE_TYPE["dsc"],  # the release holds dermatoscopic images only
        "diagnosis": isic_diagnosis(row, hierarchy, where),
        "diagnosis_confirm_type": confirm_type,
        "concomitant_biopsy": biopsy,
        "melanocytic": melanocytic,
    }


def to_contribution_rows(rows: Iterable[dict], hierarchy: Mapping[str, str] | None = None,
                         common: list[dict] | None = None) -> list[dict]:
    """One contribution-metadata row (keys CONTRIBUTION_COLUMNS) per release row, in input order; `hierarchy`
    maps image_id to its ISIC node (missing: the class's node); `common`: the rows' `_common_fields`, when the
    caller has them already."""
    rows = list(rows)
    if common is None:
        common = [_common_fields(row, number, hierarchy or {}) for number, row in enumerate(rows, start=1)]
    return [{"filename": f"{row.get('image_id', '')}.jpg", **fields} for row, fields in zip(rows, common)]


def to_isic_cli_rows(rows: Iterable[dict], hierarchy: Mapping[str, str], attribution: str, license: str,
                     common: list[dict] | None = None) -> list[dict]:
    """One row as isic-cli's metadata.csv has it (keys ISIC_CLI_COLUMNS) per release row, in input order."""
    rows = list(rows)
    if common is None:
        common = [_common_fields(row, number, hierarchy) for number, row in enumerate(rows, start=1)]
    result = []
    for row, fields in zip(rows, common):
        fields = dict(fields)
        node, age = fields.pop("diagnosis"), fields.pop("age")
        result.append({"isic_id": row["image_id"], "attribution": attribution, "copyright_license": license,
                       **fields, "age_approx": age, **isic_levels(node)})
    return result


def write_isic_outputs(rows: list[dict], split_dir: Path | str, hierarchy: Mapping[str, str], attribution: str,
                       license: str) -> list[str]:
    """Write a split's contribution metadata and isic-cli export into split_dir; returns their file names."""
    split_dir = Path(split_dir)
    common = [_common_fields(row, number, hierarchy) for number, row in enumerate(rows, start=1)]
    write_csv(split_dir / CONTRIBUTION_CSV, to_contribution_rows(rows, hierarchy, common), CONTRIBUTION_COLUMNS)
    write_csv(split_dir / ISIC_CLI_CSV, to_isic_cli_rows(rows, hierarchy, attribution, license, common),
              ISIC_CLI_COLUMNS)
    return [CONTRIBUTION_CSV, ISIC_CLI_CSV]


# ------------------------------------------------------------------------------------ validation by the archive's package

@dataclass(frozen=True)
class IsicProblem:
    """One problem the archive's validator finds; the fields of pipeline.validate.Problem, in its order. ``row``:
    1-based data row; None for the whole file or batch."""

    file: str
    row: int | None
    field: str
    value: str
    message: str


class IsicMetadataMissing(PipelineError):
    """The optional `isic-metadata` package is not installed."""


def _official():
    try:
        from isic_metadata.metadata import MetadataBatch, MetadataRow, convert_errors
    except ImportError:
        raise IsicMetadataMissing(f"the ISIC Archive's validator is not installed: {INSTALL_HINT}") from None
    from pydantic import ValidationError
    return MetadataRow, MetadataBatch, ValidationError, convert_errors


def _errors(error, convert_errors, file: str, row: int | None, values: dict) -> list[IsicProblem]:
    problems = []
    for detail in convert_errors(error):
        location = [str(part) for part in detail.get("loc", ()) if part != "items"]
        field = location[-1] if location and not location[-1].isdigit() else ""
        value = values.get(field, "") if field else ""
        problems.append(IsicProblem(file, row, field, str(value), detail.get("msg", "invalid")))
    return problems


# Columns the archive does not read as metadata: the image's file name and the export's own columns.
_NOT_METADATA = ("filename", "isic_id", "attribution", "copyright_license")


def validate_contribution_rows(rows: list[dict], file: str = "<rows>") -> list[IsicProblem]:
    """Check rows (contribution metadata, or an isic-cli export's rows) with the `isic-metadata` package: each row
    with MetadataRow, then all valid rows together with MetadataBatch. Raises IsicMetadataMissing without it."""
    MetadataRow, MetadataBatch, ValidationError, convert_errors = _official()
    problems, valid = [], []
    for number, row in enumerate(rows, start=1):
        values = {key: value for key, value in row.items() if key not in _NOT_METADATA}
        if "age_approx" in values:  # an export's approximate age is the contribution's `age`
            values["age"] = values.pop("age_approx")
        try:
            valid.append(MetadataRow(**values))
        except ValidationError as error:
            problems += _errors(error, convert_errors, file, number, values)
    try:
        MetadataBatch(items=valid)
    except ValidationError as error:
        problems += _errors(error, convert_errors, file, None, {})
    return problems


def isic_kind(header: list[str]) -> str | None:
    """'contribution' or 'isic-cli' when a CSV header is one of the ISIC outputs, else None."""
    if header[:3] == ["isic_id", "attribution", "copyright_license"] and ISIC_LEVELS[0] in header:
        return "isic-cli"
    if "filename" in header and "diagnosis" in header and "isic_id" not in header:
        return "contribution"
    return None


def validate_isic_file(path: Path | str) -> list[IsicProblem] | None:
    """The `ham validate` hook: None when the CSV is not ISIC contribution metadata or an isic-cli export (its
    header says which), else the problems the archive's validator finds in it (one naming the missing package
    when it is not installed)."""
    file = str(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            kind = isic_kind(header)
            rows = list(reader) if kind else []
    except (OSError, UnicodeDecodeError, csv.Error):
        return None  # not readable as a CSV: the table checks report that
    if kind is None:
        return None
    try:
        return validate_contribution_rows(rows, file)
    except IsicMetadataMissing as error:
        return [IsicProblem(file, None, "", "", f"cannot check ISIC {kind} metadata: {error}")]
