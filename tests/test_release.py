"""Stage `release`: `build_release` on HAM10000 images (standardised copies made in tmp_path; real where $HAM_DATA
has them, else the `some_images` fixture's made-up manifest): per-split images and metadata, a manifest with the
right sha256 and size of every file, summary counts, and determinism."""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pipeline.common import read_csv, sha256_file, stable_hash, write_csv
from pipeline.metadata import METADATA_COLUMNS
from pipeline.release import build_release, format_summary
from pipeline.split import assign_splits
from pipeline.validate import validate_csv

PARAMS = {"isic_attribution": "ViDIR Group, Department of Dermatology, Medical University of Vienna",
          "isic_license": "CC-BY-NC", "attribution": "Tschandl P, Rosendahl C, Kittler H. Sci. Data 5, 180161 (2018).",
          "license": "CC BY-NC 4.0 (https://creativecommons.org/licenses/by-nc/4.0/)", "version": "9.9",
          "date_published": "2026-12-07"}


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
        assert {p.name for p in (release / split / "images").iterdir()} == \
            {f"{r['image_id']}.jpg" for r in split_rows} | {"metadata.jsonl"}  # the `datasets` index
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

    # Each split carries its own manifest (paths relative to the split folder), listed in the top-level one.
    for split in ("train", "test"):
        own = read_csv(release / split / "manifest.csv")
        on_disk = {p.relative_to(release / split).as_posix() for p in (release / split).rglob("*") if p.is_file()}
        assert {m["path"] for m in own} == on_disk - {"manifest.csv"}
        assert {m["split"] for m in own} == {split}
        top = {m["path"]: m for m in manifest}
        for entry in own:
            assert top[f"{split}/{entry['path']}"] == {**entry, "path": f"{split}/{entry['path']}"}
        assert f"{split}/manifest.csv" in top
    assert validate_csv(release / "manifest.csv") == [] and validate_csv(release / "train" / "manifest.csv") == []

    # release.json: version, code version, params hash, input hashes; no timestamp, no git revision.
    header = json.loads((release / "release.json").read_text())
    assert header["version"] == "9.9" and header["summary"] == summary and header["format"] == 2
    assert header["params_sha256"]["release"] == stable_hash(PARAMS)
    assert header["inputs_sha256"]["metadata.csv"] == sha256_file(inputs["root"] / "metadata.csv")

    # The data card: citation, licence, counts; its plots are PNGs listed in the manifest.
    card = (release / "CARD.md").read_text()
    assert PARAMS["attribution"] in card and "CC BY-NC 4.0" in card
    assert f"| all | {len(rows)} | {summary['lesions']} |" in card
    for name in ("class_distribution", "dx_type_per_class", "contact_sheet"):
        assert f"card/{name}.png" in card
        assert (release / "card" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Summary: counts per split and class.
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["images"] == len(rows)
    assert summary["lesions"] == len({r["lesion_id"] for r in rows})
    for split in ("train", "test"):
        split_rows = [r for r in rows if split_of[r["lesion_id"]] == split]
        assert summary["splits"][split] == {
            "images": len(split_rows), "lesions": len({r["lesion_id"] for r in split_rows}),
            "dx": dict(sorted(Counter(r["dx"] for r in split_rows).items())),
            "dx_type": dict(sorted(Counter(r["dx_type"] for r in split_rows).items())),
            "dataset": dict(sorted(Counter(r["dataset"] for r in split_rows).items()))}
    assert sum(s["images"] for s in summary["splits"].values()) == len(rows)
    text = format_summary(summary)
    assert f"{len(rows)} images" in text and "train" in text and "test" in text


def test_release_is_deterministic(tmp_path, inputs, monkeypatch):
    """The same bytes twice, and on a one-core machine, where the card is drawn without a second process."""
    build(inputs, tmp_path / "one")
    build(inputs, tmp_path / "two")
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    build(inputs, tmp_path / "one-core")
    one = tmp_path / "one" / "release"
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert any(name.startswith("card/") for name in files)
    for other in ("two", "one-core"):
        other_release = tmp_path / other / "release"
        assert files == sorted(p.relative_to(other_release).as_posix() for p in other_release.rglob("*") if p.is_file())
        for name in files:  # images, manifests, card text and plots, release.json: all byte for byte
            assert (one / name).read_bytes() == (other_release / name).read_bytes(), (other, name)
        assert (tmp_path / "one" / "summary.json").read_bytes() == (tmp_path / other / "summary.json").read_bytes()


def test_rebuild_replaces_stale_files(tmp_path, inputs):
    build(inputs, tmp_path)
    stale = tmp_path / "release" / "train" / "images" / "ISIC_9999999.jpg"
    stale.write_bytes(b"left over from an older release")
    build(inputs, tmp_path)
    assert not stale.exists()


def test_verify_names_missing_altered_and_extra_files(tmp_path, inputs):
    """`ham verify` on a release and on one split copied alone (as `dvc get ... release/test` brings it)."""
    from click.testing import CliRunner

    from pipeline.cli import main

    build(inputs, tmp_path)
    release = tmp_path / "release"
    runner = CliRunner()
    result = runner.invoke(main, ["verify", str(release)])
    assert result.exit_code == 0 and "all" in result.output and "(release 9.9)" in result.output, result.output
    test_only = tmp_path / "fetched-test"
    shutil.copytree(release / "test", test_only)
    assert runner.invoke(main, ["verify", str(test_only)]).exit_code == 0

    images = sorted((test_only / "images").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:-1] + b"\x00")  # same size, other bytes
    images[1].unlink()
    (test_only / "images" / "ISIC_0000001.jpg").write_bytes(b"not in any manifest")
    (test_only / "metadata.csv").write_text("lesion_id\n")
    result = runner.invoke(main, ["verify", str(test_only)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert f"altered: images/{images[0].name} (sha256 differs from the manifest)" in lines
    assert f"missing: images/{images[1].name}" in lines
    assert "extra: images/ISIC_0000001.jpg (not in the manifest)" in lines
    assert any(line.startswith("altered: metadata.csv (") and "bytes, manifest says" in line for line in lines)
    # the altered image lost its end-of-image marker: the segment walk names that too
    assert any(line.startswith(f"segment: images/{images[0].name} (SOS at byte ") and "(no EOI)" in line
               for line in lines), lines
    assert lines[-1].endswith("2 altered, 1 extra, 1 missing, 1 segment")

    # The top-level manifest sees a change inside a split too; a folder without a manifest is one clear line.
    (release / "train" / "metadata.csv").write_text("changed\n")
    result = runner.invoke(main, ["verify", str(release)])
    assert result.exit_code == 1 and "altered: train/metadata.csv" in result.output
    result = runner.invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 1 and "manifest.csv (not found" in result.output and "Traceback" not in result.output


def test_summary_reads_summaries_and_refuses_a_csv_in_one_line(tmp_path, inputs):
    from click.testing import CliRunner

    from pipeline.cli import main

    summary = build(inputs, tmp_path)
    runner = CliRunner()
    for path in (tmp_path / "summary.json", tmp_path / "release" / "release.json", tmp_path / "release"):
        result = runner.invoke(main, ["summary", str(path)])
        assert result.exit_code == 0 and result.output.startswith(f"release: {summary['images']} images")
        assert result.output.index("\ntrain") < result.output.index("\ntest")  # splits in train, val, test order
    result = runner.invoke(main, ["summary", str(tmp_path / "release" / "manifest.csv")])
    assert result.exit_code == 1 and result.exception.__class__ is SystemExit
    assert len(result.output.strip().splitlines()) == 1 and "not a release summary" in result.output


def _reencode(path: Path) -> None:
    """Replace a standardised image with another encoding of it (new bytes, same picture), as a re-run of the
    standardise stage with another recipe would."""
    import io

    from PIL import Image

    from pipeline.common import atomic_write_bytes

    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.save(buffer, format="JPEG", quality=70)
    atomic_write_bytes(path, buffer.getvalue())  # a new file, as the store writes: never through a release link


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_rebuild_in_place_touches_only_what_changed_and_equals_a_clean_build(tmp_path, inputs):
    """Build; change two images and drop one lesion; rebuild in place: only the changed images are linked, the
    dropped one and a stray file are removed (with their empty folder), a damaged release copy is found by its
    stamp and replaced, and the folder is byte for byte what a clean build of the changed inputs writes."""
    root = tmp_path / "inputs"
    shutil.copytree(inputs["root"], root)
    first = {}
    build_release(root / "metadata.csv", root / "images.csv", root / "splits.csv", root / "standardised", PARAMS,
                  tmp_path / "release", tmp_path / "summary.json", report=first)
    rows = read_csv(root / "images.csv")
    assert first["linked"] == len(rows) and first["kept"] == 0
    assert (tmp_path / ".release.state.json").is_file() and not (tmp_path / "release" / ".release.state.json").exists()

    # A second build of the same inputs places nothing and reads no image.
    again = {}
    build_release(root / "metadata.csv", root / "images.csv", root / "splits.csv", root / "standardised", PARAMS,
                  tmp_path / "release", tmp_path / "summary.json", report=again)
    assert (again["kept"], again["rehashed"], again["linked"], again["removed"]) == (len(rows), 0, 0, 0)

    # The change: two images re-standardised (new bytes, their sha256 updated), one lesion's images dropped.
    for row in rows[:2]:
        _reencode(root / "standardised" / row["file"])
        row["sha256"] = sha256_file(root / "standardised" / row["file"])
    write_csv(root / "images.csv", rows, list(rows[0]))
    metadata = read_csv(root / "metadata.csv")
    dropped = metadata[-1]["lesion_id"]
    dropped_images = {r["image_id"] for r in metadata if r["lesion_id"] == dropped}
    write_csv(root / "metadata.csv", [r for r in metadata if r["lesion_id"] != dropped], METADATA_COLUMNS)
    release = tmp_path / "release"
    stray = release / "val" / "images" / "ISIC_9999999.jpg"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left over from an older release")
    # A release image made a private copy (as `dvc unprotect` does), then damaged in place, same size.
    kept_row = next(r for r in rows[2:] if r["image_id"] not in dropped_images)
    split_of = {r["lesion_id"]: r["split"] for r in read_csv(root / "splits.csv")}
    damaged = release / split_of[kept_row["lesion_id"]] / "images" / f"{kept_row['image_id']}.jpg"
    data = bytearray(damaged.read_bytes())
    damaged.unlink()
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))

    report = {}
    build_release(root / "metadata.csv", root / "images.csv", root / "splits.csv", root / "standardised", PARAMS,
                  release, tmp_path / "summary.json", report=report)
    remaining = len(rows) - len(dropped_images)
    assert report["linked"] == 3 and report["copied"] == 0  # the two changed images and the damaged copy
    assert report["kept"] == remaining - 3 and report["rehashed"] == 0
    assert report["removed"] == len(dropped_images) + 1 and not (release / "val").exists()
    assert damaged.read_bytes() == (root / "standardised" / kept_row["file"]).read_bytes()

    clean = {}
    build_release(root / "metadata.csv", root / "images.csv", root / "splits.csv", root / "standardised", PARAMS,
                  tmp_path / "clean" / "release", tmp_path / "clean" / "summary.json", report=clean)
    assert clean["linked"] == remaining
    in_place, fresh = _tree(release), _tree(tmp_path / "clean" / "release")
    assert sorted(in_place) == sorted(fresh)
    assert [name for name in fresh if in_place[name] != fresh[name]] == []
    assert {p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_dir()} == \
        {p.relative_to(tmp_path / "clean" / "release").as_posix() for p in (tmp_path / "clean" / "release").rglob("*")
         if p.is_dir()}


