"""Release metadata -> ISIC Archive vocabulary: today's contribution metadata and isic-cli export, validated by the
archive's own package (isic-metadata) and read back by the `isic` source kind; and the older flat export, checked
row by row against the archive's own export of the HAM10000 collection."""
import csv
import shutil
import sys
from collections import Counter
from itertools import cycle
from pathlib import Path

import pytest

from pipeline.common import PipelineError, read_csv, sha256_file, write_csv
from pipeline.isic_export import (
    CC_BY_NC,
    CONTRIBUTION_COLUMNS,
    CONTRIBUTION_CSV,
    ISIC_CLI_COLUMNS,
    ISIC_CLI_CSV,
    ISIC_COLUMNS,
    VIDIR_ATTRIBUTION,
    IsicProblem,
    isic_diagnoses,
    to_contribution_rows,
    to_isic_cli_rows,
    to_isic_rows,
    validate_contribution_rows,
    validate_isic_file,
    write_isic_csv,
    write_isic_outputs,
)
from pipeline.metadata import normalise
from pipeline.sources import expand
from pipeline.sources import isic as isic_reader
from pipeline.unify import load_rules
from pipeline.vocabulary import (CLASSES, ISIC_CLASS_NODE, ISIC_SITE, SITE_FROM_ISIC, isic_class_of, isic_levels,
                                 isic_refines)

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



# ================================================================================================ the archive today

needs_validator = pytest.mark.skipif(
    __import__("importlib").util.find_spec("isic_metadata") is None,
    reason="isic-metadata is not installed (pip install -e '.[test]')")

NEVUS = ISIC_CLASS_NODE["nv"]


def refined_hierarchy(rows: list[dict]) -> dict[str, str]:
    """image_id -> a node for each row: every refinement node of the rules in turn (per class), so that all of them
    pass through the outputs, and the class's node for every third row (an image without a report)."""
    nodes = {dx: cycle([ISIC_CLASS_NODE[dx], *dict.fromkeys(r.isic for r in load_rules() if r.refines and r.outcome == dx)])
             for dx in CLASSES}
    return {row["image_id"]: next(nodes[row["dx"]]) for row in rows}


def test_contribution_row():
    [row] = to_contribution_rows([release_row(dx="nv", dx_type="histo")],
                                 {"ISIC_0000001": f"{NEVUS}:Nevus, NOS, Junctional"})
    assert row == {
        "filename": "ISIC_0000001.jpg", "lesion_id": "HAM_0000001", "age": "45", "sex": "female",
        "anatom_site_general": "posterior torso", "image_type": "dermoscopic",
        "diagnosis": f"{NEVUS}:Nevus, NOS, Junctional", "diagnosis_confirm_type": "histopathology",
        "concomitant_biopsy": "True", "melanocytic": "True",
    }
    assert list(row) == list(CONTRIBUTION_COLUMNS)
    [other] = to_contribution_rows([release_row(dx="akiec", age="0.0", sex="unknown", localization="trunk")])
    assert other["diagnosis"] == ISIC_CLASS_NODE["akiec"]  # no node given: the class's
    assert (other["age"], other["sex"], other["anatom_site_general"], other["melanocytic"]) == ("", "", "", "False")


def test_isic_cli_row_has_one_column_per_level():
    [row] = to_isic_cli_rows([release_row()], {"ISIC_0000001": f"{NEVUS}:Blue nevus:Blue nevus, Cellular"},
                             "Someone", "CC-BY")
    assert list(row) != list(ISIC_CLI_COLUMNS) and set(row) == set(ISIC_CLI_COLUMNS)
    assert list(ISIC_CLI_COLUMNS[:3]) == ["isic_id", "attribution", "copyright_license"]
    assert list(ISIC_CLI_COLUMNS[3:]) == sorted(ISIC_CLI_COLUMNS[3:])  # isic-cli sorts the metadata fields
    assert [row[f"diagnosis_{n}"] for n in range(1, 6)] == [
        "Benign", "Benign melanocytic proliferations", "Nevus", "Blue nevus", "Blue nevus, Cellular"]
    [shallow] = to_isic_cli_rows([release_row(dx="vasc")], {}, "Someone", "CC-BY")
    assert [shallow[f"diagnosis_{n}"] for n in range(1, 6)] == [
        "Benign", "Benign soft tissue proliferations - Vascular", "", "", ""]
    assert (row["isic_id"], row["age_approx"], row["attribution"]) == ("ISIC_0000001", "45", "Someone")


