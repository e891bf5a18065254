"""Source kind `ham10000`: the public release (two image zips + metadata CSV, and the ISIC 2018 test set) rebuilt
in tmp_path from the real images and the real metadata rows for them."""
import csv
import zipfile
from pathlib import Path

import pytest

from pipeline.ingest import ingest
from pipeline.sources import ITEM_FIELDS, RawItem, Reject
from pipeline.sources import expand
from pipeline.sources import ham10000 as reader_module


def read_ham10000(root, options):
    """The reader's output with every unit read, as ingest sees it on a first run."""
    return list(expand(reader_module.read_ham10000(root, options)))


pytestmark = pytest.mark.real_data

CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def write_rows(path: Path, header: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def build_release(root: Path, ham_data: Path, test_set: bool = True) -> dict:
    """The Dataverse layout in `root` from the real images; returns what went in, for checking."""
    ham = ham_data / "ham10000"
    root.mkdir(parents=True)
    images = sorted((ham / "images").glob("*.jpg"))
    header, rows = read_rows(ham / "metadata" / "HAM10000_metadata.csv")
    wanted = {p.stem for p in images}
    rows = [row for row in rows if row["image_id"] in wanted]
    assert len(rows) == len(images) == 490
    write_rows(root / "HAM10000_metadata.csv", header, rows)
    half = len(images) // 2
    with zipfile.ZipFile(root / "HAM10000_images_part_1.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in images[:half]:
            archive.write(path, path.name)
    with zipfile.ZipFile(root / "HAM10000_images_part_2.zip", "w", zipfile.ZIP_STORED) as archive:
        for path in images[half:]:
            archive.write(path, f"HAM10000_images_part_2/{path.name}")  # in a subfolder
    built = {"train": {row["image_id"]: row for row in rows}, "files": {p.stem: p for p in images}, "test": {}}
    if test_set:
        tests = sorted((ham / "test_images").glob("*.jpg"))
        header, truth = read_rows(ham / "metadata" / "ISIC2018_Task3_Test_GroundTruth.csv")
        wanted = {p.stem for p in tests}
        truth = [row for row in truth if row["image"] in wanted]
        assert len(truth) == len(tests) == 70
        write_rows(root / "ISIC2018_Task3_Test_GroundTruth.csv", header, truth)
        with zipfile.ZipFile(root / "ISIC2018_Task3_Test_Input.zip", "w") as archive:
            for path in tests:
                archive.write(path, f"ISIC2018_Task3_Test_Input/{path.name}")
        built["test"] = {row["image"]: row for row in truth}
        built["files"].update({p.stem: p for p in tests})
    return built


def split(results) -> tuple[list[RawItem], list[Reject]]:
    results = list(results)
    items = [r for r in results if isinstance(r, RawItem)]
    rejects = [r for r in results if isinstance(r, Reject)]
    assert len(items) + len(rejects) == len(results)
    return items, rejects


def members(path: Path) -> int:
    with zipfile.ZipFile(path) as archive:
        return sum(not info.filename.endswith("/") for info in archive.infolist())


def snapshot(folder: Path, skip: Path | None = None) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and (skip is None or skip not in p.parents)}


def test_release_comes_out_with_official_ids_fields_and_bytes(tmp_path, ham_data):
    built = build_release(tmp_path / "raw", ham_data)
    items, rejects = split(read_ham10000(tmp_path / "raw", {}))
    assert rejects == []
    assert len(items) == 490 + 70
    by_id = {item.fields["image_id"]: item for item in items}
    assert len(by_id) == len(items)

    for image_id, row in built["train"].items():
        item = by_id[image_id]
        assert item.data == built["files"][image_id].read_bytes()
        assert item.fields["lesion_key"] == row["lesion_id"] and row["lesion_id"].startswith("HAM_")
        for column in ("dx", "dx_type", "age", "sex", "localization"):
            assert item.fields[column] == row[column], (image_id, column)
        assert item.fields["split_hint"] == "train"  # the study's split, as published
        assert item.fields["image_type_hint"] == "dsc"
        assert item.origin in ("HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip")
        assert item.member.endswith(f"{image_id}.jpg")
        assert set(ITEM_FIELDS) <= set(item.fields)

    for image_id, row in built["test"].items():
        item = by_id[image_id]
        assert item.data == built["files"][image_id].read_bytes()
        (label,) = [c for c in CLASSES if float(row[c]) == 1.0]
        assert item.fields["dx"] == label.lower()
        assert item.fields["split_hint"] == "test"
        assert item.fields["lesion_key"] == f"test/{image_id}"  # no lesion IDs given: each image its own lesion
        assert item.origin == "ISIC2018_Task3_Test_Input.zip"

    assert {item.fields["dx"] for item in items} == {c.lower() for c in CLASSES}


def test_train_split_option_leaves_the_training_images_to_the_split_stage(tmp_path, ham_data):
    built = build_release(tmp_path / "raw", ham_data)
    items, _ = split(read_ham10000(tmp_path / "raw", {"train_split": ""}))
    hints = {i.fields["image_id"]: i.fields["split_hint"] for i in items}
    assert {hints[image_id] for image_id in built["train"]} == {""}
    assert {hints[image_id] for image_id in built["test"]} == {"test"}


def test_test_metadata_gives_lesion_ids_and_confirm_type(tmp_path, ham_data):
    build_release(tmp_path / "raw", ham_data)
    _, archive_rows = read_rows(ham_data / "ham10000" / "metadata" / "ISIC_archive_HAM10000_collection_metadata.csv")
    tests = {p.stem for p in (ham_data / "ham10000" / "test_images").glob("*.jpg")}
    lesions = [{"image": r["isic_id"], "lesion_id": r["lesion_id"],
                "diagnosis_confirm_type": r["diagnosis_confirm_type"]} for r in archive_rows if r["isic_id"] in tests]
    write_rows(tmp_path / "raw" / "lesions.csv", ["image", "lesion_id", "diagnosis_confirm_type"], lesions)
    items, rejects = split(read_ham10000(tmp_path / "raw", {"test_metadata": "lesions.csv"}))
    assert rejects == []
    test_items = {i.fields["image_id"]: i for i in items if i.fields["split_hint"] == "test"}
    assert len(test_items) == 70
    for row in lesions:
        fields = test_items[row["image"]].fields
        assert fields["lesion_key"] == row["lesion_id"]
        assert fields["dx_type"] in ("histo", "follow_up", "consensus", "confocal")


def test_malicious_and_stray_members_are_rejected_and_nothing_is_written(tmp_path, ham_data):
    built = build_release(tmp_path / "raw", ham_data)
    some = sorted(built["train"])[0]
    data = built["files"][some].read_bytes()
    extra = {"../evil.jpg": data, "/abs.jpg": data, f"../{some}.jpg": data, "..\\win.jpg": data,
             "__MACOSX/HAM10000_images_part_1/._ISIC_0024318.jpg": b"\0\5\26\7", ".DS_Store": b"\0\0\0\1Bud1",
             "LICENSE.txt": b"CC BY-NC 4.0", "ISIC_9999999.jpg": data, f"copy/{some}.jpg": data}
    with zipfile.ZipFile(tmp_path / "raw" / "HAM10000_images_part_1.zip", "a") as archive:
        archive.writestr(zipfile.ZipInfo("emptyfolder/"), b"")  # a directory entry: not a file, not counted
        for name, content in extra.items():
            archive.writestr(zipfile.ZipInfo(name), content)  # ZipInfo keeps the name as given
    with zipfile.ZipFile(tmp_path / "raw" / "HAM10000_images_part_1.zip") as archive:
        names = archive.namelist()
    assert "/abs.jpg" in names and "../evil.jpg" in names
    before = snapshot(tmp_path, tmp_path / "out")

    result = ingest([{"name": "ham", "kind": "ham10000", "path": str(tmp_path / "raw"), "options": {}}],
                    base_dir=Path("/"), out_dir=tmp_path / "out", max_pixels=10**8)

    assert snapshot(tmp_path, tmp_path / "out") == before, "something was written outside out_dir"
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path.parent / "evil.jpg").exists()
    assert not Path("/abs.jpg").exists()
    reasons = {r["member"]: r["reason"] for r in result.rejects}
    assert "absolute path" in reasons["/abs.jpg"]
    assert "'..'" in reasons["../evil.jpg"] and "'..'" in reasons[f"../{some}.jpg"] and "'..'" in reasons["..\\win.jpg"]
    assert "macOS" in reasons["__MACOSX/HAM10000_images_part_1/._ISIC_0024318.jpg"]
    assert "not an image" in reasons["LICENSE.txt"] and "hidden" in reasons[".DS_Store"]
    assert "not listed in HAM10000_metadata.csv" in reasons["ISIC_9999999.jpg"]
    assert "second copy" in reasons[f"copy/{some}.jpg"]
    assert all("HAM10000_images_part_1.zip" in r["reason"] for r in result.rejects)

    total = sum(members(tmp_path / "raw" / name) for name in
                ("HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip", "ISIC2018_Task3_Test_Input.zip"))
    assert len(result.candidates) + len(result.rejects) == total  # every member: one candidate or one reject
    assert len(result.candidates) == result.decoded == 560
    assert {c["image_id"] for c in result.candidates} == set(built["train"]) | set(built["test"])
    assert sum(c["split_hint"] == "test" for c in result.candidates) == 70


