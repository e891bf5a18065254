"""Schemas and `ham validate`: the real HAM10000 metadata validates clean, and each corruption gives exactly the
expected problem."""
import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from tests.pipeline_repo import copy_repository, run, workflow_step

from pipeline.cli import validate_command
from pipeline.validate import validate_params
from pipeline.schema_messages import SCHEMA_DIR, Problem, schema_path
from pipeline.tables import ValidRows, detect_kind, validate_csv, validate_metadata_rows
from pipeline.validate import validate_path

HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"
DX_MESSAGE = "expected one of: akiec, bcc, bkl, df, mel, nv, vasc"


# ------------------------------------------------------------------------------------------------- helpers

def metadata_file(ham_data: Path, derived: bool = False) -> Path:
    name = "HAM10000_metadata_with_dataset_DERIVED.csv" if derived else "HAM10000_metadata.csv"
    return ham_data / "ham10000" / "metadata" / name


def read_lines(path: Path) -> list[str]:
    """Lines of a real metadata file (header first), without line ends."""
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def write_lines(path: Path, lines: list[str], end: str = "\n", prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + "".join(line + end for line in lines).encode("utf-8"))
    return path


def set_cell(lines: list[str], row: int, column: str, value: str) -> None:
    """Set one cell of data row ``row`` (1-based) in place (the real files have no quoted cells)."""
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    lines[row] = ",".join(cells)


def find_row(lines: list[str], condition) -> int:
    """First data row (1-based) whose dict satisfies ``condition``."""
    rows = list(csv.DictReader(lines))
    return next(i for i, row in enumerate(rows, 1) if condition(row, rows))


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------------- schemas

def walk_properties(schema, where=""):
    """(where, property schema) for every property of every object in a schema."""
    if isinstance(schema, dict):
        for name, sub in schema.get("properties", {}).items():
            yield f"{where}.{name}", sub
        for key, sub in schema.items():
            yield from walk_properties(sub, f"{where}/{key}")
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            yield from walk_properties(sub, f"{where}[{i}]")


@pytest.mark.parametrize("name", ["metadata-row", "candidates-row", "decisions-row", "manifest-row", "params",
                                  "image-registry-row", "lesion-registry-row", "split-registry-row"])
