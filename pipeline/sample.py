"""`ham sample DIR`: a small, deterministic, procedurally drawn set of raw sources for the demo pipeline.

Synthetic lesions, drawn with numpy (no real image is in the project). The four folders are shaped like the
study's four routes, and each is read by its own reader kind (`SOURCES` holds the `ingest.sources` entries;
params.yaml lists the same, checked by a test):

- `rosendahl/` (kind `pptx`): one PowerPoint deck per year (`rosendahl_2016.pptx`, `rosendahl_2017.pptx`), each
  slide a dermatoscopic picture (sometimes two), often with a clinical close-up or overview beside it, and a text
  box with the 7-digit lesion ID (sometimes a `Diagnosis:` line too); `pathology.xlsx` holds the histopathology
  reports and patient data, joined by lesion ID. Bad input: a damaged deck (`rosendahl_2018.pptx`), a slide
  whose text has no lesion ID, and one report that is not a diagnosis ("No signs of residual tumor").
- `vidir_modern/` (kind `export`): `images/` plus `index.csv` exported from the clinic's database, in its own
  words (free-text pathology, raw ages and sexes). Mixed encodings the ingest stage normalises (RGBA PNG, CMYK
  JPEG, a JPEG with an EXIF rotation); bad input: an empty file, a text file named `.jpg` that the index does not
  list, a truncated JPEG, and one image exported twice under two names (a duplicate).
- `vidir_molemax/` (kind `series`): `<patient>/<lesion>/<YYYY-MM-DD>.jpg`, the same lesion photographed at
  each visit, and `lesions.csv` with patient data and, for excised lesions, the pathology. Nevi followed for 18
  months or more get follow-up ground truth; a few were followed too briefly (excluded for want of a diagnosis).
  Bad input: a file name with an impossible date and a note at the wrong depth.
- `vienna_dias/` (kind `slides`): scanned diapositives (JPEG and TIFF) of a picture inside a dark slide mount on
  a lighter scanner bed, with `index.csv`; the reader crops the mount away. Bad input: a truncated scan, a scan
  too dark to find the picture in, and a scan the index does not list.

`image_types.csv` holds the annotator's d / c / m labels for three in four images, keyed as the annotation page
keys them: IMAGE is the candidate ID, the sha256 of the bytes the reader yields (for a deck the embedded picture,
for a slide scan the cropped picture). Those bytes are found by running the real readers over the folders just
written, never by guessing what a reader does.

Same seed, same bytes: the drawing uses numpy's PCG64 generator and Pillow's bundled encoders; the timestamps that
python-pptx and openpyxl write into a file's zip entries and document properties are pinned. Writing replaces the
four source folders and the annotations file under DIR, and nothing else there.
"""
from __future__ import annotations

import csv
import datetime
import io
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .common import atomic_write_bytes, sha256_bytes
from .vocabulary import ANNOTATION_KEYS

SEED = 20180814
DIAGNOSES = {
    "mel": ["Superficial spreading melanoma, Breslow 0.4mm, Clark II", "Lentigo maligna melanoma, in toto",
            "Nodular melanoma, Breslow 2.1mm"],
    "nv": ["Compound nevus", "Junctional melanocytic nevus", "Clark's nevus", "Dermal nevus"],
    "bkl": ["Seborrheic keratosis", "Solar lentigo", "Verruca seborrhoica"],
    "bcc": ["Basal cell carcinoma, nodular", "Pigmented basal cell carcinoma (punch biopsy)"],
    "akiec": ["Actinic keratosis", "Bowen's disease"],
    "df": ["Dermatofibroma"],
    "vasc": ["Hemangioma", "Angiokeratoma (punch biopsy)"],
}
LESION_COLOURS = {  # mean RGB of each class's synthetic lesion
    "mel": (70, 45, 40), "nv": (125, 80, 55), "bkl": (150, 115, 80), "bcc": (170, 110, 110),
    "akiec": (185, 110, 100), "df": (160, 110, 85), "vasc": (150, 40, 60),
}
SITES = ["back", "trunk", "lower extremity", "upper extremity", "abdomen", "face", "chest", "neck", "scalp"]
TYPE_KEYS = {image_type: key for key, image_type in ANNOTATION_KEYS.items()}  # dsc -> d, ...
FIXED_TIME = datetime.datetime(2018, 1, 1)
ZIP_TIME = (2018, 1, 1, 0, 0, 0)