def test_corrupt_zip_is_rejected_and_the_other_is_still_read(tmp_path, ham_data):
    built = build_release(tmp_path / "raw", ham_data, test_set=False)
    part_2 = tmp_path / "raw" / "HAM10000_images_part_2.zip"
    with zipfile.ZipFile(part_2) as archive:
        in_part_2 = {Path(name).stem for name in archive.namelist()}
    part_2.write_bytes(part_2.read_bytes()[: part_2.stat().st_size // 2])  # truncated download
    # part 1 keeps its directory but one member's bytes are damaged (CRC mismatch)
    part_1 = tmp_path / "raw" / "HAM10000_images_part_1.zip"
    with zipfile.ZipFile(part_1) as archive:
        victim = archive.infolist()[3]
    raw = bytearray(part_1.read_bytes())
    start = victim.header_offset + 30 + len(victim.filename.encode()) + len(victim.extra)
    for offset in range(start + 100, start + 140):
        raw[offset] ^= 0xFF
    part_1.write_bytes(bytes(raw))

    items, rejects = split(read_ham10000(tmp_path / "raw", {}))
    whole = [r for r in rejects if r.origin == "HAM10000_images_part_2.zip"]
    assert len(whole) == 1 and "not a readable zip" in whole[0].reason and whole[0].member == ""
    damaged = [r for r in rejects if r.member == victim.filename]
    assert len(damaged) == 1 and "cannot be read" in damaged[0].reason
    missing = [r for r in rejects if r.origin == "HAM10000_metadata.csv"]
    assert {r.reason.split("image ")[1].split()[0] for r in missing} == in_part_2  # the damaged one was found
    assert all("unreadable: HAM10000_images_part_2.zip" in r.reason for r in missing)
    assert {i.fields["image_id"] for i in items} == set(built["train"]) - in_part_2 - {Path(victim.filename).stem}
    assert len(items) + len(rejects) == members(part_1) + 1 + len(in_part_2)


def test_metadata_problems(tmp_path, ham_data):
    built = build_release(tmp_path / "raw", ham_data, test_set=False)
    metadata = tmp_path / "raw" / "HAM10000_metadata.csv"
    header, rows = read_rows(metadata)
    ghost = {**rows[0], "image_id": "ISIC_9999998"}
    repeat = dict(rows[5])
    conflict = {**rows[6], "dx": "mel" if rows[6]["dx"] != "mel" else "nv"}
    write_rows(metadata, header, [*rows, ghost, repeat, conflict])

    items, rejects = split(read_ham10000(tmp_path / "raw", {}))
    assert len(items) == 490
    reasons = {r.member: r.reason for r in rejects}
    n = len(rows) + 1  # spreadsheet row number of the last original row
    assert set(reasons) == {f"row {n + 1}", f"row {n + 2}", f"row {n + 3}"}
    assert "ISIC_9999998 not found in" in reasons[f"row {n + 1}"]
    assert "repeated (identical to row 7" in reasons[f"row {n + 2}"]
    assert "repeated (conflicts with row 8" in reasons[f"row {n + 3}"]
    by_id = {i.fields["image_id"]: i for i in items}
    assert by_id[rows[6]["image_id"]].fields["dx"] == rows[6]["dx"]  # the first row is kept

    # a renamed column makes the file unusable: one reject naming it, and every member rejected with the reason
    renamed = [c if c != "dx_type" else "dx-type" for c in header]
    write_rows(metadata, renamed, [{("dx-type" if k == "dx_type" else k): v for k, v in r.items()} for r in rows])
    items, rejects = split(read_ham10000(tmp_path / "raw", {}))
    assert items == []
    top = [r for r in rejects if r.origin == "HAM10000_metadata.csv"]
    assert len(top) == 1 and "HAM10000_metadata.csv: missing column 'dx_type'" in top[0].reason
    assert len(rejects) == 1 + len(built["train"])
    assert all("missing column 'dx_type'" in r.reason for r in rejects)


def test_missing_ground_truth_rejects_the_test_images(tmp_path, ham_data):
    build_release(tmp_path / "raw", ham_data)
    (tmp_path / "raw" / "ISIC2018_Task3_Test_GroundTruth.csv").unlink()
    items, rejects = split(read_ham10000(tmp_path / "raw", {}))
    assert len(items) == 490 and len(rejects) == 1 + 70
    assert "ISIC2018_Task3_Test_GroundTruth.csv not found" in rejects[0].reason
    # and an explicitly named test zip that is absent is reported
    items, rejects = split(read_ham10000(tmp_path / "raw", {"test_zip": "nope.zip"}))
    assert any(r.origin == "nope.zip" and "not found" in r.reason for r in rejects)


def test_isic_export_as_test_metadata_carries_the_test_set_through_the_metadata_stage(tmp_path, ham_data):
    """The archive export, copied in unchanged, gives the official test images lesion IDs, dx_type, age, sex and
    site, so none of them is excluded by the metadata stage (without it they have no dx_type)."""
    from pipeline.common import read_csv, write_csv
    from pipeline.filter import DECISION_COLUMNS
    from pipeline.metadata import build_metadata
    from pipeline.standardise import standardise

    built = build_release(tmp_path / "raw", ham_data)
    export = ham_data / "ham10000" / "metadata" / "ISIC_archive_HAM10000_collection_metadata.csv"
    (tmp_path / "raw" / "isic_metadata.csv").write_bytes(export.read_bytes())
    _, archive_rows = read_rows(export)
    archive = {row["isic_id"]: row for row in archive_rows}
    config = {"name": "public", "kind": "ham10000", "path": "raw", "options": {"test_metadata": "isic_metadata.csv"}}
    result = ingest([config], tmp_path, tmp_path / "ingest", 100_000_000)
    assert result.rejects == [] and len(result.candidates) == 490 + 70

    decisions = [{"candidate_id": c["candidate_id"], "image_type": "dsc", "confidence": "1.000000", "p_dsc": "1",
                  "p_macro": "0", "p_clinic": "0", "decided_by": "annotation", "keep": "true", "review": "false"}
                 for c in result.candidates]
    write_csv(tmp_path / "decisions.csv", decisions, DECISION_COLUMNS)
    standardise(tmp_path / "ingest" / "candidates.csv", tmp_path / "decisions.csv", tmp_path / "ingest" / "objects",
                {"width": 600, "height": 450, "quality": 100, "density": 72}, tmp_path / "std" / "images",
                tmp_path / "std" / "index.csv")
    params = {"age_cap": 85, "ids": {"image_prefix": "ISIC_", "image_start": 9000000, "lesion_prefix": "HAM_",
                                     "lesion_start": 9000000},
              "official_lesion_ids_from": ["public"]}
    counts = build_metadata(tmp_path / "ingest" / "candidates.csv", tmp_path / "decisions.csv",
                            tmp_path / "std" / "index.csv", params, tmp_path / "registry", tmp_path / "meta")
    excluded = read_csv(tmp_path / "meta" / "excluded.csv")
    assert excluded == [], [(e["member"], e["stage"], e["reason"]) for e in excluded[:3]]
    assert counts["rows"] == 560
    rows = {row["image_id"]: row for row in read_csv(tmp_path / "meta" / "metadata.csv")}
    hints = {row["image_id"]: row["split_hint"] for row in read_csv(tmp_path / "meta" / "images.csv")}
    sites = {"posterior torso": "back", "palms/soles": "acral", "lower extremity": "lower extremity",
             "upper extremity": "upper extremity"}
    confirm = {"histopathology": "histo", "serial imaging showing no change": "follow_up",
               "single image expert consensus": "consensus", "confocal microscopy with consensus dermoscopy": "confocal"}
    for image_id, truth in built["test"].items():
        row, source = rows[image_id], archive[image_id]
        assert hints[image_id] == "test"
        assert row["dx"] == next(c.lower() for c in CLASSES if float(truth[c]) == 1.0)
        assert row["dx_type"] == confirm[source["diagnosis_confirm_type"]]
        assert row["sex"] == (source["sex"] or "unknown")
        assert row["localization"] == sites.get(source["anatom_site_general"], "unknown")
        assert row["dataset"] == "unknown"  # no source records the test images' collection
    # One archive lesion is one lesion of ours: images sharing an IL_ ID share a HAM_ ID, and no other does.
    test_lesions = {}
    for image_id in built["test"]:
        test_lesions.setdefault(archive[image_id]["lesion_id"], set()).add(rows[image_id]["lesion_id"])
    assert all(len(ours) == 1 for ours in test_lesions.values())
    assert len({next(iter(ours)) for ours in test_lesions.values()}) == len(test_lesions)
