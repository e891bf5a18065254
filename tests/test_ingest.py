"""Stage `ingest`: `check_image` on bad and unusual input made from 600x450 dermatoscopic JPEGs, and `ingest()` on
export sources built in tmp_path from them: the real HAM10000 images where $HAM_DATA has them (read in place, never
copied into the project), else images drawn by the sample generator (the `some_images` fixture)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.common import PipelineError, read_csv, sha256_bytes
from pipeline.ingest import BadImage, check_image, ingest

BIG = 100_000_000


# ------------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def dsc_images(some_images) -> list[Path]:
    images = some_images.dsc
    assert len(images) >= 26
    return images


@pytest.fixture(scope="module")
def a_jpeg(dsc_images) -> bytes:
    return dsc_images[0].read_bytes()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------- check_image

def test_plain_rgb_jpeg_is_stored_as_is(a_jpeg):
    checked = check_image(a_jpeg, BIG)
    assert checked.stored == a_jpeg
    assert (checked.extension, checked.width, checked.height, checked.format) == (".jpg", 600, 450, "JPEG")


def test_zero_bytes_rejected():
    with pytest.raises(BadImage, match="empty"):
        check_image(b"", BIG)


def test_text_file_named_jpg_rejected(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("lesion HAM_0000118, left shoulder, seen 2003-04-01\n")
    with pytest.raises(BadImage, match="not an image"):
        check_image(fake.read_bytes(), BIG)


def test_truncated_jpeg_rejected(a_jpeg):
    with pytest.raises(BadImage, match="truncated"):
        check_image(a_jpeg[: len(a_jpeg) // 2], BIG)


def test_png_over_max_pixels_rejected(a_jpeg):
    png = encode(decode(a_jpeg), "PNG")
    with pytest.raises(BadImage, match="over the limit") as error:
        check_image(png, max_pixels=600 * 450 - 1)
    assert "600x450" in str(error.value)
    assert check_image(png, max_pixels=600 * 450).width == 600  # exactly at the limit is fine


def test_cmyk_jpeg_stored_as_rgb_png(a_jpeg):
    original = decode(a_jpeg)
    cmyk = encode(original.convert("CMYK"), "JPEG", quality=95)
    assert decode(cmyk).mode == "CMYK"
    checked = check_image(cmyk, BIG)
    stored = decode(checked.stored)
    assert (checked.extension, checked.format, stored.format, stored.mode) == (".png", "JPEG", "PNG", "RGB")
    assert stored.size == (checked.width, checked.height) == (600, 450)
    difference = np.abs(pixels(stored) - pixels(original)).mean()
    assert difference < 4, f"CMYK round trip differs from the original by {difference:.2f} levels on average"


def test_16_bit_greyscale_png_scaled_to_8_bit(a_jpeg):
    grey = np.asarray(decode(a_jpeg).convert("L"), dtype=np.uint16)
    sixteen = Image.fromarray(grey * 257)
    assert sixteen.mode == "I;16"
    checked = check_image(encode(sixteen, "PNG"), BIG)
    stored = decode(checked.stored)
    assert stored.mode == "RGB" and stored.size == (600, 450)
    values = pixels(stored)
    assert (values[..., 0] == values[..., 1]).all() and (values[..., 1] == values[..., 2]).all()
    assert np.abs(values[..., 0] - grey.astype(np.int16)).max() <= 1


def test_palette_png_stored_as_its_rgb_colours(a_jpeg):
    palette = decode(a_jpeg).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    data = encode(palette, "PNG")
    assert decode(data).mode == "P"
    stored = decode(check_image(data, BIG).stored)
    assert stored.mode == "RGB"
    assert (pixels(stored) == pixels(decode(data).convert("RGB"))).all()


def test_rgba_png_composited_on_white(a_jpeg):
    original = decode(a_jpeg)
    alpha = np.zeros((450, 600), dtype=np.uint8)
    alpha[:, 300:] = 255  # left half fully transparent, right half opaque
    rgba = original.copy()
    rgba.putalpha(Image.fromarray(alpha))
    stored = decode(check_image(encode(rgba, "PNG"), BIG).stored)
    assert stored.mode == "RGB" and stored.size == (600, 450)
    values = pixels(stored)
    assert (values[:, :300] == 255).all()
    assert (values[:, 300:] == pixels(original)[:, 300:]).all()


def test_greyscale_jpeg_stored_as_rgb(a_jpeg):
    data = encode(decode(a_jpeg).convert("L"), "JPEG", quality=95)
    grey = pixels(decode(data))
    checked = check_image(data, BIG)
    stored = decode(checked.stored)
    assert (checked.extension, stored.mode) == (".png", "RGB")
    for channel in range(3):
        assert (pixels(stored)[..., channel] == grey).all()


def test_exif_orientation_6_stored_upright(a_jpeg):
    original = decode(a_jpeg)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(original, "JPEG", quality=95, exif=exif.tobytes())
    as_written = decode(data)
    assert as_written.getexif().get(0x0112) == 6 and as_written.size == (600, 450)
    checked = check_image(data, BIG)
    stored = decode(checked.stored)
    assert (checked.width, checked.height) == (450, 600) == stored.size
    upright = as_written.transpose(Image.Transpose.ROTATE_270)  # 90 degrees clockwise
    assert (pixels(stored) == pixels(upright)).all()
    assert stored.getexif().get(0x0112, 1) == 1


# ------------------------------------------------------------------------------------------------- ingest()

FIELDS = ("file", "lesion", "dx", "age", "sex", "site")
OPTIONS = {"index": "index.csv", "columns": {"file": "file", "lesion_key": "lesion", "dx": "dx", "age": "age",
                                             "sex": "sex", "localization": "site"}}


def make_export(root: Path, files: dict[str, bytes], rows: list[str], lesions: dict | None = None) -> Path:
    """A source folder with the given image files and an index listing `rows` (file names, in that order);
    row n's lesion is L<n> unless `lesions` names it."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        for number, name in enumerate(rows):
            writer.writerow([name, (lesions or {}).get(name, f"L{number:03d}"), "nv", "45", "male", "back"])
    return root


