"""Checks every release's ISIC outputs must pass (used by the end-to-end tests and tests/test_isic_export.py)."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from pipeline.isic_export import CONTRIBUTION_CSV, ISIC_CLI_CSV, validate_isic_file
from pipeline.vocabulary import ISIC_CLASS_SUBTREES, isic_class_of, isic_node, isic_refines


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def check_isic_outputs(release: Path) -> dict[str, dict[str, int]]:
    """Per split: both ISIC files list the split's images in its order, agree on each image's ISIC diagnosis, and
    that diagnosis lies under the row's HAM10000 class; the archive's validator (where installed) accepts both.
    Returns {split: {"rows": n, "deeper": rows whose node is more specific than their class}}."""
    counts = {}
    for split_dir in sorted(p for p in Path(release).iterdir() if p.is_dir() and p.name in ("train", "val", "test")):
        rows = _rows(split_dir / "metadata.csv")
        contribution = _rows(split_dir / CONTRIBUTION_CSV)
        export = _rows(split_dir / ISIC_CLI_CSV)
        assert [r["filename"] for r in contribution] == [f"{r['image_id']}.jpg" for r in rows], split_dir
        assert [r["isic_id"] for r in export] == [r["image_id"] for r in rows], split_dir
        deeper = 0
        for row, mine, theirs in zip(rows, contribution, export):
            node = mine["diagnosis"]
            assert isic_node(theirs) == node, row["image_id"]
            assert isic_class_of(node) == row["dx"], (
                f"{row['image_id']}: {node!r} is not under {row['dx']} ({'; '.join(ISIC_CLASS_SUBTREES[row['dx']])})")
            deeper += isic_refines(row["dx"], node)
        if importlib.util.find_spec("isic_metadata") is not None:
            assert validate_isic_file(split_dir / CONTRIBUTION_CSV) == []
            assert validate_isic_file(split_dir / ISIC_CLI_CSV) == []
        counts[split_dir.name] = {"rows": len(rows), "deeper": deeper}
    return counts