# The `ingest.sources` entries for the sample (paths relative to the sample folder). Only documented options.
SOURCES = [
    {"name": "rosendahl", "kind": "pptx", "path": "rosendahl",
     "options": {"workbook": "pathology.xlsx", "sheet": "Pathology",
                 "columns": {"lesion_key": "Lesion ID", "diagnosis": "Histology", "dx_type": "Method",
                             "age": "Age", "sex": "Sex", "localization": "Site"}}},
    {"name": "vidir_modern", "kind": "export", "path": "vidir_modern",
     "options": {"index": "index.csv",
                 "columns": {"file": "file", "lesion_key": "lesion", "diagnosis": "pathology", "dx_type": "method",
                             "age": "age", "sex": "sex", "localization": "site"}}},
    {"name": "vidir_molemax", "kind": "series", "path": "vidir_molemax",
     "options": {"lesions": "lesions.csv"}},
    {"name": "vienna_dias", "kind": "slides", "path": "vienna_dias",
     "options": {"index": "index.csv",
                 "columns": {"file": "file", "lesion_key": "slide", "diagnosis": "histology", "dx_type": "method",
                             "age": "age", "sex": "sex", "localization": "site"}}},
]
ANNOTATIONS = "image_types.csv"


# ---------------------------------------------------------------------------------------------- drawing


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid scaled up bilinearly."""
    grid = rng.random((cells, cells))
    image = Image.fromarray((grid * 255).astype(np.uint8), "L").resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.float64) / 255.0


def _skin(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    tone = np.array([225, 180, 150], dtype=np.float64) * rng.uniform(0.8, 1.05)
    texture = _smooth_noise(rng, height, width, 8)[..., None] * 30 - 15
    return np.clip(tone + texture + rng.normal(0, 4, (height, width, 1)), 0, 255)


def _blob_mask(rng: np.random.Generator, height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """Soft mask of an irregular blob: a radius modulated by a few random harmonics."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = np.arctan2(yy - cy, xx - cx)
    outline = np.ones_like(angle)
    for harmonic in range(2, 6):
        outline += rng.uniform(0, 0.15) * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
    distance = np.hypot(yy - cy, xx - cx) / (radius * outline)
    return np.clip((1.0 - distance) * 6.0, 0, 1)


def _paint_lesion(rng, canvas, dx, cy, cx, radius):
    height, width, _ = canvas.shape
    mask = _blob_mask(rng, height, width, cy, cx, radius)[..., None]
    colour = np.array(LESION_COLOURS[dx], dtype=np.float64) * rng.uniform(0.85, 1.15)
    texture = _smooth_noise(rng, height, width, 12)[..., None] * 50 - 25
    return canvas * (1 - mask) + np.clip(colour + texture, 0, 255) * mask


