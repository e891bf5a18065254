"""Image-type annotations: the CSV a person writes (`IMAGE,ANNOTATION,TIMESTAMP`, keys d / c / m, as in the
authors' keyboard tool) and the `annotated` stage, which gathers the annotated candidates' images for training.

`IMAGE` is the candidate's sha256 (the image file's raw bytes); a later row for the same image overrides an earlier
one, so work can stop and resume at any time. An unknown key is an error naming the file and row.

`collect_annotated` links (across devices: copies) each annotated candidate's stored object into its own folder
with an index (candidate_id, file, image_type, source, lesion_key). It is the only thing `train_filter` reads, so
DVC retrains only when the annotated images or their labels change: adding a batch of unannotated material re-runs
this cheap stage, whose output comes out byte-identical, and DVC then skips training.
"""
from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from .common import PipelineError, atomic_write_bytes, read_csv, sha256_bytes, write_csv
from .integrity import check_objects
from .linking import place
from .vocabulary import ANNOTATION_KEYS, IMAGE_SUFFIXES, IMAGE_TYPE_FROM_ISIC, IMAGE_TYPES  # noqa: F401 (IMAGE_TYPES re-exported)

KEY_OF_TYPE = {image_type: key for key, image_type in ANNOTATION_KEYS.items()}
ANNOTATION_COLUMNS = ("IMAGE", "ANNOTATION", "TIMESTAMP")
ANNOTATED_INDEX_COLUMNS = ("candidate_id", "file", "image_type", "source", "lesion_key")


def read_annotations(path: Path) -> dict[str, str]:
    """candidate_id -> image type; a later annotation of the same image overrides an earlier one (resumed work)."""
    rows = read_csv(path, ("IMAGE", "ANNOTATION"))
    labels = {}
    for number, row in enumerate(rows, start=2):
        key = (row["ANNOTATION"] or "").strip().lower()
        if key not in ANNOTATION_KEYS:
            raise PipelineError(f"{path} row {number}: ANNOTATION {row['ANNOTATION']!r} is not one of d, c, m")
        labels[(row["IMAGE"] or "").strip()] = ANNOTATION_KEYS[key]
    return labels


def read_annotations_if_any(path: Path | None) -> dict[str, str]:
    return read_annotations(Path(path)) if path and Path(path).exists() else {}


def replace_file(path: Path, data: bytes) -> None:
    """Make `path` hold `data` by writing a new file beside it, fsyncing it and renaming it over the old one (then
    fsyncing the folder), never by writing into the old file. Under DVC with `cache.type hardlink` a file that
    `dvc add` tracks is the same inode as its cache object: a write into it would change the cache object too,
    which then no longer matches its md5. A rename leaves every other link of the old file as it was; the
    file's permission bits carry over (DVC leaves linked files read-only, a fresh copy is the user's own)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777 | 0o200  # the owner may write the new file
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)


def append_annotation(path: Path, image: str, key: str, timestamp: str | None = None) -> int:
    """Add one `IMAGE,ANNOTATION,TIMESTAMP` row (header first if the file is new or empty), written whole to a
    new file that replaces the old one (`replace_file`); returns the file's length before the row, so the answer
    can be undone with `truncate_annotations`."""
    if key not in ANNOTATION_KEYS:
        raise PipelineError(f"annotation key {key!r} is not one of d, c, m")
    path = Path(path)
    timestamp = timestamp or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    old = path.read_bytes() if path.exists() else b""
    prefix = b""
    if not old:
        prefix = (",".join(ANNOTATION_COLUMNS) + "\n").encode()
    elif not old.endswith((b"\n", b"\r")):
        prefix = b"\n"  # a file whose last line has no line end
    replace_file(path, old + prefix + f"{image},{key},{timestamp}\n".encode())
    return len(old)


def annotation_key(value: str) -> str | None:
    """d / c / m from a label as people write it: the key, the type (dsc, macro, clinic) or ISIC's image_type
    (dermoscopic, clinical: close-up, clinical: overview); None when it is none of them."""
    value = (value or "").strip().lower()
    if value in ANNOTATION_KEYS:
        return value
    image_type = value if value in IMAGE_TYPES else IMAGE_TYPE_FROM_ISIC.get(value)
    return KEY_OF_TYPE.get(image_type) if image_type else None


def images_under(path: Path) -> list[Path]:
    """A file, or every image file under a folder (by suffix, hidden ones included), in sorted order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PipelineError(f"{path}: no such file or folder")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def labels_from_manifest(manifest: Path, file_column: str, type_column: str) -> list[tuple[Path, str]]:
    """(file, key) per manifest row; files relative to the manifest's folder. A row without a known label or whose
    file is missing is an error naming the row."""
    manifest = Path(manifest)
    rows = read_csv(manifest, (file_column, type_column))
    labelled = []
    for number, row in enumerate(rows, start=2):
        key = annotation_key(row[type_column] or "")
        if key is None:
            raise PipelineError(f"{manifest} row {number}: {type_column} {row[type_column]!r} is not an image type "
                                f"(d, c, m, dsc, macro, clinic, or ISIC's dermoscopic, clinical: close-up, "
                                f"clinical: overview)")
        path = manifest.parent / (row[file_column] or "")
        if not path.is_file():
            raise PipelineError(f"{manifest} row {number}: {file_column} {row[file_column]!r}: no such file")
        labelled.append((path, key))
    return labelled


