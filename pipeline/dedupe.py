"""Near-duplicates across all sources, found on the standardised images (part of stage `standardise`).

Hashes: every standardised image gets the 256-bit phash of `imagehash` (hash_size 16: 64x64 grey, 2-D DCT, the
lowest 16x16 coefficients against their median) of 29 views: the whole image; windows at zooms 1.03 to 1.075
(1.5 % steps) at the centre and anchored at each edge; centred windows at zooms 1.09 to 1.195. A copy cropped on
every side is a centred window of the original, one cropped on one side a window anchored at the opposite edge,
so one view lines up with the copy's whole image. `image_hashes` computes all views of an image in one pass
(windows resampled from a quarter-scale JPEG decode, one DCT product); the bits equal imagehash's per view.

Distance: the smallest Hamming distance between one image's whole view and any view of the other. Images at most
`dedupe.max_distance` apart, and images with identical standardised bytes, are joined into groups (transitively);
pairs further apart but within `dedupe.review_distance` go to `duplicate_review.csv` for a person. No view below
zoom 1.03 is hashed: at 1.015 consecutive shots of one lesion come as close as a 2 % crop. Pairs are found by
multi-index hashing over 16-bit chunks (`near_pairs`), exactly the pairs comparing every pair would give.

Outcome: each group keeps the image with the most source pixels (the least reduced copy), then the smallest
candidate ID; the others get `duplicate_of` and `duplicate_reason` in the standardised index, so the metadata
stage excludes them with that reason and a group's members can never land in different splits. `duplicates.csv`
lists every member of every group with its provenance and distance to the kept image.

Cache: hashes by the standardised image's sha256, with the pairs found and the images searched, in
`phash_cache.json` beside the index; a re-run hashes and searches only new images (a change of this code re-hashes
every image once). Recall and timings: `python -m benchmarks.bench_dedupe` (figures in bench/results.json).
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from .common import PipelineError, atomic_write_bytes, read_csv, stable_hash, write_csv
from .executors import Compute, run_map
from .stores import is_remote, open_url

# The views hashed of every image (zoom, x, y): the whole image, windows 1/zoom of its size. A copy cropped by c on
# one side is, after standardise's cover resize and centre crop, the window of zoom 1/(1-c) anchored at the other
# side: so the small zooms sit at the centre and at each edge, the larger ones (crops on every side) at the centre.
# Steps of 1.5 % of zoom: phash is sensitive to about 1 % of scale. No zoom below 1.03: at 1.015 consecutive shots
# of one lesion come within 6..10 bits of each other, as close as a 2 % crop (see the module docstring).
EDGE_ZOOMS = (1.03, 1.045, 1.06, 1.075)
CENTRE_ZOOMS = (1.09, 1.105, 1.12, 1.135, 1.15, 1.165, 1.18, 1.195)
ANCHORS = ((0.5, 0.5), (0.0, 0.5), (1.0, 0.5), (0.5, 0.0), (0.5, 1.0))  # share of the margin left of / above it
HASH_SIZE = 16
# The DCT-II (scipy's unnormalised type 2, as imagehash uses) of a 4 x HASH_SIZE side, lowest HASH_SIZE rows only:
# the 2-D transform of a view is DCT @ view @ DCT.T. On the 490 real images' 29 views it gave the same hash bits as
# scipy.fft.dct (coefficients within 1e-9), 6x faster, and spares every `ham standardise` scipy's 0.3 s import.
_SIDE = 4 * HASH_SIZE
DCT = 2 * np.cos(np.pi * np.arange(HASH_SIZE)[:, None] * (2 * np.arange(_SIDE)[None, :] + 1) / (2 * _SIDE))
DUPLICATES_COLUMNS = ("group", "candidate_id", "source", "origin", "member", "distance", "kept", "reason")
DEFAULTS = {"max_distance": 10, "review_distance": 30}  # params standardise.dedupe, where it is not given
REVIEW_COLUMNS = ("distance", "candidate_a", "source_a", "origin_a", "member_a", "candidate_b", "source_b",
                  "origin_b", "member_b")


def views() -> list[tuple[float, float, float]]:
    """(zoom, x, y) of every view: the whole image first."""
    return [(1.0, 0.5, 0.5)] + [(zoom, x, y) for zoom in EDGE_ZOOMS for x, y in ANCHORS] + \
        [(zoom, 0.5, 0.5) for zoom in CENTRE_ZOOMS]


VIEWS = views()


def image_hashes(image: Image.Image, view_list=None) -> np.ndarray:
    """The phash bits of each view of `views()`, as (views, HASH_SIZE**2 / 64) uint64 words.

    imagehash's phash, computed for all the views at once: each view resampled (Lanczos) straight from the grey
    image to 4 x HASH_SIZE pixels a side through a fractional box (no crop, no rounding of the window), then the
    2-D DCT of every view in one product (`DCT`), the lowest HASH_SIZE x HASH_SIZE coefficients compared with their median."""
    grey = image.convert("L")
    width, height = grey.size
    views = []
    for zoom, x, y in view_list or VIEWS:
        crop_w, crop_h = width / zoom, height / zoom
        left, top = (width - crop_w) * x, (height - crop_h) * y
        views.append(np.asarray(grey.resize((_SIDE, _SIDE), Image.LANCZOS, box=(left, top, left + crop_w,
                                                                                top + crop_h))))
    coefficients = (DCT @ np.stack(views).astype(np.float64) @ DCT.T).reshape(len(views), -1)
    bits = coefficients > np.median(coefficients, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64)


def _hash_file(path: str, options: dict | None = None) -> tuple[str, bytes, str]:
    """Pool or cluster task: one standardised image's hashes (`options`: the S3 store's, where it is one)."""
    try:
        with (open_url(path, options) if is_remote(path) else nullcontext(path)) as source, Image.open(source) as image:
            # libjpeg decodes at a quarter (150x113 for a standardised 600x450): each view is resampled to 64x64
            image.draft("RGB", (image.width // 4, image.height // 4))
            return path, image_hashes(image).tobytes(), ""
    except Exception as error:
        return path, b"", f"{type(error).__name__}: {error}"


def distances(hashes: np.ndarray, index: int) -> np.ndarray:
    """Distance of image `index` to every later image: min over one's full view against the other's views."""
    first, later = hashes[index], hashes[index + 1:]
    one = np.bitwise_count(later ^ first[0]).sum(axis=2).min(axis=1)  # later's views vs index's full view
    other = np.bitwise_count(later[:, :1, :] ^ first[None, :, :]).sum(axis=2).min(axis=1)
    return np.minimum(one, other)


CHUNK_BITS = 16


def _chunks(hashes: np.ndarray) -> np.ndarray:
    """(..., words) uint64 -> (..., words * 64 / CHUNK_BITS) chunk values. Each chunk takes its bits from all over
    the hash (a fixed shuffle): neighbouring phash bits (the low frequencies most of all) are alike across
    dermoscopic images, and chunks of them would file many images under one value."""
    bits = np.unpackbits(hashes.astype(">u8").view(np.uint8), axis=-1)  # (..., words * 64), most significant first
    bits = bits[..., _shuffle(bits.shape[-1])].reshape(*bits.shape[:-1], -1, CHUNK_BITS)
    return np.packbits(bits, axis=-1).view(">u2")[..., 0].astype(np.int64)


def _shuffle(size: int) -> np.ndarray:
    return np.random.default_rng(20261127).permutation(size)


def near_pairs(hashes: np.ndarray, limit: int, workers: int | None = None,
               batch: int = 2048, new: np.ndarray | None = None) -> list[tuple[int, int, int]]:
    """Every pair (i, j, distance), i < j, at most `limit` apart, found without comparing every pair; with `new`
    (image numbers), only the pairs with at least one of those images in them: the pairs an earlier call found
    among the others stay as they were, so a re-run after adding images searches only from and for the new ones.

    Multi-index hashing (Norouzi et al.): every view of every image is filed under each of its 16-bit chunks. A
    whole view within `limit` bits of another image's view differs from it in at most limit // chunks bits in
    some chunk (pigeonhole), so looking each image's whole view up under each chunk's value and its variants
    with that many bits flipped finds every such pair; only those candidates are compared in full. Exact (the
    same pairs as comparing all), and the work grows with the number of images times the entries per bucket.
    `workers` is accepted for the callers' sake; numpy does it in one process."""
    count = hashes.shape[0]
    if count < 2:
        return []
    if new is not None and len(new) * count <= BRUTE_LIMIT:
        # A few new images: compared with every image directly, cheaper than filing every image's views.
        words = [np.ascontiguousarray(hashes[:, :, k]) for k in range(hashes.shape[2])]  # (images, views) each
        found = [_compare(hashes, words, int(number), limit) for number in np.unique(np.asarray(new, np.int64))]
        return _unique_pairs(found)
    chunks = _chunks(hashes)  # (images, views, chunks)
    flips = limit // chunks.shape[-1]
    masks = np.array(sorted(sum(1 << bit for bit in combo) for k in range(flips + 1)
                            for combo in combinations(range(CHUNK_BITS), k)), np.int64)
    every = np.arange(count)
    if new is None:
        found = [_search(hashes, chunks, every, every, limit, masks, batch)]
    else:
        # A pair (new, other) is within the limit by the new image's whole view against the other's views, or
        # the other way round: the new images are looked up among all, and all among the new images' views.
        new = np.unique(np.asarray(new, np.int64))
        if not len(new):
            return []
        found = [_search(hashes, chunks, new, every, limit, masks, batch),
                 _search(hashes, chunks, every, new, limit, masks, batch)]
    return _unique_pairs(found)