def test_an_image_without_a_record_is_checked_by_its_bytes(tmp_path, inputs):
    """The state record lost (or the images copied, as `dvc unprotect` does): right bytes are kept after one read,
    no link is made; a file damaged in place behind an intact record (same inode, new mtime) is replaced."""
    build(inputs, tmp_path)
    release = tmp_path / "release"
    images = sorted(release.glob("*/images/*.jpg"))
    for image in images[:3]:  # private copies: new inode, nothing recorded for them
        data = image.read_bytes()
        image.unlink()
        image.write_bytes(data)
    report = {}
    build_release(inputs["root"] / "metadata.csv", inputs["root"] / "images.csv", inputs["root"] / "splits.csv",
                  inputs["root"] / "standardised", PARAMS, release, tmp_path / "summary.json", report=report)
    assert (report["kept"], report["rehashed"], report["linked"]) == (len(images), 3, 0)
    assert all(image.stat().st_nlink == 1 for image in images[:3])

    with open(images[0], "r+b") as handle:  # damaged in place, same inode and size: only the mtime tells
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    stamp = images[0].stat()
    os.utime(images[0], ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))  # coarse clocks: a later mtime
    report = {}
    build_release(inputs["root"] / "metadata.csv", inputs["root"] / "images.csv", inputs["root"] / "splits.csv",
                  inputs["root"] / "standardised", PARAMS, release, tmp_path / "summary.json", report=report)
    assert (report["linked"], report["rehashed"]) == (1, 0)
    assert images[0].stat().st_nlink > 1
    manifest = {m["path"]: m["sha256"] for m in read_csv(release / "manifest.csv")}
    assert sha256_file(images[0]) == manifest[images[0].relative_to(release).as_posix()]
