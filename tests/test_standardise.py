"""Stage `standardise`: `standardise_image` against the authors' mogrify recipe (600x450, 72 dpi, no metadata,
quality 100 4:4:4, portrait turned clockwise, cover + centre crop), and the incremental `standardise()` stage."""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from pipeline.common import read_csv
from pipeline.imaging import EXIF_ORIENTATION
from pipeline.ingest import ingest
from pipeline.jpeg_segments import foreign_segments
from pipeline.standardise import standardise, standardise_image

PARAMS = {"width": 600, "height": 450, "quality": 100, "density": 72}
RED, GREEN, BLUE = (230, 20, 20), (20, 200, 40), (20, 30, 230)


# Real HAM10000 and DermNet images where $HAM_DATA has them, else drawn ones of the same kinds (`some_images`).
@pytest.fixture(scope="module")
def real_images(some_images):
    return some_images.dsc


@pytest.fixture(scope="module")
def clinical_images(some_images):
    return some_images.clinic


def open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def run_ours(image: Image.Image) -> Image.Image:
    out = Image.open(io.BytesIO(standardise_image(image)))
    out.load()
    return out


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def mean_abs(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(as_array(a) - as_array(b)).mean())


def close_to(colour, expected, tolerance=12) -> bool:
    return all(abs(int(c) - e) <= tolerance for c, e in zip(colour, expected))


# ------------------------------------------------------------------------------------------------- the format

def test_output_format(clinical_images, ham_data):  # a real DermNet photo's metadata blocks: needs the data
    # A DermNet photo: 640x480, with dpi, ICC profile, XMP and Photoshop blocks; add EXIF too.
    source = open_rgb(clinical_images[0])
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"  # Make
    exif[0x0132] = "2003:04:01 10:00:00"  # DateTime
    buffer = io.BytesIO()
    source.save(buffer, "JPEG", quality=90, exif=exif.tobytes(), dpi=(300, 300))
    with Image.open(buffer) as with_exif:
        assert with_exif.getexif()
        data = standardise_image(with_exif)
    out = Image.open(io.BytesIO(data))
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == (600, 450)
    assert tuple(round(v) for v in out.info["dpi"]) == (72, 72)
    assert out.info.get("jfif_unit") == 1  # pixels per inch
    assert not out.getexif()
    assert "exif" not in out.info and "icc_profile" not in out.info and "xmp" not in out.info
    assert foreign_segments(data) == []  # and nothing else: every segment walked (tests/test_deidentify.py)
    assert JpegImagePlugin.get_sampling(out) == 0  # 4:4:4
    # quality 100: every quantisation table entry is 1
    assert out.quantization and all(max(table) == 1 for table in out.quantization.values())

    # The draft path (a large JPEG decoded at a reduced DCT scale) drops the metadata too.
    icc = Image.open(clinical_images[0]).info.get("icc_profile")
    assert icc, "the DermNet photo was expected to carry an ICC profile"
    buffer = io.BytesIO()
    source.resize((2400, 1800)).save(buffer, "JPEG", quality=90, exif=exif.tobytes(), dpi=(300, 300),
                                     icc_profile=icc)
    with Image.open(buffer) as large:
        assert large.info.get("icc_profile") and large.getexif()
        data = standardise_image(large)
        out = Image.open(io.BytesIO(data))
    assert foreign_segments(data) == []
    assert out.size == (600, 450) and tuple(round(v) for v in out.info["dpi"]) == (72, 72)
    assert not out.getexif() and "icc_profile" not in out.info and "exif" not in out.info


def test_landscape_600x450_passes_nearly_unchanged(real_images):
    source = open_rgb(real_images[0])
    difference = mean_abs(run_ours(source), source)
    assert difference < 1.0, f"a 600x450 image changed by {difference:.3f} levels on average"