BRUTE_LIMIT = 5_000_000  # new images x all images up to which a re-run compares the new ones directly


def _compare(hashes: np.ndarray, words: list[np.ndarray], number: int,
             limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, distance) of image `number` with every other image at most `limit` apart (`distances`, both ways).
    `words`: the hashes' 64-bit words as contiguous (images, views) arrays, counted one word at a time (about 5x
    faster than over the (images, views, words) array: 6 ms an image against 11.5k)."""
    query = hashes[number]
    one = np.bitwise_count(words[0] ^ query[0, 0]).astype(np.uint16)  # its whole view vs every view of the others
    other = np.bitwise_count(words[0][:, :1] ^ query[None, :, 0]).astype(np.uint16)  # their whole views vs its views
    for k in range(1, len(words)):
        one += np.bitwise_count(words[k] ^ query[0, k])
        other += np.bitwise_count(words[k][:, :1] ^ query[None, :, k])
    distance = np.minimum(one.min(axis=1), other.min(axis=1)).astype(np.int64)
    distance[number] = limit + 1
    hit = np.nonzero(distance <= limit)[0]
    return np.minimum(hit, number), np.maximum(hit, number), distance[hit]


def pair_distance(hashes: np.ndarray, a: int, b: int) -> int:
    """The distance of images a and b (as `distances`)."""
    one = np.bitwise_count(hashes[b] ^ hashes[a, 0]).sum(axis=1).min()
    other = np.bitwise_count(hashes[b, 0] ^ hashes[a]).sum(axis=1).min()
    return int(min(one, other))


def _unique_pairs(found: list) -> list[tuple[int, int, int]]:
    """The (i, j, distance) triples of `found` (arrays a, b, d), each pair once at its smallest distance, sorted."""
    if not found:
        return []
    a, b, d = (np.concatenate([f[k] for f in found]).astype(np.int64) for k in range(3))
    if not len(a):
        return []
    order = np.lexsort((d, b, a))
    a, b, d = a[order], b[order], d[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return [(int(i), int(j), int(k)) for i, j, k in zip(a[first], b[first], d[first])]


def _search(hashes: np.ndarray, chunks: np.ndarray, queries: np.ndarray, indexed: np.ndarray, limit: int,
            masks: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, distance) arrays, a < b, of the `queries` images' whole views within `limit` of a view of one of
    the `indexed` images (itself excluded)."""
    view_count, words = hashes.shape[1], hashes.shape[2]
    owner = np.repeat(indexed, view_count)
    flat = hashes[indexed].reshape(len(indexed) * view_count, words)
    found_a, found_b, found_d = [], [], []
    for chunk in range(chunks.shape[-1]):
        keys = chunks[indexed, :, chunk].ravel()
        order = np.argsort(keys, kind="stable")
        offsets = np.zeros((1 << CHUNK_BITS) + 1, np.int64)
        offsets[1:] = np.cumsum(np.bincount(keys, minlength=1 << CHUNK_BITS))
        for first in range(0, len(queries), batch):
            query_block = queries[first:first + batch]
            probes = (chunks[query_block, 0, chunk][:, None] ^ masks[None, :]).ravel()
            starts, sizes = offsets[probes], offsets[probes + 1] - offsets[probes]
            total = int(sizes.sum())
            if not total:
                continue
            query = np.repeat(np.repeat(query_block, len(masks)), sizes)
            position = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes) + np.repeat(starts, sizes)
            entry = order[position]
            other = owner[entry]
            distance = np.bitwise_count(flat[entry] ^ hashes[query, 0]).sum(axis=1)
            keep = (other != query) & (distance <= limit)
            found_a.append(np.minimum(query, other)[keep])
            found_b.append(np.maximum(query, other)[keep])
            found_d.append(distance[keep])
    empty = np.zeros(0, np.int64)
    return (np.concatenate(found_a) if found_a else empty, np.concatenate(found_b) if found_b else empty,
            np.concatenate(found_d) if found_d else empty)


