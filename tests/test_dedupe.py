"""Near-duplicates (pipeline/dedupe.py).

Without data: the thresholds at their exact boundaries, through `dedupe()` itself on planted hashes whose
distances are known to the bit (`max_distance` joins, `max_distance + 1` goes to review, `review_distance` is
reviewed, `review_distance + 1` is apart), the phash cache's key, and drawn images re-encoded and resized.
On the real images ($HAM_DATA): no two of the 490 real HAM10000 images are joined (different photographs of one
lesion included), re-encoded and resized copies are, and in the stage a group keeps one image, records every
member's provenance and lists the borderline pairs for review."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.common import PipelineError, read_csv, write_csv
import pipeline.dedupe as dedupe_module
from pipeline.dedupe import VIEWS, _hash_file, dedupe, distances, hashed_with, near_pairs, pair_distance
from pipeline.ingest import ingest
from pipeline.standardise import standardise, standardise_image

REPO = Path(__file__).resolve().parent.parent
DEDUPE = yaml.safe_load((REPO / "params.yaml").read_text())["standardise"]["dedupe"]
PARAMS = {"width": 600, "height": 450, "quality": 100, "density": 72, "workers": 2, "dedupe": DEDUPE}
# Two photographs of lesion HAM_0002886 taken in a row: 12 bits apart, the closest different photographs.
SAME_LESION = ("ISIC_0027673", "ISIC_0028114")


@pytest.fixture(scope="module")
def real_images(ham_data) -> list[Path]:
    return sorted((ham_data / "ham10000" / "images").glob("*.jpg"))


def _hashes(paths) -> np.ndarray:
    found = [_hash_file(str(p)) for p in paths]
    assert not any(error for _, _, error in found)
    return np.stack([np.frombuffer(data, np.uint64).reshape(len(VIEWS), -1) for _, data, _ in found])


def _encoded(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


def test_real_images_none_joined_copies_caught(tmp_path, real_images, ham_data):
    hashes = _hashes(real_images)  # the real images are 600x450 already: as the stage sees them
    joined, band = [], {}
    for number in range(len(real_images)):
        found = distances(hashes, number)
        for offset in np.flatnonzero(found <= DEDUPE["review_distance"]):
            pair = (real_images[number].stem, real_images[number + 1 + offset].stem)
            (joined.append(pair) if found[offset] <= DEDUPE["max_distance"] else band.__setitem__(pair, found[offset]))
    assert joined == [], f"real images joined as near-duplicates: {joined}"
    pooled = near_pairs(hashes, DEDUPE["review_distance"], workers=2)  # what the stage runs
    assert {(real_images[i].stem, real_images[j].stem): d for i, j, d in pooled} == band
    with open(ham_data / "ham10000" / "images_manifest.csv") as handle:
        lesion = {r["image_id"]: r["lesion_id"] for r in csv.DictReader(handle)}
    assert SAME_LESION in band and lesion[SAME_LESION[0]] == lesion[SAME_LESION[1]]
    assert all(lesion[a] == lesion[b] for a, b in band), "a review pair of two different lesions"

    caught, tried = {}, {}
    for number in range(0, len(real_images), 10):
        image = Image.open(real_images[number]).convert("RGB")
        w, h = image.size
        copies = {"q50": _encoded(image, format="JPEG", quality=50), "png": _encoded(image, format="PNG"),
                  "small": _encoded(image.resize((400, 300), Image.LANCZOS), format="JPEG", quality=90),
                  "large": _encoded(image.resize((1600, 1200), Image.LANCZOS), format="JPEG", quality=90),
                  "crop5": _encoded(image.crop((30, 22, w - 30, h - 22)), format="JPEG", quality=90)}
        side = (number // 10) % 4  # 3 % off one side (18 or 14 pixels), the four sides in turn
        box = [0, 0, w, h]
        box[side] += (18, 14, -18, -14)[side]
        copies["crop3_one_side"] = _encoded(image.crop(tuple(box)), format="JPEG", quality=90)
        for kind, data in copies.items():
            path = tmp_path / f"{kind}.jpg"
            path.write_bytes(standardise_image(Image.open(io.BytesIO(data))))
            copy = _hashes([path])[0]
            distance = distances(np.stack([hashes[number], copy]), 0)[0]
            tried[kind] = tried.get(kind, 0) + 1
            caught[kind] = caught.get(kind, 0) + int(distance <= DEDUPE["max_distance"])
    print({kind: f"{caught[kind]}/{tried[kind]}" for kind in tried})
    for kind in ("q50", "png", "small", "large"):
        assert caught[kind] >= 0.95 * tried[kind], (kind, caught[kind], tried[kind])
    assert caught["crop5"] >= 0.8 * tried["crop5"], caught
    assert caught["crop3_one_side"] >= 0.8 * tried["crop3_one_side"], caught


def test_index_finds_exactly_the_pairs_that_comparing_all_finds(monkeypatch):
    """`near_pairs` (multi-index hashing) against every pair compared, on random hashes with planted neighbours at
    distances around both thresholds, and with flips in every chunk."""
    rng = np.random.default_rng(7)
    count, views = 300, len(VIEWS)
    hashes = rng.integers(0, 2**63, size=(count, views, 4), dtype=np.int64).astype(np.uint64) * np.uint64(2)
    hashes ^= rng.integers(0, 2, size=(count, views, 4), dtype=np.int64).astype(np.uint64)
    for number in range(0, count - 1, 3):  # the next image's view k is this one's whole view with d bits flipped
        distance, view = int(rng.integers(0, 40)), int(rng.integers(0, views))
        bits = rng.choice(256, size=distance, replace=False)
        planted = hashes[number, 0].copy()
        for bit in bits:
            planted[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
        hashes[number + 1, view] = planted
    for limit in (0, 10, 15, 16, 30, 31, 40):
        every = [(i, i + 1 + int(o), int(d)) for i in range(count) for o, d in enumerate(distances(hashes, i))
                 if d <= limit]
        assert near_pairs(hashes, limit) == sorted(every), limit
    # Incrementally: the pairs among earlier images kept, only those with a new image searched for, by comparing
    # the new images with all (a few) or through the index (many).
    for brute_limit in (dedupe_module.BRUTE_LIMIT, 0):
        monkeypatch.setattr(dedupe_module, "BRUTE_LIMIT", brute_limit)
        for new in (np.arange(250, count), np.arange(0, count, 7), np.array([0, count - 1]), np.arange(count)):
            old = np.setdiff1d(np.arange(count), new)
            among_old = [(int(old[i]), int(old[j]), d) for i, j, d in near_pairs(hashes[old], 30)]
            assert sorted(among_old + near_pairs(hashes, 30, new=new)) == near_pairs(hashes, 30), (brute_limit, new)


def test_stage_groups_keep_one_record_provenance_and_review(tmp_path, ham_data, real_images):
    by_id = {p.stem: p for p in real_images}
    original = real_images[40]
    smaller = Image.open(original).convert("RGB").resize((480, 360), Image.LANCZOS)
    batches = {
        "first": {"a.jpg": original.read_bytes(), "same1.jpg": by_id[SAME_LESION[0]].read_bytes(),
                  "other.jpg": real_images[41].read_bytes()},
        "second": {"a_small.jpg": _encoded(smaller, format="JPEG", quality=70),
                   "a_again.png": _encoded(Image.open(original).convert("RGB"), format="PNG"),
                   "same2.jpg": by_id[SAME_LESION[1]].read_bytes()},
    }
    sources = []
    for name, files in batches.items():
        folder = tmp_path / name
        folder.mkdir()
        for file, data in files.items():
            (folder / file).write_bytes(data)
        (folder / "index.csv").write_text("file,lesion\n" + "".join(f"{f},{f}\n" for f in files))
        sources.append({"name": name, "kind": "export", "path": name, "dataset": "vidir_modern"})
    result = ingest(sources, tmp_path, tmp_path / "ingest", 100_000_000)
    assert not result.rejects and len(result.candidates) == 6
    by_origin = {c["origin"]: c for c in result.candidates}
    with open(tmp_path / "decisions.csv", "w") as handle:
        handle.write("candidate_id,keep\n" + "".join(f"{c['candidate_id']},true\n" for c in result.candidates))
    out = tmp_path / "std"
    standardise(tmp_path / "ingest/candidates.csv", tmp_path / "decisions.csv", tmp_path / "ingest/objects", PARAMS,
                out / "images", out / "index.csv")
    def run():
        return dedupe(out / "index.csv", out / "images", tmp_path / "ingest/candidates.csv", params=DEDUPE,
                      duplicates_csv=out / "duplicates.csv", review_csv=out / "duplicate_review.csv", workers=2,
                      cache_json=out / "cache.json")

    counts = run()
    # a_again.png standardises to the same bytes as a.jpg: hashed once
    assert counts == {"groups": 1, "hashed": 5, "duplicates": 2, "near_duplicates": 1, "review_pairs": 1}
    written = {name: (out / name).read_bytes() for name in ("index.csv", "duplicates.csv", "duplicate_review.csv")}
    assert run() == {**counts, "hashed": 0}  # a re-run takes every hash from the cache, same result
    assert written == {name: (out / name).read_bytes() for name in written}
    # Images added to a searched set: the cached pairs are kept and only the new images searched; same result.
    full_index = (out / "index.csv").read_text()
    (out / "cache.json").unlink()
    lines = full_index.splitlines(keepends=True)
    (out / "index.csv").write_text("".join(lines[:3]))
    run()
    (out / "index.csv").write_text(full_index)
    assert run() == {**counts, "hashed": 3}
    assert written == {name: (out / name).read_bytes() for name in written}

    index = {r["candidate_id"]: r for r in read_csv(out / "index.csv")}
    kept = by_origin["a.jpg"]["candidate_id"]  # 600x450 beats the 480x360 copy; the PNG has the same pixels
    small, again = by_origin["a_small.jpg"]["candidate_id"], by_origin["a_again.png"]["candidate_id"]
    assert index[kept]["duplicate_of"] == ""
    assert index[small]["duplicate_of"] == index[again]["duplicate_of"] == kept
    assert index[small]["duplicate_reason"].startswith(f"near-duplicate of candidate {kept[:12]} (perceptual")
    assert index[again]["duplicate_reason"] == f"standardised image identical to candidate {kept[:12]}"
    for origin in ("same1.jpg", "same2.jpg", "other.jpg"):
        assert index[by_origin[origin]["candidate_id"]]["duplicate_of"] == ""

    ledger = read_csv(out / "duplicates.csv")
    assert {(r["candidate_id"], r["source"], r["origin"], r["kept"]) for r in ledger} == {
        (kept, "first", "a.jpg", "true"), (small, "second", "a_small.jpg", "false"),
        (again, "second", "a_again.png", "false")}
    assert {r["group"] for r in ledger} == {kept}
    assert [r["distance"] for r in ledger if r["candidate_id"] == again] == ["0"]

    (review,) = read_csv(out / "duplicate_review.csv")
    assert {review["origin_a"], review["origin_b"]} == {"same1.jpg", "same2.jpg"}
    assert DEDUPE["max_distance"] < int(review["distance"]) <= DEDUPE["review_distance"]


# ------------------------------------------------------------------- the thresholds, on planted hashes (no data)

PINNED = {"max_distance": 10, "review_distance": 30}  # dedupe.DEFAULTS as written: a move by one bit must fail


def planted(gaps: list[int], seed: int = 11) -> np.ndarray:
    """Hashes of pairs of images, (2 * len(gaps), views, words): pair k's second image has for its whole view the
    first's whole view with exactly gaps[k] bits flipped; every other view is random. Views of different origin
    are about 128 bits apart, so pair k is gaps[k] apart and every other pair far beyond any threshold."""
    rng = np.random.default_rng(seed)
    words = dedupe_module.HASH_SIZE ** 2 // 64
    hashes = np.frombuffer(rng.bytes(2 * len(gaps) * len(VIEWS) * words * 8), np.uint64)
    hashes = hashes.reshape(2 * len(gaps), len(VIEWS), words).copy()
    for k, gap in enumerate(gaps):
        bits = np.zeros(words * 64, np.uint8)
        bits[rng.choice(words * 64, size=gap, replace=False)] = 1
        hashes[2 * k + 1, 0] = hashes[2 * k, 0] ^ np.packbits(bits).view(">u8").astype(np.uint64)
    for k, gap in enumerate(gaps):  # the premise, checked by brute force
        assert pair_distance(hashes, 2 * k, 2 * k + 1) == gap
    assert all(d > 60 for n in range(len(hashes)) for o, d in enumerate(distances(hashes, n))
               if (n, n + 1 + o) not in {(2 * k, 2 * k + 1) for k in range(len(gaps))})
    return hashes


def dedupe_planted(folder: Path, hashes: np.ndarray, params: dict | None, version: str | None = None) -> dict:
    """`dedupe()` on candidates whose hashes are `hashes`, handed to it through its phash cache (no image is read:
    the images folder does not exist). Candidate n is `ids[n]`; all have the same pixels, so the smallest ID is
    kept. Returns the counts, the index by candidate ID, the ledger and the review pairs {(distance, {a, b})}."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"{n:02d}" + "c" * 62 for n in range(len(hashes))]
    shas = [f"{n:02d}" + "5" * 62 for n in range(len(hashes))]
    if not (folder / "candidates.csv").exists():
        write_csv(folder / "candidates.csv", [{"candidate_id": i, "source": "s", "origin": f"{n}.jpg", "member": "",
                                               "width": 600, "height": 450} for n, i in enumerate(ids)],
                  ("candidate_id", "source", "origin", "member", "width", "height"))
        (folder / "cache.json").write_text(json.dumps(
            {"hashed_with": version or hashed_with(), "hashes": {s: h.tobytes().hex() for s, h in zip(shas, hashes)}}))
    write_csv(folder / "index.csv", [{"candidate_id": i, "file": f"{s}.jpg", "sha256": s, "duplicate_of": "",
                                      "duplicate_reason": ""} for i, s in zip(ids, shas)],
              ("candidate_id", "file", "sha256", "duplicate_of", "duplicate_reason"))
    counts = dedupe(folder / "index.csv", folder / "no-images", folder / "candidates.csv", params=params,
                    duplicates_csv=folder / "duplicates.csv", review_csv=folder / "review.csv", workers=1,
                    cache_json=folder / "cache.json")
    review = {(int(r["distance"]), frozenset((r["candidate_a"], r["candidate_b"])))
              for r in read_csv(folder / "review.csv")}
    return {"counts": counts, "ids": ids, "index": {r["candidate_id"]: r for r in read_csv(folder / "index.csv")},
            "ledger": read_csv(folder / "duplicates.csv"), "review": review}


