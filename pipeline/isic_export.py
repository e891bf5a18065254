"""Release metadata (HAM10000 columns) -> ISIC Archive vocabulary.

Input rows have the release columns ``lesion_id,image_id,dx,dx_type,age,sex,localization`` (``dataset`` and any
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

from pathlib import Path
from typing import Iterable

from pipeline.common import PipelineError, write_csv
from pipeline.vocabulary import (HAM_COLUMNS, ISIC_CONFIRM_TYPE, ISIC_DIAGNOSIS, ISIC_IMAGE_TYPE, ISIC_SEX, ISIC_SITE,
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
