"""Stage `split`: `assign_splits` on a manifest's lesion IDs and classes: lesion-disjoint, stratified by class,
stable when lesions are added, split hints (the ISIC 2018 test images hinted `test` by their source) honoured or
refused. Each such test runs twice: on the 490 real HAM10000 images (`real`, needs $HAM_DATA) and on the made-up
manifest of `some_images` without data (`made`: 320 images of lesions of one to three images, every class and
collection). Small crafted tables pin the dealing rule itself: a split's share counts images, not lesions."""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pipeline.common import PipelineError, read_csv, write_csv
from pipeline.split import assign_splits

PARAMS = {"test_fraction": 0.2, "val_fraction": 0.0, "seed": 20180814}


@pytest.fixture(scope="module", params=[pytest.param("real", marks=pytest.mark.real_data), "made"])
def manifest(request, tmp_path_factory) -> list[dict]:
    if request.param == "real":
        rows = read_csv(request.getfixturevalue("ham_data") / "ham10000" / "images_manifest.csv")
        assert len(rows) == 490
        return rows
    from tests.conftest import _made_up_manifest

    rows = _made_up_manifest(tmp_path_factory.mktemp("manifest"))
    assert len(rows) == 320 and len({r["lesion_id"] for r in rows}) < len(rows)
    return [{k: r[k] for k in ("lesion_id", "image_id", "dx", "dx_type", "dataset")} for r in rows]


def write_tables(folder: Path, rows: list[dict], hints: dict[str, str] | None = None) -> tuple[Path, Path]:
    hints = hints or {}
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "metadata.csv", rows, ("lesion_id", "image_id", "dx", "dx_type", "dataset"))
    write_csv(folder / "images.csv", ({"image_id": r["image_id"], "lesion_id": r["lesion_id"],
                                       "split_hint": hints.get(r["image_id"], "")} for r in rows),
              ("image_id", "lesion_id", "split_hint"))
    return folder / "metadata.csv", folder / "images.csv"


def splits(registry: Path) -> dict[str, str]:
    rows = read_csv(registry)
    assert len({r["lesion_id"] for r in rows}) == len(rows), "a lesion is listed twice in the registry"
    return {r["lesion_id"]: r["split"] for r in rows}


def test_lesion_disjoint_and_stratified(tmp_path, manifest):
    registry = tmp_path / "splits.csv"
    result = assign_splits(*write_tables(tmp_path, manifest), PARAMS, registry)
    assignment = splits(registry)
    lesions = {r["lesion_id"] for r in manifest}
    assert set(assignment) == lesions and result["new_lesions"] == len(lesions)
    assert set(assignment.values()) == {"train", "test"}  # val_fraction 0

    # Lesion-disjoint: every image of a lesion is in the lesion's one split.
    images_in = defaultdict(set)
    for row in manifest:
        images_in[row["lesion_id"]].add(assignment[row["lesion_id"]])
    assert all(len(s) == 1 for s in images_in.values())

    per_split = Counter(assignment[r["lesion_id"]] for r in manifest)
    assert result["images"] == dict(sorted(per_split.items()))
    # Each lesion joins the split furthest below its target number of images, so with two splits a class ends
    # less than its largest lesion away from 20 % of its images in test.
    by_class, lesion_size = defaultdict(Counter), Counter(r["lesion_id"] for r in manifest)
    for row in manifest:
        by_class[row["dx"]][assignment[row["lesion_id"]]] += 1
    for dx, counts in by_class.items():
        largest = max(lesion_size[r["lesion_id"]] for r in manifest if r["dx"] == dx)
        total = sum(counts.values())
        assert abs(counts["test"] - 0.2 * total) < largest, f"{dx}: {counts['test']}/{total} images in test"


def test_deterministic_and_order_independent(tmp_path, manifest):
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assign_splits(*write_tables(tmp_path / "a", manifest), PARAMS, one)
    assign_splits(*write_tables(tmp_path / "b", list(reversed(manifest))), PARAMS, two)
    assert splits(one) == splits(two)