@pytest.mark.parametrize("params", [DEDUPE, None, {}, {"max_distance": 0, "review_distance": 1},
                                    {"max_distance": 15, "review_distance": 16},
                                    {"max_distance": 12, "review_distance": 12}],
                         ids=["params.yaml", "none", "defaults", "0-1", "15-16", "12-12"])
def test_thresholds_at_their_exact_boundaries(tmp_path, params):
    """Pairs exactly `max_distance`, `max_distance + 1`, `review_distance` and `review_distance + 1` apart:
    the first joined (the second image excluded as a near-duplicate), the next two listed for review unless
    already joined, the last apart. Without params, the defaults are 10 and 30 bits."""
    limits = {**PINNED, **(params or {})}
    most, review = limits["max_distance"], limits["review_distance"]
    gaps = [most, most + 1, review, review + 1]
    out = dedupe_planted(tmp_path, planted(gaps), params)
    ids = out["ids"]
    joined = [k for k, gap in enumerate(gaps) if gap <= most]
    listed = {(gap, frozenset(ids[2 * k:2 * k + 2])) for k, gap in enumerate(gaps) if most < gap <= review}
    assert out["counts"] == {"groups": len(joined), "hashed": 0, "duplicates": len(joined),
                             "near_duplicates": len(joined), "review_pairs": len(listed)}
    for k, gap in enumerate(gaps):
        first, second = out["index"][ids[2 * k]], out["index"][ids[2 * k + 1]]
        assert first["duplicate_of"] == ""
        if k in joined:
            assert second["duplicate_of"] == ids[2 * k]
            assert second["duplicate_reason"] == (f"near-duplicate of candidate {ids[2 * k][:12]} "
                                                  f"(perceptual distance {gap})")
        else:
            assert second["duplicate_of"] == second["duplicate_reason"] == "", (gap, limits)
    assert {(r["candidate_id"], r["distance"]) for r in out["ledger"]} == {
        pair for k in joined for pair in ((ids[2 * k], "0"), (ids[2 * k + 1], str(gaps[k])))}
    assert out["review"] == listed
    assert dedupe_planted(tmp_path, planted(gaps), params) == out  # again, with the pairs from the cache


