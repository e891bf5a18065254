"""Stage `release`: metadata + split registry + standardised images -> the release folder.

    release/<split>/images/<image_id>.jpg   the images of each split
    release/<split>/metadata.csv            HAM10000 columns (+ dataset) for that split
    release/<split>/isic_contribution.csv   the same rows as ISIC Archive contribution metadata, and
    release/<split>/isic_metadata.csv       as an isic-cli download has them (see pipeline/isic_export.py)
    release/<split>/manifest.csv            that split's files, paths relative to the split folder, so a split
                                            fetched alone (`dvc get ... release/test`) can be checked
    release/ATTRIBUTION.md                  licence and citation
    release/CARD.md, release/card/*.png     the data card: counts per class, dx_type, dataset and split; plots
    release/release.json                    version (params `release.version`), code version, params hash per
                                            section, sha256 of the stage's inputs, counts
    release/manifest.csv                    every other file: sha256, size, split, image and lesion ID, label
and a summary (counts per split and class) written beside it as a DVC metrics file.

Every manifest has the columns of schemas/manifest-row.schema.json; `ham verify` checks a release or one split
against them. Same inputs -> same bytes: release.json carries no timestamp and no git revision, because the commit
that holds dvc.lock cannot be known while `dvc repro` writes the outputs dvc.lock hashes. The git revision of a
release is its tag (`ham tag`), which records the manifest's sha256 in the tag message.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from importlib import metadata as package_metadata
from pathlib import Path

from .common import PipelineError, atomic_write_bytes, read_csv, sha256_file, stable_hash, write_csv
from .integrity import copy_verified, make_readable
from .isic_export import isic_diagnoses, write_isic_outputs
from .vocabulary import HAM_COLUMNS, RELEASE_COLUMNS, SPLITS

MANIFEST_COLUMNS = ("path", "sha256", "bytes", "split", "image_id", "lesion_id", "dx")
HEADER_NAME = "release.json"
FORMAT = 2  # release layout version: 2 = per-split manifests, release.json, data card
PARAM_SECTIONS = ("ingest", "filter", "standardise", "metadata", "split", "release")


def code_version() -> str:
    try:
        return package_metadata.version("ham10000-repo")
    except package_metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def params_hashes(all_params: dict) -> dict:
    """sha256 of each pipeline section of params.yaml and of all of them together (key order irrelevant)."""
    present = [name for name in PARAM_SECTIONS if name in all_params]
    return {"all": stable_hash({name: all_params[name] for name in present}),
            **{name: stable_hash(all_params[name]) for name in present}}


def build_release(metadata_csv: Path, images_csv: Path, splits_csv: Path, standardised_dir: Path, params: dict,
                  release_dir: Path, summary_json: Path, all_params: dict | None = None) -> dict:
    """`params` is the `release` section; `all_params` the whole params file, hashed into release.json."""
    rows = read_csv(metadata_csv, HAM_COLUMNS)
    files = {r["image_id"]: r for r in read_csv(images_csv, ("image_id", "file", "sha256"))}
    hierarchy = isic_diagnoses(images_csv)  # image_id -> ISIC diagnosis node, for the ISIC outputs
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
        split_manifest = []
        for row in by_split[split]:
            relative = f"images/{row['image_id']}.jpg"
            # A hard link from the standardised store (a copy across devices), checked against the sha256 the
            # metadata stage recorded: a corrupt file never reaches release/.
            copy_verified(Path(standardised_dir) / files[row["image_id"]]["file"], release_dir / split / relative,
                          files[row["image_id"]]["sha256"])
            split_manifest.append({"path": relative, "split": split, "image_id": row["image_id"],
                                   "lesion_id": row["lesion_id"], "dx": row["dx"]})
        write_csv(release_dir / split / "metadata.csv", by_split[split], RELEASE_COLUMNS)
        split_manifest.append({"path": "metadata.csv", "split": split})
        for name in write_isic_outputs(by_split[split], release_dir / split, hierarchy, params["isic_attribution"],
                                       params["isic_license"]):
            split_manifest.append({"path": name, "split": split})
        fill_hashes(release_dir / split, split_manifest)
        write_csv(release_dir / split / "manifest.csv", split_manifest, MANIFEST_COLUMNS)
        manifest += [{**entry, "path": f"{split}/{entry['path']}"} for entry in split_manifest]
        manifest.append({"path": f"{split}/manifest.csv", "split": split})

    attribution = (f"# Attribution\n\n{params['attribution'].strip()}\n\n## Licence\n\n{params['license'].strip()}\n")
    atomic_write_bytes(release_dir / "ATTRIBUTION.md", attribution.encode())
    manifest.append({"path": "ATTRIBUTION.md"})

    summary = summarise(rows, by_split)
    from .card import write_card  # matplotlib is imported only where the card is drawn

    for path in write_card(release_dir, {s: by_split[s] for s in SPLITS if by_split[s]}, params, summary):
        manifest.append({"path": path})

    inputs = {name: sha256_file(Path(path)) for name, path in
              (("metadata.csv", metadata_csv), ("images.csv", images_csv), ("splits.csv", splits_csv))}
    header = {"format": FORMAT, "version": str(params.get("version") or "unversioned"),
              "code_version": code_version(), "params_sha256": params_hashes(all_params or {"release": params}),
              "inputs_sha256": inputs, "summary": summary,
              "git_revision": None, "git_revision_note": "a release cannot hold the commit that records its own "
              "hash in dvc.lock; its revision is its git tag (see `ham tag`)"}
    atomic_write_bytes(release_dir / HEADER_NAME, (json.dumps(header, indent=2, sort_keys=True) + "\n").encode())
    manifest.append({"path": HEADER_NAME})

    manifest = [entry for entry in manifest if "sha256" in entry] + \
        fill_hashes(release_dir, [entry for entry in manifest if "sha256" not in entry])
    manifest.sort(key=lambda e: e["path"])
    write_csv(release_dir / "manifest.csv", manifest, MANIFEST_COLUMNS)
    make_readable(release_dir)
    atomic_write_bytes(Path(summary_json), (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return summary


def fill_hashes(folder: Path, entries: list[dict]) -> list[dict]:
    for entry in entries:
        path = folder / entry["path"]
        entry["sha256"], entry["bytes"] = sha256_file(path), path.stat().st_size
    entries.sort(key=lambda e: e["path"])
    return entries


def summarise(rows: list[dict], by_split: dict) -> dict:
    summary = {"images": len(rows), "lesions": len({r["lesion_id"] for r in rows}), "splits": {}}
    for split in SPLITS:
        if by_split[split]:
            split_rows = by_split[split]
            summary["splits"][split] = {"images": len(split_rows),
                                        "lesions": len({r["lesion_id"] for r in split_rows}),
                                        "dx": dict(sorted(Counter(r["dx"] for r in split_rows).items())),
                                        "dx_type": dict(sorted(Counter(r["dx_type"] for r in split_rows).items())),
                                        "dataset": dict(sorted(Counter(r["dataset"] for r in split_rows).items()))}
    return summary


def format_summary(summary: dict) -> str:
    classes = sorted({dx for s in summary["splits"].values() for dx in s["dx"]})
    lines = [f"release: {summary['images']} images of {summary['lesions']} lesions",
             f"{'split':<6} {'images':>6} {'lesions':>7}  " + " ".join(f"{c:>5}" for c in classes)]
    ordered = sorted(summary["splits"].items(), key=lambda item: SPLITS.index(item[0]) if item[0] in SPLITS else 9)
    for split, counts in ordered:
        lines.append(f"{split:<6} {counts['images']:>6} {counts['lesions']:>7}  " +
                     " ".join(f"{counts['dx'].get(c, 0):>5}" for c in classes))
    return "\n".join(lines)


def read_summary(path: Path) -> dict:
    """The summary of a release from metrics/release.json, a release.json or a release folder; PipelineError
    with one line for anything else."""
    path = Path(path)
    if path.is_dir():
        path = path / HEADER_NAME
    if not path.exists():
        raise PipelineError(f"{path}: not found; run `dvc repro` first (or give metrics/release.json, "
                            f"release/{HEADER_NAME} or a release folder)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        hint = " (a CSV; `ham verify` checks a manifest, `ham validate` a metadata CSV)" if path.suffix == ".csv" else ""
        raise PipelineError(f"{path}: not a release summary: not JSON{hint}; give metrics/release.json, "
                            f"release/{HEADER_NAME} or a release folder") from None
    data = data.get("summary", data) if isinstance(data, dict) else data
    if not (isinstance(data, dict) and isinstance(data.get("splits"), dict) and "images" in data):
        raise PipelineError(f"{path}: not a release summary (no 'images' and 'splits')")
    return data
