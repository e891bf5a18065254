"""Stage `release`: metadata + split registry + standardised images -> the release folder.

    release/<split>/images/<image_id>.jpg   the images of each split
    release/<split>/metadata.csv            HAM10000 columns (+ dataset) for that split
    release/<split>/isic_metadata.csv       the same rows in ISIC Archive vocabulary (see pipeline/isic_export.py)
    release/ATTRIBUTION.md                  licence and citation
    release/manifest.csv                    every other file: sha256, size, split, image and lesion ID, label
and a summary (counts per split and class) written beside it as a DVC metrics file.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

from .common import atomic_write_bytes, read_csv, sha256_file, write_csv
from .integrity import copy_verified, make_readable
from .isic_export import write_isic_csv
from .vocabulary import HAM_COLUMNS, RELEASE_COLUMNS, SPLITS

MANIFEST_COLUMNS = ("path", "sha256", "bytes", "split", "image_id", "lesion_id", "dx")


def build_release(metadata_csv: Path, images_csv: Path, splits_csv: Path, standardised_dir: Path, params: dict,
                  release_dir: Path, summary_json: Path) -> dict:
    rows = read_csv(metadata_csv, HAM_COLUMNS)
    files = {r["image_id"]: r for r in read_csv(images_csv, ("image_id", "file", "sha256"))}
    split_of = {r["lesion_id"]: r["split"] for r in read_csv(splits_csv, ("lesion_id", "split"))}
    release_dir = Path(release_dir)
    if release_dir.exists():
        shutil.rmtree(release_dir)
    by_split = defaultdict(list)
    for row in rows:
        by_split[split_of[row["lesion_id"]]].append(row)

    manifest = []
    for split in SPLITS:
        if not by_split[split]:
            continue
        for row in by_split[split]:
            relative = f"{split}/images/{row['image_id']}.jpg"
            copy_verified(Path(standardised_dir) / files[row["image_id"]]["file"], release_dir / relative,
                          files[row["image_id"]]["sha256"])
            manifest.append({"path": relative, "split": split, "image_id": row["image_id"],
                             "lesion_id": row["lesion_id"], "dx": row["dx"]})
        write_csv(release_dir / split / "metadata.csv", by_split[split], RELEASE_COLUMNS)
        write_isic_csv(by_split[split], release_dir / split / "isic_metadata.csv", params["isic_attribution"],
                       params["isic_license"])
        manifest.append({"path": f"{split}/metadata.csv", "split": split})
        manifest.append({"path": f"{split}/isic_metadata.csv", "split": split})
    attribution = (f"# Attribution\n\n{params['attribution'].strip()}\n\n## Licence\n\n{params['license'].strip()}\n")
    atomic_write_bytes(release_dir / "ATTRIBUTION.md", attribution.encode())
    manifest.append({"path": "ATTRIBUTION.md"})
    for entry in manifest:
        path = release_dir / entry["path"]
        entry["sha256"], entry["bytes"] = sha256_file(path), path.stat().st_size
    manifest.sort(key=lambda e: e["path"])
    write_csv(release_dir / "manifest.csv", manifest, MANIFEST_COLUMNS)
    make_readable(release_dir)

    summary = {"images": len(rows), "lesions": len({r["lesion_id"] for r in rows}), "splits": {}}
    for split in SPLITS:
        if by_split[split]:
            split_rows = by_split[split]
            summary["splits"][split] = {"images": len(split_rows),
                                        "lesions": len({r["lesion_id"] for r in split_rows}),
                                        "dx": dict(sorted(Counter(r["dx"] for r in split_rows).items()))}
    atomic_write_bytes(Path(summary_json), (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return summary


def format_summary(summary: dict) -> str:
    classes = sorted({dx for s in summary["splits"].values() for dx in s["dx"]})
    lines = [f"release: {summary['images']} images of {summary['lesions']} lesions",
             f"{'split':<6} {'images':>6} {'lesions':>7}  " + " ".join(f"{c:>5}" for c in classes)]
    for split, counts in summary["splits"].items():
        lines.append(f"{split:<6} {counts['images']:>6} {counts['lesions']:>7}  " +
                     " ".join(f"{counts['dx'].get(c, 0):>5}" for c in classes))
    return "\n".join(lines)
