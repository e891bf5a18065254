"""`series` reader (MoleMax sequential imaging) on a tree built from vidir_molemax follow-up images (real where
$HAM_DATA has them, else drawn: the `some_images` fixture)."""
import csv
from pathlib import Path

import pytest

from pipeline.common import PipelineError
from pipeline.sources import RawItem, Reject
from pipeline.sources.series import months_between
from pipeline.sources import expand
from pipeline.sources import series as reader_module


def read_series(root, options):
    """The reader's output with every unit read, as ingest sees it on a first run."""
    return list(expand(reader_module.read_series(root, options)))


LESIONS_HEADER = ["patient", "lesion", "diagnosis", "dx_type", "age", "sex", "localization"]

# (patient, lesion) -> file names; dates chosen to qualify or not for follow-up ground truth
SERIES = {
    ("P001", "L1"): ["2016-01-10.jpg", "2016-08-02_overview.jpg", "20170915.jpg"],  # 3 visits, 20 months
    ("P001", "L2"): ["2019-03-04.jpg", "2019-10-04.jpg"],  # 2 visits, 7 months
    ("P002", "L1"): ["2015-05-01.jpg", "2017-06-01.jpg"],  # 25 months, but histopathology in lesions.csv
    ("P002", "L2"): ["2018-01-01.png"],  # a single visit
    ("P003", "L7"): ["2018-02-02.jpg", "2018-02-02_b.jpg"],  # two images, one visit
    ("P003", "L8"): ["2014-03-01.jpg", "2015-03-01.jpg", "2016-03-01.jpg"],  # consensus diagnosis in lesions.csv
}
EXPECTED = {  # lesion_key -> (dx, dx_type, diagnosis, follow_up_note contains)
    "P001/L1": ("nv", "follow_up", "", "3 visits over 20 months: unchanged"),
    "P001/L2": ("", "", "", "2 visits over 7 months, needs 18"),
    "P002/L1": ("", "histo", "melanoma in situ", "diagnosis from lesions.csv"),
    "P002/L2": ("", "", "", "1 visit over 0 months, needs 2 visits"),
    "P003/L7": ("", "", "", "1 visit over 0 months, needs 2 visits"),
    "P003/L8": ("", "consensus", "dermatofibroma", "diagnosis from lesions.csv"),
}
BAD_FILES = {  # origin -> words the reason must contain
    "P001/L1/holiday.jpg": "no visit date",
    "P001/L1/2019-13-45.jpg": "impossible visit date",
    "P001/L2/20190230_close.jpg": "impossible visit date",
    "P001/stray_2019-01-01.jpg": "wrong depth",
    "P002/L1/extra/2019-01-01.jpg": "wrong depth",
    "loose_2019-01-01.jpg": "wrong depth",
    "P001/L1/.2019-01-01.jpg": "hidden",
    "P002/L2/2019-01-01.txt": "not an image file type",
}
IGNORED = ["P001/L1/.DS_Store", "P002/Thumbs.db", "README.md"]


def molemax_images(some_images) -> list[Path]:
    return some_images.of("vidir_molemax", dx_type="follow_up")


def write_lesions(path: Path, rows: list[list[str]], header=LESIONS_HEADER) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def series_tree(tmp_path, some_images):
    """A series source in tmp_path; returns (root, {origin: bytes} of every good image)."""
    root = tmp_path / "molemax"
    sources = iter(molemax_images(some_images))
    written = {}
    for (patient, lesion), names in SERIES.items():
        for name in names:
            path = root / patient / lesion / name
            path.parent.mkdir(parents=True, exist_ok=True)
            data = next(sources).read_bytes()  # .png with JPEG bytes: ingest judges content, not names
            path.write_bytes(data)
            written[f"{patient}/{lesion}/{name}"] = data
    for origin in [*BAD_FILES, *IGNORED]:
        path = root / origin
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(next(sources).read_bytes() if origin.endswith(".jpg") else b"x")
    write_lesions(root / "lesions.csv", [
        ["P001", "L1", "", "", "45", "female", "back"],
        ["P002", "L1", "melanoma in situ", "histo", "60", "male", "trunk"],
        ["P003", "L8", "dermatofibroma", "consensus", "35", "female", "lower extremity"],
        ["P003", "L8", "nevus", "histo", "35", "female", "lower extremity"],  # duplicate: rejected
        ["P009", "L1", "nevus", "histo", "50", "male", "face"],  # no images: rejected
        ["", "L3", "nevus", "histo", "50", "male", "face"],  # no patient: rejected
    ])
    return root, written