def test_pairs_searched_to_a_smaller_limit_are_not_reused(tmp_path):
    """The phash cache keeps the pairs found up to the last run's review_distance: a run with a larger one
    searches again and finds the pair beyond the old limit."""
    hashes = planted([5, 31])
    first = dedupe_planted(tmp_path, hashes, {"max_distance": 10, "review_distance": 30})
    assert first["counts"]["groups"] == 1 and first["review"] == set()
    wider = dedupe_planted(tmp_path, hashes, {"max_distance": 10, "review_distance": 31})
    assert wider["review"] == {(31, frozenset(first["ids"][2:4]))}
    joined = dedupe_planted(tmp_path, hashes, {"max_distance": 31, "review_distance": 31})
    assert joined["counts"]["groups"] == 2 and joined["review"] == set()


def test_hashes_cached_by_other_code_are_not_used(tmp_path, monkeypatch):
    """The phash cache holds hashes under `hashed_with()`: cached under another version they are computed again
    (here they cannot be: the images are not there), and the version follows the views, the hash size, Pillow
    and this code."""
    with pytest.raises(PipelineError, match="near-duplicates: cannot read .*no-images"):
        dedupe_planted(tmp_path, planted([5]), DEDUPE, version="another")
    import PIL

    import pipeline.codedeps

    version = hashed_with()
    for target, name, value in ((dedupe_module, "VIEWS", VIEWS[:-1]), (dedupe_module, "HASH_SIZE", 8),
                                (PIL, "__version__", "0.0"),
                                (pipeline.codedeps, "code_version", lambda *modules: "other code")):
        with monkeypatch.context() as patch:
            patch.setattr(target, name, value)
            assert hashed_with() != version, name
    assert hashed_with() == version


