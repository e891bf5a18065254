"""De-identification by construction: whatever a raw image carries besides its pixels (a JPEG comment, EXIF with a
thumbnail, Photoshop/IPTC APP13, ICC, XMP, bytes after the image, PNG tEXt / iTXt / zTXt `comment` chunks), the
standardised JPEG holds pixel data and the fixed JFIF header only, through the real ingest -> standardise path;
and the segment walk (`pipeline.jpeg_segments`, used by `ham verify`) names every other segment.

The raw files are made here from images of the `some_images` fixture (the real HAM10000 images where $HAM_DATA
has them, else drawn ones), so the test runs either way."""
from __future__ import annotations

import csv
import io
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageCms, PngImagePlugin

from pipeline.common import read_csv, sha256_bytes
from pipeline.ingest import ingest
from pipeline.jpeg_segments import foreign_segments, marker_name, segments
from pipeline.standardise import standardise, standardise_image
from pipeline.verify import verify

PATIENT = "patient: Jane Doe, DOB 1950-01-01"
PARAMS = {"width": 600, "height": 450, "quality": 100, "density": 72}
# What a standardised file is, segment by segment: Pillow's baseline writer, two quantisation and four Huffman
# tables (4:4:4 at quality 100), one scan.
RELEASED = ["SOI", "APP0", "DQT", "DQT", "SOF0", "DHT", "DHT", "DHT", "DHT", "SOS", "EOI"]
ALLOWED = {"SOI", "APP0", "DQT", "SOF0", "SOF2", "DHT", "DRI", "SOS", "EOI"}


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **options)
    return buffer.getvalue()


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def exif_with_thumbnail(thumbnail: bytes) -> bytes:
    """An EXIF block (big-endian TIFF) whose IFD0 names the patient (ImageDescription, Artist) and whose IFD1
    holds a JPEG thumbnail of the picture (JPEGInterchangeFormat / ...Length), as cameras write it."""
    text = PATIENT.encode() + b"\0"
    ifd0_at = 8
    ifd1_at = ifd0_at + 2 + 2 * 12 + 4
    text_at = ifd1_at + 2 + 3 * 12 + 4
    thumb_at = text_at + len(text)
    entry = lambda tag, kind, count, value: struct.pack(">HHI", tag, kind, count) + value  # noqa: E731
    ifd0 = (struct.pack(">H", 2) + entry(0x010E, 2, len(text), struct.pack(">I", text_at))
            + entry(0x013B, 2, len(text), struct.pack(">I", text_at)) + struct.pack(">I", ifd1_at))
    ifd1 = (struct.pack(">H", 3) + entry(0x0103, 3, 1, struct.pack(">HH", 6, 0))
            + entry(0x0201, 4, 1, struct.pack(">I", thumb_at)) + entry(0x0202, 4, 1, struct.pack(">I", len(thumbnail)))
            + struct.pack(">I", 0))
    tiff = b"MM\0\x2a" + struct.pack(">I", ifd0_at) + ifd0 + ifd1 + text + thumbnail
    return b"Exif\0\0" + tiff


def photoshop_iptc() -> bytes:
    """An APP13 Photoshop block with an IPTC caption (2:120) naming the patient."""
    caption = PATIENT.encode()
    iptc = b"\x1c\x02\x78" + struct.pack(">H", len(caption)) + caption
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\0\0" + struct.pack(">I", len(iptc)) + iptc
    return b"Photoshop 3.0\0" + resource


def xmp() -> bytes:
    return (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>' + PATIENT.encode() +
            b"</dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>")


def icc_naming_the_patient() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return profile + PATIENT.encode()  # extra bytes at the end of a profile: still carried whole by the writer


