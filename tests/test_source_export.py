"""Source kind `export`: an image folder with a CSV or Excel index, built in tmp_path from some dermatoscopic images
(real ones where $HAM_DATA has them, else drawn: the `some_images` fixture)."""
import csv
import datetime
import hashlib
from pathlib import Path

import pytest
from openpyxl import Workbook

from pipeline.ingest import ingest
from pipeline.sources import RawItem, Reject
from pipeline.sources.export import cell_text
from pipeline.sources import expand
from pipeline.sources import export as reader_module


def read_export(root, options):
    """The reader's output with every unit read, as ingest sees it on a first run."""
    return list(expand(reader_module.read_export(root, options)))


HEADER = ["Dateiname", "Läsion", "Befund", "Methode", "Alter", "Geschlecht", "Lokalisation", "Datum", "Notiz"]
COLUMNS = {"file": "Dateiname", "lesion_key": "Läsion", "diagnosis": "Befund", "dx_type": "Methode", "age": "Alter",
           "sex": "Geschlecht", "localization": "Lokalisation", "visit_date": "Datum"}
AGES = [45, 47.5, 45.0, None, 80, 5]  # as an Excel cell holds them
DATES = [datetime.datetime(2004, 3, 1), datetime.date(2010, 12, 24), None, datetime.datetime(1999, 1, 2, 13, 45),
         datetime.date(2001, 5, 5), datetime.date(2002, 6, 6)]


@pytest.fixture(scope="module")
def real_images(some_images):
    return some_images.dsc[:8]


def sheet_rows(names: list[str]) -> list[list]:
    return [[name, f"L{number}", "Compound nevus", "histo", AGES[number % 6], "male", "back",
             DATES[number % 6], "ignored"] for number, name in enumerate(names)]