class _Groups:
    def __init__(self, count: int):
        self.parent = list(range(count))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def join(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def hashed_with() -> str:
    """What the hashes depend on besides the image: this code (its import closure), the views, Pillow's
    resampling and numpy's arithmetic."""
    import PIL

    from .codedeps import code_version

    return stable_hash({"code": code_version(__name__), "views": VIEWS, "size": HASH_SIZE,
                        "pillow": PIL.__version__, "numpy": np.__version__})[:12]


def _load_cache(path: Path | None, version: str) -> dict[str, str]:
    try:
        cached = json.loads(Path(path).read_text())
    except (TypeError, OSError, ValueError):
        return {}
    return cached.get("hashes", {}) if isinstance(cached, dict) and cached.get("hashed_with") == version else {}


def _load_pairs(path: Path | None, version: str, limit: int) -> tuple[set[str], list] | None:
    """(images searched, pairs found) of the last run, where it used this code and a search limit at least
    `limit`; else None (search everything)."""
    try:
        cached = json.loads(Path(path).read_text())
        pairs = cached["pairs"]
        if cached.get("hashed_with") != version or pairs["limit"] < limit:
            return None
        return set(pairs["shas"]), [(a, b, int(d)) for a, b, d in pairs["found"]]
    except (TypeError, OSError, ValueError, KeyError, AttributeError):
        return None


def dedupe(index_csv: Path, images_dir: Path | str, candidates_csv: Path, *, params: dict | None,
           duplicates_csv: Path, review_csv: Path, workers: int | None = None, cache_json: Path | None = None,
           compute: Compute | None = None) -> dict:
    """Group near-duplicates; rewrite the index's duplicate columns; write the ledger and the review list.

    Reads `index_csv` (standardise's index), the images it lists in `images_dir` (a folder or an s3:// store) and
    `candidates_csv` (provenance, source pixels). `params`: params `standardise.dedupe` (DEFAULTS where missing).
    Writes `duplicates_csv` (every member of every group) and `review_csv` (the pairs for a person), and rewrites
    `index_csv`'s duplicate columns. `workers` sizes the local pool, `compute` (params `compute`) picks the
    executor. `cache_json` (not a DVC output, like ingest's read cache) keeps each image's hashes under the sha256
    of its standardised bytes, so a re-run hashes only images it has not hashed with the same code.
    Returns counts: groups, hashed, duplicates, near_duplicates, review_pairs."""
    params = {**DEFAULTS, **(params or {})}
    max_distance, review_distance = params["max_distance"], params["review_distance"]
    if review_distance < max_distance:
        raise PipelineError(f"params.yaml: dedupe.review_distance ({review_distance}) is below "
                            f"dedupe.max_distance ({max_distance})")
    rows = read_csv(index_csv, ("candidate_id", "file", "sha256"))
    candidates = {c["candidate_id"]: c for c in read_csv(candidates_csv, ("candidate_id", "source", "origin"))}
    version = hashed_with()
    cache = _load_cache(cache_json, version)
    todo = sorted({row["sha256"]: row["file"] for row in rows if row["sha256"] not in cache}.items())
    located = [f"{images_dir}/{file}" if is_remote(images_dir) else str(Path(images_dir) / file) for _, file in todo]
    # Hashing is a map over the images on the local pool or the cluster (params `compute`), like standardise.
    results = run_map(_hash_file, located, compute, "near-duplicates", workers,
                      shared=(compute.options or None) if compute and is_remote(images_dir) else None)
    failed = [(path, error) for path, _, error in results if error]
    if failed:
        raise PipelineError(f"near-duplicates: cannot read {failed[0][0]}: {failed[0][1]}")
    cache.update((sha, data.hex()) for (sha, _), (_, data, _) in zip(todo, results))
    words = HASH_SIZE * HASH_SIZE // 64
    hashes = np.stack([np.frombuffer(bytes.fromhex(cache[row["sha256"]]), np.uint64).reshape(len(VIEWS), words)
                       for row in rows]) if rows else np.zeros((0, len(VIEWS), words), np.uint64)
    # Pairs are found between distinct standardised images (by sha256) and reused from the last run where the
    # code and the search limit allow: only the images new since then are searched from and for.
    shas = sorted({row["sha256"] for row in rows})
    position = {sha: number for number, sha in enumerate(shas)}
    unique = (np.stack([np.frombuffer(bytes.fromhex(cache[sha]), np.uint64).reshape(len(VIEWS), words)
                        for sha in shas]) if shas else np.zeros((0, len(VIEWS), words), np.uint64))
    known = _load_pairs(cache_json, version, review_distance)
    if known is None:
        sha_pairs = near_pairs(unique, review_distance, workers)
    else:
        covered, found = known
        sha_pairs = [(position[a], position[b], d) for a, b, d in found
                     if d <= review_distance and a in position and b in position]
        sha_pairs += near_pairs(unique, review_distance, workers,
                                new=[number for number, sha in enumerate(shas) if sha not in covered])
    if cache_json is not None:
        atomic_write_bytes(Path(cache_json), json.dumps(
            {"hashed_with": version, "hashes": {sha: cache[sha] for sha in shas},
             "pairs": {"limit": review_distance, "shas": shas,
                       "found": sorted([shas[a], shas[b], d] for a, b, d in sha_pairs)}},
            indent=0).encode())

    groups = _Groups(len(rows))
    numbers_of: dict[int, list[int]] = {}
    for number, row in enumerate(rows):
        numbers_of.setdefault(position[row["sha256"]], []).append(number)
    for numbers in numbers_of.values():  # identical standardised bytes: one group
        for number in numbers[1:]:
            groups.join(numbers[0], number)
    review = []
    for a, b, distance in sha_pairs:
        for number in numbers_of[a]:
            for other in numbers_of[b]:
                if distance <= max_distance:
                    groups.join(number, other)
                else:
                    review.append((distance, min(number, other), max(number, other)))

    members: dict[int, list[int]] = {}
    for number in range(len(rows)):
        members.setdefault(groups.find(number), []).append(number)

    def preference(number: int):
        candidate = candidates.get(rows[number]["candidate_id"], {})
        pixels = int(candidate.get("width") or 0) * int(candidate.get("height") or 0)
        return -pixels, rows[number]["candidate_id"]

    def provenance(number: int) -> dict:
        candidate = candidates.get(rows[number]["candidate_id"], {})
        return {k: candidate.get(k, "") for k in ("source", "origin", "member")}

    ledger, near = [], 0
    for group in members.values():
        if len(group) == 1:
            continue
        kept = min(group, key=preference)
        kept_id = rows[kept]["candidate_id"]
        for number in sorted(group, key=lambda n: rows[n]["candidate_id"]):
            row = rows[number]
            if number == kept:
                distance, reason = 0, ""
                row["duplicate_of"], row["duplicate_reason"] = "", ""
            else:
                pair = sorted((number, kept))
                distance = 0 if row["sha256"] == rows[kept]["sha256"] else pair_distance(hashes, *pair)
                if row["sha256"] == rows[kept]["sha256"]:
                    reason = f"standardised image identical to candidate {kept_id[:12]}"
                else:
                    reason = f"near-duplicate of candidate {kept_id[:12]} (perceptual distance {distance})"
                    near += 1
                row["duplicate_of"], row["duplicate_reason"] = kept_id, reason
            ledger.append({"group": kept_id, "candidate_id": row["candidate_id"], **provenance(number),
                           "distance": distance, "kept": str(number == kept).lower(), "reason": reason})
    ledger.sort(key=lambda r: (r["group"], r["kept"] != "true", r["candidate_id"]))
    write_csv(duplicates_csv, ledger, DUPLICATES_COLUMNS)
    review_rows = []
    for distance, a, b in sorted(review, key=lambda r: (r[0], rows[r[1]]["candidate_id"], rows[r[2]]["candidate_id"])):
        if groups.find(a) == groups.find(b):
            continue
        pa, pb = provenance(a), provenance(b)
        review_rows.append({"distance": distance, "candidate_a": rows[a]["candidate_id"],
                            **{f"{k}_a": v for k, v in pa.items()}, "candidate_b": rows[b]["candidate_id"],
                            **{f"{k}_b": v for k, v in pb.items()}})
    write_csv(review_csv, review_rows, REVIEW_COLUMNS)
    columns = list(rows[0].keys()) if rows else ["candidate_id", "file", "sha256", "bytes", "duplicate_of",
                                                  "duplicate_reason"]
    write_csv(index_csv, rows, columns)
    return {"groups": sum(1 for g in members.values() if len(g) > 1), "hashed": len(todo),
            "duplicates": sum(1 for r in rows if r.get("duplicate_of")), "near_duplicates": near,
            "review_pairs": len(review_rows)}