def test_portrait_rotated_clockwise(real_images):
    landscape = open_rgb(real_images[1])
    portrait = landscape.transpose(Image.Transpose.ROTATE_90)  # 450x600, counter-clockwise
    portrait.paste(RED, (0, 0, 40, 40))  # marker in the top-left corner
    assert portrait.size == (450, 600)
    out = run_ours(portrait)
    assert out.size == (600, 450)
    # Clockwise (ImageMagick -rotate 90): the top-left corner goes to the top-right.
    assert close_to(out.getpixel((590, 10)), RED)
    assert not close_to(out.getpixel((10, 10)), RED) and not close_to(out.getpixel((10, 440)), RED)
    expected = portrait.transpose(Image.Transpose.ROTATE_270)
    assert mean_abs(out, expected) < 1.0


def test_small_image_scaled_up_to_cover(real_images):
    source = open_rgb(real_images[2])
    small = source.resize((300, 225), Image.LANCZOS)
    out = run_ours(small)
    assert out.size == (600, 450)
    difference = mean_abs(out, source)
    assert difference < 10, f"upscaled copy differs from the original by {difference:.2f} levels"

    # 200x100 (2:1) is scaled by 4.5 to 900x450 and 150 columns are cut on each side.
    tiny = Image.new("RGB", (200, 100), GREEN)
    tiny.paste(RED, (0, 0, 25, 100))
    tiny.paste(BLUE, (175, 0, 200, 100))
    out = run_ours(tiny)
    assert out.size == (600, 450)
    for x in (0, 1, 299, 598, 599):
        for y in (0, 225, 449):
            assert close_to(out.getpixel((x, y)), GREEN), (x, y, out.getpixel((x, y)))


@pytest.mark.parametrize("size, band", [((800, 450), 100), ((1200, 1000), 44)])
def test_centre_crop(size, band):
    """Bands at the edges that the centre crop removes must vanish; a marker at the centre stays at the centre.

    800x450 is not scaled: exactly 100 columns go on each side, so the 100-column bands must vanish to the pixel.
    1200x1000 is halved to 600x500 and 25 rows go at the top and bottom (50 of the input): 44-row bands vanish.
    """
    width, height = size
    image = Image.new("RGB", size, GREEN)
    if width - 600 * height // 450 > 0:  # wider than 4:3: columns are cut
        image.paste(RED, (0, 0, band, height))
        image.paste(BLUE, (width - band, 0, width, height))
    else:
        image.paste(RED, (0, 0, width, band))
        image.paste(BLUE, (0, height - band, width, height))
    centre_x, centre_y = width // 2, height // 2
    half = round(10 / max(600 / width, 450 / height))  # 10 output pixels
    image.paste((250, 250, 250), (centre_x - half, centre_y - half, centre_x + half, centre_y + half))
    out = run_ours(image)
    assert out.size == (600, 450)
    for x in (0, 2, 597, 599):
        for y in (0, 2, 447, 449):
            assert close_to(out.getpixel((x, y)), GREEN, 30), (x, y, out.getpixel((x, y)))
    assert close_to(out.getpixel((300, 225)), (250, 250, 250))
    for x, y in ((292, 217), (307, 232)):  # inside the marker's corners
        assert close_to(out.getpixel((x, y)), (250, 250, 250), 30), (x, y, out.getpixel((x, y)))
    for x, y in ((287, 212), (312, 237)):  # just outside
        assert close_to(out.getpixel((x, y)), GREEN, 30), (x, y, out.getpixel((x, y)))


# ------------------------------------------------------------------------------------------------- vs mogrify

