"""Stage `release`: metadata + split registry + standardised images -> the release folder.

    release/<split>/images/<image_id>.jpg   the images of each split
    release/<split>/metadata.csv            HAM10000 columns (+ dataset) for that split
    release/<split>/isic_contribution.csv   the same rows as ISIC Archive contribution metadata, and
    release/<split>/isic_metadata.csv       as an isic-cli download has them (see pipeline/isic_export.py)
    release/<split>/manifest.csv            that split's files, paths relative to the split folder, so a split
                                            fetched alone (`dvc get ... release/test`) can be checked
    release/<split>/images/metadata.jsonl   the split's index for Hugging Face `datasets`, and
    release/croissant.json                  the release's Croissant descriptor (see pipeline/formats.py)
    release/ATTRIBUTION.md                  licence and citation
    release/CARD.md, release/card/*.png     the data card: counts per class, dx_type, dataset and split; plots
    release/release.json                    version (params `release.version`), code version, params hash per
                                            section, sha256 of the stage's inputs, counts, the image-type
                                            filter's model (`filter_model`: sha256, material, held-out figures)
    release/manifest.csv                    every other file: sha256, size, split, image and lesion ID, label
and a summary (counts per split and class) written beside it as a DVC metrics file.

Updating: run by hand (`ham release`), the folder is updated in place: an image already there with the right
content is kept, a new or changed one is hard-linked from the standardised store (`linking.place`, a copy across
devices) and checked against the sha256 the metadata stage recorded, and every file or folder no longer in the
release is removed at the end, so the folder holds exactly what a clean build writes, byte for byte. A record
beside the folder (`.<name>.state.json`, see `update_images`) keeps each image's inode, size and mtime when it
was last placed and checked, so a present image is known right without reading it. Under `dvc repro` the release
is an ordinary output, which DVC deletes before the stage runs: an image whose store file still has the recorded
inode, size and mtime is then linked again without being read. (As a persistent output DVC would "unprotect" it
first, turning each linked file into a private copy: see docs/internals.md, "Release linking".) The small files
(metadata, manifests, card, release.json) are written every time; the stage prints what it did.

Every manifest has the columns of schemas/manifest-row.schema.json; `ham verify` checks a release or one split
against them. Same inputs -> same bytes: release.json carries no timestamp and no git revision, because the commit
that holds dvc.lock cannot be known while `dvc repro` writes the outputs dvc.lock hashes. The git revision of a
release is its tag (`ham tag`), which records the manifest's sha256 in the tag message.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from importlib import metadata as package_metadata
from pathlib import Path
from stat import S_ISREG

from .common import PipelineError, atomic_write_bytes, read_csv, sha256_file, stable_hash, write_csv
from .integrity import RELEASE_MODE, copy_verified, matches
from .formats import write_formats
from .linking import place
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


def filter_model_card(filter_metrics: dict, filter_params: dict) -> dict:
    """What a release says of the image-type filter that chose its images: the model file's sha256, the material
    it was trained on, its held-out figures and calibration (from `train_filter`'s metrics) and the thresholds."""
    return {"model_sha256": filter_metrics.get("model_sha256"), "trained_on": filter_metrics.get("trained_on"),
            "material": filter_metrics.get("material", {}).get("per_source", {}),
            "held_out": filter_metrics.get("held_out"), "held_out_accuracy": filter_metrics.get("holdout_accuracy"),
            "held_out_per_source": filter_metrics.get("held_out_per_source", {}),
            "temperature": filter_metrics.get("temperature"),
            **{key: filter_params.get(key) for key in ("keep_types", "min_confidence", "review_below",
                                                        "trust_source_types")}}


def build_release(metadata_csv: Path, images_csv: Path, splits_csv: Path, standardised_dir: Path, params: dict,
                  release_dir: Path, summary_json: Path, all_params: dict | None = None,
                  state_json: Path | None = None, report: dict | None = None,
                  filter_model: dict | None = None) -> dict:
    """`params` is the `release` section; `all_params` the whole params file, hashed into release.json;
    `filter_model` (`filter_model_card`) goes into release.json and the card.

    Updates `release_dir` in place (see the module docstring); `state_json` is the placement record (default
    `state_path`); `report`, when given, receives what was done: kept, rehashed, linked, copied, removed."""
    from .card import CardDrawing  # matplotlib is imported only where the card is drawn

    card = CardDrawing(release_dir)  # forks the card's drawing process now, so its imports overlap the reading
    try:
        return _build_release(card, metadata_csv, images_csv, splits_csv, standardised_dir,
                              {**params, "filter_model": filter_model} if filter_model else params, release_dir,
                              summary_json, all_params, state_json, report)
    except BaseException:
        card.abandon()  # a damaged image, say: the drawing is not waited for
        raise


def _build_release(card, metadata_csv: Path, images_csv: Path, splits_csv: Path, standardised_dir: Path,
                   params: dict, release_dir: Path, summary_json: Path, all_params: dict | None,
                   state_json: Path | None, report: dict | None) -> dict:
    rows = read_csv(metadata_csv, HAM_COLUMNS)
    files = {r["image_id"]: r for r in read_csv(images_csv, ("image_id", "file", "sha256"))}
    hierarchy = isic_diagnoses(images_csv)  # image_id -> ISIC diagnosis node, for the ISIC outputs
    split_of = {r["lesion_id"]: r["split"] for r in read_csv(splits_csv, ("lesion_id", "split"))}
    release_dir = Path(release_dir)
    release_dir.mkdir(parents=True, exist_ok=True)
    for old_manifest in [release_dir / "manifest.csv", *release_dir.glob("*/manifest.csv")]:
        old_manifest.unlink(missing_ok=True)  # written last: no manifest vouches for a release half updated
    by_split = defaultdict(list)
    for row in rows:
        by_split[split_of[row["lesion_id"]]].append(row)

    store = os.fspath(standardised_dir)
    summary = summarise(rows, by_split)
    # Drawn from the store's files (the bytes each image is checked against as it is placed) while the images are
    # linked and the tables written.
    source_of = {row["image_id"]: f"{store}/{files[row['image_id']]['file']}" for row in rows}
    card.draw(source_of, {s: by_split[s] for s in SPLITS if by_split[s]}, params, summary)
    plan = [(f"{split_of[row['lesion_id']]}/images/{row['image_id']}.jpg", source_of[row["image_id"]],
             files[row["image_id"]]["sha256"]) for row in rows]
    placed = update_images(release_dir, plan, state_path(release_dir, state_json))
    # The Hugging Face index of each split and croissant.json: {split: [paths in the split], None: [top-level]}.
    formats = write_formats(release_dir, {split: by_split[split] for split in SPLITS if by_split[split]}, params)
    manifest = []
    for split in SPLITS:
        if not by_split[split]:
            continue
        split_manifest = []
        for row in by_split[split]:
            relative = f"images/{row['image_id']}.jpg"
            # The sha256 each image was checked against as it was placed (or when it was last placed, for one
            # whose inode, size and mtime are unchanged since), and its size: images are not hashed again.
            sha, size = placed["files"][f"{split}/{relative}"]
            split_manifest.append({"path": relative, "split": split, "image_id": row["image_id"],
                                   "lesion_id": row["lesion_id"], "dx": row["dx"], "sha256": sha, "bytes": size})
        write_csv(release_dir / split / "metadata.csv", by_split[split], RELEASE_COLUMNS)
        split_manifest.append({"path": "metadata.csv", "split": split})
        for name in write_isic_outputs(by_split[split], release_dir / split, hierarchy, params["isic_attribution"],
                                       params["isic_license"]):
            split_manifest.append({"path": name, "split": split})
        split_manifest += [{"path": name, "split": split} for name in formats[split]]
        split_manifest = [e for e in split_manifest if "sha256" in e] + \
            fill_hashes(release_dir / split, [e for e in split_manifest if "sha256" not in e])
        split_manifest.sort(key=lambda e: e["path"])
        write_csv(release_dir / split / "manifest.csv", split_manifest, MANIFEST_COLUMNS)
        manifest += [{**entry, "path": f"{split}/{entry['path']}"} for entry in split_manifest]
        manifest.append({"path": f"{split}/manifest.csv", "split": split})

    attribution = (f"# Attribution\n\n{params['attribution'].strip()}\n\n## Licence\n\n{params['license'].strip()}\n")
    atomic_write_bytes(release_dir / "ATTRIBUTION.md", attribution.encode())
    manifest.append({"path": "ATTRIBUTION.md"})
    manifest += [{"path": name} for name in formats[None]]

    for path in card.finish():
        manifest.append({"path": path})

    inputs = {name: sha256_file(Path(path)) for name, path in
              (("metadata.csv", metadata_csv), ("images.csv", images_csv), ("splits.csv", splits_csv))}
    header = {"format": FORMAT, "version": str(params.get("version") or "unversioned"),
              "code_version": code_version(), "params_sha256": params_hashes(all_params or {"release": params}),
              "inputs_sha256": inputs, "summary": summary,
              **({"filter_model": params["filter_model"]} if params.get("filter_model") else {}),
              "git_revision": None, "git_revision_note": "a release cannot hold the commit that records its own "
              "hash in dvc.lock; its revision is its git tag (see `ham tag`)"}
    atomic_write_bytes(release_dir / HEADER_NAME, (json.dumps(header, indent=2, sort_keys=True) + "\n").encode())
    manifest.append({"path": HEADER_NAME})

    manifest = [entry for entry in manifest if "sha256" in entry] + \
        fill_hashes(release_dir, [entry for entry in manifest if "sha256" not in entry])
    manifest.sort(key=lambda e: e["path"])
    write_csv(release_dir / "manifest.csv", manifest, MANIFEST_COLUMNS)
    removed = remove_stale(release_dir, {entry["path"] for entry in manifest} | {"manifest.csv"}, placed["files"])
    atomic_write_bytes(Path(summary_json), (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    counts = {**placed["counts"], "other_files_written": len(manifest) - len(plan) + 1, "removed": removed}
    print(f"release: {len(plan)} images: {counts['kept']} kept, {counts['linked']} linked, "
          f"{counts['copied']} copied ({counts['rehashed']} re-hashed, {counts['relinked_unread']} linked again "
          f"unread); {counts['other_files_written']} other files written, {removed} stale files removed",
          file=sys.stderr)
    if report is not None:
        report.update(counts)
    return summary


STATE_VERSION = 1
# An image's mode is left alone when it is readable by all and writable by none but the owner: 0644 as placed, or
# 0444 where DVC protected the inode it shares with the cache. Setting 0644 again on every run would make DVC's
# check of each cache object take its slow path (a cache file not in DVC's mode is hashed again through its state
# database, then protected again).
READABLE_MODES = (RELEASE_MODE, 0o444)


def state_path(release_dir: Path, state_json: Path | None = None) -> Path:
    """Where the release's placement record lives: beside the release folder, never in it (the folder's bytes
    are those of a clean build)."""
    release_dir = Path(release_dir)
    return Path(state_json) if state_json else release_dir.parent / f".{release_dir.name}.state.json"


def update_images(release_dir: Path, plan: list[tuple[str, Path, str]], state_json: Path) -> dict:
    """Make release_dir/<path> hold the bytes of <source> (sha256 <sha>) for each (path, source, sha) of `plan`,
    touching only what is missing or changed.

    An image is kept without reading it when `state_json` records that it was placed from the same source with
    that sha256 and its inode, device, size and mtime are still the ones recorded then: a write into the file
    (through any of its links) changes its mtime, a replacement its inode, a truncation its size, as DVC's
    own state and git's index rely on. A stat costs microseconds; hashing every kept image again would cost
    about what building the release whole does. An image with no such record (a folder DVC removed and checked
    out again, a copy `dvc unprotect` made) is hashed: kept when its bytes are right, else replaced. Everything
    placed goes through `copy_verified` (a hard link from the store, else a copy, checked against the sha256),
    except an image whose store file still has the inode, size and mtime recorded when it was linked and checked
    last time (DVC deleted the folder before the stage): that one is linked again unread.
    Returns {"files": {path: (sha256, bytes)}, "counts": {"kept", "rehashed", "linked", "copied",
    "relinked_unread"}}."""
    release_dir, state_json = Path(release_dir), Path(state_json)
    try:
        state = json.loads(state_json.read_text(encoding="utf-8"))
        recorded = state["files"] if state.get("version") == STATE_VERSION else {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        recorded = {}
    kept = rehashed = linked = copied = relinked = 0
    files, record = {}, {}
    base = os.fspath(release_dir)
    made: set[str] = set()  # folders known to exist
    # Plain strings and locals in this loop: it runs for every image on every run, and is all a rebuild costs
    # for an image that did not change.
    for path, source, sha in plan:
        target = f"{base}/{path}"
        source = source if isinstance(source, str) else os.fspath(source)
        try:
            stat = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            stat = None
        if stat is not None and not S_ISREG(stat.st_mode):
            stat = None  # a symlink or a folder in an image's place: replaced
        entry = None if stat is None else [sha, source, stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns]
        if entry is not None and recorded.get(path) == entry:
            kept += 1
        elif stat is not None and matches(target, sha):
            kept += 1  # no record (a copy `dvc unprotect` made, a link DVC re-made): right bytes, kept
            rehashed += 1
        else:
            previous = recorded.get(path)
            try:
                origin = os.stat(source)
            except OSError:
                origin = None
            if (previous is not None and origin is not None and previous[:2] == [sha, source]
                    and previous[2:] == [origin.st_ino, origin.st_dev, origin.st_size, origin.st_mtime_ns]):
                # The store file is the one linked here and checked last time (a hard link shares its inode,
                # size and mtime), unchanged since: DVC removed release/ before the stage (it is not a
                # persistent output), so the image is linked again without reading it.
                folder = os.path.dirname(target)
                if folder not in made:
                    os.makedirs(folder, exist_ok=True)
                    made.add(folder)
                place(source, target)
                relinked += 1
            else:
                # A hard link from the standardised store (a copy across devices), checked against the sha256 the
                # metadata stage recorded: a corrupt file never reaches release/.
                copy_verified(Path(source), Path(target), sha)
            stat = os.lstat(target)
            if stat.st_nlink > 1:
                linked += 1
            else:
                copied += 1
            entry = None
        if stat.st_mode & 0o7777 not in READABLE_MODES:
            os.chmod(target, RELEASE_MODE)
        files[path] = (sha, stat.st_size)
        record[path] = entry or [sha, source, stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns]
    if record != recorded:
        atomic_write_bytes(state_json, json.dumps({"version": STATE_VERSION, "files": record},
                                                  separators=(",", ":")).encode())
    return {"files": files, "counts": {"kept": kept, "rehashed": rehashed, "linked": linked, "copied": copied,
                                       "relinked_unread": relinked}}


def remove_stale(release_dir: Path, keep: set[str], checked: set[str] | dict = frozenset()) -> int:
    """Remove every file under release_dir whose relative path is not in `keep` (an older release's images, a
    temporary file of a killed run) and every folder left empty; give what stays mode 0644 (folders 0755)
    where it has another, except the files in `checked` (their mode was just seen to, by `update_images`).
    Returns how many files were removed."""
    removed = 0

    def walk(folder: str, prefix: str) -> bool:  # True when the folder is left empty
        nonlocal removed
        left = 0
        with os.scandir(folder) as entries:
            for entry in entries:
                relative = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if walk(entry.path, relative + "/"):
                        os.rmdir(entry.path)
                        continue
                    if entry.stat(follow_symlinks=False).st_mode & 0o7777 != 0o755:
                        os.chmod(entry.path, 0o755)
                elif relative not in keep:
                    os.unlink(entry.path)
                    removed += 1
                    continue
                elif relative not in checked and entry.stat(follow_symlinks=False).st_mode & 0o7777 not in READABLE_MODES:
                    os.chmod(entry.path, RELEASE_MODE)
                left += 1
        return left == 0

    walk(os.fspath(release_dir), "")
    if os.stat(release_dir).st_mode & 0o7777 != 0o755:
        os.chmod(release_dir, 0o755)
    return removed


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


def summarise_split_folder(folder: Path) -> dict:
    """The summary of one split folder as `dvc get REPO release/test` gives it (metadata.csv, manifest.csv, images;
    no release.json): the split's name from its manifest (the folder may be renamed), else the folder's name."""
    rows = read_csv(folder / "metadata.csv", ("image_id", "lesion_id", "dx"))
    split = folder.name
    if (folder / "manifest.csv").exists():
        named = {row.get("split", "") for row in read_csv(folder / "manifest.csv")} - {""}
        if len(named) == 1:
            split = named.pop()
    for row in rows:  # an older release's metadata may lack the newer columns
        row.setdefault("dx_type", "")
        row.setdefault("dataset", "")
    whole = summarise(rows, {**{name: [] for name in SPLITS}, SPLITS[0]: rows})
    return {**whole, "splits": {split: whole["splits"][SPLITS[0]]}}


def read_summary(path: Path) -> dict:
    """The summary of a release from metrics/release.json, a release.json, a release folder or one split folder;
    PipelineError with one line for anything else."""
    path = Path(path)
    if path.is_dir() and not (path / HEADER_NAME).exists() and (path / "metadata.csv").exists():
        return summarise_split_folder(path)
    if path.is_dir():
        path = path / HEADER_NAME
    if not path.exists():
        raise PipelineError(f"{path}: not found; give metrics/release.json, release/{HEADER_NAME}, a release "
                            f"folder or one split folder of a release (in the maintainer's checkout: `dvc repro` "
                            f"first)")
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
