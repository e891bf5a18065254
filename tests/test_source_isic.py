"""Source kind `isic`: an ISIC Archive export (isic-cli layout) built in tmp_path from the real images and the
real ISIC-archive metadata rows for them, checked against the HAM10000 release metadata."""
import csv
from collections import Counter
from pathlib import Path

import pytest

from pipeline.ingest import ingest
from pipeline.sources import ITEM_FIELDS, RawItem, Reject
from pipeline.sources.isic import map_row, SITES
from pipeline.sources import expand
from pipeline.sources import isic as reader_module


def read_isic(root, options):
    """The reader's output with every unit read, as ingest sees it on a first run."""
    return list(expand(reader_module.read_isic(root, options)))


CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
# the release's localization inside each coarser ISIC site (checked on all 10015 images in the real files)
COARSE = {"": {"trunk", "genital", "unknown"}, "head/neck": {"scalp", "face", "ear", "neck"},
          "anterior torso": {"chest", "abdomen"}, "lower extremity": {"lower extremity", "foot"},
          "upper extremity": {"upper extremity", "hand"}}


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def write_rows(path: Path, header: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def real(ham_data):
    metadata = ham_data / "ham10000" / "metadata"
    header, archive = read_rows(metadata / "ISIC_archive_HAM10000_collection_metadata.csv")
    _, ham = read_rows(metadata / "HAM10000_metadata.csv")
    _, truth = read_rows(metadata / "ISIC2018_Task3_Test_GroundTruth.csv")
    images = {p.stem: p for folder in ("images", "test_images")
              for p in sorted((ham_data / "ham10000" / folder).glob("*.jpg"))}
    return {"header": header, "archive": archive, "ham": {r["image_id"]: r for r in ham},
            "truth": {r["image"]: r for r in truth}, "images": images}


def build_export(root: Path, real: dict) -> list[dict]:
    """isic-cli's layout: images named by isic_id, metadata.csv, attribution.txt, licenses/."""
    root.mkdir(parents=True)
    rows = [row for row in real["archive"] if row["isic_id"] in real["images"]]
    assert len(rows) == len(real["images"]) == 560
    for isic_id, path in real["images"].items():
        (root / f"{isic_id}.jpg").write_bytes(path.read_bytes())
    write_rows(root / "metadata.csv", real["header"], rows)
    (root / "attribution.txt").write_text("ViDIR Group, Department of Dermatology, Medical University of Vienna\n")
    (root / "licenses").mkdir()
    (root / "licenses" / "CC-BY-NC.txt").write_text("CC BY-NC 4.0\n")
    return rows


def split(results) -> tuple[list[RawItem], list[Reject]]:
    results = list(results)
    return [r for r in results if isinstance(r, RawItem)], [r for r in results if isinstance(r, Reject)]


def test_mapping_of_the_whole_real_file_matches_the_release_and_the_test_truth(real):
    """dx and dx_type equal the release for all 10015 training images and the ground truth for all 1512 tests."""
    differences = Counter()
    for row in real["archive"]:
        fields = map_row({k: v.strip() for k, v in row.items()}, SITES)
        assert fields["image_id"] == row["isic_id"] and fields["lesion_key"] == row["lesion_id"]
        assert fields["license"] == "CC-BY-NC" and fields["attribution"].startswith("ViDIR Group")
        ham = real["ham"].get(row["isic_id"])
        if ham:
            assert (fields["dx"], fields["dx_type"]) == (ham["dx"], ham["dx_type"]), row["isic_id"]
            site = fields["localization"]
            assert site == ham["localization"] or ham["localization"] in COARSE[site], (row["isic_id"], site)
            differences["site coarser"] += site != ham["localization"]
            differences["akiec from scc"] += row["diagnosis"] == "squamous cell carcinoma"
            differences["sex"] += fields["sex"] != ham["sex"] and not (fields["sex"] == "" and ham["sex"] == "unknown")
            differences["age"] += (float(fields["age"]) if fields["age"] else None) != (
                float(ham["age"]) if ham["age"] else None)
        elif row["isic_id"] in real["truth"]:
            (label,) = [c for c in CLASSES if float(real["truth"][row["isic_id"]][c]) == 1.0]
            assert fields["dx"] == label.lower(), row["isic_id"]
    # the archive's known differences from the release: akiec includes SCC, a few ages and sexes differ,
    # and four ISIC sites cover several release sites (plus 39 images aged 0 in the release and empty here)
    assert differences["akiec from scc"] == 197
    assert differences["sex"] == 10
    assert 0 < differences["age"] < 60
    assert differences["site coarser"] > 0


def test_export_round_trip_row_by_row(tmp_path, real):
    rows = build_export(tmp_path / "raw", real)
    items, rejects = split(read_isic(tmp_path / "raw", {}))
    assert rejects == []
    assert len(items) == 560
    by_id = {item.fields["image_id"]: item for item in items}
    train = test = 0
    counted = Counter()
    for row in rows:
        item = by_id[row["isic_id"]]
        assert item.origin == f"{row['isic_id']}.jpg"
        assert item.data == real["images"][row["isic_id"]].read_bytes()
        assert set(ITEM_FIELDS) <= set(item.fields)
        assert item.fields["lesion_key"] == row["lesion_id"] and row["lesion_id"].startswith("IL_")
        assert item.fields["diagnosis"] == row["diagnosis"]
        assert item.fields["age"] == row["age_approx"]
        assert item.fields["image_type_hint"] == "dsc"
        assert item.fields["split_hint"] == ""
        assert (item.fields["attribution"], item.fields["license"]) == (row["attribution"], "CC-BY-NC")
        ham = real["ham"].get(row["isic_id"])
        if ham:
            train += 1
            assert (item.fields["dx"], item.fields["dx_type"]) == (ham["dx"], ham["dx_type"]), row["isic_id"]
            counted["scc"] += row["diagnosis"] == "squamous cell carcinoma"
            counted["sex differs"] += item.fields["sex"] not in (ham["sex"], "" if ham["sex"] == "unknown" else "-")
        else:
            test += 1
            (label,) = [c for c in CLASSES if float(real["truth"][row["isic_id"]][c]) == 1.0]
            assert item.fields["dx"] == label.lower()
    assert (train, test) == (490, 70)
    assert 0 < counted["scc"] < 60  # akiec images the archive calls squamous cell carcinoma
    assert counted["sex differs"] <= 10


def test_bad_input_is_rejected_and_counts_add_up(tmp_path, real):
    rows = build_export(tmp_path / "raw", real)
    root = tmp_path / "raw"
    ids = [row["isic_id"] for row in rows]
    (root / f"{ids[0]}.jpg").unlink()  # a row without its image
    (root / "ISIC_9999999.jpg").write_bytes(real["images"][ids[1]].read_bytes())  # an image without a row
    (root / "sub").mkdir()
    (root / "sub" / f"{ids[2]}.jpg").write_bytes(real["images"][ids[2]].read_bytes())  # a second copy
    (root / "notes.docx").write_bytes(b"PK\3\4")
    other = {**rows[3], "diagnosis": "seborrheic keratosis", "diagnosis_confirm_type": "dermatoscopy",
             "anatom_site_general": "oral/genital", "image_type": "TBP tile: close-up"}
    write_rows(root / "metadata.csv", real["header"], [*rows, dict(rows[4]), {**rows[0], "isic_id": ""}])
    items, rejects = split(read_isic(root, {}))
    reasons = {(r.origin, r.member): r.reason for r in rejects}
    n = len(rows) + 1
    assert f"no image file for {ids[0]}" in reasons[("metadata.csv", "row 2")]
    assert "not listed in metadata.csv" in reasons[("ISIC_9999999.jpg", "")]
    assert "second copy" in reasons[(f"sub/{ids[2]}.jpg", "")]
    assert "not an image" in reasons[("notes.docx", "")]
    assert f"{ids[4]} repeated (row 6 is kept)" in reasons[("metadata.csv", f"row {n + 1}")]
    assert "empty isic_id" in reasons[("metadata.csv", f"row {n + 2}")]
    assert len(rejects) == 6 and len(items) == 559
    files = [p for p in root.rglob("*") if p.is_file() and p.name not in ("metadata.csv", "attribution.txt")
             and "licenses" not in p.parts]
    unmatched_rows = 1 + 2  # the row without image, the repeated and the empty one
    assert len(items) + len(rejects) == len(files) + unmatched_rows

    # values outside the vocabulary pass through for the metadata stage to judge
    fields = map_row(other, SITES)
    assert (fields["dx"], fields["diagnosis"]) == ("", "seborrheic keratosis")
    assert fields["dx_type"] == "dermatoscopy" and fields["image_type_hint"] == ""
    assert fields["localization"] == "oral/genital"
    assert map_row(other, {**SITES, "oral/genital": "genital"})["localization"] == "genital"

    # a missing column rejects the file, naming it, and then every image with it
    renamed = [c if c != "diagnosis_confirm_type" else "diagnosis_confirmation" for c in real["header"]]
    write_rows(root / "metadata.csv", renamed,
               [{("diagnosis_confirmation" if k == "diagnosis_confirm_type" else k): v for k, v in r.items()}
                for r in rows])
    items, rejects = split(read_isic(root, {}))
    assert items == []
    assert rejects[0].origin == "metadata.csv" and "missing column 'diagnosis_confirm_type'" in rejects[0].reason
    assert len(rejects) == 1 + len(files)
    assert all("missing column 'diagnosis_confirm_type'" in r.reason for r in rejects if r.origin != "notes.docx")


def test_ingest_plugs_in(tmp_path, real):
    build_export(tmp_path / "raw", real)
    result = ingest([{"name": "archive", "kind": "isic", "path": str(tmp_path / "raw"),
                      "options": {"localization_map": {"anterior torso": "trunk"}}}],
                    base_dir=Path("/"), out_dir=tmp_path / "out", max_pixels=10**8)
    assert result.rejects == []
    assert len(result.candidates) == result.decoded == 560
    by_id = {c["image_id"]: c for c in result.candidates}
    for image_id, ham in real["ham"].items():
        if image_id in by_id:
            assert (by_id[image_id]["dx"], by_id[image_id]["dx_type"]) == (ham["dx"], ham["dx_type"])
    assert "anterior torso" not in {c["localization"] for c in result.candidates}
    assert {c["kind"] for c in result.candidates} == {"isic"}


# --- today's exports: the diagnosis as one column per level of the hierarchy ---------------------------------------

TODAY = {"isic_id": "ISIC_0000001", "attribution": "A", "copyright_license": "CC-0", "age_approx": "50",
         "anatom_site_general": "posterior torso", "diagnosis_confirm_type": "histopathology",
         "image_type": "dermoscopic", "lesion_id": "IL_0000001", "sex": "male"}


@pytest.mark.parametrize("levels, diagnosis, node, dx", [
    (["Benign", "Benign melanocytic proliferations", "Nevus", "Nevus, NOS, Junctional"],
     "Benign:Benign melanocytic proliferations:Nevus:Nevus, NOS, Junctional",
     "Benign:Benign melanocytic proliferations:Nevus:Nevus, NOS, Junctional", "nv"),
    (["Malignant", "Malignant epidermal proliferations", "Squamous cell carcinoma in situ",
      "Squamous cell carcinoma in situ, Bowens disease"], None, None, "akiec"),
    (["Benign", "Benign epidermal proliferations", "Solar lentigo", "", ""], None,
     "Benign:Benign epidermal proliferations:Solar lentigo", "bkl"),
    # outside every class: dx stays empty and the metadata stage unifies the text (here: invasive SCC, excluded)
    (["Malignant", "Malignant epidermal proliferations", "Squamous cell carcinoma, Invasive"], None, None, ""),
    # a gap between levels is not a node: the text goes to the rules as it is
    (["Benign", "", "Nevus"], "Benign::Nevus", "", ""),
])
def test_todays_levels_map_to_a_node_and_its_class(levels, diagnosis, node, dx):
    row = {**TODAY, **{f"diagnosis_{n}": level for n, level in enumerate(levels, start=1)}}
    fields = map_row(row, SITES)
    joined = ":".join(level for level in levels if level)
    assert fields["diagnosis"] == (diagnosis if diagnosis is not None else joined)
    assert fields["isic_diagnosis"] == (node if node is not None else joined)
    assert fields["dx"] == dx and fields["dx_type"] == "histo" and fields["localization"] == "back"


def test_older_flat_diagnoses_get_their_node():
    fields = map_row({**TODAY, "diagnosis": "squamous cell carcinoma"}, SITES)
    assert (fields["dx"], fields["diagnosis"]) == ("akiec", "squamous cell carcinoma")
    assert fields["isic_diagnosis"] == "Malignant:Malignant epidermal proliferations:Squamous cell carcinoma in situ"
    assert map_row({**TODAY, "diagnosis": "seborrheic keratosis"}, SITES)["isic_diagnosis"] == ""


def test_a_metadata_file_without_any_diagnosis_column_is_rejected(tmp_path, real):
    root = tmp_path / "raw"
    root.mkdir()
    write_rows(root / "metadata.csv", list(TODAY), [TODAY])
    (root / "ISIC_0000001.jpg").write_bytes(next(iter(real["images"].values())).read_bytes())
    items, rejects = split(read_isic(root, {}))
    assert items == [] and len(rejects) == 2
    assert "metadata.csv: missing column 'diagnosis_1' (or the older 'diagnosis'; found: isic_id," in rejects[0].reason
