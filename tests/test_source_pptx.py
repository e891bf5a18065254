"""The `pptx` source (Rosendahl's practice): real sample decks, assembled decks with a companion workbook, bad
input, LibreOffice conversion of legacy .ppt, and an incremental ingest run.

Decks and workbooks are built with python-pptx / openpyxl in tmp_path from the real images and reports in $HAM_DATA
(nothing is copied into the project), or, where it is absent, from images and reports drawn by the sample generator
(the `some_images` fixture); the real decks and the bad-input test need the real data.
"""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from openpyxl import Workbook
from PIL import Image
from pptx import Presentation
from pptx.opc.constants import RELATIONSHIP_TYPE as RT
from pptx.util import Inches

from pipeline import sources
from pipeline.sources import ITEM_FIELDS, RawItem, Reject
from pipeline.sources import pptx as pptx_source
from pipeline.sources import expand


def read_pptx(root, options):
    """The reader's output with every unit read, as ingest sees it on a first run."""
    return list(expand(pptx_source.read_pptx(root, options)))


NS_R = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
COLUMNS = {"lesion_key": "Lesion ID", "diagnosis": "Histology", "dx_type": "Method", "age": "Age", "sex": "Sex",
           "localization": "Site"}


# ---------------------------------------------------------------------------------------------- helpers


class Images:
    """Images handed out one at a time, so no two pictures share bytes (ingest would call them duplicates)."""

    def __init__(self, some_images):
        self.dsc, self.clinic = some_images.dsc, some_images.clinic
        assert len(self.dsc) > 40 and len(self.clinic) > 20
        self.taken = {"dsc": 0, "clinic": 0}

    def take(self, kind: str) -> Path:
        kind = "dsc" if kind == "dsc" else "clinic"
        self.taken[kind] += 1
        return (self.dsc if kind == "dsc" else self.clinic)[self.taken[kind] - 1]


@pytest.fixture()
def images(some_images) -> Images:
    return Images(some_images)


@pytest.fixture(scope="module")
def reports(some_images) -> dict[int, str]:
    """The authors' free-text diagnosis examples by case number, or, without the real data, the sample
    generator's reports numbered the same way."""
    if not some_images.real:
        from pipeline.sample import DIAGNOSES

        texts = [text for dx in sorted(DIAGNOSES) for text in DIAGNOSES[dx]]
        return {number: texts[(number - 1) % len(texts)] for number in range(1, 31)}
    examples = some_images.data / "ham10000" / "metadata" / "unify_diagnoses_example.csv"
    with open(examples, newline="", encoding="utf-8") as handle:
        return {int(row["caseno"]): row["diagnosis"] for row in csv.DictReader(handle, delimiter=";")}


def _add_text(slide, text: str, top: float) -> None:
    box = slide.shapes.add_textbox(Inches(0.5), Inches(top), Inches(8), Inches(0.5))
    box.text_frame.text = text