def build(root: Path, real_images, index: str, names: list[str] | None = None, header=HEADER, sheet=None) -> dict:
    """Six real images (one in a subfolder) and an index listing them (or `names`)."""
    root.mkdir(parents=True, exist_ok=True)
    files = {f"img{i}.jpg" if i else "sub/img0.jpg": real_images[i] for i in range(6)}
    for name, path in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(path.read_bytes())
    rows = sheet_rows(list(files) if names is None else names)
    if index.endswith(".xlsx"):
        workbook = Workbook()
        first = workbook.active
        first.title = "Übersicht"
        first.append(["not", "the", "index"])
        target = workbook.create_sheet(sheet) if sheet else first
        if sheet is None:
            first.delete_rows(1)
        target.append(header)
        for row in rows:
            target.append(row)
        target.append([None] * len(header))  # trailing empty row, as Excel leaves them
        workbook.save(root / index)
    else:
        with open(root / index, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for row in rows:
                writer.writerow([cell_text(value) for value in row])
    return files


def split(results) -> tuple[list[RawItem], list[Reject]]:
    results = list(results)
    return [r for r in results if isinstance(r, RawItem)], [r for r in results if isinstance(r, Reject)]


def test_cell_text():
    assert [cell_text(v) for v in (None, " a ", 45, 45.0, 47.5, True, datetime.datetime(2004, 3, 1, 9, 30),
                                   datetime.date(2010, 12, 24))] == \
        ["", "a", "45.0", "45.0", "47.5", "TRUE", "2004-03-01", "2010-12-24"]


@pytest.mark.parametrize("index, sheet", [("index.csv", None), ("index.xlsx", None), ("export.xlsx", "Patienten")])
def test_csv_and_xlsx_map_columns_the_same_way(tmp_path, real_images, index, sheet):
    files = build(tmp_path / "src", real_images, index, sheet=sheet)
    options = {"index": index, "columns": COLUMNS, **({"sheet": sheet} if sheet else {})}
    items, rejects = split(read_export(tmp_path / "src", options))
    assert rejects == []
    assert [item.origin for item in items] == list(files)
    for number, item in enumerate(items):
        assert item.data == files[item.origin].read_bytes()
        assert item.fields["lesion_key"] == f"L{number}"
        assert item.fields["diagnosis"] == "Compound nevus" and item.fields["dx_type"] == "histo"
        assert item.fields["age"] == ["45.0", "47.5", "45.0", "", "80.0", "5.0"][number]
        assert item.fields["visit_date"] == ["2004-03-01", "2010-12-24", "", "1999-01-02", "2001-05-05",
                                             "2002-06-06"][number]
        assert (item.fields["sex"], item.fields["localization"], item.fields["dx"]) == ("male", "back", "")
    expected_member = "row 2" if index.endswith(".csv") else f"{sheet or 'Übersicht'} row 2"
    assert items[0].member == expected_member


@pytest.mark.parametrize("index", ["index.csv", "index.xlsx"])
def test_renamed_or_missing_columns_reject_everything_with_the_reason(tmp_path, real_images, index):
    renamed = [c if c != "Befund" else "Befundtext" for c in HEADER]
    files = build(tmp_path / "src", real_images, index, header=renamed)
    items, rejects = split(read_export(tmp_path / "src", {"index": index, "columns": COLUMNS}))
    assert items == []
    where = index if index.endswith(".csv") else f"{index} sheet 'Übersicht'"
    assert rejects[0].origin == index
    assert f"{where}: missing column 'Befund' (mapped to diagnosis)" in rejects[0].reason
    assert len(rejects) == 1 + len(files)
    assert all("missing column 'Befund'" in r.reason for r in rejects)

    no_file = [c if c != "Dateiname" else "Datei" for c in HEADER]
    build(tmp_path / "src2", real_images, index, header=no_file)
    items, rejects = split(read_export(tmp_path / "src2", {"index": index, "columns": COLUMNS}))
    assert items == [] and len(rejects) == 1 + len(files)
    assert f"{where}: missing column 'Dateiname' (the image file name)" in rejects[0].reason
    assert all("cannot be matched" in r.reason for r in rejects[1:])


def test_no_such_sheet_and_unreadable_workbook(tmp_path, real_images):
    files = build(tmp_path / "src", real_images, "index.xlsx")
    items, rejects = split(read_export(tmp_path / "src", {"index": "index.xlsx", "sheet": "2019", "columns": COLUMNS}))
    assert items == [] and len(rejects) == 1 + len(files)
    assert "index.xlsx: no sheet '2019' (sheets: Übersicht)" in rejects[0].reason
    (tmp_path / "src" / "index.xlsx").write_bytes(b"not a workbook")
    items, rejects = split(read_export(tmp_path / "src", {"index": "index.xlsx", "columns": COLUMNS}))
    assert items == [] and len(rejects) == 1 + len(files)
    assert "index.xlsx: unreadable workbook" in rejects[0].reason


@pytest.mark.parametrize("index", ["index.csv", "index.xlsx"])
def test_bad_rows_and_unlisted_files_with_ingest(tmp_path, real_images, index):
    source = tmp_path / "raw" / "src"
    outside = tmp_path / "raw" / "secret.jpg"  # what '../secret.jpg' would reach
    outside.parent.mkdir(parents=True)
    outside.write_bytes(real_images[7].read_bytes())
    names = ["sub/img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg", "../secret.jpg", "/etc/passwd", "ghost.jpg"]
    files = build(source, real_images, index, names=names)  # img4, img5 are not in the index
    result = ingest([{"name": "vidir", "kind": "export", "path": str(source),
                      "options": {"index": index, "columns": COLUMNS}}],
                    base_dir=Path("/"), out_dir=tmp_path / "out", max_pixels=10**8)

    assert len(result.candidates) == 4
    assert {c["origin"] for c in result.candidates} == {"sub/img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg"}
    reasons = {(r["origin"], r["member"]): r["reason"] for r in result.rejects}
    sheet = "" if index.endswith(".csv") else "Übersicht "
    assert "bad file name '../secret.jpg'" in reasons[(index, f"{sheet}row 6")]
    assert "bad file name '/etc/passwd'" in reasons[(index, f"{sheet}row 7")]
    assert "image file ghost.jpg not found" in reasons[("ghost.jpg", f"{sheet}row 8")]
    assert "is not listed in" in reasons[("img4.jpg", "")] and "is not listed in" in reasons[("img5.jpg", "")]
    assert len(result.candidates) + len(result.rejects) == len(names) + 2  # every row, plus the unlisted files
    candidate = next(c for c in result.candidates if c["origin"] == "img1.jpg")
    assert (candidate["lesion_key"], candidate["age"], candidate["visit_date"]) == ("L1", "47.5", "2010-12-24")
    # Nothing outside the source folder was read: '../secret.jpg' holds an image none of the six files has.
    secret = hashlib.sha256(outside.read_bytes()).hexdigest()
    assert secret not in {hashlib.sha256(path.read_bytes()).hexdigest() for path in files.values()}
    assert secret not in {c["candidate_id"] for c in result.candidates}
    assert not any(c["origin"].endswith("secret.jpg") for c in result.candidates)


def test_hidden_unlisted_files_are_ledgered_not_dropped(tmp_path, real_images):
    """A hidden file no index row names (an image saved as `.x.jpg`, Finder's `.DS_Store`) gets a ledger row; a
    listed one is read; plain documentation beside the index (`README.md`) is not an item."""
    import shutil

    shutil.copyfile(real_images[0], tmp_path / "listed.jpg")
    shutil.copyfile(real_images[1], tmp_path / ".hidden.jpg")
    shutil.copyfile(real_images[2], tmp_path / ".listed_hidden.jpg")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "README.md").write_text("export of 2019")
    (tmp_path / "index.csv").write_text("file\nlisted.jpg\n.listed_hidden.jpg\n")
    out = read_export(tmp_path, {})
    items, rejects = [x for x in out if isinstance(x, RawItem)], [x for x in out if isinstance(x, Reject)]
    assert sorted(i.origin for i in items) == [".listed_hidden.jpg", "listed.jpg"]
    assert sorted((r.origin, r.reason) for r in rejects) == [
        (".DS_Store", ".DS_Store: hidden file, not listed in index.csv; not read"),
        (".hidden.jpg", ".hidden.jpg: hidden file, not listed in index.csv; not read")]