def _real_imagemagick() -> list[str] | None:
    """The command prefix of a real ImageMagick mogrify, or None."""
    for command in (["magick", "mogrify"], ["mogrify"], ["convert"]):
        if not shutil.which(command[0]):
            continue
        probe = [command[0], "-version"]
        try:
            version = subprocess.run(probe, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "ImageMagick" not in version:
            continue
        if command == ["convert"]:  # IM6 ships mogrify beside convert
            mogrify = shutil.which("mogrify")
            if not mogrify:
                continue
            try:
                version = subprocess.run([mogrify, "-version"], capture_output=True, text=True, timeout=20).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            if "ImageMagick" not in version:
                continue
            return [mogrify]
        return command
    return None


MOGRIFY_ARGS = ["-strip", "-rotate", "90<", "-resize", "600x450^", "-gravity", "center", "-crop", "600x450+0+0",
                "-density", "72", "-units", "PixelsPerInch", "-format", "jpg", "-quality", "100"]


def test_matches_authors_mogrify_command(tmp_path, real_images, clinical_images):
    mogrify = _real_imagemagick()
    if mogrify is None:
        pytest.skip("ImageMagick not installed (mogrify/convert missing, or `-version` does not mention "
                    "ImageMagick): cannot compare with the authors' mogrify command")
    picks = [open_rgb(p) for p in real_images[::60][:7]] + [open_rgb(p) for p in clinical_images[::80][:3]]
    variants = [picks[0], picks[1].transpose(Image.Transpose.ROTATE_90), picks[2].resize((333, 517)),
                picks[3].resize((1001, 613)), picks[4].resize((451, 449)), picks[5], picks[6].resize((257, 190)),
                picks[7], picks[8].transpose(Image.Transpose.ROTATE_270), picks[9].resize((700, 1000))]
    differences = []
    for number, image in enumerate(variants):
        source = tmp_path / f"in{number}.png"  # lossless input so both tools decode the same pixels
        image.save(source)
        work = tmp_path / f"work{number}"
        work.mkdir()
        shutil.copy(source, work / source.name)
        subprocess.run([*mogrify, *MOGRIFY_ARGS, str(work / source.name)], check=True, capture_output=True,
                       timeout=120)
        theirs = Image.open(work / f"in{number}.jpg")
        ours = run_ours(image)
        assert theirs.size == ours.size == (600, 450), (number, theirs.size)
        differences.append(mean_abs(theirs, ours))
    worst, mean = max(differences), sum(differences) / len(differences)
    report = ", ".join(f"{d:.2f}" for d in differences)
    print(f"mogrify vs standardise_image, mean absolute difference per image: {report}; mean {mean:.2f}")
    assert worst < 4.0, (f"mean absolute difference mogrify vs standardise_image: mean {mean:.2f}, "
                         f"worst {worst:.2f} levels ({report})")


PSNR_FLOOR_DB = 40.0  # per image; measured 44.8 dB at worst (a 2000x2667 portrait JPEG), ~49 dB typical


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = float(np.mean((as_array(a).astype(np.float64) - as_array(b)) ** 2))
    return float("inf") if error == 0 else 10 * np.log10(255 ** 2 / error)


def test_large_jpegs_close_to_mogrify(tmp_path, real_images, ham_data):  # PSNR floor set on real photographs
    """The fast path (JPEG draft decoding, reduce, Lanczos over the crop box) against the authors' command on
    large JPEGs, the inputs it speeds up: same geometry, every image above the PSNR floor."""
    mogrify = _real_imagemagick()
    if mogrify is None:
        pytest.skip("ImageMagick not installed: cannot compare the fast path with the authors' mogrify command")
    picks = [open_rgb(p) for p in real_images[5::70][:6]]
    variants = [picks[0].resize((3000, 2250), Image.LANCZOS), picks[1].resize((2250, 3000), Image.LANCZOS),
                picks[2].resize((4000, 2250), Image.LANCZOS), picks[3].resize((1203, 1601), Image.LANCZOS),
                picks[4].resize((2401, 1800), Image.LANCZOS), picks[5].resize((1300, 1000), Image.LANCZOS)]
    scores = []
    for number, image in enumerate(variants):
        work = tmp_path / f"work{number}"
        work.mkdir()
        source = work / f"in{number}.jpg"
        image.save(source, quality=95)
        with Image.open(source) as opened:
            ours = Image.open(io.BytesIO(standardise_image(opened)))
        subprocess.run([*mogrify, *MOGRIFY_ARGS, str(source)], check=True, capture_output=True, timeout=120)
        theirs = Image.open(source)
        assert theirs.size == ours.size == (600, 450), (number, image.size, theirs.size, ours.size)
        scores.append(psnr(theirs, ours))
    report = ", ".join(f"{s:.1f}" for s in scores)
    print(f"PSNR standardise_image vs mogrify on large JPEGs (dB): {report}")
    assert min(scores) >= PSNR_FLOOR_DB, f"PSNR against mogrify below {PSNR_FLOOR_DB} dB: {report}"


def _full_decode_recipe(image: Image.Image) -> Image.Image:
    """The recipe from every decoded pixel (no draft), the reference for the draft path's geometry."""
    image.load()
    return run_ours(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_draft_decoding_follows_exif_orientation(real_images, orientation):
    """A large JPEG with an EXIF orientation is decoded at a reduced DCT scale in its stored frame; the result
    is the upright picture, as from a full decode."""
    source = open_rgb(real_images[7]).resize((2400, 1800), Image.LANCZOS)
    source.paste(RED, (0, 0, 240, 240))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    source.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        ours = Image.open(io.BytesIO(standardise_image(image)))
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        reference = _full_decode_recipe(image)
    assert ours.size == (600, 450)
    assert psnr(ours, reference) > 38, orientation


def test_cmyk_and_greyscale_jpegs_take_the_fast_path(real_images):
    source = open_rgb(real_images[9]).resize((2000, 1500), Image.LANCZOS)
    for mode in ("CMYK", "L"):
        buffer = io.BytesIO()
        source.convert(mode).save(buffer, "JPEG", quality=95)
        with Image.open(io.BytesIO(buffer.getvalue())) as image:
            ours = Image.open(io.BytesIO(standardise_image(image)))
        with Image.open(io.BytesIO(buffer.getvalue())) as image:
            reference = _full_decode_recipe(image)
        assert ours.mode == "RGB" and ours.size == (600, 450)
        assert psnr(ours, reference) > 38, mode


# ------------------------------------------------------------------------------------------------- the stage

def _ingest(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, list[dict]]:
    root = tmp_path / "raw"
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "lesion"])
        for number, name in enumerate(files):
            writer.writerow([name, f"L{number}"])
    out = tmp_path / "ingest"
    result = ingest([{"name": "vidir_modern", "kind": "export", "path": "raw"}], tmp_path, out, 100_000_000)
    assert not result.rejects
    return out, result.candidates


