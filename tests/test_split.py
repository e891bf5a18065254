"""Stage `split`: `assign_splits` on the 490 real HAM10000 images (lesion IDs and classes from the manifest):
lesion-disjoint, stratified by class, stable when lesions are added, split hints honoured or refused."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pipeline.common import PipelineError, read_csv, write_csv
from pipeline.split import assign_splits

pytestmark = pytest.mark.real_data

PARAMS = {"test_fraction": 0.2, "val_fraction": 0.0, "seed": 20180814}


@pytest.fixture(scope="module")
def manifest(ham_data) -> list[dict]:
    rows = read_csv(ham_data / "ham10000" / "images_manifest.csv")
    assert len(rows) == 490
    return rows


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
    assert abs(per_split["test"] / len(manifest) - 0.2) < 0.03, per_split
    by_class = defaultdict(Counter)
    for row in manifest:
        by_class[row["dx"]][assignment[row["lesion_id"]]] += 1
    for dx, counts in by_class.items():
        share = counts["test"] / sum(counts.values())
        assert abs(share - 0.2) <= 0.08, f"{dx}: {counts['test']}/{sum(counts.values())} images in test"


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
