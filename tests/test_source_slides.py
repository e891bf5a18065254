"""`slides` reader (scanned diapositives): mount border detection on scans made from vienna_dias images (real
where $HAM_DATA has them, else drawn: the `some_images` fixture)."""
import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.common import PipelineError
from pipeline.sources import RawItem, Reject
from pipeline.sources import expand
from pipeline.sources import slides as reader_module


def read_slides(root, options):
    """The reader's output with every unit read, as ingest sees it on a first run."""
    return list(expand(reader_module.read_slides(root, options)))


SCALE = 3
# name -> (mount widths left, top, right, bottom in scan pixels, scanner bed width, format)
SCANS = {
    "scans/1994/slide_a.tif": ((260, 190, 170, 300), 60, "TIFF"),
    "scans/1994/slide_b.jpg": ((140, 320, 230, 210), 45, "JPEG"),
    "scans/1995/thick.tif": ((150, 800, 120, 760), 40, "TIFF"),  # columns are mostly mount: > 50 % dark
    "scans/1995/grey16.tif": ((200, 150, 260, 180), 0, "I;16"),  # 16-bit greyscale, no scanner bed
}


def vienna_images(some_images) -> list[Path]:
    return some_images.of("vienna_dias")


def make_scan(picture: np.ndarray, mount: tuple, bed: int, seed: int) -> tuple[np.ndarray, tuple]:
    """A scan: the picture in a noisy, dusty dark mount on a slightly lighter scanner bed.
    Returns the scan and the box (L, T, R, B) where the picture was placed."""
    rng = np.random.default_rng(seed)
    left, top, right, bottom = mount
    height, width = picture.shape[:2]
    scan_h, scan_w = height + top + bottom + 2 * bed, width + left + right + 2 * bed
    scan = np.clip(rng.normal(70, 6, (scan_h, scan_w, 1)), 0, 255).repeat(3, axis=2)  # scanner bed
    mount_area = scan[bed:scan_h - bed, bed:scan_w - bed]
    mount_area[:] = np.clip(rng.normal(18, 7, mount_area.shape[:2] + (1,)), 0, 255)
    for _ in range(60):  # dust specks
        y, x, r = rng.integers(0, mount_area.shape[0]), rng.integers(0, mount_area.shape[1]), rng.integers(1, 7)
        mount_area[max(0, y - r):y + r, max(0, x - r):x + r] = rng.integers(120, 255)
    y = bed + top // 3  # a light scratch across the top of the mount
    mount_area[y - bed:y - bed + 2, 40:-40] = 140
    box = (bed + left, bed + top, bed + left + width, bed + top + height)
    scan[box[1]:box[3], box[0]:box[2]] = picture
    return np.clip(scan, 0, 255).astype(np.uint8), box