def draw(rng: np.random.Generator, image_type: str, dx: str, portrait: bool = False,
         field_stop: bool = True) -> Image.Image:
    """One synthetic image: dermatoscopic (`dsc`), close-up (`macro`) or overview (`clinic`). A dermatoscopic
    image has the dark round field of a dermatoscope's lens unless `field_stop` is False (the older film
    cameras' pictures, which fill the frame)."""
    height, width = (400, 300) if portrait else (300, 400)
    if image_type == "dsc":
        canvas = _paint_lesion(rng, _skin(rng, height, width), dx, height / 2 + rng.normal(0, 10),
                               width / 2 + rng.normal(0, 10), min(height, width) * rng.uniform(0.2, 0.35))
        for _ in range(int(rng.integers(0, 6))):  # hairs
            y0, y1 = rng.uniform(0, height, 2)
            xs = np.arange(width)
            ys = np.clip((y0 + (y1 - y0) * xs / width).astype(int), 0, height - 1)
            canvas[ys, xs] = canvas[ys, xs] * 0.3
        if field_stop:
            yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
            field_ = np.hypot(yy - height / 2, xx - width / 2) / (min(height, width) * 0.62)
            canvas *= np.clip((1.15 - field_) * 5, 0, 1)[..., None]
    elif image_type == "macro":
        canvas = _skin(rng, height, width) * np.linspace(0.8, 1.1, width)[None, :, None]
        canvas = _paint_lesion(rng, canvas, dx, height * rng.uniform(0.35, 0.65), width * rng.uniform(0.35, 0.65),
                               min(height, width) * rng.uniform(0.08, 0.14))
        canvas[: height // 12, :, :] = np.array([235, 235, 225])  # a paper ruler along the top edge
        canvas[: height // 12, :: width // 20, :] = 40
    else:
        wall = np.array(rng.choice([[90, 110, 140], [200, 200, 190], [60, 90, 80]]), dtype=np.float64)
        canvas = np.broadcast_to(wall, (height, width, 3)).copy()
        body = _blob_mask(rng, height, width, height * 0.6, width / 2, min(height, width) * 0.45)[..., None]
        canvas = canvas * (1 - body) + _skin(rng, height, width) * body
        for _ in range(int(rng.integers(2, 5))):
            canvas = _paint_lesion(rng, canvas, dx, height * rng.uniform(0.45, 0.75), width * rng.uniform(0.3, 0.7),
                                   min(height, width) * 0.025)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")


def revisit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The same lesion at a later visit: the dermatoscope put down again (turned by 15 to 45 degrees either way,
    a little off centre), the exposure a little different. A different photograph, not a near-copy: the
    near-duplicate check must keep every visit of a follow-up series."""
    angle = float(rng.choice([-1.0, 1.0]) * rng.uniform(15, 45))
    shift = tuple(float(v) for v in rng.uniform(-0.08, 0.08, 2) * image.size)
    turned = image.rotate(angle, resample=Image.BILINEAR, translate=shift, fillcolor=(0, 0, 0))
    pixels = np.asarray(turned, dtype=np.float64) * rng.uniform(0.92, 1.08) + rng.normal(0, 2, (1, 1, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def mount(picture: Image.Image, rng: np.random.Generator, dark: bool = False) -> Image.Image:
    """A scan of a diapositive: the picture in a dark slide mount, on the lighter scanner bed around it."""
    width, height = picture.size
    border, bed = int(width * 0.16), int(width * 0.04)
    scan_w, scan_h = width + 2 * (border + bed), height + 2 * (border + bed)
    canvas = np.empty((scan_h, scan_w, 3), dtype=np.float64)
    canvas[:] = rng.uniform(95, 120)  # scanner bed
    canvas[bed:scan_h - bed, bed:scan_w - bed] = rng.uniform(14, 26)  # the mount, cardboard-dark
    canvas += rng.normal(0, 3, (scan_h, scan_w, 1))
    inner = np.asarray(picture, dtype=np.float64) * (0.12 if dark else rng.uniform(0.9, 1.0))
    canvas[border + bed:border + bed + height, border + bed:border + bed + width] = inner
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------------------------------------- encoding


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _tiff(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF", compression="tiff_lzw")
    return buffer.getvalue()


def _rotated_jpeg(image: Image.Image) -> bytes:
    """The picture as a camera stores it when held sideways: pixels turned, EXIF orientation 6 to undo it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(image.transpose(Image.ROTATE_90), exif=exif.tobytes())


def _rgba_png(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    alpha = np.full(image.size[::-1], 255, dtype=np.uint8)
    alpha[:12, :] = 0  # a transparent strip along the top edge, as a cropping tool leaves it
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return _encode(rgba, "PNG")


CORE_TIMES = re.compile(rb"(<dcterms:(created|modified)\b[^>]*>)[^<]*(</dcterms:\2>)")


def pinned_zip(data: bytes) -> bytes:
    """An Office file (a zip) with its entries' times and the document's created/modified times pinned, so the
    same content gives the same bytes on every run."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename == "docProps/core.xml":
                content = CORE_TIMES.sub(rb"\g<1>2018-01-01T00:00:00Z\g<3>", content)
            entry = zipfile.ZipInfo(info.filename, date_time=ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o600 << 16
            target.writestr(entry, content)
    return out.getvalue()


def damaged_deck(deck: bytes) -> bytes:
    """The deck with its presentation part cut short, as a broken transfer leaves a file: still a zip, no longer a
    deck python-pptx can open."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(deck)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename == "ppt/presentation.xml":
                content = content[: len(content) // 2]
            target.writestr(info, content)
    return out.getvalue()


def make_deck(slides: list[dict]) -> bytes:
    """A deck with one slide per entry: `pictures` (JPEG bytes, side by side) and `text` (one text box)."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    deck.core_properties.created = FIXED_TIME
    deck.core_properties.modified = FIXED_TIME
    deck.core_properties.last_modified_by = "ham sample"
    deck.core_properties.revision = 1
    for spec in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[6])  # blank
        left = 0.4
        for data in spec["pictures"]:
            slide.shapes.add_picture(io.BytesIO(data), Inches(left), Inches(1.2), width=Inches(3))
            left += 3.1
        box = slide.shapes.add_textbox(Inches(0.5), Inches(5.5), Inches(8), Inches(1))
        box.text_frame.text = spec["text"]
    buffer = io.BytesIO()
    deck.save(buffer)
    return pinned_zip(buffer.getvalue())


def make_workbook(sheet: str, header: list[str], rows: list[list]) -> bytes:
    from openpyxl import Workbook

    book = Workbook()
    book.properties.creator = "ham sample"
    book.properties.created = FIXED_TIME
    book.properties.modified = FIXED_TIME
    book.active.title = sheet
    book.active.append(header)
    for row in rows:
        book.active.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return pinned_zip(buffer.getvalue())


def _write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


# ---------------------------------------------------------------------------------------------- the sources


@dataclass
class Lesion:
    dx: str
    dx_type: str
    age: str
    sex: str
    site: str
    report: str  # free-text pathology ("" where the ground truth is not histopathology)


@dataclass
class Written:
    """What one source folder holds: the image type of each picture (by the key the reader's item will have) and
    how many raw items (pictures, image files, bad files) the readers must account for."""
    types: dict = field(default_factory=dict)  # (origin, member or "") -> dsc / macro / clinic
    items: int = 0
    files: int = 0


def _lesion(rng, dx: str, dx_type: str = "histo", report: bool = True) -> Lesion:
    return Lesion(dx=dx, dx_type=dx_type, age=str(int(rng.integers(20, 90))),
                  sex=str(rng.choice(["male", "female", "M", "F", "female", "male", ""])),
                  site=str(rng.choice(SITES)), report=str(rng.choice(DIAGNOSES[dx])) if report else "")


def _rosendahl(rng, folder: Path) -> Written:
    """Two yearly decks and the pathology workbook; a third deck damaged in transfer."""
    written = Written()
    cycle = ("bcc", "mel", "akiec", "bkl", "nv", "bcc", "df", "akiec", "bkl", "mel")
    rows, decks = [], {2016: [], 2017: []}
    for index in range(30):
        year = 2016 if index < 15 else 2017
        key = str(3815001 + index)  # seven digits: never a substring of an image size or a release ID
        lesion = _lesion(rng, cycle[index % len(cycle)])
        sex = {"male": "m", "M": "m", "female": "f", "F": "f"}.get(lesion.sex, "")
        rows.append([key, lesion.report, "histo" if index % 7 else "Histology", int(lesion.age) if index % 11 else None,
                     sex, lesion.site])
        types = ["dsc"] + ["dsc"] * (index % 4 == 1) + ["macro"] * (index % 3 == 0) + ["clinic"] * (index % 5 == 2)
        pictures = [_jpeg(draw(rng, kind, lesion.dx, portrait=(kind == "dsc" and index % 6 == 4))) for kind in types]
        text = f"Lesion {key}" if index % 4 else f"{key}\nDiagnosis: {lesion.report.split(',')[0]}"
        decks[year].append((types, pictures, text))
    rows[0][1] = "No signs of residual tumor"  # a report that is not a diagnosis: excluded by the unify rules
    # A slide whose text lost its ID: its picture is rejected rather than joined to the wrong lesion.
    decks[2017].append((["dsc"], [_jpeg(draw(rng, "dsc", "nv"))], "see chart, ID missing"))

    for year, slides in decks.items():
        name = f"rosendahl_{year}.pptx"
        data = make_deck([{"pictures": pictures, "text": text} for _, pictures, text in slides])
        atomic_write_bytes(folder / name, data)
        for number, (types, _, _) in enumerate(slides, start=1):
            for position, kind in enumerate(types, start=1):
                written.types[(name, f"slide {number} picture {position}")] = kind
                written.items += 1
        if year == 2017:  # a deck damaged in transfer: one reject for the whole deck
            atomic_write_bytes(folder / "rosendahl_2018.pptx", damaged_deck(data))
            written.items += 1
    atomic_write_bytes(folder / "pathology.xlsx",
                       make_workbook("Pathology", ["Lesion ID", "Histology", "Method", "Age", "Sex", "Site"], rows))
    return written


def _vidir_modern(rng, folder: Path) -> Written:
    """A database export: images and index.csv, with mixed encodings and bad files."""
    written = Written()
    cycle = ("nv", "mel", "bkl", "bcc", "vasc", "df", "akiec")
    dx_types = ("histo", "histo", "consensus", "confocal")
    rows = []

    def add(name: str, data: bytes, lesion_key: str, lesion: Lesion | None, kind: str | None) -> None:
        atomic_write_bytes(folder / "images" / name, data)
        if lesion is not None:
            rows.append({"file": f"images/{name}", "lesion": lesion_key, "pathology": lesion.report,
                         "method": lesion.dx_type, "age": lesion.age, "sex": lesion.sex, "site": lesion.site})
        if kind:
            written.types[(f"images/{name}", "")] = kind
        written.items += 1

    lesions = []
    number = 0
    for index in range(35):
        dx = cycle[index % len(cycle)]
        dx_type = dx_types[index % len(dx_types)] if dx in ("nv", "bkl") else "histo"
        lesion, key = _lesion(rng, dx, dx_type), f"VID-{1000 + index}"
        if index % 9 == 0:
            lesion.age = ""  # not recorded
        lesions.append((key, lesion))
        for _ in range((1, 1, 2)[index % 3]):
            number += 1
            image = draw(rng, "dsc", dx, portrait=(number % 7 == 3))
            # Mixed encodings, as exports from several camera and database generations come.
            data = {5: lambda: _rgba_png(image), 11: lambda: _jpeg(image.convert("CMYK")),
                    17: lambda: _rotated_jpeg(image)}.get(number, lambda: _jpeg(image))()
            add(f"vid_{number:04d}.{'png' if number == 5 else 'jpg'}", data, key, lesion, "dsc")
    for extra in range(5):  # overviews of some lesions, exported with them
        key, lesion = lesions[extra * 7 % len(lesions)]
        number += 1
        add(f"vid_{number:04d}.jpg", _jpeg(draw(rng, "clinic", lesion.dx)), key, lesion, "clinic")

    # Bad input, each of which the rejects ledger must explain.
    key, lesion = lesions[2]
    add("vid_0003_copy.jpg", (folder / "images/vid_0003.jpg").read_bytes(), key, lesion, None)  # duplicate
    add("empty.jpg", b"", "VID-1999", Lesion("nv", "histo", "", "", "", ""), None)
    truncated = _jpeg(draw(rng, "dsc", "nv"))
    add("vid_trunc.jpg", truncated[: len(truncated) // 2], "VID-1998", Lesion("nv", "histo", "50", "male", "back",
                                                                             "Compound nevus"), None)
    add("notes.jpg", b"lesion photographed twice, see chart\n", "", None, None)  # not in the index
    _write_csv(folder / "index.csv", ["file", "lesion", "pathology", "method", "age", "sex", "site"], rows)
    return written


def _vidir_molemax(rng, folder: Path) -> Written:
    """Dated series per patient and lesion; lesions.csv with patient data and the pathology of excised lesions."""
    written = Written()
    rows = []
    for index in range(20):
        patient, lesion_name = f"P{index // 2 + 1:02d}", f"L{index % 2 + 1}"
        excised = {6: "mel", 13: "nv"}.get(index)
        brief = index in (4, 17)  # followed for under 18 months, never excised: no ground truth
        lesion = _lesion(rng, excised or "nv", "histo" if excised else "", report=bool(excised))
        if index % 2:  # both lesions of a patient share the patient's age and sex
            lesion.age, lesion.sex = rows[-1]["age"], rows[-1]["sex"]
        rows.append({"patient": patient, "lesion": lesion_name, "diagnosis": lesion.report,
                     "dx_type": lesion.dx_type, "age": lesion.age, "sex": lesion.sex, "localization": lesion.site})
        first = datetime.date(2013, 1, 7) + datetime.timedelta(days=int(rng.integers(0, 700)))
        # Visits a year or so apart: two gaps or more span over 19 months, enough for follow-up ground truth.
        gaps = [int(rng.integers(150, 200))] if brief else [int(rng.integers(300, 420)) for _ in range(2 + index % 2)]
        dates = [first]
        for gap in gaps:
            dates.append(dates[-1] + datetime.timedelta(days=gap))
        base = draw(rng, "dsc", lesion.dx)
        for visit, date in enumerate(dates):
            image = base if visit == 0 else revisit(base, rng)
            origin = f"{patient}/{lesion_name}/{date.isoformat()}.jpg"
            atomic_write_bytes(folder / origin, _jpeg(image))
            written.types[(origin, "")] = "dsc"
            written.items += 1
    # Bad input: an impossible date in the file name, and a note left at the patient level.
    atomic_write_bytes(folder / "P03/L1/2015-13-45.jpg", _jpeg(draw(rng, "dsc", "nv")))
    atomic_write_bytes(folder / "P05/notes.txt", b"patient asked for the next visit in spring\n")
    written.items += 2
    _write_csv(folder / "lesions.csv", ["patient", "lesion", "diagnosis", "dx_type", "age", "sex", "localization"],
               rows)
    return written


def _vienna_dias(rng, folder: Path) -> Written:
    """Scanned slides in dark mounts, JPEG and TIFF, with index.csv."""
    written = Written()
    cycle = ("mel", "nv", "bcc", "bkl", "vasc", "df", "mel", "nv", "bkl", "vasc")
    rows = []
    for index in range(20):
        lesion = _lesion(rng, cycle[index % len(cycle)])
        kinds = ["dsc"] + ["macro"] * (index % 5 == 3)
        for position, kind in enumerate(kinds):
            suffix = "tif" if (index + position) % 4 == 2 else "jpg"
            name = f"scans/{1990 + index % 6}/dia_{index * 2 + position + 1:04d}.{suffix}"
            scan = mount(draw(rng, kind, lesion.dx, field_stop=False), rng)
            atomic_write_bytes(folder / name, _tiff(scan) if suffix == "tif" else _jpeg(scan))
            rows.append({"file": name, "slide": f"D{index + 1:03d}", "histology": lesion.report,
                         "method": lesion.dx_type, "age": lesion.age, "sex": lesion.sex, "site": lesion.site})
            written.types[(name, "")] = kind
            written.items += 1
    # Bad input: a scan cut short, a scan too dark to find the picture in, a scan the index does not list.
    lesion = _lesion(rng, "nv")
    scan = _jpeg(mount(draw(rng, "dsc", "nv", field_stop=False), rng))
    atomic_write_bytes(folder / "scans/1996/dia_0101.jpg", scan[: len(scan) // 2])
    atomic_write_bytes(folder / "scans/1996/dia_0102.jpg",
                       _jpeg(mount(draw(rng, "dsc", "mel", field_stop=False), rng, dark=True)))
    for name in ("scans/1996/dia_0101.jpg", "scans/1996/dia_0102.jpg"):
        rows.append({"file": name, "slide": f"D{len(rows) + 1:03d}", "histology": lesion.report, "method": "histo",
                     "age": lesion.age, "sex": lesion.sex, "site": lesion.site})
    atomic_write_bytes(folder / "scans/1996/dia_0103.jpg", _jpeg(mount(draw(rng, "dsc", "bkl", field_stop=False),
                                                                      rng)))
    written.items += 3
    _write_csv(folder / "index.csv", ["file", "slide", "histology", "method", "age", "sex", "site"], rows)
    return written


WRITERS = {"rosendahl": _rosendahl, "vidir_modern": _vidir_modern, "vidir_molemax": _vidir_molemax,
           "vienna_dias": _vienna_dias}


def candidate_types(target: Path, written: dict[str, Written]) -> list[tuple[str, str]]:
    """(candidate ID, image type) of every picture, in reader order: the real readers run over the folders."""
    from .sources import RawItem, expand, reader_for

    found = []
    for source in SOURCES:
        reader = reader_for(source["kind"])
        for item in expand(reader(Path(target) / source["path"], source["options"])):
            if not isinstance(item, RawItem):
                continue
            key = (item.origin, item.member if source["kind"] == "pptx" else "")
            kind = written[source["name"]].types.get(key)
            if kind is not None:  # the exported duplicate has no type of its own: it is the same candidate
                found.append((sha256_bytes(item.data), kind))
    return found


def write_sources(target: Path, seed: int = SEED) -> dict[str, Written]:
    """Write the sample raw sources and the annotations under `target` (replacing the four source folders and the
    annotations file); return what each source folder holds."""
    target = Path(target)
    rng = np.random.default_rng(seed)
    written: dict[str, Written] = {}
    for source in SOURCES:
        folder = target / source["path"]
        if folder.exists():
            shutil.rmtree(folder)
        written[source["name"]] = WRITERS[source["name"]](rng, folder)
        written[source["name"]].files = sum(1 for path in folder.rglob("*") if path.is_file())

    # The annotator labelled about three in four images; the filter predicts the rest.
    rows, seen = [], set()
    for position, (digest, kind) in enumerate(candidate_types(target, written)):
        if position % 4 != 1 and digest not in seen:
            seen.add(digest)
            rows.append([digest, TYPE_KEYS[kind], f"2018-03-01T10:{position // 60:02d}:{position % 60:02d}"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["IMAGE", "ANNOTATION", "TIMESTAMP"])
    writer.writerows(rows)
    atomic_write_bytes(target / ANNOTATIONS, buffer.getvalue().encode("utf-8"))
    return written


def write_sample(target: Path, seed: int = SEED) -> dict[str, int]:
    """Write the sample (see `write_sources`); return the number of files written per source."""
    return {name: written.files for name, written in write_sources(target, seed).items()}
