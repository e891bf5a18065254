"""Stage `ingest`: every configured raw source -> one candidates table, images stored under their content hash.

Every raw item ends up either as a candidate (one row per distinct image, named by the sha256 of its raw bytes)
or as a row of the rejects ledger with the reason. Image checks (empty, not an image, truncated, over the pixel
limit) are the same for every kind of source. Images that are not plain 8-bit RGB JPEG/PNG, or that carry an
EXIF rotation, are stored as a normalised lossless PNG so later stages see upright RGB pixels.
Work is cached twice: images by content hash in the (persistent) object store, so an image is decoded once; and
raw files by their stamp (path, size, mtime, inode, joined fields) in `read_cache.json`, so a re-run after one
new deck or folder reads only the new files (see `sources.Unit`). Both caches are keyed by the code ingest runs
(its import closure, readers and `imaging.py` included: `codedeps.code_version`) and the image limits.
The object store is trusted by content, not by name: an object is reused only while its bytes hash to its
candidate ID (raw bytes) or to the sha256 `objects/index.csv` recorded for it (normalised PNG); any other is
rebuilt from its source, and the read cache replays a unit only while every object it gave is intact.
Bounded work per image: after the header is read and before any pixel is decoded, an image over
`max_pixels`, with a side under `min_side` or an aspect ratio beyond `max_aspect` is rejected with its reason;
a JPEG whose decoding would need more than `max_decode_mib` is decoded reduced (draft mode: validated, and
normalised if it needs it, at 1/2, 1/4 or 1/8 scale), any other such image is rejected, so no image takes more
than that budget (tests/test_integrity.py measures the peak).
A raw file that is, or lies behind, a link resolving outside its source folder is rejected
(`sources.link_outside`). A source holding a folder that cannot be listed (or an entry whose stat fails) is
refused before any work, in one line naming it: its files could be neither read nor accounted for in the ledger.
The same image (same bytes) with different labels (diagnosis, dx, dx_type, or lesion within one source) is a
conflict: every one of its rows goes to the ledger as `conflicting labels: ...` and none is a candidate;
identical labels are plain duplicates (the first kept).
Each source's options are its kind's typed options (`sources.options_for(kind).from_options`). A source's
`options.image_type` becomes every one of its candidates' `image_type_hint`, and its `dataset` goes into the
`extra` JSON of every candidate whose reader recorded none (the metadata stage reads it from there). A source
with `role: training` marks its candidates `"role": "training"` there: the filter's training material, which the
filter stage never keeps (so it is in `excluded.csv`, not in a release).
On a cluster (params `compute.executor: dask`, `executors.run_map`) the raw files are still read here, `AHEAD`
elements at a time, and their new images are vetted by the workers in one map (`check_image`, a pure function of
the bytes and the limits), then taken in the readers' order as above; the objects go to `compute.objects_store`
(an S3 store) where one is set, and `objects/index.csv` stays here.
"""
from __future__ import annotations

import csv
import io
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps, UnidentifiedImageError

from . import sources
from .codedeps import code_version
from .common import PipelineError, atomic_write_bytes, progress, read_csv, sha256_bytes, stable_hash, write_csv
from .imaging import to_rgb
from .executors import LOCAL, Compute, run_map
from .parallel import resolve_workers
from .integrity import OBJECT_INDEX, CheckedFiles, matches
from .sources import ITEM_FIELDS, Reject, Unit
from .stores import LocalStore, open_store

CANDIDATE_COLUMNS = ("candidate_id", "source", "kind", "origin", "member", "object", "width", "height", "format",
                     *ITEM_FIELDS, "extra")