def test_stable_when_lesions_are_added(tmp_path, manifest):
    lesions = sorted({r["lesion_id"] for r in manifest})
    early = set(lesions[::3]) | set(lesions[1::3])  # two thirds of the lesions first
    registry = tmp_path / "splits.csv"
    assign_splits(*write_tables(tmp_path / "v1", [r for r in manifest if r["lesion_id"] in early]), PARAMS,
                  registry)
    before = splits(registry)
    rows_before = read_csv(registry)
    result = assign_splits(*write_tables(tmp_path / "v2", manifest), PARAMS, registry)
    after = splits(registry)
    assert {l: after[l] for l in before} == before, "a lesion moved between splits"
    assert read_csv(registry)[:len(rows_before)] == rows_before, "the registry was rewritten, not appended to"
    assert result["new_lesions"] == len(lesions) - len(early)
    per_split = Counter(after[r["lesion_id"]] for r in manifest)
    assert abs(per_split["test"] / len(manifest) - 0.2) < 0.04, per_split

    # Lesions dropped from a later release keep their registry entry.
    assign_splits(*write_tables(tmp_path / "v3", [r for r in manifest if r["lesion_id"] in early]), PARAMS,
                  registry)
    assert splits(registry) == after


def test_split_hint_test_is_honoured(tmp_path, manifest):
    # The official ISIC 2018 test images are hinted 'test' by their source; hint one image of 30 lesions.
    lesions = sorted({r["lesion_id"] for r in manifest})[::10]
    hints = {}
    for lesion in lesions:
        hints[next(r["image_id"] for r in manifest if r["lesion_id"] == lesion)] = "test"
    registry = tmp_path / "splits.csv"
    assign_splits(*write_tables(tmp_path, manifest, hints), PARAMS, registry)
    assignment = splits(registry)
    assert all(assignment[l] == "test" for l in lesions)
    # The lesions no source places are dealt by test_fraction among themselves.
    per_split = Counter(assignment[r["lesion_id"]] for r in manifest if r["lesion_id"] not in lesions)
    assert abs(per_split["test"] / sum(per_split.values()) - 0.2) < 0.04, per_split