def png_with(image: Image.Image, chunk: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    if chunk == "tEXt":
        info.add_text("comment", PATIENT)
    elif chunk == "zTXt":
        info.add_text("comment", PATIENT, zip=True)
    else:
        info.add_itxt("comment", PATIENT, lang="en", tkey="Kommentar")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def raw_files(images) -> dict[str, bytes]:
    """Each file its own picture (so no two are duplicates), each carrying the patient's name its own way."""
    pictures = iter(Image.open(path).convert("RGB") for path in images)
    thumbnail = jpeg(next(pictures).resize((160, 120)), comment=PATIENT.encode())
    files = {
        "comment.jpg": jpeg(next(pictures), comment=PATIENT.encode()),
        "exif_thumbnail.jpg": jpeg(next(pictures), exif=exif_with_thumbnail(thumbnail)),
        "app13.jpg": jpeg(next(pictures), extra=segment(0xED, photoshop_iptc())),
        "icc.jpg": jpeg(next(pictures), icc_profile=icc_naming_the_patient()),
        "xmp.jpg": jpeg(next(pictures), xmp=xmp()),
        "everything.jpg": jpeg(next(pictures), comment=PATIENT.encode(), exif=exif_with_thumbnail(thumbnail),
                               icc_profile=icc_naming_the_patient(), xmp=xmp(),
                               extra=segment(0xED, photoshop_iptc())) + PATIENT.encode(),  # and after EOI
        "tEXt.png": png_with(next(pictures), "tEXt"),
        "iTXt.png": png_with(next(pictures), "iTXt"),
        "zTXt.png": png_with(next(pictures), "zTXt"),
        # turned by EXIF: ingest stores a normalised PNG of it, another path to standardise
        "rotated_comment.jpg": jpeg(next(pictures), comment=PATIENT.encode(), exif=_orientation_6()),
    }
    files["portrait_comment.png"] = png_with(next(pictures).rotate(90, expand=True), "tEXt")
    return files


def _orientation_6() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = PATIENT
    return exif.tobytes()


def test_raw_files_carry_the_patient_each_their_own_way(some_images):
    """The inputs are what they claim: Pillow reads the name from each, in the metadata it says."""
    files = raw_files(some_images.dsc[40:60])
    for name, data in files.items():
        with Image.open(io.BytesIO(data)) as image:
            carried = [image.info.get("comment"), image.info.get("xmp"), image.info.get("icc_profile"),
                       image.info.get("photoshop"), image.info.get("exif")]
            text = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in carried if v)
            text += b"".join(str(v).encode() for v in image.getexif().values())
        assert PATIENT.encode() in text or PATIENT.encode() in data, name
    kinds = {name: [marker_name(m) for _, m, _ in segments(data)] for name, data in files.items()
             if name.endswith(".jpg")}
    assert "COM" in kinds["comment.jpg"] and "APP13" in kinds["app13.jpg"] and "APP2" in kinds["icc.jpg"]
    assert kinds["exif_thumbnail.jpg"].count("APP1") == 1 and b"\xff\xd8" in files["exif_thumbnail.jpg"][20:400]
    with Image.open(io.BytesIO(files["zTXt.png"])) as image:
        assert image.info["comment"] == PATIENT and PATIENT.encode() not in files["zTXt.png"]  # compressed


def _ingest_and_standardise(tmp_path: Path, files: dict[str, bytes], duplicates: int = 0) -> tuple[list[dict], Path]:
    root = tmp_path / "raw"
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "lesion"])
        writer.writerows([name, f"L{number}"] for number, name in enumerate(files))
    out = tmp_path / "ingest"
    result = ingest([{"name": "vidir_modern", "kind": "export", "path": "raw"}], tmp_path, out, 100_000_000)
    assert not result.rejects and len(result.candidates) == len(files)
    decisions = tmp_path / "decisions.csv"
    with open(decisions, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["candidate_id", "image_type", "keep"])
        writer.writerows([c["candidate_id"], "dsc", "true"] for c in result.candidates)
    images = tmp_path / "standardised"
    counts = standardise(out / "candidates.csv", decisions, out / "objects", PARAMS, images, tmp_path / "index.csv")
    assert counts["kept"] == len(files) and counts["duplicates"] == duplicates
    return read_csv(tmp_path / "index.csv"), images