# ------------------------------------------------------------------------------------------ drawn images (no data)

def test_drawn_images_none_joined_copies_caught(tmp_path, drawn_images):
    """The generated counterpart of the real-image test: drawn pictures are all beyond review_distance of each
    other, and every re-encoded, resized or slightly cropped copy of one is within max_distance of it."""
    images = drawn_images["dsc"][:30]
    hashes = _hashes(images)
    assert near_pairs(hashes, DEDUPE["review_distance"]) == []
    for number in range(0, len(images), 5):
        image = Image.open(images[number]).convert("RGB")
        w, h = image.size
        copies = {"q50": _encoded(image, format="JPEG", quality=50), "png": _encoded(image, format="PNG"),
                  "small": _encoded(image.resize((400, 300), Image.LANCZOS), format="JPEG", quality=90),
                  "large": _encoded(image.resize((1600, 1200), Image.LANCZOS), format="JPEG", quality=90),
                  "crop5": _encoded(image.crop((30, 22, w - 30, h - 22)), format="JPEG", quality=90)}
        for kind, data in copies.items():
            path = tmp_path / f"{kind}.jpg"
            path.write_bytes(standardise_image(Image.open(io.BytesIO(data))))
            distance = distances(np.stack([hashes[number], _hashes([path])[0]]), 0)[0]
            assert distance <= DEDUPE["max_distance"], (number, kind, distance)