def test_schema_is_valid_2020_12_with_id_and_descriptions(name):
    schema = json.loads(schema_path(name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://ham10000-repo.example/schemas/{name}.schema.json"
    assert schema["title"] and schema["description"]
    for where, prop in walk_properties(schema):
        # the manifest's if/else only tightens properties described above; a source's `if` only tells its kind
        if where.startswith(("/if", "/else")) or "/if" in where:
            continue
        assert prop.get("description"), f"{name}: property {where} has no description"


def test_every_schema_file_is_checked():
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.schema.json")) == [
        "candidates-row.schema.json", "decisions-row.schema.json", "image-registry-row.schema.json",
        "lesion-registry-row.schema.json", "manifest-row.schema.json", "metadata-row.schema.json",
        "params.schema.json", "split-registry-row.schema.json"]


# ------------------------------------------------------------------------------------------------- real metadata

@pytest.mark.real_data
@pytest.mark.parametrize("derived", [False, True], ids=["original", "with_dataset"])
def test_real_metadata_is_valid(ham_data, derived):
    path = metadata_file(ham_data, derived)
    assert validate_csv(path) == []
    assert validate_path(path) == []


@pytest.mark.real_data
def test_real_metadata_rows_are_valid_as_dicts(ham_data):
    with open(metadata_file(ham_data, derived=True), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10015
    assert validate_metadata_rows(rows, "metadata.csv") == []


@pytest.mark.real_data
def test_unknown_dx(ham_data, tmp_path):
    lines = read_lines(metadata_file(ham_data))
    # a lesion with a single image, so that no other image disagrees with it
    row = find_row(lines, lambda r, rows: sum(x["lesion_id"] == r["lesion_id"] for x in rows) == 1)
    set_cell(lines, row, "dx", "melanoma")
    path = write_lines(tmp_path / "m.csv", lines)
    assert validate_csv(path) == [Problem(str(path), row, "dx", "melanoma", DX_MESSAGE)]


@pytest.mark.real_data
def test_age_not_multiple_of_5(ham_data, tmp_path):
    lines = read_lines(metadata_file(ham_data))
    set_cell(lines, 1, "age", "47")  # row 2 is the same lesion at 80.0: one problem, not two
    path = write_lines(tmp_path / "m.csv", lines)
    assert validate_csv(path) == [
        Problem(str(path), 1, "age", "47", "expected a multiple of 5 from 0 to 85 (e.g. 45.0), or empty")]


@pytest.mark.real_data
def test_duplicate_image_id(ham_data, tmp_path):
    lines = read_lines(metadata_file(ham_data))
    first_id = lines[1].split(",")[1]
    row = find_row(lines, lambda r, rows: r["lesion_id"] != rows[0]["lesion_id"])
    set_cell(lines, row, "image_id", first_id)
    path = write_lines(tmp_path / "m.csv", lines)
    assert validate_csv(path) == [
        Problem(str(path), row, "image_id", first_id, "duplicate image ID (first in row 1)")]


@pytest.mark.real_data
def test_lesion_images_disagree_on_sex(ham_data, tmp_path):
    lines = read_lines(metadata_file(ham_data))
    assert lines[1].split(",")[0] == lines[2].split(",")[0] == "HAM_0000118"
    assert lines[1].split(",")[5] == "male"
    set_cell(lines, 2, "sex", "female")
    path = write_lines(tmp_path / "m.csv", lines)
    assert validate_csv(path) == [
        Problem(str(path), 2, "sex", "female", "lesion HAM_0000118 has sex 'male' in row 1")]


@pytest.mark.real_data
def test_missing_column(ham_data, tmp_path):
    lines = [line.rsplit(",", 1)[0] for line in read_lines(metadata_file(ham_data))]  # drop localization
    path = write_lines(tmp_path / "m.csv", lines)
    assert validate_csv(path) == [
        Problem(str(path), 0, "localization", "", "missing required column 'localization'")]


@pytest.mark.real_data
def test_unexpected_column(ham_data, tmp_path):
    lines = read_lines(metadata_file(ham_data))
    lines = [lines[0] + ",note"] + [line + "," for line in lines[1:]]
    path = write_lines(tmp_path / "m.csv", lines)
    assert validate_csv(path) == [Problem(str(path), 0, "note", "note", "unexpected column 'note'")]


@pytest.mark.real_data
def test_byte_order_mark(ham_data, tmp_path):
    path = write_lines(tmp_path / "m.csv", read_lines(metadata_file(ham_data)), prefix=b"\xef\xbb\xbf")
    assert validate_csv(path) == [
        Problem(str(path), None, "", "\\ufeff", "starts with a byte-order mark; save as UTF-8 without BOM")]


@pytest.mark.real_data
def test_crlf_line_ends(ham_data, tmp_path):
    path = write_lines(tmp_path / "m.csv", read_lines(metadata_file(ham_data)), end="\r\n")
    assert validate_csv(path) == [Problem(str(path), None, "", "\\r\\n", "has CRLF (Windows) line ends; use LF")]


@pytest.mark.real_data
def test_rosendahl_must_be_histo(ham_data, tmp_path):
    lines = read_lines(metadata_file(ham_data, derived=True))
    row = find_row(lines, lambda r, rows: r["dataset"] == "rosendahl")
    set_cell(lines, row, "dx_type", "consensus")
    path = write_lines(tmp_path / "m.csv", lines)
    assert validate_csv(path) == [
        Problem(str(path), row, "dx_type", "consensus", "rosendahl images are all histopathology: expected histo")]


@pytest.mark.real_data
def test_follow_up_only_for_nevi(ham_data, tmp_path):
    lines = read_lines(metadata_file(ham_data))
    row = find_row(lines, lambda r, rows: r["dx"] == "mel")
    set_cell(lines, row, "dx_type", "follow_up")
    path = write_lines(tmp_path / "m.csv", lines)
    assert validate_csv(path) == [
        Problem(str(path), row, "dx_type", "follow_up", "follow_up ground truth is only for nevi (nv), not mel")]


@pytest.mark.real_data
def test_undecodable_bytes(ham_data, tmp_path):
    lines = read_lines(metadata_file(ham_data))[:4]
    path = tmp_path / "m.csv"
    path.write_bytes("\n".join(lines).encode() + b"\nHAM_0000001,ISIC_0000001,nv,histo,45.0,m\xe4le,back\n")
    assert validate_csv(path) == [Problem(str(path), 4, "", "0xe4", "not UTF-8: undecodable byte on line 5")]


# ------------------------------------------------------------------------------------------------- metadata (small)

def meta(image, lesion="HAM_0000001", dx="nv", dx_type="histo", age="45.0", sex="male", site="back", **extra):
    return {"lesion_id": lesion, "image_id": image, "dx": dx, "dx_type": dx_type, "age": age, "sex": sex,
            "localization": site, **extra}


def test_metadata_rows_small_rules():
    rows = [
        meta("ISIC_0000001", site="back"),
        meta("ISIC_0000002", site="trunk", age="45"),  # trunk covers back; 45 == 45.0
        meta("ISIC_0000003", lesion="HAM_0000002", age="", sex="unknown", site="unknown"),
        meta("ISIC_0000004", lesion="HAM_0000003", dx="mel", dx_type="follow_up"),
        meta("ISIC_0000005", site="chest"),  # back and chest are different sites
        meta("ISIC_0000006", lesion="HAM_0000004", age="90", dataset="vienna_dias"),
    ]
    assert validate_metadata_rows(rows, "t.csv") == [
        Problem("t.csv", 4, "dx_type", "follow_up", "follow_up ground truth is only for nevi (nv), not mel"),
        Problem("t.csv", 5, "localization", "chest", "lesion HAM_0000001 has localization 'back' in row 1"),
        Problem("t.csv", 6, "dataset", "vienna_dias", "not a column of the first row"),
        Problem("t.csv", 6, "age", "90", "expected a multiple of 5 from 0 to 85 (e.g. 45.0), or empty"),
    ]


def test_metadata_rows_dataset_column_and_dx_agreement():
    rows = [meta("ISIC_0000001", dataset="vidir_modern"), meta("ISIC_0000002", dx="mel", dataset="vidir_molemax"),
            meta("ISIC_0000003", lesion="HAM_x", dataset="vidir_modern")]
    assert validate_metadata_rows(rows, "t.csv") == [
        Problem("t.csv", 2, "dx", "mel", "lesion HAM_0000001 has dx 'nv' in row 1"),
        Problem("t.csv", 3, "lesion_id", "HAM_x", "expected HAM_ followed by 7 digits"),
    ]



# ---------------------------------------------- ValidRows: rows the schema check passed, and what invalidates them

def _checked_rows() -> list[dict]:
    return [meta(f"ISIC_000000{n}", lesion=f"HAM_000000{n}") for n in range(1, 5)]


def _saved(path: Path, rows: list[dict]) -> None:
    valid = ValidRows(path)
    assert validate_metadata_rows(rows, "t.csv", valid) == []
    valid.save()


def _known(path: Path, rows: list[dict]) -> list[bool]:
    valid = ValidRows(path)
    return [valid.known(valid.key("metadata-row", row)) for row in rows]


def test_valid_rows_a_changed_row_is_checked_again(tmp_path):
    path, rows = tmp_path / "valid_rows.json", _checked_rows()
    _saved(path, rows)
    assert _known(path, rows) == [True] * 4
    assert _known(path, [dict(reversed(list(row.items()))) for row in rows]) == [True] * 4  # key order: same rows
    changed = [rows[0], {**rows[1], "sex": "female"}, rows[2], {**rows[3], "age": "50.0"}]
    assert _known(path, changed) == [True, False, True, False]
    # A row made invalid is reported, not taken for the valid row it was.
    broken = [rows[0], {**rows[1], "age": "47"}, rows[2], rows[3]]
    assert [(p.row, p.field, p.value) for p in validate_metadata_rows(broken, "t.csv", ValidRows(path))] == [
        (2, "age", "47")]
    valid = ValidRows(path)
    assert valid.key("metadata-row", rows[0]) != valid.key("manifest-row", rows[0])  # the schema's name counts


def test_valid_rows_a_changed_schema_file_checks_every_row_again(tmp_path, monkeypatch):
    import pipeline.schema_messages

    path, rows = tmp_path / "valid_rows.json", _checked_rows()
    _saved(path, rows)
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, copy)
    monkeypatch.setattr(pipeline.schema_messages, "schema_path", lambda name: copy / f"{name}.schema.json")
    assert _known(path, rows) == [True] * 4  # the same schema files elsewhere: same keys
    other = copy / "decisions-row.schema.json"  # any schema file, not only the metadata's (they refer to each other)
    other.write_bytes(other.read_bytes() + b"\n")
    assert _known(path, rows) == [False] * 4
    other.unlink()
    assert _known(path, rows) == [False] * 4


def test_valid_rows_another_jsonschema_version_checks_every_row_again(tmp_path, monkeypatch):
    import importlib.metadata

    path, rows = tmp_path / "valid_rows.json", _checked_rows()
    _saved(path, rows)
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.1" if name == "jsonschema" else real(name))
    assert _known(path, rows) == [False] * 4


def test_valid_rows_damaged_file_checks_every_row(tmp_path):
    path, rows = tmp_path / "valid_rows.json", _checked_rows()
    for damage in (b"", b"{", b"[]", b'{"other": 1}'):
        path.write_bytes(damage)
        assert _known(path, rows) == [False] * 4
    assert _known(None, rows) == [False] * 4

def test_empty_and_header_only_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert validate_csv(empty) == [Problem(str(empty), None, "", "", "file is empty")]
    header_only = write_lines(tmp_path / "h.csv", [HEADER])
    assert validate_csv(header_only) == []


def test_unknown_table(tmp_path):
    path = write_lines(tmp_path / "x.csv", ["image,MEL,NV", "ISIC_0000001,0.0,1.0"])
    [problem] = validate_csv(path)
    assert (problem.row, problem.value) == (0, "image,MEL,NV")
    assert problem.message.startswith("cannot tell which table")


def test_ragged_row(tmp_path):
    path = write_lines(tmp_path / "m.csv", [HEADER, "HAM_0000001,ISIC_0000001,nv,histo,45.0,male"])
    assert validate_csv(path) == [
        Problem(str(path), 1, "", "HAM_0000001,ISIC_0000001,nv,histo,45.0,male", "has 6 fields, the header has 7")]


# ------------------------------------------------------------------------------------------------- other tables

SHA = "0123456789abcdef" * 4


def manifest_rows():
    return [
        {"path": "train/ISIC_0000001.jpg", "sha256": SHA, "bytes": "21604", "split": "train",
         "image_id": "ISIC_0000001", "lesion_id": "HAM_0000001", "dx": "nv"},
        {"path": "test/ISIC_0000002.jpg", "sha256": SHA.replace("0", "1"), "bytes": "20000", "split": "test",
         "image_id": "ISIC_0000002", "lesion_id": "HAM_0000002", "dx": "mel"},
        {"path": "HAM10000_metadata.csv", "sha256": SHA.replace("a", "b"), "bytes": "120", "split": "",
         "image_id": "", "lesion_id": "", "dx": ""},
    ]


def test_manifest_valid(tmp_path):
    path = write_csv(tmp_path / "manifest.csv", manifest_rows())
    assert detect_kind(list(manifest_rows()[0])) == "manifest"
    assert validate_csv(path) == []


def test_manifest_problems(tmp_path):
    rows = manifest_rows()
    rows[1]["lesion_id"] = "HAM_0000001"   # the same lesion in train and test
    rows[2]["path"] = "../metadata.csv"
    rows.append(dict(rows[0], path="val/x.jpg", split="val", image_id="", lesion_id="HAM_0000009",
                     sha256=SHA.upper(), bytes="-1"))
    path = write_csv(tmp_path / "manifest.csv", rows)
    f = str(path)
    assert validate_csv(path, kind="manifest") == [
        Problem(f, 2, "split", "test", "lesion HAM_0000001 is also in train (row 1): splits must not share lesions"),
        Problem(f, 3, "path", "../metadata.csv", "expected a relative POSIX path without . or .. segments"),
        Problem(f, 4, "sha256", SHA.upper(), "expected 64 lowercase hex digits (sha256)"),
        Problem(f, 4, "bytes", "-1", "expected a non-negative integer"),
        Problem(f, 4, "image_id", "", "must not be empty"),
    ]


def test_manifest_rejects_absolute_and_duplicate_paths(tmp_path):
    rows = manifest_rows()
    rows[2]["path"] = "/etc/passwd"
    rows.append(dict(rows[0], image_id="ISIC_0000003"))
    f = str(write_csv(tmp_path / "manifest.csv", rows))
    assert validate_csv(f) == [
        Problem(f, 3, "path", "/etc/passwd", "expected a relative POSIX path without . or .. segments"),
        Problem(f, 4, "path", "train/ISIC_0000001.jpg", "duplicate path (first in row 1)"),
    ]


def decision(candidate=SHA, **changes):
    row = {"candidate_id": candidate, "image_type": "dsc", "confidence": "0.97", "p_dsc": "0.97",
           "p_macro": "0.02", "p_clinic": "0.01", "decided_by": "model", "keep": "true", "review": "false"}
    return {**row, **changes}


def test_decisions(tmp_path):
    good = write_csv(tmp_path / "good.csv", [
        decision(), decision(SHA.replace("0", "f"), image_type="clinic", confidence="1", p_dsc="", p_macro="",
                             p_clinic="", decided_by="annotation", keep="false")])
    assert validate_csv(good) == []
    bad = write_csv(tmp_path / "bad.csv", [
        decision(), decision(confidence="1.5", keep="yes", image_type="overview")])
    f = str(bad)
    assert validate_csv(bad) == [
        Problem(f, 2, "image_type", "overview", "expected one of: dsc, macro, clinic"),
        Problem(f, 2, "keep", "yes", "expected one of: true, false"),
        Problem(f, 2, "candidate_id", SHA, "duplicate candidate ID (first in row 1)"),
        Problem(f, 2, "confidence", "1.5", "must be from 0 to 1"),
    ]


def candidate(**changes):
    row = {"candidate_id": SHA, "source": "rosendahl", "kind": "pptx", "origin": "2001/deck_2001.pptx",
           "member": "ppt/media/image3.jpeg", "object": SHA + ".jpg", "width": "1024", "height": "768",
           "format": "JPEG", "lesion_key": "12345", "image_id": "", "diagnosis": "Compound naevus", "dx": "",
           "dx_type": "", "age": "47", "sex": "M", "localization": "back", "visit_date": "2001-03-04",
           "image_type_hint": "", "split_hint": "", "extra": "{\"year\": \"2001\"}"}
    return {**row, **changes}


def test_candidates(tmp_path):
    assert validate_csv(write_csv(tmp_path / "good.csv", [candidate()])) == []
    bad = write_csv(tmp_path / "bad.csv", [candidate(width="0", kind="ppt", visit_date="04/03/2001")])
    f = str(bad)
    assert validate_csv(bad) == [
        Problem(f, 1, "kind", "ppt", "expected one of: pptx, export, series, slides, ham10000, isic, folder"),
        Problem(f, 1, "width", "0", "expected a positive integer"),
        Problem(f, 1, "visit_date", "04/03/2001", "expected a date YYYY-MM-DD, or empty"),
    ]


# ------------------------------------------------------------------------------------------------- registries

KEY = "0123456789abcdef" * 4


def test_registry_kinds_are_detected():
    assert detect_kind(["key", "id"], [{"key": KEY, "id": "ISIC_9000000"}]) == "image-registry"
    assert detect_kind(["key", "id"], [{"key": "rosendahl/ROS-1001", "id": "HAM_9000000"},
                                       {"key": "HAM_0000118", "id": "HAM_0000118"}]) == "lesion-registry"
    assert detect_kind(["lesion_id", "split"]) == "split-registry"  # two of the manifest's columns too


def test_registries_valid(tmp_path):
    images = write_csv(tmp_path / "images.csv", [{"key": KEY, "id": "ISIC_9000000"},
                                                 {"key": KEY.replace("0", "f"), "id": "ISIC_0024306"}])
    lesions = write_csv(tmp_path / "lesions.csv", [
        {"key": "HAM_0000118", "id": "HAM_0000118"}, {"key": "rosendahl/ROS-1001", "id": "HAM_9000000"},
        {"key": "vidir_molemax/P0042/lesion 3", "id": "HAM_9000001"}])
    splits = write_csv(tmp_path / "splits.csv", [{"lesion_id": "HAM_0000118", "split": "test"},
                                                 {"lesion_id": "HAM_9000000", "split": "val"}])
    assert [validate_csv(path) for path in (images, lesions, splits)] == [[], [], []]


def test_registry_problems(tmp_path):
    images = write_csv(tmp_path / "images.csv", [
        {"key": KEY, "id": "ISIC_9000000"}, {"key": KEY, "id": "ISIC_9000001"},
        {"key": KEY.replace("0", "f"), "id": "ISIC_9000000"}, {"key": KEY.upper(), "id": "ISIC_90002"}])
    lesions = write_csv(tmp_path / "lesions.csv", [
        {"key": "rosendahl/ROS-1001", "id": "HAM_9000000"}, {"key": "ROS-1002", "id": "HAM_9000001"},
        {"key": "HAM_0000118", "id": "HAM_9000002"}, {"key": "rosendahl/ROS-1003", "id": "HAM_9000000"},
        {"key": "rosendahl/ ", "id": "ISIC_9000003"}])
    splits = write_csv(tmp_path / "splits.csv", [
        {"lesion_id": "HAM_9000000", "split": "train"}, {"lesion_id": "HAM_9000001", "split": "holdout"},
        {"lesion_id": "HAM_9000000", "split": "test"}, {"lesion_id": "HAM-9000002", "split": "test"}])
    i, l, s = str(images), str(lesions), str(splits)
    lesion_key = "expected <source>/<lesion key>, or HAM_ followed by 7 digits"
    assert validate_csv(images) + validate_csv(lesions) + validate_csv(splits) == [
        Problem(i, 2, "key", KEY, "duplicate key (first in row 1)"),
        Problem(i, 3, "id", "ISIC_9000000", "duplicate ID (first in row 1)"),
        Problem(i, 4, "key", KEY.upper(), "expected 64 lowercase hex digits (sha256)"),
        Problem(i, 4, "id", "ISIC_90002", "expected ISIC_ followed by 7 digits"),
        Problem(l, 2, "key", "ROS-1002", lesion_key),
        Problem(l, 3, "id", "HAM_9000002", "official lesion ID HAM_0000118 must keep its own ID"),
        Problem(l, 4, "id", "HAM_9000000", "duplicate ID (first in row 1)"),
        Problem(l, 5, "key", "rosendahl/ ", lesion_key),
        Problem(l, 5, "id", "ISIC_9000003", "expected HAM_ followed by 7 digits"),
        Problem(s, 2, "split", "holdout", "expected one of: train, val, test"),
        Problem(s, 3, "lesion_id", "HAM_9000000", "duplicate lesion ID (first in row 1)"),
        Problem(s, 4, "lesion_id", "HAM-9000002", "expected HAM_ followed by 7 digits"),
    ]


# ------------------------------------------------------------------------------------------------- CI's commands

CI_VALIDATE = "Validate params.yaml and the registries"


def set_registry_cell(path: Path, row: int, column: str, value: str) -> None:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows[row - 1][column] = value
    write_csv(path, rows)


def registry_value(path: Path, row: int, column: str) -> str:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))[row - 1][column]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The repository as a fresh clone has it (tracked and not-ignored files only)."""
    return copy_repository(tmp_path_factory.mktemp("checkout") / "repo")


def test_ci_validates_the_repository_files(checkout):
    command = workflow_step(CI_VALIDATE)
    assert all(name in command for name in ("params.yaml", "registry/images.csv", "registry/lesions.csv",
                                            "registry/splits.csv"))
    result = run(["bash", "-c", command], checkout, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, "4 files valid"), result.stdout + result.stderr


# Each damage to a copy of the repository: (file, row, column, new value or None to copy row 1's value, message).
DAMAGES = {
    "duplicate lesion ID": ("registry/lesions.csv", 5, "id", None, "duplicate ID (first in row 1)"),
    "duplicate image key": ("registry/images.csv", 3, "key", None, "duplicate key (first in row 1)"),
    "malformed image ID": ("registry/images.csv", 4, "id", "ISIC_90003", "expected ISIC_ followed by 7 digits"),
    "lesion key without source": ("registry/lesions.csv", 2, "key", "ROS-1002",
                                  "expected <source>/<lesion key>, or HAM_ followed by 7 digits"),
    "bad split value": ("registry/splits.csv", 2, "split", "holdout", "expected one of: train, val, test"),
    "lesion listed twice": ("registry/splits.csv", 6, "lesion_id", None, "duplicate lesion ID (first in row 1)"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_ci_validation_fails_on_a_damaged_copy(checkout, tmp_path, damage):
    file, row, column, value, message = DAMAGES[damage]
    copy = tmp_path / "repo"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git"))
    value = registry_value(copy / file, 1, column) if value is None else value
    set_registry_cell(copy / file, row, column, value)
    result = run(["bash", "-c", workflow_step(CI_VALIDATE)], copy, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    header, problem, summary = result.stdout.strip().split("\n")
    shown = value if len(value) <= 40 else value[:39] + "…"  # the table shortens long values
    assert problem.split()[:4] == [file, str(row), column, shown] and problem.endswith(message), result.stdout
    assert summary == "1 problem in 1 of 4 files"


def test_ci_validation_fails_on_a_params_type_error(checkout, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git"))
    lines = (copy / "params.yaml").read_text(encoding="utf-8").split("\n")
    line = next(n for n, text in enumerate(lines, 1) if text.strip().startswith("epochs:"))
    lines[line - 1] = '  epochs: "ten"'
    (copy / "params.yaml").write_text("\n".join(lines), encoding="utf-8")
    result = run(["bash", "-c", workflow_step(CI_VALIDATE)], copy, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    header, problem, summary = result.stdout.strip().split("\n")
    assert problem.split()[:4] == ["params.yaml", str(line), "filter.epochs", "ten"], result.stdout


# ------------------------------------------------------------------------------------------------- params

def test_repository_params_are_valid(repo_root):
    assert validate_params(repo_root / "params.yaml") == []


PARAMS = """\
ingest:
  sources:
    - {name: rosendahl, kind: pptx, path: data/raw/rosendahl}
    - {name: rosendahl, kind: slides, path: data/raw/dias}
  max_pixels: 100000000
