"""Stage `standardise`: every kept image -> the authors' final form, content-addressed, incremental and parallel.

The authors ran, on every final image:
    mogrify -strip -rotate "90<" -resize "600x450^" -gravity center -crop 600x450+0+0 \
            -density 72 -units PixelsPerInch -format jpg -quality 100
i.e. no metadata, portrait turned to landscape, scaled to cover 600x450, centre-cropped, 72 dpi, quality 100
(ImageMagick writes 4:4:4 chroma at that quality, so we do too). `standardise_image` gives the same geometry with
Pillow, without decoding or resampling pixels the result does not need:
- a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose picture still covers the scaled size, in the
  stored orientation (EXIF orientation and the portrait rule taken into account before decoding);
- only the part that survives the centre crop is resampled (Lanczos over the crop box, with the pixels around it
  as the filter's support, so the geometry is exactly resize-then-crop), after an integer `reduce` where the
  decoded picture is still over twice the output (Pillow's `reducing_gap`; a PNG slide scan, which has no draft
  mode, is where this counts).
On images that need no reduction (at most the scaled size) the pixels are those of a full Lanczos resize and crop;
on large JPEGs they stay close to mogrify's (tests/test_standardise.py holds a PSNR floor on real images).
`-strip` by construction: the file is written from the pixels alone (`jpeg_segments.clean_jpeg`), so it holds a
fixed JFIF header, coding tables and pixel data, whatever the raw file carried (a comment, EXIF and its thumbnail,
ICC, XMP, other APPn segments, PNG text chunks), and every file made is checked segment by segment.

Each output file is named `<candidate_id>-<recipe>.jpg`, where the recipe key hashes the recipe's params (width,
height, quality, density) and the code this module runs (its import closure, `codedeps.code_version`, so an edit
to `imaging.py` counts too): a re-run only processes images it has not seen with the same recipe, and removes what
is no longer wanted. `workers` (0 = every core) sets the processes; it is not part of the recipe and the output
is the same bytes for any number. Images whose standardised bytes are identical are kept once; the others are
listed as duplicates (`duplicate_of`, `duplicate_reason`); `pipeline/dedupe.py` adds the near-duplicates.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageOps

from .codedeps import code_version
from .common import PipelineError, atomic_write_bytes, read_csv, sha256_bytes, sha256_file, stable_hash, write_csv
from .imaging import EXIF_ORIENTATION, to_rgb
from .integrity import HashStore, check_cover_geometry, damaged_object, object_sums
from .jpeg_segments import clean_jpeg
from .linking import place
from .executors import LOCAL, Compute, run_map
from .stores import LocalStore, is_remote, open_store

INDEX_COLUMNS = ("candidate_id", "file", "sha256", "bytes", "duplicate_of", "duplicate_reason")
RECIPE_PARAMS = ("width", "height", "quality", "density")
# Reduce by whole factors only while the picture stays over this many times the output, then Lanczos: the
# geometry stays mogrify's, within the PSNR floor tests/test_standardise.py checks (bench_standardise: the cost).
REDUCING_GAP = 2.0
CHECKED_JSON = "checked_images.json"  # beside the index, not a DVC output: stat stamps are machine-local


def standardise_image(image: Image.Image, width: int = 600, height: int = 450, quality: int = 100,
                      density: int = 72) -> bytes:
    """The recipe's JPEG bytes of an opened (not yet loaded, for the fast path) image."""
    check_cover_geometry(getattr(image, "filename", "") or "image", *image.size, width, height)
    stored_w, stored_h = image.size
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    upright = (stored_h, stored_w) if orientation in (5, 6, 7, 8) else (stored_w, stored_h)
    portrait = upright[0] < upright[1]  # -rotate "90<": only portrait images, clockwise
    land_w, land_h = (upright[1], upright[0]) if portrait else upright
    scale = max(width / land_w, height / land_h)  # -resize "WxH^": cover the box
    size = (max(width, round(land_w * scale)), max(height, round(land_h * scale)))
    left, top = (size[0] - width) // 2, (size[1] - height) // 2  # -gravity center -crop

    reduction = 1.0
    if image.format == "JPEG" and image.tile:  # opened, not yet decoded
        # The scaled size in the stored frame: its axes are swapped when exactly one of the EXIF turn and the
        # portrait rule swaps them.
        swapped = (orientation in (5, 6, 7, 8)) != portrait
        drafted = image.draft(image.mode, (size[1], size[0]) if swapped else size)
        if drafted is not None:
            reduction = stored_w / drafted[1][2]  # the DCT scale: 1, 2, 4 or 8
    image = to_rgb(ImageOps.exif_transpose(image))
    if portrait:
        image = image.transpose(Image.Transpose.ROTATE_270)
    # The crop box in the decoded picture's pixels: output pixel x covers upright pixels x * land_w / size[0].
    step_x, step_y = land_w / size[0] / reduction, land_h / size[1] / reduction
    box = (left * step_x, top * step_y, (left + width) * step_x, (top + height) * step_y)
    image = image.resize((width, height), Image.LANCZOS, box=box, reducing_gap=REDUCING_GAP)
    return clean_jpeg(image, quality, density)  # the pixels only: nothing of the raw file's metadata


