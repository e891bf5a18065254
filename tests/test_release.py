"""Stage `release`: `build_release` on HAM10000 images (standardised copies made in tmp_path; real where $HAM_DATA
has them, else the `some_images` fixture's made-up manifest): per-split images and metadata, a manifest with the
right sha256 and size of every file, summary counts, and determinism."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pipeline.common import read_csv, sha256_file, write_csv
from pipeline.metadata import METADATA_COLUMNS
from pipeline.release import build_release, format_summary
from pipeline.split import assign_splits

PARAMS = {"isic_attribution": "ViDIR Group, Department of Dermatology, Medical University of Vienna",
          "isic_license": "CC-BY-NC", "attribution": "Tschandl P, Rosendahl C, Kittler H. Sci. Data 5, 180161 (2018).",
          "license": "CC BY-NC 4.0"}


@pytest.fixture(scope="module")
def inputs(some_images, tmp_path_factory):
    """Some 40 images (whole lesions) with metadata, images table, split registry and standardised files."""
    root = tmp_path_factory.mktemp("release-inputs")
    manifest = some_images.manifest
    lesions = sorted({r["lesion_id"] for r in manifest})[::8]
    rows = [r for r in manifest if r["lesion_id"] in set(lesions)]
    assert len(rows) >= 30
    standardised = root / "standardised"
    standardised.mkdir()
    metadata, images = [], []
    for row in rows:
        name = f"{row['sha256']}-recipe.jpg"
        shutil.copyfile(some_images.file(row["image_id"]), standardised / name)
        metadata.append({"lesion_id": row["lesion_id"], "image_id": row["image_id"], "dx": row["dx"],
                         "dx_type": row["dx_type"], "age": "45.0", "sex": "male", "localization": "back",
                         "dataset": row["dataset"]})
        images.append({"image_id": row["image_id"], "lesion_id": row["lesion_id"], "candidate_id": row["sha256"],
                       "file": name, "sha256": row["sha256"], "split_hint": ""})
    metadata.sort(key=lambda r: (r["lesion_id"], r["image_id"]))
    write_csv(root / "metadata.csv", metadata, METADATA_COLUMNS)
    write_csv(root / "images.csv", images, ("image_id", "lesion_id", "candidate_id", "file", "sha256", "split_hint"))
    assign_splits(root / "metadata.csv", root / "images.csv", {"test_fraction": 0.25, "val_fraction": 0.0,
                                                               "seed": 1}, root / "splits.csv")
    return {"root": root, "rows": rows, "metadata": metadata}


def build(inputs, out: Path) -> dict:
    root = inputs["root"]
    return build_release(root / "metadata.csv", root / "images.csv", root / "splits.csv", root / "standardised",
                         PARAMS, out / "release", out / "summary.json")


def test_release_layout_manifest_and_summary(tmp_path, inputs):
    summary = build(inputs, tmp_path)
    release = tmp_path / "release"
    split_of = {r["lesion_id"]: r["split"] for r in read_csv(inputs["root"] / "splits.csv")}
    rows = inputs["rows"]
    assert set(split_of.values()) == {"train", "test"}

    # Per-split images (named by image ID, the bytes of the standardised file) and metadata.
    for row in rows:
        target = release / split_of[row["lesion_id"]] / "images" / f"{row['image_id']}.jpg"
        assert target.is_file() and sha256_file(target) == row["sha256"]
    for split in ("train", "test"):
        split_rows = read_csv(release / split / "metadata.csv")
        assert list(split_rows[0]) == list(METADATA_COLUMNS)
        assert {r["image_id"] for r in split_rows} == {r["image_id"] for r in rows
                                                        if split_of[r["lesion_id"]] == split}
        assert {p.stem for p in (release / split / "images").iterdir()} == {r["image_id"] for r in split_rows}
    assert not (release / "val").exists()
    assert "CC BY-NC 4.0" in (release / "ATTRIBUTION.md").read_text()

    # The manifest lists every other file in the release with its true hash and size.
    manifest = read_csv(release / "manifest.csv")
    files = {p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()}
    assert {m["path"] for m in manifest} == files - {"manifest.csv"}
    assert [m["path"] for m in manifest] == sorted(m["path"] for m in manifest)
    for entry in manifest:
        path = release / entry["path"]
        assert entry["sha256"] == sha256_file(path) and int(entry["bytes"]) == path.stat().st_size, entry["path"]
    by_image = {m["image_id"]: m for m in manifest if m["image_id"]}
    assert len(by_image) == len(rows)
    for row in rows:
        entry = by_image[row["image_id"]]
        assert (entry["split"], entry["lesion_id"], entry["dx"]) == (split_of[row["lesion_id"]], row["lesion_id"],
                                                                     row["dx"])
    assert {m["split"] for m in manifest if m["path"].endswith("metadata.csv")} == {"train", "test"}

    # Summary: counts per split and class.
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["images"] == len(rows)
    assert summary["lesions"] == len({r["lesion_id"] for r in rows})
    for split in ("train", "test"):
        split_rows = [r for r in rows if split_of[r["lesion_id"]] == split]
        assert summary["splits"][split] == {
            "images": len(split_rows), "lesions": len({r["lesion_id"] for r in split_rows}),
            "dx": dict(sorted(Counter(r["dx"] for r in split_rows).items()))}
    assert sum(s["images"] for s in summary["splits"].values()) == len(rows)
    text = format_summary(summary)
    assert f"{len(rows)} images" in text and "train" in text and "test" in text


def test_release_is_deterministic(tmp_path, inputs):
    build(inputs, tmp_path / "one")
    build(inputs, tmp_path / "two")
    for name in ("manifest.csv", "train/metadata.csv", "test/metadata.csv", "ATTRIBUTION.md"):
        assert (tmp_path / "one" / "release" / name).read_bytes() == (tmp_path / "two" / "release" / name).read_bytes()
    assert (tmp_path / "one" / "summary.json").read_bytes() == (tmp_path / "two" / "summary.json").read_bytes()


def test_rebuild_replaces_stale_files(tmp_path, inputs):
    build(inputs, tmp_path)
    stale = tmp_path / "release" / "train" / "images" / "ISIC_9999999.jpg"
    stale.write_bytes(b"left over from an older release")
    build(inputs, tmp_path)
    assert not stale.exists()
