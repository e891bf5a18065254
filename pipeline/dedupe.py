"""Near-duplicates across all sources, found on the standardised images (part of stage `standardise`).

Every standardised image gets perceptual hashes: `imagehash.phash` with 256 bits (hash_size 16) of the image and
of its centre at six zooms (1.03 to 1.19), so a copy cropped by a few per cent on each side is compared at the
scale where it lines up. The distance of two images is the smallest Hamming distance between one's full view and
any view of the other. Images at most `dedupe.max_distance` apart (and images with identical standardised bytes)
are joined into groups (transitively); pairs further apart but within `dedupe.review_distance` go to a review
list for a person to look at. `imagehash` rather than our own DCT code: it is the maintained reference phash, and
the hashing costs about 30 ms an image either way.

Measured on the 490 real HAM10000 images of ../shared/data (`python -m benchmarks.bench_dedupe`), copies of every
5th run through standardise_image: re-encoded (JPEG quality 50/75, PNG) or resized (400x300, 1600x1200) copies
are at 0 to 8 (one quality-50 copy at 14), so 99 to 100 % are caught at max_distance 10; cropped by 5 % on every
side 94 %, by 2 % 67 %; cropped on one side only (a shift, which no zoom lines up) none: those fall in or beyond
the review band. Different photographs of one lesion start at 12 (consecutive shots: six pairs in 12..28, all in
the review list), different lesions at 54: no two real images are joined. A pixel check after alignment was
tried for the band and dropped: a 2 % crop and a second shot of the lesion overlap (29 to 41 dB against 23 to
39 dB PSNR).

Each group keeps one image: the one with the most source pixels (the least reduced copy), then the smallest
candidate ID. The others get `duplicate_of` (the kept candidate) and `duplicate_reason` in the standardised
index, so the metadata stage excludes them with that reason: they never reach a split, so a group's members
cannot end up in different splits. `duplicates.csv` records every member of every group with its provenance and
its distance to the kept image; `duplicate_review.csv` the borderline pairs. The hashes are cached by the
standardised image's sha256 (`phash_cache.json` beside the index), so a re-run hashes only new images; the
comparison is all pairs (numpy over every core, about 30 s of one core's time for 4000 images here,
growing with the square).
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from PIL import Image

from .common import PipelineError, atomic_write_bytes, read_csv, stable_hash, write_csv
from .parallel import pool_map, resolve_workers
from .stores import is_remote, open_url

ZOOMS = (1.0, 1.03, 1.06, 1.09, 1.12, 1.15, 1.19)  # centre crops: 3 % steps of zoom, up to 8 % a side
HASH_SIZE = 16
DUPLICATES_COLUMNS = ("group", "candidate_id", "source", "origin", "member", "distance", "kept", "reason")
DEFAULTS = {"max_distance": 10, "review_distance": 30}  # params standardise.dedupe, where it is not given
REVIEW_COLUMNS = ("distance", "candidate_a", "source_a", "origin_a", "member_a", "candidate_b", "source_b",
                  "origin_b", "member_b")


def image_hashes(image: Image.Image) -> np.ndarray:
    """The phash bits of the image at each zoom of ZOOMS, as (len(ZOOMS), HASH_SIZE**2 / 64) uint64 words."""
    import imagehash

    grey = image.convert("L")
    width, height = grey.size
    words = []
    for zoom in ZOOMS:
        crop_w, crop_h = width / zoom, height / zoom
        box = (round((width - crop_w) / 2), round((height - crop_h) / 2), round((width + crop_w) / 2),
               round((height + crop_h) / 2))
        bits = imagehash.phash(grey.crop(box), hash_size=HASH_SIZE).hash.flatten()
        words.append(np.packbits(bits).view(">u8").astype(np.uint64))
    return np.stack(words)


def _hash_file(path: str) -> tuple[str, bytes, str]:
    try:
        with (open_url(path) if is_remote(path) else nullcontext(path)) as source, Image.open(source) as image:
            image.draft("RGB", (image.width // 2, image.height // 2))  # phash looks at 64x64 pixels
            return path, image_hashes(image).tobytes(), ""
    except Exception as error:
        return path, b"", f"{type(error).__name__}: {error}"


def distances(hashes: np.ndarray, index: int) -> np.ndarray:
    """Distance of image `index` to every later image: min over one's full view against the other's views."""
    first, later = hashes[index], hashes[index + 1:]
    one = np.bitwise_count(later ^ first[0]).sum(axis=2).min(axis=1)  # later's views vs index's full view
    other = np.bitwise_count(later[:, :1, :] ^ first[None, :, :]).sum(axis=2).min(axis=1)
    return np.minimum(one, other)


def _pairs_within(task: tuple[np.ndarray, range, int]) -> list[tuple[int, int, int]]:
    """Worker: (i, j, distance) for rows i of the task and every later j, at most `limit` apart."""
    hashes, numbers, limit = task
    pairs = []
    for number in numbers:
        found = distances(hashes, number)
        pairs.extend((number, number + 1 + int(offset), int(found[offset]))
                     for offset in np.flatnonzero(found <= limit))
    return pairs


def near_pairs(hashes: np.ndarray, limit: int, workers: int | None = None) -> list[tuple[int, int, int]]:
    """Every pair (i, j, distance), i < j, at most `limit` apart; rows dealt out in strides so each process
    gets a like share of the triangle."""
    tasks = max(1, min(len(hashes), 4 * resolve_workers(workers)))
    found = pool_map(_pairs_within, [(hashes, range(start, len(hashes), tasks), limit) for start in range(tasks)],
                     workers, "near-duplicate pairs")
    return sorted(pair for pairs in found for pair in pairs)


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
    """What the hashes depend on besides the image: this code (its import closure), the views, imagehash."""
    import imagehash

    from .codedeps import code_version

    return stable_hash({"code": code_version(__name__), "zooms": ZOOMS, "size": HASH_SIZE,
                        "imagehash": imagehash.__version__})[:12]


def _load_cache(path: Path | None, version: str) -> dict[str, str]:
    try:
        cached = json.loads(Path(path).read_text())
    except (TypeError, OSError, ValueError):
        return {}
    return cached.get("hashes", {}) if isinstance(cached, dict) and cached.get("hashed_with") == version else {}


def dedupe(index_csv: Path, images_dir: Path, candidates_csv: Path, params: dict, duplicates_csv: Path,
           review_csv: Path, workers: int | None = None, cache_json: Path | None = None) -> dict:
    """Group near-duplicates; rewrite the index's duplicate columns; write the ledger and the review list.

    `cache_json` (not a DVC output, like ingest's read cache) keeps each image's hashes under the sha256 of its
    standardised bytes, so a re-run hashes only images it has not hashed with the same code."""
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
    results = list(pool_map(_hash_file, located, workers, "near-duplicates"))
    failed = [(path, error) for path, _, error in results if error]
    if failed:
        raise PipelineError(f"near-duplicates: cannot read {failed[0][0]}: {failed[0][1]}")
    cache.update((sha, data.hex()) for (sha, _), (_, data, _) in zip(todo, results))
    words = HASH_SIZE * HASH_SIZE // 64
    hashes = np.stack([np.frombuffer(bytes.fromhex(cache[row["sha256"]]), np.uint64).reshape(len(ZOOMS), words)
                       for row in rows]) if rows else np.zeros((0, len(ZOOMS), words), np.uint64)
    if cache_json is not None:
        current = {row["sha256"] for row in rows}
        atomic_write_bytes(Path(cache_json), json.dumps(
            {"hashed_with": version, "hashes": {k: v for k, v in sorted(cache.items()) if k in current}},
            indent=0).encode())

    groups = _Groups(len(rows))
    first_by_sha: dict[str, int] = {}
    for number, row in enumerate(rows):
        groups.join(first_by_sha.setdefault(row["sha256"], number), number)
    review = []
    for number, other, distance in near_pairs(hashes, review_distance, workers):
        if distance <= max_distance:
            groups.join(number, other)
        elif rows[number]["sha256"] != rows[other]["sha256"]:
            review.append((distance, number, other))

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
                distance = 0 if row["sha256"] == rows[kept]["sha256"] else int(distances(hashes, pair[0])[
                    pair[1] - pair[0] - 1])
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
