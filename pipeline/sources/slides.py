"""`slides` sources: scanned diapositives (the `vienna_dias` route), the picture inside a dark slide mount.

Layout: scans (TIFF, JPEG or PNG) anywhere under the source root, plus an index CSV naming each one:

    index.csv       file, lesion_key, diagnosis, dx_type, age, sex, localization (any ITEM_FIELDS column)
    <file>          e.g. scans/1994/slide_0042.tif

For every scan the dark mount border is detected and cropped away. The crop box, in pixels of the upright scan,
is recorded in `member` (`crop L,T,R,B`, right/bottom exclusive as Pillow's crop) and in the extra field
`crop_box`; the cropped picture is yielded re-encoded losslessly as PNG (same pixel mode where PNG can hold it,
else 8-bit RGB; ICC profile kept). Because the stored object is then not the raw file, the raw scan's sha256 is
recorded in the extra field `raw_sha256` (and its size in `scan_size`) so provenance leads back to the scan.
When no border is found the scan's own bytes are yielded unchanged, with member `crop none`.

Detection (on a greyscale copy downscaled to at most `analysis_size` pixels a side, for speed on big scans):
a pixel is dark when darker than `dark_threshold`; a row (column) belongs to the picture when fewer than
`dark_fraction` of its pixels are dark, counted only between the picture's current left and right (top and
bottom) edges. Starting from the whole scan the two directions refine each other until they agree, which lets
thick mounts and the lighter scanner bed around the mount fall away; the profiles are median-smoothed so thin
specks, scratches and hairs do not split the picture, and the longest run of picture rows and of picture
columns gives the box. Both orders (rows first, columns first) are tried and the larger box wins. The box is
shrunk by `margin` (a fraction of its size) on each side where a border was found, so no mount edge is left.
A detected picture under `min_area` of the scan (a near-black scan, a picture darker than the mount) is
Rejected ("mount border detection failed: ...") rather than yielding a wrong crop. Limits: a light (white)
mount is not detected (crop none), and the mount should fill most of a scan that also shows the scanner bed.

Options:
  index:          the index CSV, relative to the source root (default `index.csv`)
  columns:        mapping from our field names (`file`, `lesion_key`, `diagnosis`, ...) to the index's columns,
                  as in `export` sources
  dark_threshold: grey level (0-255) below which a pixel counts as mount (default 40)
  dark_fraction:  a row/column is picture when less than this fraction of it is dark (default 0.5)
  margin:         safety margin cut off each detected border side, fraction of the box size (default 0.01)
  min_area:       smallest acceptable crop, fraction of the scan area (default 0.2)
  max_pixels:     scans over this many pixels are Rejected from their header, before decoding (default 1e8)
  analysis_size:  longest side of the downscaled detection copy (default 1024)
  image_type:     dsc / macro / clinic for every image (every kind takes it)

Rejected: files not in the index, index rows whose file is missing or whose name leads outside the source,
duplicate index rows, scans over max_pixels, unreadable or truncated scans, failed border detection.
Ignored: `.DS_Store`/`Thumbs.db` and documentation/metadata files (.csv, .md, .txt, ...); hidden files are
Rejected as unlisted unless the index names them.
Multi-page TIFFs: only the first page is read. EXIF orientation is applied before detection.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from contextlib import contextmanager
from functools import partial
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Union

import numpy as np
from PIL import Image, ImageOps

from ..imaging import to_rgb  # the pipeline's one conversion rule (16-bit, alpha, palette, CMYK)
from . import (ITEM_FIELDS, BadTable, RawItem, Reject, SourceOptions, Unit, file_stamp, mapping, number, option,
               read_table, text)
from .export import INDEX_SKIP, _safe_relative

IGNORED_NAMES = {".DS_Store", "Thumbs.db"}
PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}


@dataclass(frozen=True)
class SlideOptions(SourceOptions):
    KIND = "slides"
    index: str = option("index.csv", text())
    columns: dict = option(check=mapping(("file", *ITEM_FIELDS)), factory=dict)
    dark_threshold: float = option(40.0, number(minimum=0, maximum=255))
    dark_fraction: float = option(0.5, number(above=0, maximum=1))
    margin: float = option(0.01, number(minimum=0, below=0.25))
    min_area: float = option(0.2, number(minimum=0, maximum=1))
    max_pixels: int = option(100_000_000, number(above=0, integer=True))
    analysis_size: int = option(1024, number(minimum=64, integer=True))

    def stamp(self) -> dict:
        """The options that shape a crop (image_type does not: it only labels the candidates)."""
        return {key: value for key, value in asdict(self).items() if key != "image_type"}


class DetectionFailed(Exception):
    pass


# --- border detection --------------------------------------------------------------------------------------


def _smooth(flags: np.ndarray, window: int) -> np.ndarray:
    """Median (majority) filter of a boolean profile: runs shorter than half the window flip."""
    if window < 3 or flags.size < window:
        return flags
    half = window // 2
    padded = np.pad(flags.astype(np.int32), half, mode="edge")
    sums = np.convolve(padded, np.ones(window, dtype=np.int32), mode="valid")
    return sums > half


def _longest_run(flags: np.ndarray) -> tuple[int, int] | None:
    """(start, end exclusive) of the longest run of True, or None."""
    best, start = None, None
    for index, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            if best is None or index - start > best[1] - best[0]:
                best = (start, index)
            start = None
    return best


def _picture_span(dark: np.ndarray, axis: int, across: tuple[int, int], cut: float) -> tuple[int, int] | None:
    """Longest run of rows (axis 0) or columns (axis 1) with few dark pixels, counted within `across`."""
    part = dark[:, across[0]:across[1]] if axis == 0 else dark[across[0]:across[1], :]
    fraction = part.mean(axis=1 - axis)
    picture = _smooth(fraction < cut, max(3, (len(fraction) // 100) | 1))
    return _longest_run(picture)


def _refine(dark: np.ndarray, cut: float, rows_first: bool) -> tuple[int, int, int, int] | None:
    height, width = dark.shape
    rows, columns = (0, height), (0, width)
    for step in range(12):
        if (step % 2 == 0) == rows_first:
            span = _picture_span(dark, 0, columns, cut)
            if span is None:
                return None
            changed, rows = span != rows, span
        else:
            span = _picture_span(dark, 1, rows, cut)
            if span is None:
                return None
            changed, columns = span != columns, span
        if not changed and step > 0:
            break
    return columns[0], rows[0], columns[1], rows[1]


def detect_picture(grey: np.ndarray, dark_threshold: float, dark_fraction: float) -> tuple[int, int, int, int]:
    """Box (left, top, right, bottom) of the picture inside a dark mount, in the given array's pixels."""
    dark = grey < dark_threshold
    boxes = [box for box in (_refine(dark, dark_fraction, True), _refine(dark, dark_fraction, False)) if box]
    if not boxes:
        raise DetectionFailed(f"no picture found: nearly every row and column is over {dark_fraction:.0%} "
                              f"darker than {dark_threshold:g}")
    return max(boxes, key=lambda box: (box[2] - box[0]) * (box[3] - box[1]))


