"""The study's split at full size: the public HAM10000 release as a `ham10000` source, rebuilt in tmp_path from the
real metadata (10015 training rows, the 1512 ISIC 2018 test labels, the ISIC Archive export as test metadata) with
11527 distinct small images made from the 490 real ones, goes through ingest -> metadata -> split -> release and
comes out with the published counts: 10015 train images of 7470 lesions, the study's class and dx_type counts, and
the 1512 test images held out.

The filter is bypassed (every image decided `dsc` by annotation, as the filter does for a source that is
dermatoscopic by definition) and the standardise stage runs with a small recipe (64x48) to keep it fast; both are
the stages' own functions on real files.
"""
from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from pipeline.common import read_csv, write_csv
from pipeline.filter import DECISION_COLUMNS
from pipeline.ingest import ingest
from pipeline.metadata import build_metadata
from pipeline.release import build_release
from pipeline.split import assign_splits
from pipeline.standardise import standardise

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

STUDY_DX = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
STUDY_DX_TYPE = {"histo": 5340, "follow_up": 3704, "consensus": 902, "confocal": 69}
SIZE = (64, 48)


def variant_maker(ham_data: Path):
    """image number -> distinct JPEG bytes: a real image, shrunk, cropped at one of 9 offsets, flipped one of 4
    ways, with the number stamped into a corner block (so no two are alike, even after standardising)."""
    bases = []
    for path in sorted((ham_data / "ham10000" / "images").glob("*.jpg")):
        with Image.open(path) as image:
            bases.append(image.convert("RGB").resize((SIZE[0] + 8, SIZE[1] + 6), Image.BILINEAR))

    def make(number: int) -> bytes:
        base = bases[number % len(bases)]
        variant = number // len(bases)
        left, top = 4 * (variant % 3), 3 * ((variant // 3) % 3)
        image = base.crop((left, top, left + SIZE[0], top + SIZE[1]))
        if variant // 9 % 2:
            image = ImageOps.mirror(image)
        if variant // 18 % 2:
            image = ImageOps.flip(image)
        stamp = (number % 256, number // 256 % 256, 200)
        image.paste(Image.new("RGB", (6, 6), stamp), (0, 0))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=92)
        return buffer.getvalue()

    return make


def public_release(root: Path, ham_data: Path) -> dict:
    """The Dataverse layout at full size: two training zips, the test zip, metadata, ground truth, archive export."""
    metadata_dir = ham_data / "ham10000" / "metadata"
    root.mkdir(parents=True)
    train = read_csv(metadata_dir / "HAM10000_metadata_with_dataset_DERIVED.csv")
    truth = read_csv(metadata_dir / "ISIC2018_Task3_Test_GroundTruth.csv")
    assert len(train) == 10015 and len(truth) == 1512
    for name in ("HAM10000_metadata_with_dataset_DERIVED.csv", "ISIC2018_Task3_Test_GroundTruth.csv",
                 "ISIC_archive_HAM10000_collection_metadata.csv"):
        (root / name).write_bytes((metadata_dir / name).read_bytes())
    make = variant_maker(ham_data)
    number = 0
    half = len(train) // 2
    for zip_name, rows in (("HAM10000_images_part_1.zip", train[:half]), ("HAM10000_images_part_2.zip", train[half:]),
                           ("ISIC2018_Task3_Test_Input.zip", [{"image_id": r["image"]} for r in truth])):
        with zipfile.ZipFile(root / zip_name, "w", zipfile.ZIP_STORED) as archive:
            for row in rows:
                archive.writestr(f"{row['image_id']}.jpg", make(number))
                number += 1
    return {"train": train, "test": truth}


@pytest.fixture(scope="module")
def official(ham_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("official")
    built = public_release(base / "raw", ham_data)
    source = {"name": "public", "kind": "ham10000", "path": "raw",
              "options": {"metadata": "HAM10000_metadata_with_dataset_DERIVED.csv",
                          "test_metadata": "ISIC_archive_HAM10000_collection_metadata.csv"}}
    result = ingest([source], base, base / "ingest", 100_000_000)
    # The filter trusts a source that is dermatoscopic by definition: every image decided dsc.
    write_csv(base / "decisions.csv", ({"candidate_id": c["candidate_id"], "image_type": "dsc",
                                        "confidence": "1.000000", "p_dsc": "1", "p_macro": "0", "p_clinic": "0",
                                        "decided_by": "annotation", "keep": "true", "review": "false"}
                                       for c in result.candidates), DECISION_COLUMNS)
    counts = standardise(base / "ingest" / "candidates.csv", base / "decisions.csv", base / "ingest" / "objects",
                         {"width": SIZE[0], "height": SIZE[1], "quality": 95, "density": 72}, base / "std" / "images",
                         base / "std" / "index.csv")
    params = {"age_cap": 85, "ids": {"image_prefix": "ISIC_", "image_start": 9000000, "lesion_prefix": "HAM_",
                                     "lesion_start": 9000000},
              "official_lesion_ids_from": ["public"], "datasets": {}}
    build_metadata(base / "ingest" / "candidates.csv", base / "decisions.csv", base / "std" / "index.csv", params,
                   base / "registry", base / "meta")
    split = assign_splits(base / "meta" / "metadata.csv", base / "meta" / "images.csv",
                          {"test_fraction": 0.2, "val_fraction": 0.0, "seed": 20180814}, base / "registry" / "splits.csv")
    release_params = {"attribution": "Tschandl P, Rosendahl C, Kittler H. Sci. Data 5, 180161 (2018).",
                      "license": "CC BY-NC 4.0", "isic_attribution": "ViDIR Group", "isic_license": "CC-BY-NC",
                      "version": "test"}
    summary = build_release(base / "meta" / "metadata.csv", base / "meta" / "images.csv",
                            base / "registry" / "splits.csv", base / "std" / "images", release_params,
                            base / "release", base / "summary.json")
    return {"base": base, "built": built, "ingest": result, "standardise": counts, "split": split,
            "summary": summary}


def test_public_release_keeps_the_studys_split_and_counts(official):
    base, built, summary = official["base"], official["built"], official["summary"]
    assert official["ingest"].rejects == [] and len(official["ingest"].candidates) == 10015 + 1512
    assert official["standardise"]["duplicates"] == 0  # every generated image is distinct
    assert read_csv(base / "meta" / "excluded.csv") == []

    train = read_csv(base / "release" / "train" / "metadata.csv")
    test = read_csv(base / "release" / "test" / "metadata.csv")
    assert not (base / "release" / "val").exists()
    assert len(train) == 10015 and len({r["lesion_id"] for r in train}) == 7470
    assert Counter(r["dx"] for r in train) == STUDY_DX
    assert Counter(r["dx_type"] for r in train) == STUDY_DX_TYPE
    assert len(test) == 1512
    assert {r["image_id"] for r in train} == {r["image_id"] for r in built["train"]}
    assert {r["image_id"] for r in test} == {r["image"] for r in built["test"]}
    assert not {r["lesion_id"] for r in train} & {r["lesion_id"] for r in test}
    truth = {r["image_id"]: r for r in built["train"]}
    for row in train:  # the published metadata, row for row
        assert {k: row[k] for k in truth[row["image_id"]]} == truth[row["image_id"]], row["image_id"]

    assert summary["splits"]["train"]["images"] == 10015 and summary["splits"]["train"]["lesions"] == 7470
    assert summary["splits"]["train"]["dx"] == dict(sorted(STUDY_DX.items()))
    assert summary["splits"]["test"]["images"] == 1512
    assert official["split"]["images"] == {"test": 1512, "train": 10015}
    card = (base / "release" / "CARD.md").read_text()
    assert "| train | 10015 | 7470 |" in card and "| nv | melanocytic nevus | 6705 |" in card


def test_per_split_manifests_at_full_size(official):
    release = official["base"] / "release"
    for split, count in (("train", 10015), ("test", 1512)):
        rows = read_csv(release / split / "manifest.csv")
        assert sum(r["path"].startswith("images/") for r in rows) == count
        assert {r["split"] for r in rows} == {split}
    top = read_csv(release / "manifest.csv")
    assert sum(r["path"].endswith(".jpg") for r in top) == 10015 + 1512