def test_a_node_outside_the_rows_class_stops_the_export():
    rows = [release_row(), release_row(image_id="ISIC_0000002", dx="bkl")]
    with pytest.raises(PipelineError, match=r"row 2 \(ISIC_0000002\): isic diagnosis '.*Nevus, NOS, Junctional' "
                                            r"does not lie under class bkl"):
        to_contribution_rows(rows, {"ISIC_0000002": f"{NEVUS}:Nevus, NOS, Junctional"})
    with pytest.raises(PipelineError, match="unknown dx 'scc'"):
        to_isic_cli_rows([release_row(dx="scc")], {}, "a", "b")


@needs_validator
@pytest.mark.real_data
def test_all_10015_release_rows_pass_the_archive_validator_and_the_flat_export_fails(comparison):
    release, flat, _ = comparison
    hierarchy = refined_hierarchy(release)
    assert validate_contribution_rows(to_contribution_rows(release, hierarchy)) == []
    assert validate_contribution_rows(to_isic_cli_rows(release, hierarchy, VIDIR_ATTRIBUTION, CC_BY_NC)) == []
    # The older export's flat diagnoses ("nevus", "basal cell carcinoma") are what the archive rejects today.
    problems = validate_contribution_rows(flat)
    assert {p.row for p in problems} == set(range(1, len(flat) + 1))
    assert {p.field for p in problems} == {"diagnosis"}
    assert "Unsupported value for diagnosis: 'nevus'." in {p.message for p in problems}


@needs_validator
def test_the_validator_names_row_field_and_value_and_checks_the_batch():
    rows = to_contribution_rows([release_row(), release_row(image_id="ISIC_0000002", lesion_id="HAM_0000002")])
    bad = [dict(rows[0], sex="M"), dict(rows[1], diagnosis="nevus", concomitant_biopsy="True")]
    assert validate_contribution_rows(bad, "x.csv") == [
        IsicProblem("x.csv", 1, "sex", "M", "Input should be 'male' or 'female'"),
        IsicProblem("x.csv", 2, "diagnosis", "nevus", "Unsupported value for diagnosis: 'nevus'."),
    ]
    # MetadataBatch: one lesion may not belong to two patients.
    batch = [dict(rows[0], patient_id="P1"), dict(rows[0], filename="b.jpg", patient_id="P2")]
    [problem] = validate_contribution_rows(batch, "x.csv")
    assert problem.row is None and "multiple patients" in problem.message