def import_labels(annotations_csv: Path, labelled: list[tuple[Path, str]], timestamp: str | None = None) -> dict:
    """Bring labels a maintainer already has into the annotations: one `IMAGE,ANNOTATION,TIMESTAMP` row per image
    whose current label differs (an image already labelled so is left alone, so importing twice adds nothing). The
    file is written anew and renamed into place, so a hard link to it (DVC's cache object, with cache type
    hardlink) is never changed. Returns counts: added, unchanged, relabelled."""
    annotations_csv = Path(annotations_csv)
    current = read_annotations_if_any(annotations_csv)
    timestamp = timestamp or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    lines, counts, seen = [], {"added": 0, "unchanged": 0, "relabelled": 0}, {}
    for path, key in labelled:
        if key not in ANNOTATION_KEYS:
            raise PipelineError(f"annotation key {key!r} is not one of d, c, m")
        try:
            image = sha256_bytes(Path(path).read_bytes())
        except OSError as error:
            raise PipelineError(f"{path}: cannot be read ({error.strerror or error})") from None
        if seen.get(image, key) != key:
            raise PipelineError(f"{path}: the same image is labelled both {seen[image]} and {key} in this import")
        seen[image] = key
        if current.get(image) == ANNOTATION_KEYS[key]:
            counts["unchanged"] += 1
            continue
        counts["relabelled" if image in current else "added"] += 1
        current[image] = ANNOTATION_KEYS[key]
        lines.append(f"{image},{key},{timestamp}\n")
    if lines:
        old = annotations_csv.read_bytes() if annotations_csv.exists() else b""
        if not old.strip():
            old = (",".join(ANNOTATION_COLUMNS) + "\n").encode()
        elif not old.endswith((b"\n", b"\r")):
            old += b"\n"
        atomic_write_bytes(annotations_csv, old + "".join(lines).encode())
    return counts


def truncate_annotations(path: Path, length: int) -> None:
    """Cut the file back to its first `length` bytes, by replacing it (`replace_file`) as every write does."""
    replace_file(Path(path), Path(path).read_bytes()[:length])


def collect_annotated(candidates_csv: Path, objects_dir: Path, annotations_csv: Path, out_dir: Path) -> dict:
    """Link the annotated candidates' objects to `out_dir/images/` (`linking.place`) and write `out_dir/index.csv`, sorted by
    candidate_id. Files of images no longer annotated are removed. Annotations of images not (yet) among the
    candidates wait for them."""
    labels = read_annotations(Path(annotations_csv))
    candidates = read_csv(candidates_csv, ("candidate_id", "object", "source", "lesion_key"))
    images_dir = Path(out_dir) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows, to_copy = [], []
    for row in sorted(candidates, key=lambda r: r["candidate_id"]):
        image_type = labels.get(row["candidate_id"])
        if image_type is None:
            continue
        name = f"{row['candidate_id']}{Path(row['object']).suffix}"
        if not (images_dir / name).exists():
            if not (Path(objects_dir) / row["object"]).exists():
                raise PipelineError(f"{candidates_csv}: object {row['object']} of candidate {row['candidate_id']} "
                                    f"is missing from {objects_dir}")
            to_copy.append((row["object"], images_dir / name))
        rows.append({"candidate_id": row["candidate_id"], "file": f"images/{name}", "image_type": image_type,
                     "source": row["source"], "lesion_key": row["lesion_key"]})
    # The object store is not a DVC output: each object is checked against the sha256 ingest recorded for it.
    check_objects(Path(objects_dir), [object_name for object_name, _ in to_copy], "the object of an annotated image")
    for object_name, target in to_copy:
        # a hard link (a copy across devices): DVC's cache then shares the object's inode, as the release does the
        # standardised store's, so a re-run after new material neither copies nor md5-hashes these images again
        place(Path(objects_dir) / object_name, target)
    wanted = {Path(r["file"]).name for r in rows}
    for stale in images_dir.iterdir():
        if stale.name not in wanted:
            stale.unlink()
    write_csv(Path(out_dir) / "index.csv", rows, ANNOTATED_INDEX_COLUMNS)
    return {"annotated": len(labels), "collected": len(rows), "waiting": len(set(labels) - {r["candidate_id"]
                                                                                             for r in rows})}
