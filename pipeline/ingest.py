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
from typing import NamedTuple

from PIL import Image, ImageOps, UnidentifiedImageError

from . import sources
from .codedeps import code_version
from .common import PipelineError, atomic_write_bytes, progress, read_csv, sha256_bytes, stable_hash, write_csv
from .imaging import to_rgb
from .executors import LOCAL, Compute, run_map
from .parallel import resolve_workers
from .integrity import OBJECT_INDEX, CheckedFiles, matches
from .sources import ITEM_FIELDS, RawItem, Reject, Unit
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
    run = IngestRun(Path(out_dir), limits, compute or LOCAL)
    names = [config.get("name") for config in source_configs]
    try:
        for position, config in enumerate(source_configs):
            run.read_source(ConfiguredSource.of(position, config, names, Path(base_dir)))
    finally:
        run.stop_pool()
    run.exclude_conflicts()
    return run.write()


@dataclass(frozen=True)
class ConfiguredSource:
    """One entry of params `ingest.sources`, checked, with its reader and what its cache keys are made of."""

    name: str
    kind: str
    root: Path  # the source folder, resolved
    read: sources.Reader
    options: sources.SourceOptions
    reader_version: str  # code_version of the reader's module: part of every read-cache key of the source
    declared: dict  # fields set on each of its candidates: image_type_hint, dataset, role (never cached)
    key: str  # the whole source's read-cache key: changes with any file under its folder

    @classmethod
    def of(cls, position: int, config: dict, names: list, base_dir: Path) -> "ConfiguredSource":
        """Check the entry (a bad one raises PipelineError naming it) and the folder it names."""
        name, kind, path = config.get("name"), config.get("kind"), config.get("path")
        where = f"params.yaml: ingest.sources[{position}]"
        if not name or not kind or not path:
            raise PipelineError(f"{where} needs name, kind and path")
        if names.count(name) > 1:
            raise PipelineError(f"params.yaml: ingest.sources: source name '{name}' is used twice")
        try:
            read = sources.reader_for(kind)
        except KeyError:
            raise PipelineError(f"{where} ({name}): unknown kind '{kind}'; "
                                f"known: {', '.join(sources.known_kinds())}") from None
        options = sources.options_for(kind).from_options(name, config.get("options"))
        role = config.get("role", "release")
        if role not in SOURCE_ROLES:
            raise PipelineError(f"{where} ({name}): role {role!r} is not one of {', '.join(SOURCE_ROLES)}")
        # The source's image_type overrides the reader's hint; its dataset fills in where no image records one.
        declared = {key: value for key, value in (("image_type_hint", options.image_type),
                                                  ("dataset", config.get("dataset")),
                                                  ("role", "training" if role == "training" else None))
                    if value}
        root = (base_dir / path).resolve()
        if not root.is_dir():
            raise PipelineError(f"source {name}: folder {path} " + ("is not a folder" if root.exists() else
                                                                     "does not exist"))
        reader_version = code_version(read.__module__)
        unreadable: list = []
        stamp = sources.tree_stamp(root, unreadable)
        if unreadable:  # its files could be neither read nor listed in the ledger: refused whole, before any work
            first, reason = unreadable[0]
            more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
            raise PipelineError(f"source {name}: {PurePosixPath(path) / first} cannot be read ({reason}){more}; "
                                f"make it readable (chmod -R u+rX) or move it out of the source")
        key = stable_hash(["source", kind, reader_version, str(root), config.get("options"), stamp])
        return cls(name, kind, root, read, options, reader_version, declared, key)

    def unit_key(self, unit: Unit) -> str:
        return stable_hash([self.kind, self.reader_version, unit.stamp])


class Prepared(NamedTuple):
    """One element of a reader, ready to be taken in order."""

    element: RawItem | Reject | Unit
    link_reason: str | None  # why it is rejected for a link out of its source; None when it stays inside
    read_ahead: list | None  # a unit's items and rejects where it was read ahead of vetting; None: not read yet