REJECT_COLUMNS = ("source", "origin", "member", "reason")
PROVENANCE_COLUMNS = ("candidate_id", "source", "origin", "member")
OBJECT_INDEX_COLUMNS = ("candidate_id", "object", "sha256", "width", "height", "format", "checked_with")
# release: the source's images are candidates for the release; training: material for the image-type filter only
# (labelled with `ham import-labels` or its `image_type`), never released (`role` in each candidate's extra JSON).
SOURCE_ROLES = ("release", "training")
LABEL_FIELDS = ("diagnosis", "dx", "dx_type", "lesion_key")  # same image, another value: a conflict
MIB = 1 << 20

# Pillow's own bomb guard is replaced by the explicit limit from params, checked before decoding.
Image.MAX_IMAGE_PIXELS = None


@dataclass
class CheckedImage:
    stored: bytes  # what goes into the object store: the raw bytes, or a normalised PNG
    extension: str
    width: int
    height: int
    format: str


class BadImage(Exception):
    pass


@dataclass(frozen=True)
class Limits:
    """The per-image bounds of params `ingest` (checked before any pixel is decoded)."""

    max_pixels: int = 100_000_000
    min_side: int = 1
    max_aspect: float = 0.0  # 0: no limit
    max_decode_mib: int = 0  # 0: no limit

    @classmethod
    def of(cls, params: dict) -> "Limits":
        return cls(**{key: params[key] for key in ("max_pixels", "min_side", "max_aspect", "max_decode_mib")
                      if params.get(key) is not None})