def find_crop(image: Image.Image, options: SlideOptions) -> tuple[int, int, int, int] | None:
    """Crop box in full-resolution pixels, or None when the scan has no dark border."""
    width, height = image.size
    factor = max(1, -(-max(width, height) // options.analysis_size))
    eight_bit = image if image.mode in ("L", "RGB") else to_rgb(image)
    small = np.asarray((eight_bit.reduce(factor) if factor > 1 else eight_bit).convert("L"), dtype=np.float32)
    left, top, right, bottom = detect_picture(small, options.dark_threshold, options.dark_fraction)
    small_h, small_w = small.shape
    if (left, top, right, bottom) == (0, 0, small_w, small_h):
        return None
    # Back to full resolution (the last reduced row/column may cover fewer pixels); clamp to the scan.
    scale_x, scale_y = width / small_w, height / small_h
    box = [round(left * scale_x), round(top * scale_y), round(right * scale_x), round(bottom * scale_y)]
    box = [0 if left == 0 else box[0], 0 if top == 0 else box[1],
           width if right == small_w else box[2], height if bottom == small_h else box[3]]
    if (box[2] - box[0]) * (box[3] - box[1]) < options.min_area * width * height:
        raise DetectionFailed(f"picture would be {box[2] - box[0]}x{box[3] - box[1]}, under "
                              f"{options.min_area:.0%} of the {width}x{height} scan")
    inset_x, inset_y = round(options.margin * (box[2] - box[0])), round(options.margin * (box[3] - box[1]))
    return (box[0] + (inset_x if left > 0 else 0), box[1] + (inset_y if top > 0 else 0),
            box[2] - (inset_x if right < small_w else 0), box[3] - (inset_y if bottom < small_h else 0))


# --- reading scans -----------------------------------------------------------------------------------------


@contextmanager
def _pixel_limit(max_pixels: int):
    """Pillow's bomb guard set to our own limit while a scan is opened (restored after; ingest sets None)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def crop_scan(data: bytes, origin: str, options: SlideOptions) -> tuple[bytes, str, dict]:
    """(bytes to yield, member, extra fields) for one scan; raises ValueError with the reason."""
    with _pixel_limit(options.max_pixels):
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise ValueError(f"scan is over the limit max_pixels = {options.max_pixels}; not decoded "
                             f"(Pillow: {error})") from None
        except Exception as error:  # Pillow raises many types on garbage headers
            raise ValueError(f"not a readable image ({error})") from None
        width, height = image.size
        if width * height > options.max_pixels:
            raise ValueError(f"scan is {width}x{height} = {width * height} pixels, over the limit max_pixels = "
                             f"{options.max_pixels}; not decoded")
        try:
            image.load()
        except Exception as error:
            raise ValueError(f"corrupt or truncated {image.format or ''} scan ({error})") from None
    fields = {"raw_sha256": hashlib.sha256(data).hexdigest(), "scan_size": f"{width}x{height}"}
    upright = ImageOps.exif_transpose(image)
    try:
        box = find_crop(upright, options)
    except DetectionFailed as error:
        raise ValueError(f"mount border detection failed: {error}") from None
    if box is None:
        return data, "crop none", {**fields, "crop_box": ""}
    picture = upright.crop(box)
    if picture.mode not in PNG_MODES:
        picture = to_rgb(picture)
    buffer = io.BytesIO()
    icc = image.info.get("icc_profile")
    picture.save(buffer, format="PNG", **({"icc_profile": icc} if icc else {}))
    text = ",".join(str(value) for value in box)
    return buffer.getvalue(), f"crop {text}", {**fields, "crop_box": text}


def read_slides(root: Path, options: SlideOptions | dict) -> Iterator[Union[RawItem, Reject, Unit]]:
    settings = SlideOptions.of(options)
    index_name = settings.index
    file_column = settings.columns.get("file", "file")
    rows: list[tuple[int, dict]] = []
    index_path = root / index_name
    if not index_path.is_file():
        yield Reject(index_name, "", f"slides index {index_name} not found in {root}; every scan is unlisted")
    else:
        try:
            header, rows = read_table(root, index_name)
        except BadTable as error:
            yield Reject(index_name, "", str(error))
            header, rows = [], []
        if rows and file_column not in header:
            yield Reject(index_name, "", f"{index_name}: missing column '{file_column}' (the scan file name)")
            rows = []

    named: dict[str, int] = {}
    for number, row in rows:
        member = f"row {number}"
        relative = _safe_relative((row.get(file_column) or "").strip())
        if relative is None:
            yield Reject(index_name, member, f"{index_name} {member}: bad file name {row.get(file_column)!r}")
            continue
        origin = str(PurePosixPath(relative))
        if origin in named:
            yield Reject(index_name, member, f"{index_name} {member}: {origin} already listed in row "
                                             f"{named[origin]}; this row is ignored")
            continue
        named[origin] = number
        path = root / relative
        if not path.is_file():
            yield Reject(origin, member, f"{index_name} {member}: scan file {relative} not found")
            continue
        fields = {name: (row.get(settings.columns.get(name, name)) or "").strip() for name in ITEM_FIELDS}
        yield Unit(origin, file_stamp(path, member, fields, settings.stamp()),
                   partial(_read_scan, path, origin, member, {**fields, "index_row": str(number)}, settings))

    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        origin = path.relative_to(root).as_posix()
        if origin in named or path == index_path or path.suffix.lower() in INDEX_SKIP or path.name in IGNORED_NAMES:
            continue
        yield Reject(origin, "", f"{origin} is not listed in {index_name}")


def _read_scan(path: Path, origin: str, member: str, fields: dict, settings: SlideOptions) -> list:
    """One scan, cropped (the costly part a re-run skips): its picture, or a reject with the reason."""
    try:
        data, crop_member, extra = crop_scan(path.read_bytes(), origin, settings)
    except OSError as error:
        return [Reject(origin, member, f"{origin}: unreadable ({error.strerror})")]
    except ValueError as error:
        return [Reject(origin, member, f"{origin}: {error}")]
    return [RawItem(data, origin, crop_member, {**fields, **extra})]
