"""Benchmark: near-duplicate detection (pipeline/dedupe.py) on the real HAM10000 images of $HAM_DATA.

Prints, at the params' max_distance and review_distance:
  - recall: for every 5th real image, copies re-encoded (JPEG quality 50 and 75, PNG), resized (400x300,
    1600x1200), and cropped (2 % and 5 % off every side; 2, 3 and 5 % off one side, each of the four sides),
    each run through standardise_image and hashed like the stage does; a copy is caught when its distance to
    the original is within max_distance;
  - false positives: every pair of the 490 real images within max_distance (none expected: different
    photographs of one lesion are not duplicates), and the pairs in the review band, marked same / other lesion;
  - seconds to hash the 490 images, and to find the pairs within review_distance with the stage's index
    (`near_pairs`, checked here against comparing every pair).
Merges the recall per kind of copy and the false-positive count into bench/results.json.
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from benchmarks.results import record
from pipeline.dedupe import _hash_file, distances, near_pairs
from pipeline.standardise import standardise_image

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HAM_DATA", REPO.parent / "shared" / "data"))


def _encode(image: Image.Image, **options) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    buffer.seek(0)
    return Image.open(buffer)


def _crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return _encode(image.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))),
                   format="JPEG", quality=90)


COPIES = {
    "re-encoded q50": lambda im: _encode(im, format="JPEG", quality=50),
    "re-encoded q75": lambda im: _encode(im, format="JPEG", quality=75),
    "re-encoded png": lambda im: _encode(im, format="PNG"),
    "resized 400x300": lambda im: _encode(im.resize((400, 300), Image.LANCZOS), format="JPEG", quality=90),
    "resized 1600x1200": lambda im: _encode(im.resize((1600, 1200), Image.LANCZOS), format="JPEG", quality=90),
    "cropped 2% a side": lambda im: _crop(im, .02, .02, .02, .02),
    "cropped 5% a side": lambda im: _crop(im, .05, .05, .05, .05),
}
SIDES = {"left": (1, 0, 0, 0), "top": (0, 1, 0, 0), "right": (0, 0, 1, 0), "bottom": (0, 0, 0, 1)}


def _one_side(box: tuple, share: int):
    return lambda im: _crop(im, *(share / 100 * v for v in box))


for _share in (2, 3, 5):
    for _side, _box in SIDES.items():
        COPIES[f"cropped {_share}% {_side}"] = _one_side(_box, _share)


def hash_standardised(image: Image.Image, folder: Path, name: str) -> np.ndarray:
    path = folder / f"{name}.jpg"
    path.write_bytes(standardise_image(image))
    _, data, error = _hash_file(str(path))
    assert not error, error
    return np.frombuffer(data, np.uint64)


def pair_distance(a: np.ndarray, b: np.ndarray, views: int) -> int:
    return int(distances(np.stack([a.reshape(views, -1), b.reshape(views, -1)]), 0)[0])


def measure(real: list[Path], step: int, folder: Path, review: int = 30) -> dict:
    from pipeline.dedupe import VIEWS

    start = time.perf_counter()
    originals = np.stack([hash_standardised(Image.open(p), folder, p.stem).reshape(len(VIEWS), -1) for p in real])
    hash_seconds = time.perf_counter() - start
    pairs = []
    for number in range(len(real)):
        found = distances(originals, number)
        pairs.extend((int(d), number, number + 1 + int(o)) for o, d in enumerate(found))
    start = time.perf_counter()
    indexed = near_pairs(originals, review)  # the stage's search, checked against comparing every pair
    search_seconds = time.perf_counter() - start
    assert sorted((d, a, b) for a, b, d in indexed) == sorted(p for p in pairs if p[0] <= review)
    copies = defaultdict(list)
    for number in range(0, len(real), step):
        image = Image.open(real[number]).convert("RGB")
        for kind, make in COPIES.items():
            copy = hash_standardised(make(image), folder, "copy")
            copies[kind].append(pair_distance(originals[number].ravel(), copy, len(VIEWS)))
    return {"pairs": pairs, "copies": copies, "hash_seconds": hash_seconds, "search_seconds": search_seconds}


def main() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())["standardise"]["dedupe"]
    real = sorted((DATA / "ham10000" / "images").glob("*.jpg"))
    lesion = {r["image_id"]: r["lesion_id"] for r in csv.DictReader(open(DATA / "ham10000" / "images_manifest.csv"))}
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(real, 5, Path(tmp), params["review_distance"])
    limit, review = params["max_distance"], params["review_distance"]
    print(f"max_distance {limit}, review_distance {review}; {len(real)} real images hashed in "
          f"{result['hash_seconds']:.1f} s; pairs within {review} found by the index in "
          f"{result['search_seconds']:.3f} s")
    figures = {}
    for kind, found in result["copies"].items():
        found = np.array(found)
        recall = float((found <= limit).mean())
        figures[f"dedupe_recall_{kind.replace(' ', '_').replace('%', 'pct')}"] = (round(recall, 3), "fraction")
        print(f"  recall {kind:20s} {recall:6.1%} of {len(found)}  (distance median {np.median(found):.0f}, "
              f"max {found.max()})")
    false = [(d, a, b) for d, a, b in result["pairs"] if d <= limit]
    band = sorted((d, a, b) for d, a, b in result["pairs"] if limit < d <= review)
    print(f"false-positive pairs among the {len(real)} real images: {len(false)}")
    for d, a, b in sorted(false) + band:
        tag = "same lesion" if lesion[real[a].stem] == lesion[real[b].stem] else "other lesions"
        print(f"  {'JOINED' if d <= limit else 'review'} {d:3d} {real[a].stem} {real[b].stem} ({tag})")
    figures["dedupe_false_positive_pairs_490_real"] = (len(false), "pairs")
    figures["dedupe_review_pairs_490_real"] = (len(band), "pairs")
    record(figures, "make bench (python -m benchmarks.bench_dedupe)")


if __name__ == "__main__":
    main()