def snapshot(folder: Path, skip: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and skip not in p.parents}


def config(name: str, path: str) -> dict:
    return {"name": name, "kind": "export", "path": path, "options": OPTIONS}


def test_ingest_counts_duplicates_bad_rows_and_containment(tmp_path, dsc_images):
    raw = tmp_path / "raw"
    a_files = {f"a{i}.jpg": dsc_images[i].read_bytes() for i in range(5)}
    a_files["a_copy.jpg"] = a_files["a1.jpg"]  # duplicate within the source
    a_files["unlisted.jpg"] = dsc_images[10].read_bytes()
    a_files["empty.jpg"] = b""
    (tmp_path / "raw" / "x.jpg").parent.mkdir(parents=True)
    (raw / "x.jpg").write_bytes(dsc_images[11].read_bytes())  # what "../x.jpg" would reach
    a_rows = [*(f"a{i}.jpg" for i in range(5)), "a_copy.jpg", "empty.jpg", "ghost.jpg", "../x.jpg"]
    make_export(raw / "a", a_files, a_rows, lesions={"a_copy.jpg": "L001"})  # same labels as a1: a duplicate
    b_files = {"b0.jpg": dsc_images[2].read_bytes(),  # duplicate across sources (of a2)
               "sub/b1.jpg": dsc_images[6].read_bytes(), "b2.jpg": dsc_images[7].read_bytes()}
    make_export(raw / "b", b_files, list(b_files))
    out = tmp_path / "out"
    before = snapshot(tmp_path, out)

    result = ingest([config("vidir_modern", "raw/a"), config("rosendahl", "raw/b")], tmp_path, out, BIG)

    files_in = len(a_rows) + 1 + len(b_files)  # every index row plus the one unlisted file
    assert len(result.candidates) + len(result.rejects) == files_in
    assert len(result.candidates) == 5 + 2  # a0-a4, b1, b2 (the unlisted file is NOT a candidate)
    expected_ids = {sha256_bytes(dsc_images[i].read_bytes()) for i in (0, 1, 2, 3, 4, 6, 7)}
    assert {c["candidate_id"] for c in result.candidates} == expected_ids
    assert len(result.candidates) == len(expected_ids)
    assert result.decoded == 7

    reasons = {(r["source"], r["origin"]): r["reason"] for r in result.rejects}
    a1, a2 = sha256_bytes(a_files["a1.jpg"]), sha256_bytes(a_files["a2.jpg"])
    assert reasons[("vidir_modern", "a_copy.jpg")].startswith(f"duplicate of candidate {a1[:12]}")
    assert reasons[("rosendahl", "b0.jpg")].startswith(f"duplicate of candidate {a2[:12]}")
    assert "vidir_modern:a2.jpg" in reasons[("rosendahl", "b0.jpg")]
    assert "not listed" in reasons[("vidir_modern", "unlisted.jpg")]
    assert "empty" in reasons[("vidir_modern", "empty.jpg")]
    assert "ghost.jpg not found" in reasons[("vidir_modern", "ghost.jpg")]
    traversal = [r for r in result.rejects if "../x.jpg" in r["reason"]]
    assert len(traversal) == 1 and "bad file name" in traversal[0]["reason"]
    assert sha256_bytes(dsc_images[11].read_bytes()) not in {c["candidate_id"] for c in result.candidates}

    provenance = read_csv(out / "provenance.csv")
    by_candidate = {}
    for row in provenance:
        by_candidate.setdefault(row["candidate_id"], []).append((row["source"], row["origin"]))
    assert sorted(by_candidate[a1]) == [("vidir_modern", "a1.jpg"), ("vidir_modern", "a_copy.jpg")]
    assert sorted(by_candidate[a2]) == [("rosendahl", "b0.jpg"), ("vidir_modern", "a2.jpg")]
    assert set(by_candidate) == expected_ids
    assert len(provenance) == len(expected_ids) + 2

    candidates = read_csv(out / "candidates.csv")
    assert len(candidates) == len(expected_ids)
    b1 = next(c for c in candidates if c["origin"] == "sub/b1.jpg")
    assert (b1["source"], b1["lesion_key"], b1["sex"], b1["localization"]) == ("rosendahl", "L001", "male", "back")
    assert len(read_csv(out / "rejects.csv")) == len(result.rejects)

    assert snapshot(tmp_path, out) == before, "ingest wrote or changed files outside out_dir"
    objects = {p.name for p in (out / "objects").iterdir()} - {"index.csv"}
    assert objects == {c["object"] for c in candidates}