class IngestRun:
    """The state of one `ingest()`: the tables being built, the caches it reuses and refreshes, and the pool (or
    cluster) that vets new images ahead of taking them. Sources are read one after another (`read_source`), then
    conflicting images are excluded (`exclude_conflicts`) and everything is written (`write`)."""

    def __init__(self, out_dir: Path, limits: Limits, compute: Compute):
        self.out_dir, self.limits, self.compute = out_dir, limits, compute
        self.objects_dir = out_dir / "objects"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.checked_with = f"{code_version(__name__)}-{stable_hash(limits.__dict__)[:12]}"
        self.store = open_store(compute.store("objects", self.objects_dir), compute.options)
        self.verified = (CheckedFiles(self.objects_dir, out_dir / CHECKED_OBJECTS)
                         if isinstance(self.store, LocalStore) else None)
        # candidate_id -> its row of objects/index.csv, for every intact object (grows as objects are written)
        self.objects = _load_object_index(self.objects_dir, self.checked_with, self.store, self.verified)
        self.read_cache = ReadCache(out_dir / READ_CACHE, self.checked_with)

        self.candidates: dict[str, dict] = {}
        self.rejects: list[dict] = []
        self.provenance: list[dict] = []
        self.rows_of: dict[str, list[dict]] = {}  # candidate_id -> every row that gave those bytes (conflicts)
        self.duplicates_of: dict[str, list[dict]] = {}  # candidate_id -> the ledger rows of its duplicates
        self.decoded = self.units_read = self.units_cached = 0

        # Vetting decodes every new image, the bulk of ingest's work: on more than one core a pool of processes
        # (kept for the whole run) vets each batch of images ahead while this process reads, hashes and files
        # them in order.
        self.cluster = compute.executor != "local"
        self.pool_size = 1 if self.cluster else resolve_workers(compute.workers)
        self.vetting = self.cluster or self.pool_size > 1
        self.batch_size = AHEAD if self.cluster else LOCAL_AHEAD if self.vetting else 1
        self.pool: ProcessPoolExecutor | None = None  # started at the first new image: a no-op re-run needs none
        self.vetted: dict[str, CheckedImage | str] = {}  # candidate_id -> outcome, for the batch being taken

    # --- one source ---------------------------------------------------------------------------------------------

    def read_source(self, source: ConfiguredSource) -> None:
        """Every element of the source, in its reader's order: replayed from the read cache where the whole
        folder is unchanged, else read (each raw file it can, still taken from the cache)."""
        memo = self.read_cache.old_sources.get(source.key)
        if isinstance(memo, list) and all(self._replayable(self.read_cache.old.get(step["unit"])) if "unit" in step
                                          else self._replayable([step]) for step in memo):
            for step in memo:
                if "unit" in step:
                    self.read_cache.new[step["unit"]] = self.read_cache.old[step["unit"]]
                    self.units_cached += 1
                self._replay(source, self.read_cache.old[step["unit"]] if "unit" in step else [step])
        else:
            memo = self._read(source)
        self.read_cache.new_sources[source.key] = memo

    def _read(self, source: ConfiguredSource) -> list[dict]:
        """Run the source's reader; returns the source's memo: in the reader's order, each element's read-cache
        entry or {"unit": unit key}.

        Without a pool each element is taken as it comes. With one (or a cluster), up to LOCAL_AHEAD (AHEAD)
        elements are prepared first: a unit the read cache cannot replay is read as it arrives, while the reader
        still holds its archive or deck open; then the new images among them are vetted in one map, and all are
        taken in order."""
        memo: list[dict] = []
        batch: list[Prepared] = []
        for element in progress(source.read(source.root, source.options), f"ingest {source.name}"):
            batch.append(self._prepare(source, element))
            if len(batch) >= self.batch_size:
                self._take_batch(source, batch, memo)
                batch = []
        self._take_batch(source, batch, memo)
        return memo

    def _prepare(self, source: ConfiguredSource, element) -> Prepared:
        link_reason = None if isinstance(element, Reject) else sources.link_outside(source.root, element.origin)
        read_now = (self.vetting and not link_reason and isinstance(element, Unit)
                    and not self._replayable(self.read_cache.old.get(source.unit_key(element))))
        return Prepared(element, link_reason, list(element.read()) if read_now else None)

    def _take_batch(self, source: ConfiguredSource, batch: list[Prepared], memo: list[dict]) -> None:
        if self.vetting:
            self._vet([item for prepared in batch if not prepared.link_reason
                       for item in (prepared.read_ahead if prepared.read_ahead is not None else [prepared.element])
                       if not isinstance(item, (Reject, Unit))])
        for prepared in batch:
            memo.append(self._take_element(source, prepared))
        self.vetted.clear()

    def _take_element(self, source: ConfiguredSource, prepared: Prepared) -> dict:
        """One element of the reader; returns its step of the source's memo."""
        element = prepared.element
        if prepared.link_reason:
            return self._reject(source.name, element.origin, getattr(element, "member", ""), prepared.link_reason)
        if not isinstance(element, Unit):
            return self._take_read(source, element)
        key = source.unit_key(element)
        entries = self.read_cache.old.get(key)
        if prepared.read_ahead is None and self._replayable(entries):
            self.units_cached += 1
            self._replay(source, entries)
        else:
            self.units_read += 1
            read = element.read() if prepared.read_ahead is None else prepared.read_ahead
            entries = [self._take_read(source, item) for item in read]
        self.read_cache.new[key] = entries
        return {"unit": key}

    def _replayable(self, entries: list | None) -> bool:
        # Every image the unit gave must still be in the object store; else read the unit again.
        return entries is not None and all("reason" in e or e["sha256"] in self.objects for e in entries)

    def _replay(self, source: ConfiguredSource, entries: list[dict]) -> None:
        for entry in entries:
            if "reason" in entry:
                self._reject(source.name, entry["origin"], entry["member"], entry["reason"])
            else:
                self._take_image(source, entry["sha256"], entry["origin"], entry["member"], entry["fields"], None)

    # --- one image ----------------------------------------------------------------------------------------------

    def _take_read(self, source: ConfiguredSource, element: RawItem | Reject) -> dict:
        """An item or reject the reader gave; returns its read-cache entry."""
        if isinstance(element, Reject):
            return self._reject(source.name, element.origin, element.member, element.reason)
        # Fields as strings, so a field read now and one replayed from the JSON cache are written identically.
        fields = {key: "" if value is None else str(value) for key, value in element.fields.items()}
        return self._take_image(source, sha256_bytes(element.data), element.origin, element.member, fields,
                                element.data)

    def _take_image(self, source: ConfiguredSource, candidate_id: str, origin: str, member: str, fields: dict,
                    data: bytes | None) -> dict:
        """One image (its bytes, or None where the caches know it) -> a candidate, a duplicate or a reject;
        returns its read-cache entry."""
        entry = {"sha256": candidate_id, "origin": origin, "member": member, "fields": fields}
        place = {"candidate_id": candidate_id, "source": source.name, "origin": origin, "member": member}
        if candidate_id in self.candidates:
            self.rows_of[candidate_id].append({**place, "fields": fields})
            first = self.candidates[candidate_id]
            self.provenance.append(place)
            self._reject(source.name, origin, member, f"duplicate of candidate {candidate_id[:12]} "
                         f"(kept from {first['source']}:{first['origin']} {first['member']})".strip())
            self.duplicates_of.setdefault(candidate_id, []).append(self.rejects[-1])
            return entry
        stored = self.objects.get(candidate_id) or self._store_object(candidate_id, data)
        if isinstance(stored, str):
            return self._reject(source.name, origin, member, stored)
        self.provenance.append(place)
        self.rows_of[candidate_id] = [{**place, "fields": fields}]
        fields = {**fields, **{key: value for key, value in source.declared.items()
                               if key == "image_type_hint" or not fields.get(key)}}
        self.candidates[candidate_id] = {
            **place, "kind": source.kind, "object": stored["object"], "width": stored["width"],
            "height": stored["height"], "format": stored["format"],
            **{name: fields.get(name, "") for name in ITEM_FIELDS}, "extra": _extra(fields)}
        return entry

    def _store_object(self, candidate_id: str, data: bytes | None) -> dict | str:
        """Vet a new image and write its object; its row of the object index, or the reason it is rejected."""
        outcome = self.vetted.get(candidate_id)  # vetted ahead on the pool or the cluster
        if isinstance(outcome, str):
            return outcome
        try:
            checked = outcome or check_image(data, self.limits)
        except BadImage as error:
            return str(error)
        self.decoded += 1
        name = candidate_id + checked.extension
        self.store.write_bytes(name, checked.stored)
        row = {"candidate_id": candidate_id, "object": name, "sha256": sha256_bytes(checked.stored),
               "width": checked.width, "height": checked.height, "format": checked.format,
               "checked_with": self.checked_with}
        self.objects[candidate_id] = row
        if self.verified is not None:
            self.verified.record(name, row["sha256"])
        return row

    def _reject(self, source_name: str, origin: str, member: str, reason: str) -> dict:
        """A row of the rejects ledger; returns its read-cache entry."""
        self.rejects.append({"source": source_name, "origin": origin, "member": member, "reason": reason})
        return {"origin": origin, "member": member, "reason": reason}

    def _vet(self, items: list[RawItem]) -> None:
        """The images of `items` not known yet (not in the object store, not a candidate already), vetted on the
        pool or the cluster in one map; their outcomes in `vetted` for `_store_object`."""
        todo = {}
        for item in items:
            candidate_id = sha256_bytes(item.data)
            if candidate_id not in self.objects and candidate_id not in self.candidates:
                todo.setdefault(candidate_id, item.data)
        tasks = [(data, self.limits) for data in todo.values()]
        if not tasks:
            return
        if self.cluster:
            outcomes = run_map(_vet, tasks, self.compute, "vet")
        else:
            if self.pool is None:
                self.pool = ProcessPoolExecutor(self.pool_size)
            outcomes = self.pool.map(_vet, tasks, chunksize=max(1, len(tasks) // (4 * self.pool_size)))
        for (candidate_id, data), outcome in zip(todo.items(), outcomes):
            self.vetted[candidate_id] = (replace(outcome, stored=data)
                                         if isinstance(outcome, CheckedImage) and outcome.stored is None else outcome)

    def stop_pool(self) -> None:
        if self.pool:
            self.pool.shutdown(cancel_futures=True)

    # --- the whole run ------------------------------------------------------------------------------------------

    def exclude_conflicts(self) -> None:
        """Every row of an image whose rows disagree on its labels goes to the ledger as the conflict, in place
        of its candidate, its provenance and its duplicates' rows."""
        conflicts = {cid: reason for cid, rows in self.rows_of.items() if (reason := _label_conflict(rows))}
        if not conflicts:
            return
        duplicate_rows = {id(row) for cid in conflicts for row in self.duplicates_of.get(cid, ())}
        self.rejects = [row for row in self.rejects if id(row) not in duplicate_rows]
        self.provenance = [row for row in self.provenance if row["candidate_id"] not in conflicts]
        for candidate_id, reason in sorted(conflicts.items()):
            del self.candidates[candidate_id]
            for row in self.rows_of[candidate_id]:
                self._reject(row["source"], row["origin"], row["member"], reason)

    def write(self) -> IngestResult:
        """The three tables, the object index and the caches; objects no candidate uses are removed."""
        # The object store holds exactly this run's candidates, so the stage output is a function of its inputs.
        keep = {row["object"] for row in self.candidates.values()}
        for name in self.store.names():
            if name != OBJECT_INDEX and name not in keep:
                self.store.remove(name)
        write_csv(self.objects_dir / OBJECT_INDEX, sorted((self.objects[c] for c in self.candidates),
                                                          key=lambda row: row["candidate_id"]), OBJECT_INDEX_COLUMNS)
        ordered = sorted(self.candidates.values(), key=lambda row: (row["source"], row["origin"], row["member"]))
        write_csv(self.out_dir / "candidates.csv", ordered, CANDIDATE_COLUMNS)
        write_csv(self.out_dir / "rejects.csv", self.rejects, REJECT_COLUMNS)
        write_csv(self.out_dir / "provenance.csv", self.provenance, PROVENANCE_COLUMNS)
        self.read_cache.save()
        if self.verified is not None:
            self.verified.new = {name: stamp for name, stamp in self.verified.new.items() if name in keep}
            self.verified.save()
        return IngestResult(ordered, self.rejects, self.provenance, decoded=self.decoded,
                            units_read=self.units_read, units_cached=self.units_cached)