@needs_validator
def test_validate_isic_file_recognises_both_outputs(tmp_path):
    rows = [release_row(), release_row(image_id="ISIC_0000002", dx="bcc", dx_type="histo")]
    names = write_isic_outputs(rows, tmp_path, {"ISIC_0000002": f"{ISIC_CLASS_NODE['bcc']}:Basal cell carcinoma, Nodular"},
                               VIDIR_ATTRIBUTION, CC_BY_NC)
    assert names == [CONTRIBUTION_CSV, ISIC_CLI_CSV]
    assert validate_isic_file(tmp_path / CONTRIBUTION_CSV) == []
    assert validate_isic_file(tmp_path / ISIC_CLI_CSV) == []
    damaged = read_csv(tmp_path / ISIC_CLI_CSV)
    damaged[1]["diagnosis_3"] = "Basal cell carcinoma, Nodular"  # a level skipped
    write_csv(tmp_path / "damaged.csv", damaged, ISIC_CLI_COLUMNS)
    [problem] = validate_isic_file(tmp_path / "damaged.csv")
    assert (problem.row, problem.field) == (2, "diagnosis") and "Unsupported value" in problem.message
    write_csv(tmp_path / "release.csv", rows, ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"))
    assert validate_isic_file(tmp_path / "release.csv") is None  # not an ISIC file: the table checks handle it


@needs_validator
def test_ham_validate_checks_isic_files_with_the_archives_validator(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    write_isic_outputs([release_row()], tmp_path, {}, VIDIR_ATTRIBUTION, CC_BY_NC)
    files = [str(tmp_path / CONTRIBUTION_CSV), str(tmp_path / ISIC_CLI_CSV)]
    result = CliRunner().invoke(main, ["validate", *files])
    assert (result.exit_code, result.output.strip()) == (0, "2 files valid")
    damaged = read_csv(tmp_path / ISIC_CLI_CSV)
    damaged[0]["diagnosis_3"] = "Basal cell carcinoma, Nodular"  # a level skipped
    write_csv(tmp_path / ISIC_CLI_CSV, damaged, ISIC_CLI_COLUMNS)
    result = CliRunner().invoke(main, ["validate", *files])
    assert result.exit_code == 1 and "Unsupported value" in result.output and ISIC_CLI_CSV in result.output


def test_validate_isic_file_without_the_package(tmp_path, monkeypatch):
    write_isic_outputs([release_row()], tmp_path, {}, VIDIR_ATTRIBUTION, CC_BY_NC)
    monkeypatch.setitem(sys.modules, "isic_metadata.metadata", None)  # as if not installed
    [problem] = validate_isic_file(tmp_path / CONTRIBUTION_CSV)
    assert problem.row is None
    assert "cannot check ISIC contribution metadata: the ISIC Archive's validator is not installed: pip install" \
        in problem.message


@pytest.mark.real_data
def test_the_isic_cli_export_reads_back_to_the_same_rows(comparison, ham_data, tmp_path):
    """The release rows of the 490 real training images, each with a node (every refinement node of the rules
    among them), written as isic-cli's layout and read by the `isic` source kind, then normalised by the metadata
    stage: the same class, confirm type, age, sex, node and (where the coarser ISIC site allows) site."""
    release, _, _ = comparison
    images = {p.stem: p for p in sorted((ham_data / "ham10000" / "images").glob("*.jpg"))}
    rows = [row for row in release if row["image_id"] in images]
    assert len(rows) == 490
    hierarchy = refined_hierarchy(rows)
    root = tmp_path / "download"
    write_isic_outputs(rows, root, hierarchy, VIDIR_ATTRIBUTION, CC_BY_NC)
    (root / ISIC_CLI_CSV).rename(root / "metadata.csv")  # the name isic-cli gives it
    for row in rows:
        (root / f"{row['image_id']}.jpg").symlink_to(images[row["image_id"]])
    found = list(expand(isic_reader.read_isic(root, {"metadata": "metadata.csv"})))
    rejects = [r for r in found if not hasattr(r, "fields")]
    assert [r.origin for r in rejects] == [CONTRIBUTION_CSV]  # the other output, not an image
    items = {item.fields["image_id"]: item for item in found if hasattr(item, "fields")}
    assert len(items) == len(rows)
    rules = load_rules()
    exact = Counter()
    for row in rows:
        fields = items[row["image_id"]].fields
        assert items[row["image_id"]].data == images[row["image_id"]].read_bytes()
        assert (fields["lesion_key"], fields["dx"], fields["dx_type"], fields["sex"] or "unknown") == (
            row["lesion_id"], row["dx"], row["dx_type"], row["sex"]), row["image_id"]
        assert fields["age"] == ("" if row["age"] in ("", "0.0") else str(int(float(row["age"]))))
        assert fields["isic_diagnosis"] == fields["diagnosis"] == hierarchy[row["image_id"]]
        site = ISIC_SITE[row["localization"]]
        assert fields["localization"] == SITE_FROM_ISIC.get(site, site)
        candidate = {**fields, "source": "archive", "extra": '{"isic_diagnosis": "%s"}' % fields["isic_diagnosis"]}
        exact["site"] += fields["localization"] == row["localization"]
        candidate["localization"] = row["localization"]  # the archive's site is coarser: the release's, to compare
        again = normalise(candidate, rules, {"age_cap": 85})
        assert (again["dx"], again["dx_type"], again["sex"], again["localization"], again["isic_diagnosis"]) == (
            row["dx"], row["dx_type"], row["sex"], row["localization"], hierarchy[row["image_id"]])
    assert len(rows) > exact["site"] > len(rows) / 3  # back, acral, upper and lower extremity read back as they are
    reached = Counter(isic_refines(row["dx"], hierarchy[row["image_id"]]) for row in rows)
    assert reached[True] > reached[False] > 0
    assert {isic_class_of(node) for node in hierarchy.values()} == set(CLASSES)


def test_isic_diagnoses_reads_images_csv(tmp_path):
    write_csv(tmp_path / "images.csv", [{"image_id": "a", "isic_diagnosis": NEVUS}, {"image_id": "b"}],
              ("image_id", "isic_diagnosis"))
    assert isic_diagnoses(tmp_path / "images.csv") == {"a": NEVUS, "b": ""}
    write_csv(tmp_path / "old.csv", [{"image_id": "a"}], ("image_id",))  # before the column existed
    assert isic_diagnoses(tmp_path / "old.csv") == {"a": ""}


@pytest.mark.real_data
def test_a_release_writes_both_isic_files_per_split_under_each_rows_class(ham_data, tmp_path):
    """build_release on 40 real images (their real metadata, nodes from the rules in images.csv): each split has
    both ISIC files, in the manifest, and every ISIC diagnosis lies under its row's HAM10000 class."""
    from pipeline.release import build_release
    from tests.isic_checks import check_isic_outputs

    metadata = ham_data / "ham10000" / "metadata" / "HAM10000_metadata_with_dataset_DERIVED.csv"
    on_disk = {p.stem for p in (ham_data / "ham10000" / "images").glob("*.jpg")}
    rows = sorted((r for r in read_csv(metadata) if r["image_id"] in on_disk),
                  key=lambda r: (r["dx"], r["lesion_id"], r["image_id"]))[::12][:40]
    assert {r["dx"] for r in rows} == set(CLASSES)
    hierarchy = refined_hierarchy(rows)
    write_csv(tmp_path / "metadata.csv", rows, ("lesion_id", "image_id", "dx", "dx_type", "age", "sex",
                                                 "localization", "dataset"))
    standardised = tmp_path / "std"  # a copy: the release links its images, never the shared data's files
    standardised.mkdir()
    for r in rows:
        name = f"{r['image_id']}.jpg"
        shutil.copyfile(ham_data / "ham10000" / "images" / name, standardised / name)
    write_csv(tmp_path / "images.csv", ({"image_id": r["image_id"], "file": f"{r['image_id']}.jpg",
                                         "sha256": sha256_file(standardised / f"{r['image_id']}.jpg"),
                                         "isic_diagnosis": hierarchy[r["image_id"]]} for r in rows),
              ("image_id", "file", "sha256", "isic_diagnosis"))
    write_csv(tmp_path / "splits.csv", ({"lesion_id": lesion, "split": ("train", "test")[n % 2]}
                                        for n, lesion in enumerate(dict.fromkeys(r["lesion_id"] for r in rows))),
              ("lesion_id", "split"))
    params = {"isic_attribution": VIDIR_ATTRIBUTION, "isic_license": CC_BY_NC, "attribution": "a", "license": "b"}
    build_release(tmp_path / "metadata.csv", tmp_path / "images.csv", tmp_path / "splits.csv",
                  standardised, params, tmp_path / "release", tmp_path / "summary.json")
    listed = {m["path"] for m in read_csv(tmp_path / "release" / "manifest.csv")}
    assert {f"{split}/{name}" for split in ("train", "test") for name in (CONTRIBUTION_CSV, ISIC_CLI_CSV)} <= listed
    counts = check_isic_outputs(tmp_path / "release")
    assert sum(c["rows"] for c in counts.values()) == len(rows)
    assert sum(c["deeper"] for c in counts.values()) == sum(isic_refines(r["dx"], hierarchy[r["image_id"]])
                                                             for r in rows) > 0

    # A node outside its row's class is caught by the check.
    split_dir = tmp_path / "release" / "train"
    contribution, export = read_csv(split_dir / CONTRIBUTION_CSV), read_csv(split_dir / ISIC_CLI_CSV)
    index = next(i for i, r in enumerate(contribution) if not r["diagnosis"].startswith(NEVUS))
    contribution[index]["diagnosis"] = NEVUS
    export[index].update(isic_levels(NEVUS))
    write_csv(split_dir / CONTRIBUTION_CSV, contribution, CONTRIBUTION_COLUMNS)
    write_csv(split_dir / ISIC_CLI_CSV, export, ISIC_CLI_COLUMNS)
    with pytest.raises(AssertionError, match="is not under"):
        check_isic_outputs(tmp_path / "release")
