"""Stage `standardise`: every kept image -> the authors' final form, content-addressed and incremental.

The authors ran, on every final image:
    mogrify -strip -rotate "90<" -resize "600x450^" -gravity center -crop 600x450+0+0 \
            -density 72 -units PixelsPerInch -format jpg -quality 100
i.e. no metadata, portrait turned to landscape, scaled to cover 600x450, centre-cropped, 72 dpi, quality 100
(ImageMagick writes 4:4:4 chroma at that quality, so we do too). `standardise_image` does the same with Pillow.

Each output file is named `<candidate_id>-<recipe>.jpg`, where the recipe key hashes the params and the code this
module runs (its import closure, `codedeps.code_version`, so an edit to `imaging.py` counts too): a re-run only
processes images it has not seen with the same recipe, and removes what is no longer wanted.
Images whose standardised bytes are identical are kept once; the others are listed as duplicates.
"""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

from .codedeps import code_version
from .common import atomic_write_bytes, progress, read_csv, sha256_file, stable_hash, write_csv
from .imaging import to_rgb
from .integrity import HashStore, check_cover_geometry

INDEX_COLUMNS = ("candidate_id", "file", "sha256", "bytes", "duplicate_of")


def standardise_image(image: Image.Image, width: int = 600, height: int = 450, quality: int = 100,
                      density: int = 72) -> bytes:
    check_cover_geometry(getattr(image, "filename", "") or "image", *image.size, width, height)
    image = to_rgb(ImageOps.exif_transpose(image))
    if image.width < image.height:  # -rotate "90<": only portrait images, clockwise
        image = image.transpose(Image.Transpose.ROTATE_270)
    scale = max(width / image.width, height / image.height)  # -resize "WxH^": cover the box
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2  # -gravity center -crop
    image = image.crop((left, top, left + width, top + height))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=0, dpi=(density, density))
    return buffer.getvalue()


def recipe_key(params: dict) -> str:
    return stable_hash({"params": params, "code": code_version(__name__)})[:12]


def standardise(candidates_csv: Path, decisions_csv: Path, objects_dir: Path, params: dict, images_dir: Path,
                index_csv: Path) -> dict:
    """Returns counts: kept, processed (new this run), reused, duplicates."""
    candidates = {row["candidate_id"]: row for row in read_csv(candidates_csv, ("candidate_id", "object"))}
    kept = sorted(d["candidate_id"] for d in read_csv(decisions_csv, ("candidate_id", "keep")) if d["keep"] == "true")
    recipe = recipe_key(params)
    images_dir.mkdir(parents=True, exist_ok=True)
    wanted, processed, sums = set(), 0, HashStore(images_dir)
    for candidate_id in progress(kept, "standardise"):
        name = f"{candidate_id}-{recipe}.jpg"
        wanted.add(name)
        if sums.intact(name):  # present and still the bytes it was written with; else made again
            continue
        with Image.open(objects_dir / candidates[candidate_id]["object"]) as image:
            data = standardise_image(image, params["width"], params["height"], params["quality"], params["density"])
        atomic_write_bytes(images_dir / name, data)
        sums.record(name, data)
        processed += 1
    sums.save(wanted)
    for path in images_dir.iterdir():
        if path.name not in wanted and path.name != HashStore.NAME:
            path.unlink()

    rows, first_by_hash = [], {}
    for candidate_id in kept:
        name = f"{candidate_id}-{recipe}.jpg"
        digest = sha256_file(images_dir / name)
        duplicate_of = first_by_hash.setdefault(digest, candidate_id)
        rows.append({"candidate_id": candidate_id, "file": name, "sha256": digest,
                     "bytes": (images_dir / name).stat().st_size,
                     "duplicate_of": "" if duplicate_of == candidate_id else duplicate_of})
    write_csv(index_csv, rows, INDEX_COLUMNS)
    duplicates = sum(1 for row in rows if row["duplicate_of"])
    return {"kept": len(kept), "processed": processed, "reused": len(kept) - processed, "duplicates": duplicates}