def encode(scan: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    if kind == "JPEG":
        Image.fromarray(scan).save(buffer, format="JPEG", quality=92)
    elif kind == "I;16":
        grey = np.asarray(Image.fromarray(scan).convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(buffer, format="TIFF")
    else:
        Image.fromarray(scan).save(buffer, format="TIFF", compression="tiff_lzw")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def slide_source(tmp_path_factory, some_images):
    """Built once per module; tests must not change it."""
    root = tmp_path_factory.mktemp("slides") / "dias"
    images = vienna_images(some_images)
    placed = {}  # name -> (upscaled picture, placed box, scan size)
    rows = []
    for number, (name, (mount, bed, kind)) in enumerate(SCANS.items()):
        source = Image.open(images[number]).convert("RGB")
        picture = np.asarray(source.resize((source.width * SCALE, source.height * SCALE), Image.BICUBIC))
        scan, box = make_scan(picture, mount, bed, seed=number)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(encode(scan, kind))
        placed[name] = (picture, box, scan.shape[1], scan.shape[0], kind)
        rows.append([name, f"DIA_{number}", "melanoma", "histo", "55", "male", "back"])

    plain = np.asarray(Image.open(images[5]).convert("RGB"))  # a scan without a mount
    Image.fromarray(plain).save(root / "scans" / "plain.png")
    rows.append(["scans/plain.png", "DIA_5", "nevus", "histo", "40", "female", "trunk"])
    rng = np.random.default_rng(7)
    black = np.clip(rng.normal(15, 8, (900, 1200, 3)), 0, 255).astype(np.uint8)
    black[400:430, 500:560] = 200  # a bit of light somewhere
    Image.fromarray(black).save(root / "scans" / "black.tif")
    rows.append(["scans/black.tif", "DIA_6", "nevus", "histo", "40", "female", "trunk"])
    (root / "scans" / "corrupt.tif").write_bytes(b"II*\x00 this is not a tiff")
    rows.append(["scans/corrupt.tif", "DIA_7", "", "", "", "", ""])
    data = (root / "scans/1994/slide_b.jpg").read_bytes()
    (root / "scans" / "truncated.jpg").write_bytes(data[:len(data) // 2])
    rows.append(["scans/truncated.jpg", "DIA_8", "", "", "", "", ""])
    rows.append(["scans/missing.tif", "DIA_9", "", "", "", "", ""])
    rows.append(["../outside.tif", "DIA_10", "", "", "", "", ""])
    rows.append(["scans/1994/slide_a.tif", "DIA_11", "", "", "", "", ""])  # listed twice
    (root / "scans" / "unlisted.tif").write_bytes((root / "scans/1994/slide_a.tif").read_bytes())
    (root / "scans" / ".DS_Store").write_bytes(b"x")
    (root / "notes.md").write_text("scanned 2003\n")
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "lesion_key", "diagnosis", "dx_type", "age", "sex", "localization"])
        writer.writerows(rows)
    return root, placed


def split(results):
    items = {r.origin: r for r in results if isinstance(r, RawItem)}
    rejects = [r for r in results if isinstance(r, Reject)]
    return items, rejects


def crop_errors(item, box, margin):
    """Per-side crop box error in pixels against the placed box shrunk by the margin."""
    expected_x, expected_y = round(margin * (box[2] - box[0])), round(margin * (box[3] - box[1]))
    expected = (box[0] + expected_x, box[1] + expected_y, box[2] - expected_x, box[3] - expected_y)
    found = tuple(int(value) for value in item.member.removeprefix("crop ").split(","))
    assert item.fields["crop_box"] == ",".join(map(str, found))
    return found, [abs(f - e) for f, e in zip(found, expected)]


@pytest.mark.parametrize("margin", [0.01, 0.0])
def test_slides_crop_boxes_and_pixels(slide_source, margin):
    root, placed = slide_source
    items, _ = split(list(read_slides(root, {"margin": margin})))
    report = []
    for name, (picture, box, width, height, kind) in placed.items():
        item = items[name]
        found, errors = crop_errors(item, box, margin)
        tolerance = 0.015 * max(width, height)
        assert max(errors) <= tolerance, (name, found, box, errors)
        report.append(f"{name}: max {max(errors)} px (tolerance {tolerance:.0f})")
        output = Image.open(io.BytesIO(item.data))
        assert output.format == "PNG" and output.size == (found[2] - found[0], found[3] - found[1])
        # The crop's pixels are the placed picture's (where the crop lies inside it).
        inside = (max(found[0], box[0]), max(found[1], box[1]), min(found[2], box[2]), min(found[3], box[3]))
        out = np.asarray(output.convert("RGB") if kind != "I;16" else output, dtype=np.float64)
        out = out[inside[1] - found[1]:inside[3] - found[1], inside[0] - found[0]:inside[2] - found[0]]
        expected = picture[inside[1] - box[1]:inside[3] - box[1], inside[0] - box[0]:inside[2] - box[0]]
        if kind == "I;16":
            expected = np.asarray(Image.fromarray(expected).convert("L"), dtype=np.float64) * 257
            difference = np.abs(out - expected).mean() / 257
        else:
            difference = np.abs(out - expected).mean()
        assert difference < (4.0 if kind == "JPEG" else 0.5), (name, difference)
        assert item.fields["raw_sha256"] == hashlib.sha256((root / name).read_bytes()).hexdigest()
        assert item.fields["scan_size"] == f"{width}x{height}"
    print(f"\nmargin {margin}: " + "; ".join(report))


def test_slides_every_scan_accounted_for(slide_source):
    root, placed = slide_source
    items, rejects = split(list(read_slides(root, {})))
    assert set(items) == {*placed, "scans/plain.png"}
    plain = items["scans/plain.png"]
    assert plain.member == "crop none" and plain.data == (root / "scans/plain.png").read_bytes()
    assert plain.fields["lesion_key"] == "DIA_5" and plain.fields["diagnosis"] == "nevus"
    assert items["scans/1994/slide_a.tif"].fields["lesion_key"] == "DIA_0"  # the first row wins

    reasons = {(r.origin, r.member): r.reason for r in rejects}
    assert "mount border detection failed" in reasons[("scans/black.tif", "row 7")]
    assert "not a readable image" in reasons[("scans/corrupt.tif", "row 8")]
    assert "truncated" in reasons[("scans/truncated.jpg", "row 9")]
    assert "not found" in reasons[("scans/missing.tif", "row 10")]
    assert "bad file name" in reasons[("index.csv", "row 11")]
    assert "already listed in row 2" in reasons[("index.csv", "row 12")]
    assert "not listed in index.csv" in reasons[("scans/unlisted.tif", "")]
    for (origin, _), reason in reasons.items():
        assert origin in reason or "index.csv" in reason

    # Files in = RawItems + Rejects of files (index rows without a usable file are Rejects of their own).
    files_in = [p for p in root.rglob("*") if p.is_file() and p.name not in {"index.csv", ".DS_Store", "notes.md"}]
    file_rejects = [r for r in rejects if r.origin != "index.csv" and (root / r.origin).is_file()]
    assert len(files_in) == len(items) + len(file_rejects)
    assert len(rejects) == len(file_rejects) + 3  # missing.tif, ../outside.tif, the duplicate row


def test_slides_pixel_limit_before_decoding(slide_source):
    root, placed = slide_source
    items, rejects = split(list(read_slides(root, {"max_pixels": 1_000_000})))
    assert set(items) == {"scans/plain.png"}  # 600x450
    for name, (_, _, width, height, _) in placed.items():
        reason = next(r.reason for r in rejects if r.origin == name)
        assert f"{width}x{height}" in reason or f"({width * height} pixels)" in reason
        assert "over the limit max_pixels = 1000000" in reason and "not decoded" in reason
    assert Image.MAX_IMAGE_PIXELS != 1_000_000  # the global guard is restored


def test_slides_index_problems(slide_source):
    root, placed = slide_source
    (root / "renamed.csv").write_text("scan,lesion\nscans/plain.png,X\n")
    items, rejects = split(list(read_slides(root, {"index": "renamed.csv"})))
    assert not items
    assert any(r.origin == "renamed.csv" and "missing column 'file'" in r.reason for r in rejects)
    assert any(r.origin == "scans/plain.png" and "not listed" in r.reason for r in rejects)
    items, _ = split(list(read_slides(root, {"index": "renamed.csv",
                                             "columns": {"file": "scan", "lesion_key": "lesion"}})))
    assert items["scans/plain.png"].fields["lesion_key"] == "X"
    (root / "renamed.csv").unlink()
    items, rejects = split(list(read_slides(root, {"index": "absent.csv"})))
    assert not items and len(rejects) == 1 + len([p for p in root.rglob("*.*") if p.suffix in (".tif", ".jpg", ".png")])
    with pytest.raises(PipelineError):
        list(read_slides(root, {"dark_fraction": 2}))


def test_slides_plug_into_ingest(slide_source, tmp_path):
    from pipeline.ingest import ingest

    root, placed = slide_source
    result = ingest(source_configs=[{"name": "vienna_dias", "kind": "slides", "path": str(root), "options": {}}],
                    base_dir=Path("/"), out_dir=tmp_path / "out", max_pixels=10**8)
    origins = {row["origin"]: row for row in result.candidates}
    assert set(origins) == {*placed, "scans/plain.png"}
    row = origins["scans/1994/slide_a.tif"]
    assert row["format"] == "PNG" and row["member"].startswith("crop ") and row["lesion_key"] == "DIA_0"
    picture = placed["scans/1994/slide_a.tif"][0]
    assert abs(int(row["width"]) - picture.shape[1]) < 0.03 * picture.shape[1]
    assert all(r["source"] == "vienna_dias" for r in result.rejects)
    assert any("mount border detection failed" in r["reason"] for r in result.rejects)