def make_deck(path: Path, slides: list[dict]) -> list[tuple[str, bytes]]:
    """Write a deck; returns (member, image bytes) for every picture in the order the reader must number them.

    A slide spec: title (str), texts (text boxes), table (cell texts), placeholder (image path: the layout's
    picture placeholder, caption = first text), items: ("pic", path) | ("group", [path | [nested paths]]) |
    ("linked", path).
    """
    deck = Presentation()
    expected: list[tuple[str, bytes]] = []
    for number, spec in enumerate(slides, start=1):
        pictures: list[bytes] = []
        if spec.get("placeholder"):
            slide = deck.slides.add_slide(deck.slide_layouts[8])  # Picture with Caption
            slide.placeholders[1].insert_picture(str(spec["placeholder"]))
            pictures.append(Path(spec["placeholder"]).read_bytes())
            slide.placeholders[2].text_frame.text = (spec.get("texts") or [""])[0]
            texts = (spec.get("texts") or [])[1:]
        else:
            slide = deck.slides.add_slide(deck.slide_layouts[6])  # Blank
            texts = spec.get("texts") or []
        if spec.get("title"):
            _add_text(slide, spec["title"], 0.2)
        left = 0.5
        for kind, what in spec.get("items", []):
            if kind == "pic":
                slide.shapes.add_picture(str(what), Inches(left), Inches(1.5), width=Inches(3))
                pictures.append(Path(what).read_bytes())
            elif kind == "group":
                def fill(group, paths):
                    for entry in paths:
                        if isinstance(entry, list):
                            fill(group.shapes.add_group_shape(), entry)
                        else:
                            group.shapes.add_picture(str(entry), Inches(left), Inches(1.5), width=Inches(2))
                            pictures.append(Path(entry).read_bytes())
                fill(slide.shapes.add_group_shape(), what)
            elif kind == "linked":
                picture = slide.shapes.add_picture(str(what), Inches(left), Inches(1.5), width=Inches(3))
                blip = picture._element.blipFill.blip
                blip.attrib.pop(f"{{{NS_R}}}embed")
                blip.set(f"{{{NS_R}}}link", slide.part.relate_to(Path(what).as_uri(), RT.IMAGE, is_external=True))
                pictures.append(b"")  # nothing embedded: must come out as a reject
            left += 3
        for offset, text in enumerate(texts):
            _add_text(slide, text, 5.5 + 0.5 * offset)
        if spec.get("table"):
            cells = spec["table"]
            table = slide.shapes.add_table(1, len(cells), Inches(0.5), Inches(6.5), Inches(8), Inches(0.5)).table
            for index, text in enumerate(cells):
                table.cell(0, index).text = text
        expected += [(f"slide {number} picture {index}", data) for index, data in enumerate(pictures, start=1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    deck.save(str(path))
    return expected


def make_workbook(path: Path, header: list[str], rows: list[list], sheet: str = "Pathology") -> None:
    book = Workbook()
    book.active.title = "Notes"
    book.active.append(["lesion IDs of the 2003-2004 decks"])
    target = book.create_sheet(sheet)
    target.append(header)
    for row in rows:
        target.append(row)
    book.save(path)


def split(items) -> tuple[list[RawItem], list[Reject]]:
    items = list(items)
    return [i for i in items if isinstance(i, RawItem)], [i for i in items if isinstance(i, Reject)]


def size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


# ---------------------------------------------------------------------------------------------- (1) real decks


def test_registered():
    assert sources.reader_for("pptx") is pptx_source.read_pptx


def test_real_sample_decks(ham_data):
    root = ham_data / "ham10000" / "pptx_samples"
    items, rejects = split(read_pptx(root, {}))
    assert rejects == []
    got = [(i.origin, i.member, i.fields["lesion_key"], i.fields["year"], i.fields["slide"], size(i.data))
           for i in items]
    assert got == [
        ("extract_pptx_sample_1999.pptx", "slide 2 picture 1", "937946", "1999", "2", (1024, 768)),
        ("extract_pptx_sample_1999.pptx", "slide 3 picture 1", "937947", "1999", "3", (1024, 768)),
        ("extract_pptx_sample_2000.pptx", "slide 2 picture 1", "937948", "2000", "2", (1022, 767)),
        ("extract_pptx_sample_2000.pptx", "slide 3 picture 1", "937949", "2000", "3", (1504, 1129)),
    ]
    # the names the authors' extract_pptx.py gave these images (ID_YEAR_SLIDEID, slide IDs start at 256)
    assert [i.fields["source_name"] for i in items] == ["937946_1999_257", "937947_1999_258",
                                                          "937948_2000_257", "937949_2000_258"]
    for item in items:
        assert set(ITEM_FIELDS) <= set(item.fields)
        assert item.fields["diagnosis"] == item.fields["visit_date"] == ""
        assert item.data[:3] == b"\xff\xd8\xff"  # the embedded JPEG, untouched


# ---------------------------------------------------------------------------------------------- (2) assembled


def test_assembled_decks_with_workbook(tmp_path, images, reports):
    root = tmp_path / "rosendahl"
    d, c = images.take, images.take
    bowen, df, lmm, collision, sk, nodular = reports[1], reports[4], reports[5], reports[6], reports[7], reports[15]
    deck_a = make_deck(root / "practice" / "rosendahl_2003.pptx", [
        {"title": "2003"},  # title slide: text, no picture
        {"texts": ["900001", f"Diagnosis: {bowen}"], "items": [("pic", c("clinic")), ("pic", d("dsc"))]},
        {"table": ["Lesion 900002", f"Dx: {df}"],
         "items": [("group", [c("clinic"), [d("dsc")]]), ("pic", d("dsc"))]},
        {"placeholder": d("dsc"), "texts": ["900003"], "items": [("pic", c("clinic"))]},
    ])
    deck_b = make_deck(root / "rosendahl_2004.pptx", [
        {"texts": ["900004", f"Histology: {collision}"],
         "items": [("pic", d("dsc")), ("pic", c("clinic")), ("pic", d("dsc"))]},
        {"texts": [f"900005\nDiagnosis: {nodular}"], "items": [("pic", d("dsc"))]},  # not in the workbook
        {"title": "Follow-up 12.03.2004", "texts": ["900001"], "items": [("pic", d("dsc"))]},
    ])
    make_workbook(root / "pathology.xlsx",
                  ["Lesion ID", "Histology", "Method", "Age", "Sex", "Site", "Comment"],
                  [[900001, bowen, "histo", 65, "male", "back", "re-excision"],
                   [900002, None, "histo", 55.0, "female", "lower extremity", None],  # deck's diagnosis stays
                   ["900003", lmm, "histo", 80, "male", "face", None],
                   [900004, sk, "histo", 70, "female", "trunk", "collision in deck text"],  # workbook wins
                   [900001, bowen, "histo", 65, "male", "back", "re-excision"],  # same row again: fine
                   [None, None, None, None, None, None, None]])
    options = {"workbook": "pathology.xlsx", "sheet": "Pathology", "columns": COLUMNS}

    items, rejects = split(read_pptx(root, options))
    assert rejects == []

    joined = {"900001": (bowen, "histo", "65", "male", "back"),
              "900002": (df, "histo", "55", "female", "lower extremity"),
              "900003": (lmm, "histo", "80", "male", "face"),
              "900004": (sk, "histo", "70", "female", "trunk"),
              "900005": (nodular, "", "", "", "")}
    slides_a = {2: "900001", 3: "900002", 4: "900003"}
    slides_b = {1: "900004", 2: "900005", 3: "900001"}
    expected = {}
    for origin, year, pictures, lesions in (("practice/rosendahl_2003.pptx", "2003", deck_a, slides_a),
                                            ("rosendahl_2004.pptx", "2004", deck_b, slides_b)):
        for member, data in pictures:
            slide = int(member.split()[1])
            diagnosis, dx_type, age, sex, localization = joined[lesions[slide]]
            expected[(origin, member)] = {
                "data": data, "lesion_key": lesions[slide], "year": year, "slide": str(slide),
                "diagnosis": diagnosis, "dx_type": dx_type, "age": age, "sex": sex, "localization": localization}
    assert len(expected) == 12
    got = {(i.origin, i.member): {"data": i.data, **{k: i.fields[k] for k in expected[(i.origin, i.member)]
                                                     if k != "data"}} for i in items}
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key
    for item in items:
        assert item.fields["visit_date"] == item.fields["dx"] == item.fields["image_id"] == ""
    # several pictures per slide, in shape order (group members and the placeholder picture included)
    assert [i.member for i in items if i.origin == "rosendahl_2004.pptx"][:3] == [
        "slide 1 picture 1", "slide 1 picture 2", "slide 1 picture 3"]


def test_custom_patterns(tmp_path, images, reports):
    root = tmp_path / "src"
    make_deck(root / "deck_2010.pptx", [
        {"texts": ["Pat. R-0042 (seen 2010)", reports[2]], "items": [("pic", images.take("dsc"))]},
        {"texts": ["Pat. R-0043", reports[14]], "items": [("pic", images.take("dsc"))]},
    ])
    items, rejects = split(read_pptx(root, {"id_pattern": r"\b(R-\d+)\b",
                                            "diagnosis_pattern": r"(?m)^(?!Pat\.)(.+)$"}))
    assert rejects == []
    assert [(i.fields["lesion_key"], i.fields["diagnosis"]) for i in items] == [
        ("R-0042", reports[2]), ("R-0043", reports[14])]
    # with diagnoses off, only the ID is taken
    items, _ = split(read_pptx(root, {"id_pattern": r"\b(R-\d+)\b", "diagnosis_pattern": None}))
    assert [i.fields["diagnosis"] for i in items] == ["", ""]


# ---------------------------------------------------------------------------------------------- (3) bad input


def test_bad_input(tmp_path, images, reports, ham_data, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)  # no LibreOffice
    root = tmp_path / "src"
    root.mkdir()
    (root / "corrupt_2005.pptx").write_bytes(b"this is not a zip file" * 50)
    real = (ham_data / "ham10000" / "pptx_samples" / "extract_pptx_sample_1999.pptx").read_bytes()
    (root / "truncated_1999.pptx").write_bytes(real[: len(real) // 2])
    (root / "old" / "legacy_1998.ppt").parent.mkdir()
    (root / "old" / "legacy_1998.ppt").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512)
    undated = make_deck(root / "undated.pptx", [{"texts": ["900020"], "items": [("pic", images.take("dsc"))]}])
    good = make_deck(root / "rosendahl_2006.pptx", [
        {"texts": ["900010", f"Diagnosis: {reports[16]}"], "items": [("pic", images.take("dsc"))]},
        {"texts": ["see previous slide"], "items": [("pic", images.take("clinic")), ("pic", images.take("dsc"))]},
        {"texts": ["900011 / 900012"], "items": [("pic", images.take("dsc"))]},
        {"texts": ["900013"], "items": [("linked", images.take("dsc")), ("pic", images.take("dsc"))]},
    ])
    make_workbook(root / "pathology.xlsx", ["Lesion ID", "Histo", "Method", "Age", "Sex", "Site"],
                  [[900010, reports[16], "histo", 40, "male", "back"]])
    options = {"workbook": "pathology.xlsx", "sheet": "Pathology", "columns": COLUMNS}

    items, rejects = split(read_pptx(root, options))
    reasons = {(r.origin, r.member): r.reason for r in rejects}

    assert "not a readable PowerPoint deck" in reasons[("corrupt_2005.pptx", "")]
    assert "not a readable PowerPoint deck" in reasons[("truncated_1999.pptx", "")]
    assert "LibreOffice is not installed" in reasons[("old/legacy_1998.ppt", "")]
    assert "soffice --headless --convert-to pptx --outdir OUTDIR legacy_1998.ppt" in reasons[("old/legacy_1998.ppt",
                                                                                                "")]
    assert "no year (19xx or 20xx) in the file name" in reasons[("undated.pptx", "slide 1 picture 1")]
    deck = "rosendahl_2006.pptx"
    for member in ("slide 2 picture 1", "slide 2 picture 2"):
        assert f"{deck} slide 2: no lesion ID in the slide text" in reasons[(deck, member)]
    assert "several lesion IDs in the slide text (900011, 900012)" in reasons[(deck, "slide 3 picture 1")]
    assert "linked picture" in reasons[(deck, "slide 4 picture 1")]
    workbook_reason = reasons[("pathology.xlsx", "sheet Pathology")]
    assert "workbook pathology.xlsx sheet Pathology: missing column 'Histology' (diagnosis)" in workbook_reason
    assert "Histo" in workbook_reason  # the headers it does have

    # the pictures are still yielded, with the deck's own fields only (nothing joined from the broken sheet)
    assert [(i.member, i.fields["lesion_key"], i.fields["diagnosis"], i.fields["age"]) for i in items] == [
        ("slide 1 picture 1", "900010", reports[16], ""), ("slide 4 picture 2", "900013", "", "")]
    assert items[0].data == good[0][1] and items[1].data == good[-1][1]

    # every picture of every readable deck is accounted for
    pictures_in = len(undated) + len(good)
    picture_rejects = [r for r in rejects if r.member.startswith("slide ")]
    assert pictures_in == 7 == len(items) + len(picture_rejects)
    assert len(rejects) == len(picture_rejects) + 4  # corrupt, truncated, legacy .ppt, workbook


@pytest.mark.parametrize("options, member, message", [
    ({"workbook": "missing.xlsx"}, "", "workbook missing.xlsx not found"),
    ({"workbook": "pathology.xlsx", "sheet": "Histo"}, "sheet Histo", "no sheet 'Histo' (sheets: Notes, Pathology)"),
    ({"workbook": "pathology.xlsx", "sheet": "Pathology", "columns": {"lesion_key": "ID"}}, "sheet Pathology",
     "missing column 'ID' (lesion_key)"),
    ({"workbook": "broken.xlsx"}, "", "broken.xlsx: unreadable workbook"),
])
def test_unusable_workbook_keeps_pictures(tmp_path, images, options, member, message):
    root = tmp_path / "src"
    make_deck(root / "deck_2007.pptx", [{"texts": ["900030"], "items": [("pic", images.take("dsc"))]}])
    make_workbook(root / "pathology.xlsx", ["Lesion ID", "Histology"], [[900030, "Blue nevus"]])
    (root / "broken.xlsx").write_bytes(b"PK\x03\x04 not really")
    items, rejects = split(read_pptx(root, options))
    assert len(rejects) == 1 and rejects[0].member == member and message in rejects[0].reason
    assert options["workbook"] in rejects[0].reason
    assert [(i.fields["lesion_key"], i.fields["diagnosis"]) for i in items] == [("900030", "")]


def test_workbook_row_problems(tmp_path, images):
    root = tmp_path / "src"
    make_deck(root / "deck_2008.pptx", [{"texts": ["900040"], "items": [("pic", images.take("dsc"))]}])
    make_workbook(root / "pathology.xlsx", ["Lesion ID", "Histology", "Extra"],
                  [[900040, "Blue nevus", "x"], [None, "Dermatofibroma", None], [900040, "Hemangioma", None]])
    items, rejects = split(read_pptx(root, {"workbook": "pathology.xlsx", "sheet": "Pathology",
                                            "columns": {"lesion_key": "Lesion ID", "diagnosis": "Histology"}}))
    assert [r.member for r in rejects] == ["sheet Pathology row 3", "sheet Pathology row 4"]
    assert "row 3: no lesion ID in column 'Lesion ID'" in rejects[0].reason
    assert "row 4: lesion ID 900040 again with different values (first at row 2, which is used)" in rejects[1].reason
    assert [i.fields["diagnosis"] for i in items] == ["Blue nevus"]


# ---------------------------------------------------------------------------------------------- legacy .ppt


@pytest.mark.skipif(pptx_source._soffice() is None,
                    reason="LibreOffice (soffice / libreoffice) is not installed: .ppt conversion not tested")
def test_legacy_ppt_converted_with_libreoffice(tmp_path, images):
    build, root = tmp_path / "build", tmp_path / "src"
    pictures = make_deck(build / "legacy_2001.pptx", [
        {"texts": ["900050"], "items": [("pic", images.take("dsc")), ("pic", images.take("clinic"))]},
        {"texts": ["900051"], "items": [("pic", images.take("dsc"))]},
    ])
    root.mkdir()
    subprocess.run([pptx_source._soffice(), f"-env:UserInstallation={(tmp_path / 'profile').as_uri()}",
                    "--headless", "--convert-to", "ppt", "--outdir", str(root), str(build / "legacy_2001.pptx")],
                   check=True, timeout=300, capture_output=True)
    assert (root / "legacy_2001.ppt").is_file()
    items, rejects = split(read_pptx(root, {}))
    assert rejects == []
    assert [(i.origin, i.member, i.fields["lesion_key"], i.fields["year"]) for i in items] == [
        ("legacy_2001.ppt", "slide 1 picture 1", "900050", "2001"),
        ("legacy_2001.ppt", "slide 1 picture 2", "900050", "2001"),
        ("legacy_2001.ppt", "slide 2 picture 1", "900051", "2001")]
    assert [size(i.data) for i in items] == [size(data) for _, data in pictures]  # may be re-encoded, same size


# ---------------------------------------------------------------------------------------------- (4) ingest


def test_ingest_incremental(tmp_path, images, reports):
    from pipeline.ingest import ingest

    root = tmp_path / "raw" / "rosendahl"

    def deck(name: str, first_id: int, layout: list[int]) -> int:
        slides = [{"texts": [str(first_id + n), f"Diagnosis: {reports[n % 29 + 1]}"],
                   "items": [("pic", images.take("dsc" if k % 2 == 0 else "clinic")) for k in range(count)]}
                  for n, count in enumerate(layout)]
        return len(make_deck(root / name, slides))

    count = deck("rosendahl_2001.pptx", 901000, [2, 1, 3, 2] * 5) + deck("rosendahl_2002.pptx", 902000, [1, 2, 2] * 5)
    config = [{"name": "rosendahl", "kind": "pptx", "path": "raw/rosendahl"}]
    out = tmp_path / "interim"

    start = time.perf_counter()
    full = ingest(config, tmp_path, out, max_pixels=100_000_000)
    full_time = time.perf_counter() - start
    assert full.rejects == [] and full.decoded == count == len(full.candidates) == 65

    new = deck("rosendahl_2003.pptx", 903000, [2, 1, 2])
    start = time.perf_counter()
    again = ingest(config, tmp_path, out, max_pixels=100_000_000)
    incremental_time = time.perf_counter() - start
    assert again.rejects == []
    assert again.decoded == new == 5
    assert len(again.candidates) == count + new
    assert {row["origin"] for row in again.candidates} == {"rosendahl_2001.pptx", "rosendahl_2002.pptx",
                                                           "rosendahl_2003.pptx"}
    row = next(r for r in again.candidates
               if r["origin"] == "rosendahl_2003.pptx" and r["member"] == "slide 2 picture 1")
    assert (row["kind"], row["lesion_key"], row["diagnosis"]) == ("pptx", "903001", reports[2])
    print(f"\npptx ingest: full run {count} pictures in {full_time:.3f} s; incremental run (+{new} new of "
          f"{count + new}) in {incremental_time:.3f} s, decoded {again.decoded}")