def test_published_split_is_kept_and_other_sources_are_dealt_among_themselves(tmp_path, manifest):
    """A public release's images hinted train / test keep that split; another source's lesions are dealt out
    by test_fraction among themselves, not skewed by the thousands of published images."""
    lesions = sorted({r["lesion_id"] for r in manifest})
    published = set(lesions[: len(lesions) // 2])
    published_test = set(sorted(published)[::7])
    hints = {r["image_id"]: ("test" if r["lesion_id"] in published_test else "train")
             for r in manifest if r["lesion_id"] in published}
    registry = tmp_path / "splits.csv"
    assign_splits(*write_tables(tmp_path, manifest, hints), PARAMS, registry)
    assignment = splits(registry)
    for lesion in published:
        assert assignment[lesion] == ("test" if lesion in published_test else "train")
    others = [r for r in manifest if r["lesion_id"] not in published]
    per_split = Counter(assignment[r["lesion_id"]] for r in others)
    assert abs(per_split["test"] / len(others) - 0.2) < 0.05, per_split


def test_hint_contradicting_registry_is_refused(tmp_path, manifest):
    registry = tmp_path / "splits.csv"
    assign_splits(*write_tables(tmp_path / "v1", manifest), PARAMS, registry)
    assignment = splits(registry)
    lesion = next(l for l, s in assignment.items() if s == "train")
    image = next(r["image_id"] for r in manifest if r["lesion_id"] == lesion)
    before = registry.read_bytes()
    with pytest.raises(PipelineError, match=f"{lesion} is in train"):
        assign_splits(*write_tables(tmp_path / "v2", manifest, {image: "test"}), PARAMS, registry)
    assert registry.read_bytes() == before
    # A hint that agrees with the registry is fine.
    assign_splits(*write_tables(tmp_path / "v3", manifest, {image: "train"}), PARAMS, registry)
    assert registry.read_bytes() == before


def test_bad_hints_are_refused(tmp_path, manifest):
    lesion_rows = defaultdict(list)
    for row in manifest:
        lesion_rows[row["lesion_id"]].append(row)
    pair = next(rows for rows in lesion_rows.values() if len(rows) >= 2)
    with pytest.raises(PipelineError, match="different splits"):
        assign_splits(*write_tables(tmp_path / "a", manifest, {pair[0]["image_id"]: "test",
                                                              pair[1]["image_id"]: "train"}),
                      PARAMS, tmp_path / "a.csv")
    with pytest.raises(PipelineError, match="not one of"):
        assign_splits(*write_tables(tmp_path / "b", manifest, {pair[0]["image_id"]: "holdout"}), PARAMS,
                      tmp_path / "b.csv")
    with pytest.raises(PipelineError, match="below 1"):
        assign_splits(*write_tables(tmp_path / "c", manifest), {**PARAMS, "test_fraction": 0.7, "val_fraction": 0.3},
                      tmp_path / "c.csv")


def test_val_fraction(tmp_path, manifest):
    registry = tmp_path / "splits.csv"
    result = assign_splits(*write_tables(tmp_path, manifest), {**PARAMS, "val_fraction": 0.1}, registry)
    images = result["images"]
    assert set(images) == {"train", "val", "test"}
    assert abs(images["val"] / len(manifest) - 0.1) < 0.03 and abs(images["test"] / len(manifest) - 0.2) < 0.03


# ------------------------------------------------------------------------------------------------- the dealing rule

def hash_order(lesions: list[str], seed: int) -> list[str]:
    """The order in which the module docstring says new lesions are dealt: by sha256 of '<seed>:<lesion ID>'."""
    return sorted(lesions, key=lambda lesion: hashlib.sha256(f"{seed}:{lesion}".encode()).hexdigest())


def crafted(sizes: dict[str, int], dx: str = "nv") -> list[dict]:
    return [{"lesion_id": lesion, "image_id": f"ISIC_{9000000 + 10 * n + k}", "dx": dx, "dx_type": "histo",
             "dataset": "vidir_modern"} for n, (lesion, size) in enumerate(sizes.items()) for k in range(size)]


HALF = {"test_fraction": 0.5, "val_fraction": 0.0, "seed": 7}


def test_shares_count_images_not_lesions(tmp_path):
    # One class, half of its 8 images to test. The first lesion dealt has 4 images: both splits are 4 images short,
    # the tie goes to train, and train is full, so the 4 one-image lesions all go to test (4 and 4 images).
    # Counting lesions instead would alternate them (train, test, train, test, train: 6 images against 2).
    big, *small = hash_order([f"HAM_000000{n}" for n in range(1, 6)], HALF["seed"])
    rows = crafted({big: 4, **{lesion: 1 for lesion in small}})
    registry = tmp_path / "splits.csv"
    result = assign_splits(*write_tables(tmp_path, rows), HALF, registry)
    assert splits(registry) == {big: "train", **{lesion: "test" for lesion in small}}
    assert result["images"] == {"test": 4, "train": 4}


def test_registered_lesions_count_with_their_images(tmp_path):
    # A lesion of 4 images is already in test; 4 new one-image lesions of the same class make 8 images, so all
    # four go to train whatever their order (counting lesions, test would be 1 of 5 and take one of them).
    registry = tmp_path / "splits.csv"
    write_csv(registry, [{"lesion_id": "HAM_0000001", "split": "test"}], ("lesion_id", "split"))
    rows = crafted({"HAM_0000001": 4, **{f"HAM_000000{n}": 1 for n in range(2, 6)}})
    result = assign_splits(*write_tables(tmp_path, rows), HALF, registry)
    assert splits(registry) == {"HAM_0000001": "test", **{f"HAM_000000{n}": "train" for n in range(2, 6)}}
    assert result == {"new_lesions": 4, "images": {"test": 4, "train": 4}}


def test_classes_are_dealt_separately(tmp_path):
    # Two classes, each like the first test: each class is balanced on its own images.
    rows = []
    expected = {}
    for dx, first in (("mel", 10), ("nv", 20)):
        big, *small = hash_order([f"HAM_00000{first + n}" for n in range(5)], HALF["seed"])
        rows += crafted({big: 4, **{lesion: 1 for lesion in small}}, dx)
        expected |= {big: "train", **{lesion: "test" for lesion in small}}
    for number, row in enumerate(rows):
        row["image_id"] = f"ISIC_{9000000 + number}"
    registry = tmp_path / "splits.csv"
    assign_splits(*write_tables(tmp_path, rows), HALF, registry)
    assert splits(registry) == expected