def _bytes_per_pixel(mode: str) -> int:
    """Pillow's storage per pixel: one byte for 1-band 8-bit modes, two for 16-bit, four for the rest."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def decode_cost(mode: str, width: int, height: int, plain: bool, progressive: bool = False) -> int:
    """Upper bound of the bytes one image takes while vetted: the decoded pixels, libjpeg's coefficient buffers
    for a progressive JPEG, and, when it is normalised, the upright RGB copies and the PNG written from them
    (measured in tests/test_integrity.py)."""
    pixels = width * height
    coefficients = pixels * 6 if progressive else 0
    if plain:
        return pixels * 5 + coefficients  # 4 bytes a pixel, and Pillow's decoder state
    alpha = mode in ("RGBA", "LA", "PA", "P")  # compositing on white keeps two more RGBA images
    deep = 6 if mode in ("I", "F") or mode.startswith("I;16") else 0  # to_rgb's array copy and 8-bit result
    return pixels * (_bytes_per_pixel(mode) + 4 * (4 if alpha else 2) + 4 + deep) + coefficients


def check_image(data: bytes, max_pixels: int | Limits) -> CheckedImage:
    """Decode and vet one image; raise BadImage with a reason a person can act on.
    `max_pixels`: the pixel limit alone, or all the `Limits`."""
    limits = max_pixels if isinstance(max_pixels, Limits) else Limits(max_pixels=max_pixels)
    max_pixels = limits.max_pixels
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except Exception as error:  # Pillow raises many types on garbage headers
        raise BadImage(f"not a readable image ({error})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage(f"image is {width}x{height} = {width * height} pixels, over the limit "
                       f"ingest.max_pixels = {max_pixels} (possible decompression bomb)")
    if min(width, height) < limits.min_side:
        raise BadImage(f"image is {width}x{height}, a side under the limit ingest.min_side = {limits.min_side} "
                       f"pixels (too small to standardise)")
    if limits.max_aspect and max(width, height) > limits.max_aspect * min(width, height):
        raise BadImage(f"image is {width}x{height}, aspect ratio {max(width, height) / min(width, height):.1f}:1 "
                       f"over the limit ingest.max_aspect = {limits.max_aspect:g} (a strip, not a lesion picture)")
    fmt = image.format or "unknown"
    # Pillow decodes a whole PNG to look for an eXIf chunk after the pixels: until it is decoded, an RGB PNG
    # without one up front counts as one that needs normalising (the larger cost).
    try:
        orientation = (image.getexif().get(0x0112, 1) if fmt != "PNG" or "exif" in image.info else "unknown")
    except Exception as error:
        raise BadImage(f"corrupt {fmt} image metadata ({error})") from None
    plain = fmt in ("JPEG", "PNG") and image.mode == "RGB" and orientation in (1, None)
    budget = limits.max_decode_mib * MIB
    progressive = bool(image.info.get("progressive") or image.info.get("progression"))

    def cost(scale: int) -> int:
        return decode_cost(image.mode, -(-width // scale), -(-height // scale), plain, progressive)

    if budget and cost(1) > budget:
        scale = next((s for s in (2, 4, 8) if cost(s) <= budget), None) if fmt == "JPEG" else None
        if scale is None:
            need = cost(1) / MIB
            raise BadImage(f"{width}x{height} {image.mode} {fmt} image needs about {need:.0f} MiB to decode, over "
                           f"the limit ingest.max_decode_mib = {limits.max_decode_mib}")
        image.draft(None, (-(-width // scale), -(-height // scale)))  # libjpeg decodes at 1/scale
    try:
        image.load()
    except Exception as error:
        raise BadImage(f"corrupt or truncated {fmt} image ({error})") from None
    if orientation == "unknown":
        orientation = image.getexif().get(0x0112, 1)
        plain = image.mode == "RGB" and orientation in (1, None)
    if plain:
        return CheckedImage(data, ".jpg" if fmt == "JPEG" else ".png", width, height, fmt)
    upright = to_rgb(ImageOps.exif_transpose(image))
    buffer = io.BytesIO()
    upright.save(buffer, format="PNG")
    return CheckedImage(buffer.getvalue(), ".png", upright.width, upright.height, fmt)


AHEAD = 256  # elements read ahead of taking them, on a cluster: one map of their new images
LOCAL_AHEAD = 32  # the same on this machine's process pool: few enough that their bytes stay small in memory


def _vet(task: tuple) -> CheckedImage | str:
    """Pool or cluster task: `check_image` of one image's bytes; the reason (str) where it is rejected. An image
    stored as it came (most are) comes back without its bytes, which the caller holds already."""
    data, limits = task
    try:
        checked = check_image(data, limits)
    except BadImage as error:
        return str(error)
    return replace(checked, stored=None) if checked.stored is data else checked


def _load_object_index(objects_dir: Path, checked_with: str, store=None,
                       checked: CheckedFiles | None = None) -> dict[str, dict]:
    """The intact objects: made with this code and these limits, and whose bytes still hash to what was recorded
    (a changed, truncated or replaced object is left out, so it is made again from its source); with `checked`,
    an object whose stat has not changed since this machine last checked it is not read again. In a remote
    `store` (S3) an object listed there is taken as whole: it was written by one PUT, never in parts."""
    path = objects_dir / OBJECT_INDEX
    if not path.exists():
        return {}
    try:
        rows = read_csv(path, OBJECT_INDEX_COLUMNS)
    except (PipelineError, csv.Error, UnicodeDecodeError):
        return {}  # a damaged cache index is rebuilt, never trusted
    if store is not None and not isinstance(store, LocalStore):
        present = store.names()
        return {row["candidate_id"]: row for row in rows
                if row["checked_with"] == checked_with and row["object"] in present}
    intact = checked.matches if checked is not None else (lambda name, sha: matches(objects_dir / name, sha))
    return {row["candidate_id"]: row for row in rows
            if row["checked_with"] == checked_with and intact(row["object"], row["sha256"])}


def _extra(fields: dict) -> str:
    """What a reader recorded beyond the common fields (crop box, raw scan hash, slide, year...), as sorted JSON."""
    extra = {key: str(value) for key, value in fields.items() if key not in ITEM_FIELDS and value not in ("", None)}
    return json.dumps(extra, sort_keys=True, ensure_ascii=False) if extra else ""


READ_CACHE = "read_cache.json"  # beside the stage's outputs, not one of them: stat stamps are machine-local
CHECKED_OBJECTS = "checked_objects.json"  # the same: which objects this machine read and found intact


@dataclass
class IngestResult:
    candidates: list[dict]
    rejects: list[dict]
    provenance: list[dict]
    decoded: int  # images decoded this run (the rest came from the object store)
    units_read: int = 0  # raw files read this run (decks opened, images read, scans cropped)
    units_cached: int = 0  # raw files whose items came from the read cache, unread


class ReadCache:
    """Unit key -> the outcome of reading that unit: its items (hash, origin, member, fields) and its rejects
    (reader rejects and image-check rejects alike). Only the keys used in a run are written back, so it never
    grows beyond the current sources. A damaged or foreign file is ignored and rebuilt.

    And source key (kind, reader code, folder, options, `sources.tree_stamp` of the folder) -> the whole source's
    outcome: every entry in the reader's order and the unit keys behind them. A source whose folder did not change
    at all is replayed from it without running its reader: no listing, no index tables, no unit stamps."""

    def __init__(self, path: Path, checked_with: str):
        self.path, self.checked_with = path, checked_with
        self.old: dict[str, list] = {}
        self.new: dict[str, list] = {}
        self.old_sources: dict[str, dict] = {}
        self.new_sources: dict[str, dict] = {}
        try:
            stored = json.loads(path.read_text())
            if stored.get("checked_with") == checked_with:
                self.old = stored["units"]
                self.old_sources = stored.get("sources", {})
        except (OSError, ValueError, KeyError, AttributeError):
            pass

    def save(self) -> None:
        atomic_write_bytes(self.path, json.dumps({"checked_with": self.checked_with, "units": self.new,
                                                  "sources": self.new_sources},
                                                 sort_keys=True, ensure_ascii=False).encode())


def _label_conflict(rows: list[dict]) -> str | None:
    """What the rows of one image disagree on (non-empty values only; lesion keys within one source), or None."""
    differences = []
    for field_name in LABEL_FIELDS:
        groups = ([[r for r in rows if r["source"] == s] for s in dict.fromkeys(r["source"] for r in rows)]
                  if field_name == "lesion_key" else [rows])
        for group in groups:
            values = {r["fields"].get(field_name, "").strip().casefold() for r in group} - {""}
            if len(values) > 1:
                differences.append(field_name)
                break
    if not differences:
        return None
    said = "; ".join(f"{r['source']}:{r['origin']} {r['member']}".strip() + " says " +
                     ", ".join(f"{f}={r['fields'].get(f, '')!r}" for f in differences) for r in rows)
    return f"conflicting labels: {said}; every row of this image is excluded"


def ingest(source_configs: list[dict], base_dir: Path, out_dir: Path, max_pixels: int | Limits,
           compute: Compute | None = None) -> IngestResult:
    """Read every source, vet every image, store objects by content hash and write the three tables.
    `max_pixels`: the pixel limit alone, or all the per-image `Limits` (params `ingest`). `compute.objects_store`
    (params `compute`): an s3:// store for the objects; `objects/index.csv` stays in `out_dir` either way."""
    limits = max_pixels if isinstance(max_pixels, Limits) else Limits(max_pixels=max_pixels)
    sources.new_run()
    out_dir = Path(out_dir)
    objects_dir = out_dir / "objects"
    objects_dir.mkdir(parents=True, exist_ok=True)
    checked_with = f"{code_version(__name__)}-{stable_hash(limits.__dict__)[:12]}"
    store = open_store((compute or LOCAL).store("objects", objects_dir), (compute or LOCAL).options)
    verified = CheckedFiles(objects_dir, out_dir / CHECKED_OBJECTS) if isinstance(store, LocalStore) else None
    cache = _load_object_index(objects_dir, checked_with, store, verified)
    reads = ReadCache(out_dir / READ_CACHE, checked_with)

    candidates: dict[str, dict] = {}
    rejects: list[dict] = []
    provenance: list[dict] = []
    counts = {"decoded": 0, "units_read": 0, "units_cached": 0}

    def reject(name: str, origin: str, member: str, reason: str) -> dict:
        rejects.append({"source": name, "origin": origin, "member": member, "reason": reason})
        return {"origin": origin, "member": member, "reason": reason}

    declared: dict[str, dict] = {}  # source name -> fields its params set on every candidate (not cached)
    seen_rows: dict[str, list[dict]] = {}  # candidate_id -> every row that gave those bytes, to find conflicts

    def take(name: str, kind: str, candidate_id: str, origin: str, member: str, fields: dict,
             data: bytes | None) -> dict:
        """One image (bytes given, or known from the caches) -> candidate, duplicate or reject; its cache entry."""
        entry = {"sha256": candidate_id, "origin": origin, "member": member, "fields": fields}
        place = {"candidate_id": candidate_id, "source": name, "origin": origin, "member": member}
        if candidate_id in candidates:
            seen_rows[candidate_id].append({**place, "fields": fields})
            first = candidates[candidate_id]
            provenance.append(place)
            reject(name, origin, member, f"duplicate of candidate {candidate_id[:12]} "
                                         f"(kept from {first['source']}:{first['origin']} {first['member']})".strip())
            rejects[-1]["_duplicate_of"] = candidate_id
            return entry
        info = cache.get(candidate_id)
        if info is None:
            outcome = vetted.get(candidate_id)  # vetted on the cluster ahead: a CheckedImage or the reason
            if isinstance(outcome, str):
                return reject(name, origin, member, outcome)
            try:
                checked = outcome or check_image(data, limits)
            except BadImage as error:
                return reject(name, origin, member, str(error))
            counts["decoded"] += 1
            object_name = candidate_id + checked.extension
            store.write_bytes(object_name, checked.stored)
            info = {"candidate_id": candidate_id, "object": object_name, "sha256": sha256_bytes(checked.stored),
                    "width": checked.width,
                    "height": checked.height, "format": checked.format, "checked_with": checked_with}
            cache[candidate_id] = info
            if verified is not None:
                verified.record(object_name, info["sha256"])
        provenance.append(place)
        seen_rows[candidate_id] = [{**place, "fields": fields}]
        fields = {**fields, **{key: value for key, value in declared[name].items()
                               if key == "image_type_hint" or not fields.get(key)}}
        candidates[candidate_id] = {
            **place, "kind": kind, "object": info["object"], "width": info["width"],
            "height": info["height"], "format": info["format"],
            **{name_: fields.get(name_, "") for name_ in ITEM_FIELDS}, "extra": _extra(fields)}
        return entry

    def handle(name: str, kind: str, element) -> dict:
        if isinstance(element, Reject):
            return reject(name, element.origin, element.member, element.reason)
        # Fields as strings, so a field read now and one replayed from the JSON cache are written identically.
        fields = {key: "" if value is None else str(value) for key, value in element.fields.items()}
        return take(name, kind, sha256_bytes(element.data), element.origin, element.member, fields, element.data)

    compute = compute or LOCAL
    cluster = compute.executor != "local"
    # Vetting decodes every new image, the bulk of ingest's work: on more than one core a pool of processes (kept
    # for the whole run) vets each group of images ahead while this process reads, hashes and files them in order.
    pool_size = 1 if cluster else resolve_workers(compute.workers)
    pool: ProcessPoolExecutor | None = None  # started at the first new image: a re-run with nothing new needs none
    vetting = cluster or pool_size > 1
    vetted: dict[str, CheckedImage | str] = {}

    def vet_ahead(items: list) -> None:
        """The images of `items` not known yet (not in the object store, not a candidate already), vetted on the
        pool or the cluster in one map; their outcomes in `vetted` for `take`."""
        todo = {}
        for item in items:
            candidate_id = sha256_bytes(item.data)
            if candidate_id not in cache and candidate_id not in candidates:
                todo.setdefault(candidate_id, item.data)
        nonlocal pool
        tasks = [(data, limits) for data in todo.values()]
        if not tasks:
            return
        if not cluster and pool is None:
            pool = ProcessPoolExecutor(pool_size)
        outcomes = (pool.map(_vet, tasks, chunksize=max(1, len(tasks) // (4 * pool_size))) if not cluster
                    else run_map(_vet, tasks, compute, "vet"))
        for (candidate_id, data), outcome in zip(todo.items(), outcomes):
            vetted[candidate_id] = (replace(outcome, stored=data)
                                    if isinstance(outcome, CheckedImage) and outcome.stored is None else outcome)

    def replayable(entries: list | None) -> bool:
        # Every image the unit gave must still be in the object store; else read the unit again.
        return entries is not None and all("reason" in e or e["sha256"] in cache for e in entries)

    names = [config.get("name") for config in source_configs]
    def read_source(position: int, config: dict) -> None:
        name, kind, path = config.get("name"), config.get("kind"), config.get("path")
        if not name or not kind or not path:
            raise PipelineError(f"params.yaml: ingest.sources[{position}] needs name, kind and path")
        if names.count(name) > 1:
            raise PipelineError(f"params.yaml: ingest.sources: source name '{name}' is used twice")
        try:
            read = sources.reader_for(kind)
        except KeyError:
            raise PipelineError(f"params.yaml: ingest.sources[{position}] ({name}): unknown kind '{kind}'; "
                                f"known: {', '.join(sources.known_kinds())}") from None
        options = sources.options_for(kind).from_options(name, config.get("options"))
        # Set on each of the source's candidates, not on what the read cache keeps: a change needs no re-read.
        # The source's image_type overrides the reader's hint; its dataset fills in where no image records one.
        role = config.get("role", "release")
        if role not in SOURCE_ROLES:
            raise PipelineError(f"params.yaml: ingest.sources[{position}] ({name}): role {role!r} is not one of "
                                f"{', '.join(SOURCE_ROLES)}")
        declared[name] = {key: value for key, value in (("image_type_hint", options.image_type),
                                                        ("dataset", config.get("dataset")),
                                                        ("role", "training" if role == "training" else None))
                          if value}
        root = (Path(base_dir) / path).resolve()
        if not root.is_dir():
            raise PipelineError(f"source {name}: folder {path} " + ("is not a folder" if root.exists() else
                                                                     "does not exist"))
        reader_version = code_version(read.__module__)
        unreadable: list = []
        stamp = sources.tree_stamp(root, unreadable)
        if unreadable:  # its files could be neither read nor listed in the ledger: refused whole, before any work
            where, reason = unreadable[0]
            more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
            raise PipelineError(f"source {name}: {PurePosixPath(path) / where} cannot be read ({reason}){more}; "
                                f"make it readable (chmod -R u+rX) or move it out of the source")
        source_key = stable_hash(["source", kind, reader_version, str(root), config.get("options"), stamp])
        memo = reads.old_sources.get(source_key)
        if isinstance(memo, list) and all(replayable(reads.old.get(step["unit"])) if "unit" in step
                                          else replayable([step]) for step in memo):
            for step in memo:
                if "unit" in step:
                    reads.new[step["unit"]] = reads.old[step["unit"]]
                    counts["units_cached"] += 1
                for entry in reads.old[step["unit"]] if "unit" in step else [step]:
                    if "reason" in entry:
                        reject(name, entry["origin"], entry["member"], entry["reason"])
                    else:
                        take(name, kind, entry["sha256"], entry["origin"], entry["member"], entry["fields"], None)
            reads.new_sources[source_key] = memo
            return
        outcome: list[dict] = []  # the source's memo: in the reader's order, each entry or {"unit": unit key}

        def apply(element, outside: str | None, results: list | None) -> None:
            """One element of the reader, in order; `results`: a unit's items when read ahead (None: not read)."""
            if outside:
                outcome.append(reject(name, element.origin, getattr(element, "member", ""), outside))
                return
            if not isinstance(element, Unit):
                outcome.append(handle(name, kind, element))
                return
            key = stable_hash([kind, reader_version, element.stamp])
            entries = reads.old.get(key)
            if results is None and replayable(entries):
                counts["units_cached"] += 1
                for entry in entries:
                    if "reason" in entry:
                        reject(name, entry["origin"], entry["member"], entry["reason"])
                    else:
                        take(name, kind, entry["sha256"], entry["origin"], entry["member"], entry["fields"], None)
            else:
                counts["units_read"] += 1
                entries = [handle(name, kind, result) for result in (element.read() if results is None else results)]
            reads.new[key] = entries
            outcome.append({"unit": key})

        # Locally each element is taken as it comes. On a cluster, AHEAD elements are read first (the units the
        # read cache cannot replay), their new images vetted in one map on the workers, then taken in order.
        # Without a pool each element is taken as it comes. With one (or a cluster), up to LOCAL_AHEAD (AHEAD)
        # elements are prepared first: a unit the read cache cannot replay is read as it arrives, while the reader
        # still holds its archive or deck open; then the new images among them are vetted in one map, and all are
        # taken in order.
        prepared: list = []

        def prepare(element) -> None:
            outside = None if isinstance(element, Reject) else sources.link_outside(root, element.origin)
            read_now = (vetting and not outside and isinstance(element, Unit)
                        and not replayable(reads.old.get(stable_hash([kind, reader_version, element.stamp]))))
            prepared.append((element, outside, list(element.read()) if read_now else None))

        def drain() -> None:
            if vetting:
                vet_ahead([item for element, outside, results in prepared if not outside
                           for item in (results if results is not None else [element])
                           if not isinstance(item, (Reject, Unit))])
            for element, outside, results in prepared:
                apply(element, outside, results)
            prepared.clear()
            vetted.clear()

        for element in progress(read(root, options), f"ingest {name}"):
            prepare(element)
            if len(prepared) >= (AHEAD if cluster else LOCAL_AHEAD if vetting else 1):
                drain()
        drain()
        reads.new_sources[source_key] = outcome
        drain()

    try:
        for position, config in enumerate(source_configs):
            read_source(position, config)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)

    conflicts = {cid: reason for cid, rows in seen_rows.items() if (reason := _label_conflict(rows))}
    if conflicts:
        rejects[:] = [r for r in rejects if r.get("_duplicate_of") not in conflicts]
        provenance[:] = [p for p in provenance if p["candidate_id"] not in conflicts]
        for candidate_id, reason in sorted(conflicts.items()):
            del candidates[candidate_id]
            for row in seen_rows[candidate_id]:
                reject(row["source"], row["origin"], row["member"], reason)
    for row in rejects:
        row.pop("_duplicate_of", None)

    # The object store holds exactly this run's candidates, so the stage output is a function of its inputs.
    keep = {row["object"] for row in candidates.values()}
    for name in store.names():
        if name != OBJECT_INDEX and name not in keep:
            store.remove(name)
    write_csv(objects_dir / OBJECT_INDEX, sorted((cache[c] for c in candidates), key=lambda r: r["candidate_id"]),
              OBJECT_INDEX_COLUMNS)
    ordered = sorted(candidates.values(), key=lambda row: (row["source"], row["origin"], row["member"]))
    write_csv(out_dir / "candidates.csv", ordered, CANDIDATE_COLUMNS)
    write_csv(out_dir / "rejects.csv", rejects, REJECT_COLUMNS)
    write_csv(out_dir / "provenance.csv", provenance, PROVENANCE_COLUMNS)
    reads.save()
    if verified is not None:
        verified.new = {name: stamp for name, stamp in verified.new.items() if name in keep}
        verified.save()
    return IngestResult(ordered, rejects, provenance, **counts)
