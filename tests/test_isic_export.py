"""Release metadata -> ISIC Archive vocabulary, checked row by row against the archive's own export."""
import csv
from collections import Counter
from pathlib import Path

import pytest

from pipeline.common import PipelineError
from pipeline.isic_export import (
    CC_BY_NC,
    ISIC_COLUMNS,
    VIDIR_ATTRIBUTION,
    to_isic_rows,
    write_isic_csv,
)

METADATA = Path("ham10000") / "metadata"

# Where the archive knows more than the release; documented in the module docstring.
# (image_id, column) -> (ours, archive's)
KNOWN_AGE_AND_SEX_DIFFERENCES = {
    ("ISIC_0032960", "age_approx"): ("", "50"),  # HAM_0000169
    ("ISIC_0033708", "age_approx"): ("", "50"),
    ("ISIC_0031668", "age_approx"): ("", "40"),  # HAM_0000698
    ("ISIC_0027431", "age_approx"): ("", "40"),
    ("ISIC_0029970", "age_approx"): ("5", ""),  # HAM_0005712; its other two images are 5 in the archive too
    ("ISIC_0025101", "age_approx"): ("5", ""),
    ("ISIC_0032679", "sex"): ("", "female"),  # HAM_0005942
    ("ISIC_0032529", "sex"): ("", "female"),
    ("ISIC_0033119", "sex"): ("", "female"),
    ("ISIC_0032599", "sex"): ("", "female"),  # HAM_0003352
    ("ISIC_0033472", "sex"): ("", "female"),
    ("ISIC_0032667", "sex"): ("", "female"),
    ("ISIC_0032966", "sex"): ("", "female"),  # HAM_0004076
    ("ISIC_0033864", "sex"): ("", "female"),
    ("ISIC_0032946", "sex"): ("", "male"),  # HAM_0003649
    ("ISIC_0033153", "sex"): ("", "male"),
}
# akiec is "actinic keratosis" or "squamous cell carcinoma" in the archive; we can only say the former.
AKIEC_AS_SCC = 197
AKIEC_AS_AK = 130


def read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def release_row(**values) -> dict:
    row = {"lesion_id": "HAM_0000001", "image_id": "ISIC_0000001", "dx": "nv", "dx_type": "follow_up",
           "age": "45.0", "sex": "female", "localization": "back"}
    row.update(values)
    return row


@pytest.fixture(scope="module")
def comparison(ham_data):
    """(release rows, our ISIC rows, the archive's rows by isic_id)."""
    release = read(ham_data / METADATA / "HAM10000_metadata.csv")
    archive = {row["isic_id"]: row for row in read(ham_data / METADATA / "ISIC_archive_HAM10000_collection_metadata.csv")}
    ours = to_isic_rows(release, attribution=VIDIR_ATTRIBUTION, license=CC_BY_NC)
    return release, ours, archive


@pytest.mark.real_data
def test_every_field_of_all_10015_rows_matches_the_archive_except_documented_ones(comparison):
    release, ours, archive = comparison
    assert len(ours) == len(release) == 10015
    assert all(row["isic_id"] in archive for row in ours)

    differences = {}
    for row in ours:
        theirs = archive[row["isic_id"]]
        assert list(row) == list(ISIC_COLUMNS) and list(theirs) == list(ISIC_COLUMNS)
        for column in ISIC_COLUMNS:
            if column != "lesion_id" and row[column] != theirs[column]:
                differences[(row["isic_id"], column)] = (row[column], theirs[column])

    diagnosis = Counter(value for (_, column), value in differences.items() if column == "diagnosis")
    assert diagnosis == {("actinic keratosis", "squamous cell carcinoma"): AKIEC_AS_SCC}
    others = {key: value for key, value in differences.items() if key[1] != "diagnosis"}
    assert others == KNOWN_AGE_AND_SEX_DIFFERENCES
    print(f"\nISIC export: {len(ours)} rows x {len(ISIC_COLUMNS) - 1} fields compared; "
          f"{len(differences)} known differences: {AKIEC_AS_SCC} akiec rows are 'squamous cell carcinoma' in "
          f"the archive, {Counter(c for _, c in others)}")