def test_stage_on_drawn_images_keeps_the_largest_copy(tmp_path, drawn_images):
    """Through ingest and standardise: a drawn picture, a smaller re-encoded copy from another source and a PNG
    of it are one group keeping a 600x450 one; another drawn picture stays."""
    original, other = drawn_images["dsc"][3], drawn_images["dsc"][4]
    picture = Image.open(original).convert("RGB")
    batches = {"first": {"a.jpg": original.read_bytes(), "other.jpg": other.read_bytes()},
               "second": {"a_small.jpg": _encoded(picture.resize((480, 360), Image.LANCZOS), format="JPEG",
                                                  quality=70),
                          "a_again.png": _encoded(picture, format="PNG")}}
    sources = []
    for name, files in batches.items():
        (tmp_path / name).mkdir()
        for file, data in files.items():
            (tmp_path / name / file).write_bytes(data)
        (tmp_path / name / "index.csv").write_text("file,lesion\n" + "".join(f"{f},{f}\n" for f in files))
        sources.append({"name": name, "kind": "export", "path": name, "dataset": "vidir_modern"})
    result = ingest(sources, tmp_path, tmp_path / "ingest", 100_000_000)
    assert not result.rejects and len(result.candidates) == 4
    by_origin = {c["origin"]: c["candidate_id"] for c in result.candidates}
    (tmp_path / "decisions.csv").write_text(
        "candidate_id,keep\n" + "".join(f"{c['candidate_id']},true\n" for c in result.candidates))
    out = tmp_path / "std"
    standardise(tmp_path / "ingest/candidates.csv", tmp_path / "decisions.csv", tmp_path / "ingest/objects", PARAMS,
                out / "images", out / "index.csv")
    counts = dedupe(out / "index.csv", out / "images", tmp_path / "ingest/candidates.csv", params=DEDUPE,
                    duplicates_csv=out / "duplicates.csv", review_csv=out / "review.csv", workers=1)
    assert counts == {"groups": 1, "hashed": 3, "duplicates": 2, "near_duplicates": 1, "review_pairs": 0}
    index = {r["candidate_id"]: r for r in read_csv(out / "index.csv")}
    # the original and its PNG have the same pixels: the smaller candidate ID is kept, the 480x360 copy never
    kept = min(by_origin["a.jpg"], by_origin["a_again.png"])
    assert {c: index[c]["duplicate_of"] for c in by_origin.values()} == {
        by_origin["other.jpg"]: "", kept: "", **{by_origin[o]: kept for o in ("a.jpg", "a_small.jpg", "a_again.png")
                                                 if by_origin[o] != kept}}
    assert read_csv(out / "review.csv") == []