def recipe_key(params: dict) -> str:
    return stable_hash({"params": {k: params[k] for k in RECIPE_PARAMS}, "code": code_version(__name__)})[:12]


# A NamedTuple rather than a dataclass: it hashes as JSON like the plain tuple it replaced (`executors.task_key`),
# so a cluster's task keys stay the same.
class Task(NamedTuple):
    """One kept image for a worker (`_standardise_one`)."""

    candidate_id: str
    objects: str  # the objects' store: a local folder or an s3:// URL
    object_name: str  # the candidate's object in it
    images: str  # the standardised images' store
    file: str  # the file to make there: `<candidate_id>-<recipe>.jpg`
    recipe: dict  # the RECIPE_PARAMS
    store_options: dict  # how to open an S3 store (params `compute`)
    expected_sha: str  # what SHA256SUMS recorded for `file`; "" where nothing was
    object_sha: str  # the object's sha256 in objects/index.csv (local objects only); "" where unknown
    previous: str  # the candidate's file of another recipe (local stores only); "" where none


class Made(NamedTuple):
    """A worker's answer: the file's sha256 and size, or the error (the other fields empty)."""

    candidate_id: str
    sha256: str
    size: int
    error: str


def _standardise_one(task: Task) -> Made:
    """Worker: write one image's standardised file unless present.
    The objects and the images may be local folders or S3 stores (`stores`); a file already there is kept only
    while it hashes to `task.expected_sha` where one is given; the write is atomic, so a task run twice (a worker
    lost mid-run) writes the same bytes. `task.previous`: where the new bytes are the same as that file's, the new
    name is linked to its inode instead of written (a code change that leaves the output alone keeps every file's
    inode, which DVC's cache shares)."""
    candidate_id, name, recipe = task.candidate_id, task.file, task.recipe
    try:
        source = open_store(task.objects, task.store_options)
        target = open_store(task.images, task.store_options)
        if isinstance(target, LocalStore) and isinstance(source, LocalStore):  # the local path, as before
            path = target.path(name)
            if not path.exists():
                raw = source.path(task.object_name).read_bytes()
                if task.object_sha and sha256_bytes(raw) != task.object_sha:  # the store is not a DVC output
                    return Made(candidate_id, "", 0, damaged_object(source.path(task.object_name), "the object"))
                with Image.open(io.BytesIO(raw)) as image:
                    data = standardise_image(image, *(recipe[k] for k in RECIPE_PARAMS))
                if not (task.previous and _link_if_same(target.path(task.previous), path, data)):
                    atomic_write_bytes(path, data)
                return Made(candidate_id, sha256_bytes(data), len(data), "")
            return Made(candidate_id, sha256_file(path), path.stat().st_size, "")
        if target.exists(name):
            data = target.read_bytes(name)
            if not task.expected_sha or sha256_bytes(data) == task.expected_sha:
                return Made(candidate_id, sha256_bytes(data), len(data), "")
        with source.open(task.object_name) as handle, Image.open(handle) as image:
            data = standardise_image(image, *(recipe[k] for k in RECIPE_PARAMS))
        target.write_bytes(name, data)
        return Made(candidate_id, sha256_bytes(data), len(data), "")
    except Exception as error:  # reported by the parent with the candidate named, never as a worker traceback
        return Made(candidate_id, "", 0, f"{type(error).__name__}: {error}")


def _link_if_same(previous: Path, path: Path, data: bytes) -> bool:
    """Give `path` the inode of `previous` (`linking.place`: a hard link, else a copy) when that file holds exactly
    `data`; False where it does not."""
    try:
        if previous.stat().st_size != len(data) or previous.read_bytes() != data:
            return False
        place(previous, path)
        return True
    except OSError:
        return False