def test_standardised_images_hold_pixels_and_the_jfif_header_only(tmp_path, some_images):
    files = raw_files(some_images.dsc[40:60])
    rows, images = _ingest_and_standardise(tmp_path, files)
    assert len(rows) == len(files)
    needles = [PATIENT.encode(), b"Jane Doe", PATIENT.encode("utf-16-be"), b"1950-01-01", b"Exif", b"ICC_PROFILE",
               b"Photoshop", b"http://ns.adobe.com/xap"]
    for row in rows:
        data = (images / row["file"]).read_bytes()
        found = segments(data)
        assert [marker_name(m) for _, m, _ in found] == RELEASED, row["file"]
        assert {marker_name(m) for _, m, _ in found} <= ALLOWED
        assert foreign_segments(data) == []
        offset, _, length = found[1]
        assert data[offset:offset + length] == (b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x01\x00\x48\x00\x48\x00\x00")
        assert not [needle for needle in needles if needle in data], row["file"]
        assert zlib.compress(PATIENT.encode()) not in data
        with Image.open(images / row["file"]) as out:
            assert out.size == (600, 450) and "comment" not in out.info and not out.getexif()


def test_same_pixels_same_bytes_whatever_the_metadata(tmp_path, some_images):
    """A picture with every kind of metadata standardises to the very bytes of the same picture with none."""
    picture = Image.open(some_images.dsc[61]).convert("RGB")
    thumbnail = jpeg(picture.resize((160, 120)))
    plain_png = io.BytesIO()
    picture.save(plain_png, "PNG")
    files = {"plain.png": plain_png.getvalue(), "commented.png": png_with(picture, "iTXt")}
    rows, images = _ingest_and_standardise(tmp_path, files, duplicates=1)
    first, second = ((images / row["file"]).read_bytes() for row in rows)
    assert first == second
    loaded = jpeg(picture, comment=PATIENT.encode(), exif=exif_with_thumbnail(thumbnail), xmp=xmp())
    bare = jpeg(picture)
    rows, images = _ingest_and_standardise(tmp_path / "jpeg", {"loaded.jpg": loaded, "bare.jpg": bare}, 1)
    assert sha256_bytes(loaded) != sha256_bytes(bare)
    # both decode to the same pixels: the same standardised bytes, so one is the other's identical duplicate
    assert rows[0]["sha256"] == rows[1]["sha256"] and [r["duplicate_of"] != "" for r in rows].count(True) == 1


GPS_PLACE = "48 12 30 N, 16 22 4 E"
MAKER = b"MakerNote: serial 4711-DERMLITE, owner Dr. Doe"


def _orientation_gps_maker_note() -> bytes:
    """EXIF of a phone or dermatoscope camera: orientation 6 (turn 90 degrees clockwise to display), a GPS IFD
    with the place, and a MakerNote in the Exif IFD."""
    from PIL import ExifTags

    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "DermCam"  # Make
    exif.get_ifd(ExifTags.IFD.Exif)[0x927C] = MAKER  # MakerNote
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update({1: "N", 2: (48.0, 12.0, 30.0), 3: "E", 4: (16.0, 22.0, 4.0), 0x1B: GPS_PLACE})
    return exif.tobytes()


def test_exif_orientation_applied_and_gps_and_maker_note_dropped(tmp_path, drawn_images):
    """A JPEG turned by EXIF and carrying a GPS position and a maker note standardises to exactly what its pixels
    turned upright give, with no EXIF left; the same pixels not turned give another image."""
    from PIL import ExifTags

    data = jpeg(Image.open(drawn_images["dsc"][7]).convert("RGB"), exif=_orientation_gps_maker_note())
    with Image.open(io.BytesIO(data)) as raw:  # the input carries what it claims
        exif = raw.getexif()
        assert exif[0x0112] == 6 and exif.get_ifd(ExifTags.IFD.Exif)[0x927C] == MAKER
        assert exif.get_ifd(ExifTags.IFD.GPSInfo)[2] == (48.0, 12.0, 30.0)
        stored = raw.convert("RGB")  # the pixels as stored, landscape
    assert stored.size == (600, 450) and MAKER in data and GPS_PLACE.encode() in data

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()

    files = {"camera.jpg": data, "upright.png": png(stored.transpose(Image.Transpose.ROTATE_270)),
             "as_stored.png": png(stored)}
    rows, images = _ingest_and_standardise(tmp_path, files, duplicates=1)
    upright, as_stored = (sha256_bytes(standardise_image(Image.open(io.BytesIO(files[name]))))
                          for name in ("upright.png", "as_stored.png"))
    assert upright != as_stored
    # camera.jpg came out as the upright picture (the identical duplicate of upright.png), not as stored
    assert Counter(row["sha256"] for row in rows) == {upright: 2, as_stored: 1}
    # standardise turns such a JPEG itself too, should one reach it as it came (ingest stores it turned)
    assert sha256_bytes(standardise_image(Image.open(io.BytesIO(data)))) == upright
    for row in rows:
        result = (images / row["file"]).read_bytes()
        assert [marker_name(m) for _, m, _ in segments(result)] == RELEASED
        for needle in (b"Exif", MAKER, b"DermCam", GPS_PLACE.encode(), b"DERMLITE"):
            assert needle not in result, (row["file"], needle)
        with Image.open(images / row["file"]) as image:
            assert not image.getexif() and image.size == (600, 450)


# ------------------------------------------------------------------------------------------------- the walk

def _clean() -> bytes:
    return jpeg(Image.new("RGB", (64, 48), (120, 80, 60)))


def _insert_after_app0(data: bytes, extra: bytes) -> bytes:
    return data[:20] + extra + data[20:]


@pytest.mark.parametrize("name, make, expected", [
    ("COM", lambda d: _insert_after_app0(d, segment(0xFE, PATIENT.encode())), "COM segment at byte 20"),
    ("EXIF", lambda d: _insert_after_app0(d, segment(0xE1, b"Exif\0\0MM\0\x2a")), "APP1 segment at byte 20"),
    ("ICC", lambda d: _insert_after_app0(d, segment(0xE2, b"ICC_PROFILE\0\1\1")), "APP2 segment"),
    ("APP13", lambda d: _insert_after_app0(d, segment(0xED, photoshop_iptc())), "APP13 segment"),
    ("APP15", lambda d: _insert_after_app0(d, segment(0xEF, b"anything")), "APP15 segment"),
    ("JFXX thumbnail", lambda d: _insert_after_app0(d, segment(0xE0, b"JFXX\0\x13" + b"\0" * 8)), "APP0 'JFXX'"),
    ("JFIF thumbnail", lambda d: d[:2] + segment(0xE0, b"JFIF\0\1\1\1\0H\0H\1\1" + b"\0\0\0") + d[20:],
     "APP0 'JFIF' at byte 2, 21 bytes"),
    ("no JFIF", lambda d: d[:2] + d[20:], "no JFIF header right after SOI"),
    ("after EOI", lambda d: d + PATIENT.encode(), f"{len(PATIENT)} bytes after EOI"),
    ("truncated", lambda d: d[:-20], "entropy-coded data runs to the end"),
    ("not a JPEG", lambda d: b"GIF89a" + d, "does not start with SOI"),
    ("SOF1", lambda d: d.replace(b"\xff\xc0", b"\xff\xc1", 1), "SOF1 segment"),
])
def test_walk_names_every_segment_that_is_not_allowed(name, make, expected):
    clean = _clean()
    assert foreign_segments(clean) == []
    problems = foreign_segments(make(clean))
    assert problems and any(expected in p for p in problems), (name, problems)


def test_walk_allows_progressive_and_restart_intervals():
    picture = Image.new("RGB", (64, 48), (120, 80, 60))
    for options in ({"progressive": True}, {"restart_marker_blocks": 2}, {"progressive": True, "optimize": True}):
        data = jpeg(picture, **options)
        names = {marker_name(m) for _, m, _ in segments(data)}
        assert names <= ALLOWED and foreign_segments(data) == [], (options, names)


# ------------------------------------------------------------------------------------------------- ham verify

def _release_folder(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True)
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "sha256", "bytes"])
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
            writer.writerow([name, sha256_bytes(data), len(data)])


def test_verify_names_the_file_and_segment_even_where_the_manifest_agrees(tmp_path):
    clean = _clean()
    _release_folder(tmp_path / "release", {"images/ISIC_9000001.jpg": clean,
                                           "images/ISIC_9000163.jpg": _insert_after_app0(clean, segment(
                                               0xFE, PATIENT.encode())),
                                           "metadata.csv": b"image_id\nISIC_9000001\n"})
    report = verify(tmp_path / "release")
    assert [str(p) for p in report.problems] == [
        f"segment: images/ISIC_9000163.jpg (COM segment at byte 20, {len(PATIENT) + 4} bytes: not allowed in a "
        f"released image)"]
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(tmp_path / "release")],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "segment: images/ISIC_9000163.jpg (COM segment" in run.stdout
    assert "Traceback" not in run.stderr
    assert verify(tmp_path / "release", hashes=False).problems == []  # --size-only reads no file
