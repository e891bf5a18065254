"""The study's split at full size: the public HAM10000 release as a `ham10000` source, rebuilt in tmp_path from the
real metadata (10015 training rows, the 1512 ISIC 2018 test labels, the ISIC Archive export as test metadata) with
11527 distinct small images made from the 490 real ones, goes through ingest -> metadata -> split -> release and
comes out with the published counts: 10015 train images of 7470 lesions, the study's class and dx_type counts, and
the 1512 test images held out.

The filter is bypassed (every image decided `dsc` by annotation, as the filter does for a source that is
dermatoscopic by definition) and the standardise stage runs with a small recipe (64x48) to keep it fast; both are
the stages' own functions on real files.

Without data, a small release of the same layout made here (made-up metadata over drawn images, 42 training images
of 20 lesions, 12 test images) goes through the same stages: the ISIC 2018 test images stay test, the published
training images train, every lesion in one split; with `train_split: ''` the training lesions are dealt out and the
test images still stay test.
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
    return {"built": built, **run_stages(base, source)}


def run_stages(base: Path, source: dict, test_fraction: float = 0.2) -> dict:
    """ingest -> (every image decided dsc) -> standardise -> metadata -> split -> release of one source in
    `base`."""
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
                          {"test_fraction": test_fraction, "val_fraction": 0.0, "seed": 20180814},
                          base / "registry" / "splits.csv")
    release_params = {"attribution": "Tschandl P, Rosendahl C, Kittler H. Sci. Data 5, 180161 (2018).",
                      "license": "CC BY-NC 4.0", "isic_attribution": "ViDIR Group", "isic_license": "CC-BY-NC",
                      "version": "test"}
    summary = build_release(base / "meta" / "metadata.csv", base / "meta" / "images.csv",
                            base / "registry" / "splits.csv", base / "std" / "images", release_params,
                            base / "release", base / "summary.json")
    return {"base": base, "ingest": result, "standardise": counts, "split": split, "summary": summary}


@pytest.mark.real_data
@pytest.mark.slow
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


@pytest.mark.real_data
@pytest.mark.slow
def test_per_split_manifests_at_full_size(official):
    release = official["base"] / "release"
    for split, count in (("train", 10015), ("test", 1512)):
        rows = read_csv(release / split / "manifest.csv")
        assert sum(r["path"].startswith("images/") and r["path"].endswith(".jpg") for r in rows) == count
        assert {r["split"] for r in rows} == {split}
    top = read_csv(release / "manifest.csv")
    assert sum(r["path"].endswith(".jpg") for r in top) == 10015 + 1512


# ------------------------------------------------------------------------- a small generated release (no data)

GROUND_TRUTH = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def small_public_release(root: Path, images) -> dict:
    """The Dataverse layout with made-up metadata: training lesions of 1 to 3 images over the drawn images
    (each image its own drawing, shrunk), then 12 ISIC 2018 test images with one-hot labels and a test metadata
    file giving their lesions (two images each)."""
    root.mkdir(parents=True)
    pictures = iter(images)

    def jpeg() -> bytes:
        buffer = io.BytesIO()
        Image.open(next(pictures)).convert("RGB").resize((SIZE[0] * 2, SIZE[1] * 2)).save(buffer, "JPEG", quality=92)
        return buffer.getvalue()

    train, lesion = [], 0
    while len(train) < 40:
        dx = ("nv", "mel", "bkl", "bcc", "akiec", "df", "vasc")[lesion % 7]
        for _ in range((1, 2, 3, 1)[lesion % 4]):
            train.append({"lesion_id": f"HAM_{lesion:07d}", "image_id": f"ISIC_{24306 + len(train):07d}", "dx": dx,
                          "dx_type": "histo", "age": "45.0", "sex": ("male", "female")[lesion % 2],
                          "localization": "back"})
        lesion += 1
    truth = [{"image": f"ISIC_{34524 + n:07d}", **{c: "1.0" if c == GROUND_TRUTH[n // 2 % 7] else "0.0"
                                                   for c in GROUND_TRUTH}} for n in range(12)]
    write_csv(root / "HAM10000_metadata.csv", train, list(train[0]))
    write_csv(root / "ISIC2018_Task3_Test_GroundTruth.csv", truth, ["image", *GROUND_TRUTH])
    # The test images' lesions (two images each) and ground-truth types, as the ISIC Archive gives them.
    write_csv(root / "test_lesions.csv", ({"image": r["image"], "lesion_id": f"HAM_{1000000 + n // 2:07d}",
                                           "dx_type": "histo"} for n, r in enumerate(truth)),
              ("image", "lesion_id", "dx_type"))
    for zip_name, ids in (("HAM10000_images_part_1.zip", [r["image_id"] for r in train[:20]]),
                          ("HAM10000_images_part_2.zip", [r["image_id"] for r in train[20:]]),
                          ("ISIC2018_Task3_Test_Input.zip", [r["image"] for r in truth])):
        with zipfile.ZipFile(root / zip_name, "w") as archive:
            for image_id in ids:
                archive.writestr(f"{image_id}.jpg", jpeg())
    return {"train": train, "test": [r["image"] for r in truth]}


@pytest.mark.parametrize("train_split", ["train", ""])
def test_small_generated_release_keeps_the_isic_2018_test_set_apart(tmp_path, drawn_images, train_split):
    built = small_public_release(tmp_path / "raw", drawn_images["dsc"])
    source = {"name": "public", "kind": "ham10000", "path": "raw", "options": {"train_split": train_split,
                                                                             "test_metadata": "test_lesions.csv"}}
    out = run_stages(tmp_path, source, test_fraction=0.3)
    assert out["ingest"].rejects == [] and len(out["ingest"].candidates) == len(built["train"]) + 12
    assert out["standardise"]["duplicates"] == 0 and read_csv(tmp_path / "meta" / "excluded.csv") == []
    release = {split: read_csv(tmp_path / "release" / split / "metadata.csv")
               for split in ("train", "test") if (tmp_path / "release" / split).exists()}
    assert not (tmp_path / "release" / "val").exists()
    test_ids = {r["image_id"] for r in release["test"]}
    assert set(built["test"]) <= test_ids  # the held-out images are held out, whatever train_split says
    lesions = {split: {r["lesion_id"] for r in rows} for split, rows in release.items()}
    assert not lesions["train"] & lesions["test"]  # lesion-disjoint
    trained = {r["image_id"] for r in release["train"]}
    assert trained | test_ids == {r["image_id"] for r in built["train"]} | set(built["test"])
    lesion_of = {r["image_id"]: r["lesion_id"] for r in built["train"]}
    registry = {r["lesion_id"]: r["split"] for r in read_csv(tmp_path / "registry" / "splits.csv")}
    if train_split:  # the study's split as published: every training image in train
        assert trained == set(lesion_of) and test_ids == set(built["test"])
    else:  # the training lesions dealt out by test_fraction (0.3 of their images), each lesion whole
        moved = test_ids - set(built["test"])
        assert 0.2 * len(lesion_of) <= len(moved) <= 0.4 * len(lesion_of)
        for image_id, lesion in lesion_of.items():
            assert registry[lesion] == ("test" if image_id in moved else "train")
    assert out["split"]["images"] == {"test": len(test_ids), "train": len(trained)}