filter:
  annotations: data/raw/image_types.csv
  image_size: 64
  width: 16
  epochs: 20
  batch_size: 16
  learning_rate: 1e-4
  seed: 1
  holdout_fraction: 0.2
  keep_types: [dsc]
  min_confidence: 1.5
  review_below: 0.9
standardise: {width: 600, height: 450, quality: 101, density: 72, new_knob: 3}
metadata: {age_cap: 85, ids: {image_prefix: ISIC_, image_start: 1, lesion_prefix: HAM_, lesion_start: 1}}
split: {test_fraction: 0.6, val_fraction: 0.5, seed: 1}
relaese: {license: CC BY-NC 4.0}
"""


def test_params_problems(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    f = str(path)
    assert validate_params(path) == [
        Problem(f, 1, "release", "", "missing required key 'release'"),
        Problem(f, 4, "ingest.sources[1].name", "rosendahl", "duplicate source name (also ingest.sources[0])"),
        Problem(f, 12, "filter.learning_rate", "1e-4",
                "expected a number, got text (YAML reads 1e-4 as text: write 1.0e-4)"),
        Problem(f, 16, "filter.min_confidence", "1.5", "must be at most 1"),
        Problem(f, 18, "standardise.new_knob", "new_knob", "unexpected key 'new_knob'"),  # every section is closed
        Problem(f, 18, "standardise.quality", "101", "must be at most 100"),
        Problem(f, 20, "split.val_fraction", "0.5", "test_fraction + val_fraction is 1.1; it must be below 1"),
        Problem(f, 21, "relaese", "relaese", "unexpected key 'relaese' (did you mean 'release'?)"),
    ]


def test_params_broken_yaml_and_duplicate_keys(tmp_path, repo_root):
    broken = tmp_path / "broken.yaml"
    broken.write_text("ingest:\n  sources: [\n")
    [problem] = validate_params(broken)
    assert problem.message.startswith("not valid YAML")
    dup = tmp_path / "dup.yml"
    text = (repo_root / "params.yaml").read_text()
    marker = "  val_fraction: 0.0\n"
    dup.write_text(text.replace(marker, marker + "  test_fraction: 0.3\n"))
    line = text[:text.index(marker)].count("\n") + 2
    assert validate_path(dup) == [Problem(str(dup), line, "split.test_fraction", "test_fraction",
                                          "duplicate key; the later one silently wins")]


# ------------------------------------------------------------------------------------------------- command line

def test_cli_valid_and_invalid(tmp_path):
    good = write_csv(tmp_path / "good.csv", [meta("ISIC_0000001"), meta("ISIC_0000002")])
    bad = write_csv(tmp_path / "bad.csv", [meta("ISIC_0000001", dx="xyz")])
    runner = CliRunner()

    result = runner.invoke(validate_command, [str(good)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 file valid"

    result = runner.invoke(validate_command, [str(good), str(bad)])
    assert result.exit_code == 1
    header, row, summary = result.output.strip().split("\n")
    assert header.split() == ["FILE", "ROW", "FIELD", "VALUE", "MESSAGE"]
    assert row.split()[:4] == [str(bad), "1", "dx", "xyz"] and DX_MESSAGE in row
    assert summary == "1 problem in 1 of 2 files"

    result = runner.invoke(validate_command, ["--format", "json", str(bad)])
    assert result.exit_code == 1
    assert json.loads(result.output) == [
        {"file": str(bad), "row": 1, "field": "dx", "value": "xyz", "message": DX_MESSAGE}]

    result = runner.invoke(validate_command, ["--format", "json", str(good)])
    assert (result.exit_code, json.loads(result.output)) == (0, [])


def test_cli_help_and_usage():
    runner = CliRunner()
    result = runner.invoke(validate_command, ["--help"])
    assert result.exit_code == 0 and "JSON Schemas" in result.output
    assert runner.invoke(validate_command, []).exit_code == 2
    assert runner.invoke(validate_command, ["/no/such/file.csv"]).exit_code == 2


@pytest.mark.real_data
def test_cli_real_metadata(ham_data):
    result = CliRunner().invoke(validate_command, [str(metadata_file(ham_data)), str(metadata_file(ham_data, True))])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "2 files valid"