@pytest.mark.real_data
def test_akiec_split_in_the_archive(comparison):
    release, ours, archive = comparison
    akiec = [row["isic_id"] for row in ours if row["diagnosis"] == "actinic keratosis"]
    assert Counter(archive[i]["diagnosis"] for i in akiec) == {
        "squamous cell carcinoma": AKIEC_AS_SCC, "actinic keratosis": AKIEC_AS_AK,
    }
    assert len(akiec) == Counter(row["dx"] for row in release)["akiec"] == 327


@pytest.mark.real_data
def test_lesion_ids_correspond_one_to_one(comparison):
    release, ours, archive = comparison
    assert [row["lesion_id"] for row in ours] == [row["lesion_id"] for row in release]
    pairs = {(row["lesion_id"], archive[row["isic_id"]]["lesion_id"]) for row in ours}
    assert len(pairs) == len({ours_id for ours_id, _ in pairs}) == len({theirs for _, theirs in pairs}) == 7470


@pytest.mark.real_data
def test_written_csv_reads_back(comparison, tmp_path):
    release, ours, _ = comparison
    path = tmp_path / "isic.csv"
    assert write_isic_csv(release, path, VIDIR_ATTRIBUTION, CC_BY_NC) == 10015
    with open(path, newline="", encoding="utf-8") as handle:
        assert handle.readline().rstrip("\n") == ",".join(ISIC_COLUMNS)
    assert read(path) == ours


# --- single rows --------------------------------------------------------------------------------------------------


def test_mapping_of_one_row():
    [row] = to_isic_rows([release_row(dataset="vidir_molemax")], attribution="Someone", license="CC-BY")
    assert row == {
        "isic_id": "ISIC_0000001", "attribution": "Someone", "copyright_license": "CC-BY", "age_approx": "45",
        "anatom_site_general": "posterior torso", "benign_malignant": "benign", "concomitant_biopsy": "False",
        "diagnosis": "nevus", "diagnosis_confirm_type": "serial imaging showing no change",
        "image_type": "dermoscopic", "lesion_id": "HAM_0000001", "melanocytic": "True", "sex": "female",
    }


@pytest.mark.parametrize("values, column, expected", [
    ({"dx": "mel", "dx_type": "histo"}, "benign_malignant", "malignant"),
    ({"dx": "mel", "dx_type": "histo"}, "concomitant_biopsy", "True"),
    ({"dx": "bcc"}, "benign_malignant", ""),
    ({"dx": "bkl"}, "melanocytic", "False"),
    ({"dx": "akiec"}, "diagnosis", "actinic keratosis"),
    ({"dx_type": "confocal"}, "diagnosis_confirm_type", "confocal microscopy with consensus dermoscopy"),
    ({"age": ""}, "age_approx", ""),
    ({"age": "0.0"}, "age_approx", ""),
    ({"age": "5.0"}, "age_approx", "5"),
    ({"age": "85"}, "age_approx", "85"),
    ({"sex": "unknown"}, "sex", ""),
    ({"localization": "acral"}, "anatom_site_general", "palms/soles"),
    ({"localization": "trunk"}, "anatom_site_general", ""),
    ({"localization": "ear"}, "anatom_site_general", "head/neck"),
])
def test_single_values(values, column, expected):
    [row] = to_isic_rows([release_row(**values)], VIDIR_ATTRIBUTION, CC_BY_NC)
    assert row[column] == expected


@pytest.mark.parametrize("values, message", [
    ({"dx": "scc"}, "row 1 (ISIC_0000001): unknown dx 'scc'"),
    ({"dx_type": "histopathology"}, "unknown dx_type 'histopathology'"),
    ({"localization": "arm"}, "unknown localization 'arm'"),
    ({"sex": "M"}, "unknown sex 'M'"),
    ({"age": "old"}, "age 'old' is not a number"),
    ({"age": "42.5"}, "not a whole number"),
])
def test_bad_values_name_row_and_field(values, message):
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_isic_rows([release_row(**values)], VIDIR_ATTRIBUTION, CC_BY_NC)


def test_missing_column():
    row = release_row()
    del row["localization"]
    with pytest.raises(PipelineError, match="missing column"):
        to_isic_rows([row], VIDIR_ATTRIBUTION, CC_BY_NC)
