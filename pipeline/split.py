"""Stage `split`: lesions -> train / val / test, lesion-disjoint and stable across releases.

`registry/splits.csv` (committed, append-only) holds every lesion's split: a lesion assigned once never moves.
Lesions with a source-given split (`split_hint`: a `ham10000` source puts its training images in train and the
ISIC 2018 test images in test, as published) take it. The other lesions are dealt out per diagnosis class in a
seeded hash order, each to the split furthest below its target share (`test_fraction`, `val_fraction`) of that
class's images *among the lesions no source places*, so classes stay balanced across splits, the published split
does not skew the others, and the result does not depend on row order.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from .common import PipelineError, read_csv, sha256_bytes, write_csv
from .vocabulary import SPLITS

COLUMNS = ("lesion_id", "split")


def assign_splits(metadata_csv: Path, images_csv: Path, params: dict, registry_csv: Path) -> dict:
    rows = read_csv(metadata_csv, ("lesion_id", "image_id", "dx"))
    hints = {r["image_id"]: r.get("split_hint", "") for r in read_csv(images_csv, ("image_id",))}
    registry_csv = Path(registry_csv)
    existing = {r["lesion_id"]: r["split"] for r in read_csv(registry_csv, COLUMNS)} if registry_csv.exists() else {}

    fractions = {"val": params.get("val_fraction", 0.0), "test": params["test_fraction"]}
    fractions["train"] = 1.0 - fractions["val"] - fractions["test"]
    if fractions["train"] <= 0:
        raise PipelineError("params.yaml: split.test_fraction + split.val_fraction must be below 1")

    lesion_dx, lesion_size, lesion_hint = {}, Counter(), defaultdict(set)
    for row in rows:
        lesion_dx.setdefault(row["lesion_id"], row["dx"])
        lesion_size[row["lesion_id"]] += 1
        if hints.get(row["image_id"]):
            lesion_hint[row["lesion_id"]].add(hints[row["image_id"]])

    assignment = dict(existing)
    for lesion_id, hint in lesion_hint.items():
        if len(hint) > 1:
            raise PipelineError(f"lesion {lesion_id}: its images are hinted to different splits ({', '.join(hint)})")
        (split,) = hint
        if split not in SPLITS:
            raise PipelineError(f"lesion {lesion_id}: split hint {split!r} is not one of {', '.join(SPLITS)}")
        if lesion_id in existing and existing[lesion_id] != split:
            raise PipelineError(f"lesion {lesion_id} is in {existing[lesion_id]} in registry/splits.csv; the source "
                                f"now puts it in {split}: lesions never move between splits (a ham10000 source "
                                f"whose training lesions were dealt out before keeps that with option "
                                f"train_split: '')")
        assignment[lesion_id] = split

    by_class = defaultdict(list)
    for lesion_id, dx in lesion_dx.items():
        if lesion_id not in lesion_hint:  # placed by its source: outside the shares the others are dealt by
            by_class[dx].append(lesion_id)
    for dx, lesion_ids in sorted(by_class.items()):
        total = sum(lesion_size[l] for l in lesion_ids)
        count = Counter()
        for lesion_id in lesion_ids:
            if lesion_id in assignment:
                count[assignment[lesion_id]] += lesion_size[lesion_id]
        new = sorted((l for l in lesion_ids if l not in assignment),
                     key=lambda l: sha256_bytes(f"{params['seed']}:{l}".encode()))
        for lesion_id in new:
            # Deficit of each split after this lesion would join it; the largest wins, ties go to train.
            split = max(SPLITS, key=lambda s: (fractions[s] * total - count[s], s == "train"))
            assignment[lesion_id] = split
            count[split] += lesion_size[lesion_id]

    added = sorted(set(assignment) - set(existing))
    write_csv(registry_csv, [{"lesion_id": l, "split": existing[l]} for l in existing] +
              [{"lesion_id": l, "split": assignment[l]} for l in added], COLUMNS)
    images_per_split = Counter()
    for row in rows:
        images_per_split[assignment[row["lesion_id"]]] += 1
    return {"new_lesions": len(added), "images": dict(sorted(images_per_split.items()))}