def standardise(candidates_csv: Path, decisions_csv: Path, objects_dir: Path, params: dict, images_dir: Path,
                index_csv: Path, compute: Compute | None = None) -> dict:
    """Returns counts: kept, processed (new this run), reused, duplicates (identical standardised bytes).
    `compute` (params `compute`): the executor, and the objects' and images' stores where not the local folders
    (`images_dir` then keeps SHA256SUMS only)."""
    compute = compute or LOCAL
    objects = compute.store("objects", objects_dir)
    store = open_store(compute.store("standardised", images_dir), compute.options)
    candidates = {row["candidate_id"]: row for row in read_csv(candidates_csv, ("candidate_id", "object"))}
    kept = sorted(d["candidate_id"] for d in read_csv(decisions_csv, ("candidate_id", "keep")) if d["keep"] == "true")
    recipe = recipe_key(params)
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    names = {candidate_id: f"{candidate_id}-{recipe}.jpg" for candidate_id in kept}
    # A file is reused only while it still hashes to what was recorded when it was written (SHA256SUMS, kept
    # inside the folder); anything else is made again. Locally a file whose stat has not changed since this
    # machine last checked it is not read again (CHECKED_JSON), so a re-run after a small change stats the store.
    local = isinstance(store, LocalStore)
    sums = HashStore(images_dir, Path(index_csv).parent / CHECKED_JSON if local else None)
    present = store.names() - {HashStore.NAME}
    intact: dict[str, Made] = {}
    if local:  # remote objects are checked by the worker that reads them
        for candidate_id in kept:
            name = names[candidate_id]
            if name not in present:
                continue
            if sums.intact(name):
                intact[candidate_id] = Made(candidate_id, sums.sums[name], sums.size(name), "")
            else:
                (images_dir / name).unlink()
                present.discard(name)
    processed = sum(1 for name in names.values() if name not in present)
    # each candidate's file of another recipe, if any: new bytes identical to it keep its inode (_link_if_same)
    earlier = {name.split("-", 1)[0]: name for name in present if "-" in name} if local else {}
    object_shas = object_sums(objects_dir) if not is_remote(objects) else {}
    tasks = [Task(candidate_id=c, objects=objects, object_name=candidates[c]["object"], images=store.location,
                  file=names[c], recipe={k: params[k] for k in RECIPE_PARAMS}, store_options=compute.options,
                  expected_sha=sums.sums.get(names[c], ""),
                  object_sha=object_shas.get(candidates[c]["object"], ""),
                  previous=earlier.get(c, "") if earlier.get(c) != names[c] else "")
             for c in kept if c not in intact]
    made = {result.candidate_id: result for result in run_map(_standardise_one, tasks, compute, "standardise",
                                                               params.get("workers"))}
    results = [intact.get(c) or made[c] for c in kept]
    failed = [result for result in results if result.error]
    if failed:
        candidate_id, error = failed[0].candidate_id, failed[0].error
        raise PipelineError(f"standardise: candidate {candidate_id} ({candidates[candidate_id]['object']}): "
                            f"{error}" + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))
    wanted = set(names.values())
    for result in made.values():  # the workers' hashes of the files they wrote
        sums.record(names[result.candidate_id], result.sha256)
    sums.save(wanted)
    for name in present - wanted:
        store.remove(name)
    rows = _index_rows(results, names)
    write_csv(index_csv, rows, INDEX_COLUMNS)
    duplicates = sum(1 for row in rows if row["duplicate_of"])
    return {"kept": len(kept), "processed": processed, "reused": len(kept) - processed, "duplicates": duplicates}


def _index_rows(results: list[Made], names: dict[str, str]) -> list[dict]:
    """The index: one row a kept image, in `results`' order; each image whose bytes an earlier one has too is
    marked its duplicate."""
    rows, first_by_hash = [], {}
    for result in results:
        duplicate_of = first_by_hash.setdefault(result.sha256, result.candidate_id)
        duplicate = duplicate_of != result.candidate_id
        rows.append({"candidate_id": result.candidate_id, "file": names[result.candidate_id],
                     "sha256": result.sha256, "bytes": result.size, "duplicate_of": duplicate_of if duplicate else "",
                     "duplicate_reason": f"standardised image identical to candidate {duplicate_of[:12]}"
                     if duplicate else ""})
    return rows