def split(results):
    items = [r for r in results if isinstance(r, RawItem)]
    rejects = [r for r in results if isinstance(r, Reject)]
    assert len(items) + len(rejects) == len(results)
    return items, rejects


def test_months_between():
    from datetime import date
    assert months_between(date(2017, 1, 15), date(2018, 7, 14)) == 17
    assert months_between(date(2017, 1, 15), date(2018, 7, 15)) == 18
    assert months_between(date(2019, 3, 4), date(2019, 3, 4)) == 0


def test_series_every_image_accounted_for(series_tree):
    root, written = series_tree
    items, rejects = split(list(read_series(root, {})))

    by_origin = {item.origin: item for item in items}
    assert set(by_origin) == set(written)
    for origin, item in by_origin.items():
        patient, lesion, name = origin.split("/")
        assert item.data == written[origin]
        assert item.fields["lesion_key"] == f"{patient}/{lesion}"
        date = name[:10] if name[4] == "-" else f"{name[:4]}-{name[4:6]}-{name[6:8]}"
        assert item.fields["visit_date"] == date
        assert item.member == f"visit {date}"
        dx, dx_type, diagnosis, note = EXPECTED[item.fields["lesion_key"]]
        assert (item.fields["dx"], item.fields["dx_type"], item.fields["diagnosis"]) == (dx, dx_type, diagnosis)
        assert note in item.fields["follow_up_note"], item.fields["follow_up_note"]
    assert by_origin["P001/L1/2016-01-10.jpg"].fields["age"] == "45"
    assert by_origin["P002/L1/2015-05-01.jpg"].fields["localization"] == "trunk"

    file_rejects = {r.origin: r.reason for r in rejects if r.origin != "lesions.csv"}
    assert set(file_rejects) == set(BAD_FILES)
    for origin, words in BAD_FILES.items():
        assert words in file_rejects[origin] and origin in file_rejects[origin]
    csv_rejects = sorted(r.reason for r in rejects if r.origin == "lesions.csv")
    assert len(csv_rejects) == 3
    assert any("row 5" in r and "already described in row 4" in r for r in csv_rejects)
    assert any("row 6" in r and "no images for lesion P009/L1" in r for r in csv_rejects)
    assert any("row 7" in r and "empty patient" in r for r in csv_rejects)

    # Files in = RawItems + Rejects (OS litter and top-level docs are ignored on purpose, lesions.csv is metadata).
    files_in = [p for p in root.rglob("*") if p.is_file()
                and p.relative_to(root).as_posix() not in IGNORED and p.name != "lesions.csv"]
    assert len(files_in) == len(items) + len(file_rejects)


def test_series_without_lesions_csv_and_custom_rules(series_tree):
    root, written = series_tree
    (root / "lesions.csv").unlink()
    items, _ = split(list(read_series(root, {"min_visits": 3, "min_months": 12})))
    dx = {item.fields["lesion_key"]: (item.fields["dx"], item.fields["dx_type"]) for item in items}
    assert dx["P001/L1"] == ("nv", "follow_up")
    assert dx["P003/L8"] == ("nv", "follow_up")  # nothing says otherwise without lesions.csv
    assert dx["P002/L1"] == ("", "")  # 25 months but only 2 visits
    assert len(items) == len(written)


