"""Content checks at the hand-overs between stages: a file is trusted by its bytes, never by its name.

- `matches(path, sha256)`: whether a stored file (an ingest object, a standardised image) still hashes to the
  value recorded for it when it was made; a store keeps a file only when it does, and rebuilds it otherwise.
- `copy_verified(source, target, sha256)`: the release's copy of a standardised image, checked against the
  standardised index's sha256 as it is written; a mismatch removes the copy and raises `CorruptFile` naming the
  file, so a corrupt image never stays in `release/`. `make_readable(folder)`: every file 0644 and folder 0755
  whatever the umask (release files are for everyone).
- A pulled or checked-out release (DVC trusts its cache) is checked against its manifest by `ham verify`
  (`pipeline/verify.py`).
- `HashStore(folder)`: the sha256 of every file a persistent store (the standardised images) made, kept in the
  folder itself (`SHA256SUMS`, so it persists with it while the stage's other outputs are removed before a
  run): a file is reused only while it still hashes to what was recorded when it was written.
- `CheckedFiles(record_json)`: which files of a store this machine has read and found to hash to their recorded
  sha256, with each one's inode, device, size and mtime at the time; a file whose stat is unchanged is taken as
  checked without reading it again (the trust DVC's own state database gives a tracked file: a write into a file
  changes its mtime, a replacement its inode). The stores are not DVC outputs, so this is their only check; a
  re-run after a small change stats the 11k files of a store instead of hashing them.
- `repair_dvc_locks(repo)`: after a `dvc` process was killed (kill -9, power loss), DVC's lock record
  `.dvc/tmp/rwlock` or `dvc.lock` itself may be left half-written, and every later `dvc` command then stops
  ("Unable to read RWLock-file", "'./dvc.lock' validation failed"); an unreadable rwlock is removed (it only
  lists running dvc processes, and DVC already ignores entries of dead ones), an unreadable dvc.lock replaced by
  git's copy. `python -m pipeline.integrity repair [REPO]` does it; `make repro` runs it first.
- `check_cover_geometry(...)`: the standardise guard, refusing an image whose cover-resize would be degenerate
  (ingest rejects such images first, by `ingest.min_side` and `ingest.max_aspect`; this stops an object store
  filled some other way).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from .common import PipelineError, atomic_write_bytes, sha256_bytes, sha256_file

RELEASE_MODE = 0o644
# A standardised image is at most this many times the target's area before the crop (4:3 target, aspect 1:16
# -> 12x); beyond it the source image is degenerate and the resize would take memory out of all proportion.
MAX_COVER_FACTOR = 16


class CorruptFile(PipelineError):
    """A file whose bytes no longer hash to the value recorded for it."""


def matches(path: Path, sha256: str) -> bool:
    """True when `path` is a file whose sha256 is `sha256` (False for a missing or unreadable file)."""
    try:
        return bool(sha256) and sha256_file(path) == sha256
    except OSError:
        return False


def copy_verified(source: Path, target: Path, sha256: str) -> None:
    """Place `source` at `target` (a hard link where possible, else a copy: `linking.place`; mode 0644) and check
    it hashes to `sha256`; else remove it and raise."""
    from .linking import place

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    place(source, target)
    os.chmod(target, RELEASE_MODE)
    if not matches(target, sha256):
        target.unlink(missing_ok=True)
        raise CorruptFile(f"{source}: content does not match the sha256 {sha256[:12]}... recorded in the standardised "
                          f"index (corrupt or replaced file); rebuild it with `dvc repro --force -s standardise` "
                          f"(or delete it and run `dvc repro`)")


def make_readable(folder: Path) -> None:
    """Mode 0644 for every file under `folder`, 0755 for every folder (itself included), whatever the umask."""
    folder = Path(folder)
    os.chmod(folder, 0o755)
    for path in folder.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else RELEASE_MODE)


def check_cover_geometry(name: str, width: int, height: int, target_width: int, target_height: int) -> None:
    """Raise PipelineError naming `name` when covering the target box would scale the image to more than
    MAX_COVER_FACTOR times the box's area (a 1x800 strip, a 0-pixel side)."""
    if width < 1 or height < 1:
        raise PipelineError(f"{name}: image is {width}x{height}, nothing to standardise")
    long_side, short_side = max(width, height), min(width, height)
    box_long, box_short = max(target_width, target_height), min(target_width, target_height)
    scale = max(box_long / long_side, box_short / short_side)
    if long_side * scale * short_side * scale > MAX_COVER_FACTOR * target_width * target_height:
        raise PipelineError(f"{name}: image is {width}x{height}, too narrow to cover {target_width}x"
                            f"{target_height} (it would be scaled to {round(long_side * scale)}x"
                            f"{round(short_side * scale)}); ingest rejects such images by ingest.max_aspect")


