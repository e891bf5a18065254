"""`ham repair` (`make repro` runs it first): find every file whose bytes no longer match their name or record,
remove every name of it, and make it again.

What is checked (a file is read again only when its stat changed since it was last found intact, as the stores
themselves do, `integrity.CheckedFiles`):
- ingest's objects (`data/interim/ingest/objects`) against the sha256 in `objects/index.csv`;
- the standardised images (`data/interim/standardised/images`) against their `SHA256SUMS`;
- the release's files against `release/manifest.csv`;
- every object of DVC's cache (`.dvc/cache/files/md5`) against its name (the md5 of its content).

Why every name must go: with `cache.type` hardlink, a standardised image is one inode for the store, `release/`
and DVC's cache (an ingest object likewise for the annotated images). Damaged in place, all of them are damaged;
remake one of them and DVC links the release to its damaged cache object again (`dvc repro --force` does, and
`dvc push` sends it). So the repair removes each damaged file and every other name of its inode under `data/`,
`release/` and `models/`, and the damaged cache object, first; then makes them again:
1. `dvc pull` of a raw source (`.dvc` file) that lost a file (a raw file has no other source than the remote);
2. `dvc repro --force -s ingest` / `-s standardise` where objects or standardised images were removed (the
   stores make a missing file again from its source, byte for byte);
3. `dvc repro`: every stage whose output lost a file runs again, and DVC caches the new files;
4. a removed cache object that no stage made again is copied back from an intact file of the same content in the
   workspace, else fetched (`dvc fetch`) from the default remote.
A store file its record lists but that is gone (a repair killed after removing it) has its stage forced the same
way. Then it checks again; what is still damaged or missing is named, one line each (exit 1). Before all this,
what a killed `dvc` leaves half-written (`.dvc/tmp/rwlock`, `dvc.lock`) is repaired
(`integrity.repair_dvc_locks`).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import PipelineError, atomic_write_bytes, read_csv

OBJECTS = Path("data/interim/ingest/objects")
STANDARDISED = Path("data/interim/standardised/images")
RELEASE = Path("release")
CACHE = Path(".dvc/cache/files/md5")
LINKED_TREES = ("data", "release", "models")  # where other names of a damaged inode may be
CACHE_RECORD = Path(".dvc/tmp/ham-repair-checked.json")  # stat of each cache object last found intact


@dataclass(frozen=True)
class Damage:
    path: Path  # relative to the repository
    what: str
    missing: bool = False  # recorded by its store but gone (a repair killed after removing it): made again too

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


@dataclass
class RepairReport:
    found: list[Damage] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def _digest(path: Path, name: str) -> str | None:
    try:
        digest = hashlib.new(name)
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def _store_damage(repo: Path) -> list[Damage]:
    from .integrity import OBJECT_INDEX, CheckedFiles, HashStore, object_sums
    from .ingest import CHECKED_OBJECTS
    from .standardise import CHECKED_JSON

    found = []
    objects = repo / OBJECTS
    checked = CheckedFiles(objects, objects.parent / CHECKED_OBJECTS)
    for name, sha256 in sorted(object_sums(objects).items()):
        if not (objects / name).exists():
            found.append(Damage(OBJECTS / name, f"ingest object listed in {OBJECT_INDEX} but missing", True))
        elif not checked.matches(name, sha256):
            found.append(Damage(OBJECTS / name, f"ingest object that no longer hashes to the sha256 in {OBJECT_INDEX}"))
    store = HashStore(repo / STANDARDISED, (repo / STANDARDISED).parent / CHECKED_JSON)
    for name in sorted(store.sums):
        if not (repo / STANDARDISED / name).exists():
            found.append(Damage(STANDARDISED / name, f"standardised image listed in {HashStore.NAME} but missing",
                                True))
        elif not store.intact(name):
            found.append(Damage(STANDARDISED / name, f"standardised image that no longer hashes to the sha256 in "
                                                     f"{HashStore.NAME}"))
    manifest = repo / RELEASE / "manifest.csv"
    if manifest.exists():
        for row in read_csv(manifest, ("path", "sha256")):
            path = repo / RELEASE / row["path"]
            if path.exists() and _digest(path, "sha256") != row["sha256"]:
                found.append(Damage(RELEASE / row["path"], "release file that no longer matches release/manifest.csv"))
    return found


def _cache_damage(repo: Path) -> list[Damage]:
    """Objects of DVC's cache whose md5 is not their name; a stat unchanged since the last intact check is
    trusted (as DVC's own state database does), except within the racy window of that check."""
    record_path = repo / CACHE_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        old, saved_ns = record["files"], int(record["saved_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        old, saved_ns = {}, 0
    new, found = {}, []
    root = repo / CACHE
    for folder in sorted(root.glob("??")):
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue  # DVC's temporary copy of an interrupted transfer
            name = folder.name + path.name
            info = path.stat()
            stamp = [info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns]
            if old.get(name) == stamp and info.st_mtime_ns < saved_ns - 2_000_000_000:
                new[name] = stamp
            elif _digest(path, "md5") == name.removesuffix(".dir"):
                new[name] = stamp
            else:
                found.append(Damage(path.relative_to(repo), "DVC cache object whose content no longer hashes to "
                                                            "its name"))
    if root.exists():
        atomic_write_bytes(record_path, json.dumps({"saved_ns": time.time_ns(), "files": new}).encode())
    return found


def find_damage(repo: Path = Path(".")) -> list[Damage]:
    """Every damaged store file, release file and DVC cache object (see the module docstring)."""
    repo = Path(repo)
    return _store_damage(repo) + _cache_damage(repo)


def _other_names(repo: Path, inodes: set[tuple[int, int]], known: set[Path]) -> list[Path]:
    """Files under LINKED_TREES (not followed through links) that are one of `inodes`, besides `known`."""
    found = []
    for top in LINKED_TREES:
        for folder, _, files in os.walk(repo / top):
            for name in files:
                path = Path(folder) / name
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) in inodes:
                    relative = path.relative_to(repo)
                    if relative not in known:
                        found.append(relative)
    return found


def _tracked_source(repo: Path, relative: Path) -> Path | None:
    """The `.dvc` file tracking `relative` (a file under `data/raw/...`), if any."""
    for parent in [relative, *relative.parents]:
        candidate = repo / parent.parent / f"{parent.name}.dvc"
        if parent.name and candidate.is_file():
            return candidate.relative_to(repo)
    return None


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """A `dvc` command, with this environment's bin folder first on PATH (the stage commands call `ham`)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    dvc = bin_dir / "dvc"
    return subprocess.run([str(dvc) if dvc.exists() else "dvc", *args], cwd=repo, capture_output=True, text=True,
                          env=env)


def _restore_cache_objects(repo: Path, oids: list[str]) -> list[str]:
    """Copy each missing cache object back from a workspace file of the same md5 (found by size first); returns the
    oids still missing."""
    wanted = {oid: None for oid in oids if not (repo / CACHE / oid[:2] / oid[2:]).exists()}
    if not wanted:
        return []
    sizes: dict[int, list[Path]] = {}
    for top in LINKED_TREES:
        for folder, _, files in os.walk(repo / top):
            for name in files:
                path = Path(folder) / name
                if path.is_file() and not path.is_symlink():
                    sizes.setdefault(path.stat().st_size, []).append(path)
    by_md5 = {}
    for paths in sizes.values():
        for path in paths:
            digest = _digest(path, "md5")
            if digest in wanted and digest not in by_md5:
                by_md5[digest] = path
    left = []
    for oid in wanted:
        if oid in by_md5:
            target = repo / CACHE / oid[:2] / oid[2:]
            atomic_write_bytes(target, by_md5[oid].read_bytes())
            os.chmod(target, 0o444)
        else:
            left.append(oid)
    return left


def repair(repo: Path = Path("."), remake: bool = True) -> RepairReport:
    """Find the damage, remove every name of each damaged file, make them again (module docstring)."""
    from .integrity import repair_dvc_locks

    repo = Path(repo)
    report = RepairReport()
    if remake:  # --check-only changes nothing
        report.done += repair_dvc_locks(repo)
    report.found = find_damage(repo)
    if not report.found or not remake:
        return report
    damaged = {d.path for d in report.found if not d.missing}
    inodes = set()
    for path in damaged:
        info = os.lstat(repo / path)
        inodes.add((info.st_dev, info.st_ino))
    removed = sorted(damaged | set(_other_names(repo, inodes, damaged))) if inodes else []
    for path in removed:
        (repo / path).unlink()
    if removed:
        report.done.append(f"removed {len(removed)} damaged files (every name of each): "
                           + ", ".join(p.as_posix() for p in removed[:8]) + (" ..." if len(removed) > 8 else ""))
    gone = removed + [d.path for d in report.found if d.missing]
    lost_oids = [p.parent.name + p.name for p in removed if p.is_relative_to(CACHE)]

    sources = sorted({s for p in removed if not p.is_relative_to(CACHE) for s in [_tracked_source(repo, p)] if s})
    if sources:
        pulled = _dvc(repo, "pull", "-q", *map(str, sources))
        report.done.append(f"dvc pull {' '.join(map(str, sources))}: exit {pulled.returncode}")
        if pulled.returncode:
            report.left.append(f"{', '.join(map(str, sources))}: a raw file was damaged and `dvc pull` could not "
                               f"fetch it again: {(pulled.stderr or pulled.stdout).strip().splitlines()[-1:]}")
    for store, stage in ((OBJECTS, "ingest"), (STANDARDISED, "standardise")):
        if any(p.is_relative_to(store) for p in gone):
            forced = _dvc(repo, "repro", "--force", "-s", stage)
            report.done.append(f"dvc repro --force -s {stage}: exit {forced.returncode}")
            if forced.returncode:
                report.left.append(f"dvc repro --force -s {stage} failed: "
                                   f"{(forced.stderr or forced.stdout).strip().splitlines()[-1:]}")
    rebuilt = _dvc(repo, "repro")
    report.done.append(f"dvc repro: exit {rebuilt.returncode}")
    if rebuilt.returncode:
        report.left.append(f"dvc repro failed: {(rebuilt.stderr or rebuilt.stdout).strip().splitlines()[-1:]}")
    missing = _restore_cache_objects(repo, lost_oids)
    if missing:
        fetched = _dvc(repo, "fetch", "-q")
        report.done.append(f"dvc fetch: exit {fetched.returncode}")
        missing = [oid for oid in missing if not (repo / CACHE / oid[:2] / oid[2:]).exists()]
    report.left += [f"{CACHE / oid[:2] / oid[2:]}: removed from DVC's cache (damaged); no intact copy here and "
                    f"none fetched: `dvc fetch -r REMOTE` from a remote that holds it" for oid in missing]
    report.left += [str(d) + " (still, after the repair)" for d in find_damage(repo)]
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.repair [REPO]`: what `ham repair` does (`make repro` runs it first)."""
    argv = sys.argv[1:] if argv is None else argv
    report = repair(Path(argv[0]) if argv else Path("."))
    for line in [*map(str, report.found), *report.done, *report.left]:
        print(line, file=sys.stderr)
    return 1 if report.left else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PipelineError as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(1)