def test_ingest_incremental_and_pruned(tmp_path, dsc_images):
    names = {f"img{i}.jpg": dsc_images[20 + i].read_bytes() for i in range(6)}
    source = [config("vidir_molemax", "src")]
    out = tmp_path / "out"

    make_export(tmp_path / "src", {k: names[k] for k in list(names)[:5]}, list(names)[:5])
    first = ingest(source, tmp_path, out, BIG)
    assert (first.decoded, len(first.candidates)) == (5, 5)

    make_export(tmp_path / "src", names, list(names))
    second = ingest(source, tmp_path, out, BIG)
    assert (second.decoded, len(second.candidates)) == (1, 6)
    assert not second.rejects

    removed = "img0.jpg"
    (tmp_path / "src" / removed).unlink()
    make_export(tmp_path / "src", {}, [n for n in names if n != removed])
    third = ingest(source, tmp_path, out, BIG)
    assert (third.decoded, len(third.candidates)) == (0, 5)
    objects = {p.name for p in (out / "objects").iterdir()} - {"index.csv"}
    assert objects == {c["object"] for c in third.candidates}
    assert f"{sha256_bytes(names[removed])}.jpg" not in objects
    index = read_csv(out / "objects" / "index.csv")
    assert {r["candidate_id"] for r in index} == {c["candidate_id"] for c in third.candidates}


def test_source_image_type_and_dataset_reach_every_candidate(tmp_path, dsc_images):
    """`options.image_type` becomes each candidate's image_type_hint and `dataset` goes into its extra; changing
    them re-reads nothing (they are not part of what the read cache keeps)."""
    names = {f"img{i}.jpg": dsc_images[20 + i].read_bytes() for i in range(3)}
    make_export(tmp_path / "src", names, list(names))
    out = tmp_path / "out"

    def source(**declared) -> list[dict]:
        options = {**OPTIONS, **({"image_type": declared.pop("image_type")} if "image_type" in declared else {})}
        return [{"name": "batch2", "kind": "export", "path": "src", "options": options, **declared}]

    plain = ingest(source(), tmp_path, out, BIG)
    assert {(c["image_type_hint"], c["extra"]) for c in plain.candidates} == {("", "")}
    declared = ingest(source(image_type="macro", dataset="vidir_modern"), tmp_path, out, BIG)
    assert declared.units_cached == 3 and declared.units_read == 0
    assert [(c["image_type_hint"], c["extra"]) for c in read_csv(out / "candidates.csv")] == \
        [("macro", '{"dataset": "vidir_modern"}')] * 3
    with pytest.raises(PipelineError, match=r"^source batch2: option image_type: expected one of: dsc, macro, clinic$"):
        ingest(source(image_type="clinical"), tmp_path, out, BIG)


def test_missing_source_folder_is_named(tmp_path):
    with pytest.raises(PipelineError, match=r"^source batch2: folder nowhere does not exist$"):
        ingest([{"name": "batch2", "kind": "export", "path": "nowhere", "dataset": "vidir_modern"}], tmp_path,
               tmp_path / "out", BIG)