def test_series_missing_detail_column_still_uses_file(series_tree):
    root, written = series_tree
    write_lesions(root / "lesions.csv", [["P002", "L1", "melanoma in situ", "histo", "60", "trunk"]],
                  header=["patient", "lesion", "diagnosis", "dx_type", "age", "site"])
    items, rejects = split(list(read_series(root, {})))
    reasons = [r.reason for r in rejects if r.origin == "lesions.csv"]
    assert any("'sex'" in r for r in reasons) and any("'localization'" in r for r in reasons)
    fields = {item.fields["lesion_key"]: item.fields for item in items}
    assert fields["P002/L1"]["dx_type"] == "histo" and fields["P002/L1"]["age"] == "60"
    assert fields["P001/L1"]["dx"] == "nv"
    assert len(items) == len(written)


def test_series_renamed_ground_truth_column_blocks_follow_up(series_tree):
    root, written = series_tree
    write_lesions(root / "lesions.csv", [["P001", "L1", "melanoma", "histo", "60", "male", "trunk"]],
                  header=["patient", "lesion", "pathology", "dx_type", "age", "sex", "localization"])
    items, rejects = split(list(read_series(root, {})))
    assert any(r.origin == "lesions.csv" and "missing column 'diagnosis'" in r.reason for r in rejects)
    assert len(items) == len(written)
    assert all(item.fields["dx"] == "" for item in items)  # a hidden histology result must not become nv
    assert all("unusable" in item.fields["follow_up_note"] for item in items)
    # ... and the `columns` mapping reads the renamed column
    items, rejects = split(list(read_series(root, {"columns": {"diagnosis": "pathology"}})))
    fields = {item.fields["lesion_key"]: item.fields for item in items}
    assert fields["P001/L1"]["diagnosis"] == "melanoma" and fields["P001/L1"]["dx"] == ""
    assert fields["P003/L8"]["dx"] == "nv"


def test_series_named_lesions_file_missing(series_tree):
    root, written = series_tree
    items, rejects = split(list(read_series(root, {"lesions": "patients/lesions.csv"})))
    assert any(r.origin == "patients/lesions.csv" and "not found" in r.reason for r in rejects)
    assert len(items) == len(written) and all(item.fields["dx"] == "" for item in items)


def test_series_date_pattern(tmp_path, some_images):
    root = tmp_path / "series"
    images = molemax_images(some_images)
    for name, source in zip(["img_04.03.2017.jpg", "img_05.11.2018.jpg", "img_2018-11-05.jpg"], images):
        (root / "P1" / "L1").mkdir(parents=True, exist_ok=True)
        (root / "P1" / "L1" / name).write_bytes(source.read_bytes())
    pattern = r"(?P<day>\d{2})\.(?P<month>\d{2})\.(?P<year>\d{4})"
    items, rejects = split(list(read_series(root, {"date_pattern": pattern})))
    assert [item.fields["visit_date"] for item in items] == ["2017-03-04", "2018-11-05"]
    assert all(item.fields["dx_type"] == "follow_up" for item in items)
    assert [r.origin for r in rejects] == ["P1/L1/img_2018-11-05.jpg"]
    with pytest.raises(PipelineError):
        list(read_series(root, {"date_pattern": r"(\d{4})"}))
    with pytest.raises(PipelineError):
        list(read_series(root, {"date_pattern": r"(?P<year>"}))


def test_series_plugs_into_ingest(series_tree, tmp_path):
    from pipeline.ingest import ingest

    root, written = series_tree
    result = ingest(source_configs=[{"name": "vidir_molemax", "kind": "series", "path": str(root), "options": {}}],
                    base_dir=Path("/"), out_dir=tmp_path / "out", max_pixels=10**8)
    assert sorted(row["origin"] for row in result.candidates) == sorted(written)
    by_origin = {row["origin"]: row for row in result.candidates}
    assert by_origin["P001/L1/20170915.jpg"]["dx_type"] == "follow_up"
    assert by_origin["P001/L1/20170915.jpg"]["visit_date"] == "2017-09-15"
    assert by_origin["P002/L2/2018-01-01.png"]["format"] == "JPEG"
    assert len(result.rejects) == len(BAD_FILES) + 3
    assert all(row["source"] == "vidir_molemax" for row in result.rejects)