OBJECT_INDEX = "index.csv"  # ingest's list of its objects: candidate_id, object (file name), sha256 of its bytes


def object_sums(objects_dir: Path) -> dict[str, str]:
    """Object file name -> the sha256 ingest recorded for its bytes (`objects/index.csv`); {} where there is none
    (an S3 store's objects are checked by whoever reads them)."""
    from .common import read_csv

    try:
        return {row["object"]: row["sha256"] for row in read_csv(Path(objects_dir) / OBJECT_INDEX, ("object", "sha256"))}
    except PipelineError:
        return {}


def damaged_object(path: Path, what: str) -> str:
    """The one-line message for an object of ingest's store whose bytes no longer hash to what ingest recorded."""
    return (f"{path}: {what} no longer hashes to the sha256 in objects/{OBJECT_INDEX} (damaged in the store); "
            f"make it again from its source with `dvc repro --force -s ingest`")


def check_objects(objects_dir: Path, names: list[str], what: str = "object") -> None:
    """Raise CorruptFile for the first of `names` (files of ingest's local store) that is missing from the index or
    does not hash to the sha256 recorded there."""
    sums = object_sums(objects_dir)
    if not sums:
        return
    for name in names:
        if not matches(Path(objects_dir) / name, sums.get(name, "")):
            raise CorruptFile(damaged_object(Path(objects_dir) / name, what))