def _decisions(path: Path, candidates: list[dict], drop: set[str] = frozenset()) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["candidate_id", "image_type", "keep"])
        for row in candidates:
            keep = row["origin"] not in drop
            writer.writerow([row["candidate_id"], "dsc" if keep else "clinic", str(keep).lower()])
    return path


def test_stage_incremental_params_and_duplicates(tmp_path, real_images):
    files = {f"img{i}.jpg": real_images[100 + i].read_bytes() for i in range(5)}
    # The same pixels as img0, stored losslessly: other raw bytes, identical standardised image.
    buffer = io.BytesIO()
    open_rgb(real_images[100]).save(buffer, "PNG")
    files["img0_again.png"] = buffer.getvalue()
    files["clinic.jpg"] = real_images[200].read_bytes()
    ingest_dir, candidates = _ingest(tmp_path, files)
    assert len(candidates) == 7
    by_origin = {c["origin"]: c["candidate_id"] for c in candidates}
    decisions = _decisions(tmp_path / "decisions.csv", candidates, drop={"clinic.jpg"})
    images_dir, index = tmp_path / "std", tmp_path / "std.csv"

    def run(params):
        return standardise(ingest_dir / "candidates.csv", decisions, ingest_dir / "objects", params, images_dir,
                           index)

    first = run(PARAMS)
    assert first == {"kept": 6, "processed": 6, "reused": 0, "duplicates": 1}
    rows = {r["candidate_id"]: r for r in read_csv(index)}
    assert by_origin["clinic.jpg"] not in rows
    twins = sorted([by_origin["img0.jpg"], by_origin["img0_again.png"]])
    assert rows[twins[0]]["duplicate_of"] == "" and rows[twins[1]]["duplicate_of"] == twins[0]
    assert rows[twins[0]]["sha256"] == rows[twins[1]]["sha256"]
    assert sum(1 for r in rows.values() if r["duplicate_of"]) == 1
    first_files = {p.name for p in images_dir.iterdir()} - {"SHA256SUMS"}
    assert first_files == {r["file"] for r in rows.values()}
    for row in rows.values():
        assert (images_dir / row["file"]).stat().st_size == int(row["bytes"])
        assert Image.open(images_dir / row["file"]).size == (600, 450)

    second = run(PARAMS)
    assert (second["processed"], second["reused"]) == (0, 6)
    assert {p.name for p in images_dir.iterdir()} - {"SHA256SUMS"} == first_files

    third = run({**PARAMS, "quality": 95})
    assert (third["processed"], third["reused"]) == (6, 0)
    third_files = {p.name for p in images_dir.iterdir()} - {"SHA256SUMS"}
    assert len(third_files) == 6 and not third_files & first_files, "old recipe's files were not pruned"
    assert third_files == {r["file"] for r in read_csv(index)}


def test_stage_same_bytes_for_any_number_of_workers(tmp_path, real_images):
    big = io.BytesIO()
    open_rgb(real_images[300]).resize((2400, 1800), Image.LANCZOS).save(big, "JPEG", quality=95)
    files = {f"img{i}.jpg": real_images[300 + i].read_bytes() for i in range(1, 7)}
    files["big.jpg"] = big.getvalue()
    ingest_dir, candidates = _ingest(tmp_path, files)
    decisions = _decisions(tmp_path / "decisions.csv", candidates)
    outputs = []
    for workers in (1, 2, 3):
        images_dir, index = tmp_path / f"std{workers}", tmp_path / f"std{workers}.csv"
        counts = standardise(ingest_dir / "candidates.csv", decisions, ingest_dir / "objects",
                             {**PARAMS, "workers": workers}, images_dir, index)
        assert counts["processed"] == len(files)
        outputs.append((index.read_bytes(), {p.name: p.read_bytes() for p in sorted(images_dir.iterdir())}))
    assert outputs[0] == outputs[1] == outputs[2]


def test_code_change_with_the_same_output_keeps_each_files_inode(tmp_path, real_images, monkeypatch):
    """A new recipe key whose images come out byte for byte the same (an edit to a module the recipe imports)
    links each new name to the old file's inode, the one DVC's cache and the release share, instead of writing a
    second copy that would make DVC hash and re-link every released image on every later run."""
    import pipeline.standardise as stage

    files = {f"img{i}.jpg": real_images[120 + i].read_bytes() for i in range(4)}
    ingest_dir, candidates = _ingest(tmp_path, files)
    decisions = _decisions(tmp_path / "decisions.csv", candidates)
    images_dir, index = tmp_path / "std", tmp_path / "std.csv"
    standardise(ingest_dir / "candidates.csv", decisions, ingest_dir / "objects", PARAMS, images_dir, index)
    before = {r["candidate_id"]: ((images_dir / r["file"]).stat().st_ino, r["sha256"]) for r in read_csv(index)}

    monkeypatch.setattr(stage, "code_version", lambda *modules, **kw: "an edited module")
    counts = standardise(ingest_dir / "candidates.csv", decisions, ingest_dir / "objects", PARAMS, images_dir, index)
    assert counts["processed"] == 4
    rows = read_csv(index)
    assert all(before[r["candidate_id"]][0] != 0 and r["file"].endswith(f"-{stage.recipe_key(PARAMS)}.jpg")
               for r in rows)
    assert {r["candidate_id"]: ((images_dir / r["file"]).stat().st_ino, r["sha256"]) for r in rows} == before
    assert {p.name for p in images_dir.iterdir()} - {"SHA256SUMS"} == {r["file"] for r in rows}

    changed = standardise(ingest_dir / "candidates.csv", decisions, ingest_dir / "objects", {**PARAMS, "quality": 90},
                          images_dir, index)
    assert changed["processed"] == 4
    assert not {(images_dir / r["file"]).stat().st_ino for r in read_csv(index)} & {i for i, _ in before.values()}