class CheckedFiles:
    """name -> [sha256, inode, device, size, mtime_ns] of the files of `folder` last found to hash to sha256, kept
    in `record_json` (machine-local: beside a stage's outputs, never one of them). `matches(name, sha256)` stats
    the file and reads it only when the stat differs from the record; `record(name, sha256)` notes a file this
    process just wrote from bytes it hashed; `save()` keeps the entries of this run's `matches` and `record`
    calls only, so the record never outgrows the store."""

    VERSION = 1
    # A file modified within this long before the record was saved may have been written again in the same clock
    # tick as the stat that was recorded ("racy git"): its record is not trusted, the file is read.
    RACY_NS = 2_000_000_000

    def __init__(self, folder: Path, record_json: Path):
        self.folder, self.record_json = os.fspath(folder), Path(record_json)
        self.old: dict[str, list] = {}
        self.new: dict[str, list] = {}
        self.saved_ns = 0
        try:
            stored = json.loads(self.record_json.read_text(encoding="utf-8"))
            if stored.get("version") == self.VERSION and stored.get("folder") == self.folder:
                self.old, self.saved_ns = stored["files"], int(stored["saved_ns"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass  # missing or damaged: every file is read once more

    def _stamp(self, name: str, sha256: str) -> list | None:
        try:
            stat = os.stat(f"{self.folder}/{name}")
        except OSError:
            return None
        return [sha256, stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns]

    def matches(self, name: str, sha256: str) -> bool:
        stamp = self._stamp(name, sha256) if sha256 else None
        if stamp is None:
            return False
        trusted = self.old.get(name) == stamp and stamp[4] < self.saved_ns - self.RACY_NS
        if not trusted and not matches(Path(self.folder) / name, sha256):
            return False
        self.new[name] = stamp
        return True

    def record(self, name: str, sha256: str) -> None:
        stamp = self._stamp(name, sha256)
        if stamp is not None:
            self.new[name] = stamp

    def save(self) -> None:
        atomic_write_bytes(self.record_json, json.dumps(
            {"version": self.VERSION, "folder": self.folder, "saved_ns": time.time_ns(), "files": self.new},
            separators=(",", ":"), sort_keys=True).encode())


class HashStore:
    """`SHA256SUMS` of a persistent output folder: file name -> sha256 recorded when the file was written.

    `intact(name)`: the file exists and hashes to its record (a file without a record, e.g. written by a run
    killed before `save`, is not trusted). `record(name, sha256)` notes a file just written; `save(names)` keeps
    the records of `names` only. The stage keeps the file out of its own clean-up (`NAME`). With `checked_json`,
    a file whose stat is unchanged since it was last checked is not read again (`CheckedFiles`)."""

    NAME = "SHA256SUMS"

    def __init__(self, folder: Path, checked_json: Path | None = None):
        self.folder = Path(folder)
        self.sums: dict[str, str] = {}
        self.checked = CheckedFiles(self.folder, checked_json) if checked_json else None
        try:
            for line in (self.folder / self.NAME).read_text(encoding="utf-8").splitlines():
                digest, _, name = line.partition("  ")
                if len(digest) == 64 and name:
                    self.sums[name] = digest
        except (OSError, UnicodeDecodeError):
            pass  # missing or damaged: every file is checked against nothing, i.e. rebuilt

    def intact(self, name: str) -> bool:
        if self.checked is not None:
            return self.checked.matches(name, self.sums.get(name, ""))
        return matches(self.folder / name, self.sums.get(name, ""))

    def record(self, name: str, sha256: str) -> None:
        """A file just written (by this process or a worker) from bytes that hash to `sha256`."""
        self.sums[name] = sha256
        if self.checked is not None:
            self.checked.record(name, sha256)

    def size(self, name: str) -> int:
        """The size of a file `intact` or `record` just stat-ed (with `checked_json`), else read from disk."""
        stamp = self.checked.new.get(name) if self.checked is not None else None
        return stamp[3] if stamp else (self.folder / name).stat().st_size

    def save(self, names) -> None:
        lines = "".join(f"{self.sums[n]}  {n}\n" for n in sorted(names) if n in self.sums)
        atomic_write_bytes(self.folder / self.NAME, lines.encode("utf-8"))
        if self.checked is not None:
            self.checked.new = {n: s for n, s in self.checked.new.items() if n in names}
            self.checked.save()


def _bad_hashes(node) -> bool:
    """True where an `md5` of the lock is not text: DVC's schema lets `md5: 12345` through, then fails on it with a
    traceback. (A digest cut short is text: DVC reads it, and the stage simply re-runs.)"""
    if isinstance(node, dict):
        return any((key == "md5" and not isinstance(value, str)) or _bad_hashes(value) for key, value in node.items())
    if isinstance(node, list):
        return any(_bad_hashes(item) for item in node)
    return False


def _valid_lockfile(text: str | None) -> bool:
    if not text:
        return False
    try:
        import yaml
        from dvc.schema import COMPILED_LOCKFILE_SCHEMA

        data = yaml.safe_load(text)
        COMPILED_LOCKFILE_SCHEMA(data)
        return not _bad_hashes(data)
    except Exception:  # YAML cut short, or a stage entry cut short (DVC's own schema says which)
        return False


def _git_show(repo: Path, spec: str) -> str | None:
    import subprocess

    result = subprocess.run(["git", "show", spec], cwd=repo, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def repair_dvc_locks(repo: Path = Path(".")) -> list[str]:
    """Undo what a `dvc` killed mid-write leaves behind (DVC rewrites both files in place, not atomically):
    `.dvc/tmp/rwlock` that is not readable JSON is removed; a `dvc.lock` that DVC cannot read is replaced by
    the git index's or HEAD's version (the first DVC can read; none: removed). An older lock only makes
    `dvc repro` re-run the stages it no longer vouches for, and the stores re-check their files by hash.
    Returns what was done, one line each (empty: nothing to repair)."""
    repo, done = Path(repo), []
    rwlock = repo / ".dvc" / "tmp" / "rwlock"
    try:
        json.loads(rwlock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        rwlock.unlink(missing_ok=True)
        done.append(f"removed {rwlock}: half-written by a dvc process that was killed (it lists running dvc "
                    f"processes only)")
    lockfile = repo / "dvc.lock"
    if lockfile.exists() and not _valid_lockfile(lockfile.read_text(encoding="utf-8", errors="replace")):
        for spec, where in ((":dvc.lock", "the git index"), ("HEAD:dvc.lock", "the last commit")):
            text = _git_show(repo, spec)
            if _valid_lockfile(text):
                lockfile.write_text(text, encoding="utf-8")
                done.append(f"{lockfile}: cut short by a killed dvc; restored from {where} (dvc repro re-runs "
                            f"the stages it no longer vouches for)")
                break
        else:
            lockfile.unlink()
            done.append(f"{lockfile}: cut short by a killed dvc and no readable copy in git; removed (dvc repro "
                        f"re-runs every stage)")
    return done


def main(argv: list[str]) -> int:
    """`repair [REPO]`: repair_dvc_locks. (A release's content against its manifest: `ham verify`.)"""
    if len(argv) < 1 or argv[0] != "repair":
        print("usage: python -m pipeline.integrity repair [REPO]   (to check a release: ham verify [RELEASE])",
              file=sys.stderr)
        return 2
    for line in repair_dvc_locks(Path(argv[1]) if len(argv) > 1 else Path(".")):
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
