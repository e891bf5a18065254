"""`ham add data/raw/<source>`: refuse links that lead out of a raw source, then `dvc add` it.

`dvc add` follows links: a symbolic link's target, wherever it is, is copied into the cache and pushed with the
source, and a hard link is the outside file itself (with `cache.type` hardlink DVC links the cache to that inode
and makes it read-only, the outside file with it). `outward_links(source)` scans the source without following
anything and names, one line each:
- a symbolic link (to a file or a folder) whose target resolves outside the source, or resolves nowhere;
- a file with more hard links (`st_nlink`) than the names of its inode inside the source, unless its inode is
  DVC's own cache object for that content (a source added before, or the same bytes in another source, which DVC
  links to one object: the source's `.dvc` file's directory listing, or the md5 of the file, names the object),
  so adding a source again is the same command;
- the source itself, when it is a link. A source may also be one file (an annotations CSV): a hard link of it
  to a file elsewhere is refused the same way.
Links inside the source (a symbolic link to a sibling, two names of one file) are DVC's to copy and are let
through. `add_sources(sources)` checks every source first and runs `dvc add` (all of them, one command) only when
none has such a link, so nothing is cached from a refused source.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from .common import PipelineError, yaml_load


def _md5(path: Path) -> str:
    import hashlib

    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DvcCache:
    """Where DVC's cache keeps an object of md5 `oid` (`.dvc/cache/files/md5/ab/cdef...`), and the md5 DVC recorded
    for each file of a source added before (its `.dvc` file's directory object), read without importing DVC."""

    def __init__(self, repo: Path):
        self.repo = Path(repo)
        self.root = self.repo / ".dvc" / "cache"
        try:
            from configparser import ConfigParser

            parser = ConfigParser()
            parser.read([self.repo / ".dvc" / "config", self.repo / ".dvc" / "config.local"])
            if parser.has_option("cache", "dir"):
                self.root = (self.repo / ".dvc" / parser.get("cache", "dir").strip('"')).resolve()
        except Exception:  # an unreadable config: dvc add reports it itself
            pass

    def path(self, oid: str) -> Path:
        return self.root / "files" / "md5" / oid[:2] / oid[2:]

    def recorded(self, source: Path) -> dict[str, str]:
        """relpath -> md5 of the files DVC recorded for `source` when it was last added ({} where none)."""
        try:
            outs = yaml_load(source.with_name(source.name + ".dvc").read_text(encoding="utf-8"))["outs"]
            oid = outs[0]["md5"]
            return {e["relpath"]: e["md5"] for e in json.loads(self.path(oid).read_text(encoding="utf-8"))}
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            return {}

    def holds(self, file: Path, info: os.stat_result, md5: str | None) -> bool:
        """Whether `file`'s inode is DVC's cache object for its content (`md5`, else hashed)."""
        try:
            cached = os.stat(self.path(md5 or _md5(file)))
        except OSError:
            return False
        return (cached.st_dev, cached.st_ino) == (info.st_dev, info.st_ino)


def outward_links(source: Path, cache: DvcCache | None = None) -> list[str]:
    """One line per link in `source` that leads out of it (see the module docstring); [] when there is none."""
    source = Path(source)
    if source.is_symlink():
        return [f"{source}: the source is itself a symbolic link (to {os.readlink(source)}); put the folder there"]
    problems: list[str] = []
    names: dict[tuple[int, int], list[tuple[Path, os.stat_result]]] = {}
    if source.is_file():  # one tracked file (an annotations CSV): only a hard link can lead out
        info = source.stat()
        names = {(info.st_dev, info.st_ino): [(source, info)]} if info.st_nlink > 1 else {}
        return _hard_links(source, names, cache, {})
    if not source.is_dir():
        raise PipelineError(f"{source}: no such file or folder")
    root = source.resolve()

    def unreadable(error: OSError) -> None:
        raise PipelineError(f"{error.filename}: cannot read ({error.strerror}); nothing added")

    for folder, folders, files in os.walk(source, onerror=unreadable):
        for name in sorted(folders) + sorted(files):
            path = Path(folder) / name
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(path)
                resolved = path.resolve()
                if not resolved.exists():
                    problems.append(f"{path}: symbolic link to {target}, which does not exist")
                elif not resolved.is_relative_to(root):
                    what = "folder" if resolved.is_dir() else "file"
                    problems.append(f"{path}: symbolic link to the {what} {resolved}, outside {source}; dvc add would "
                                    f"cache and push it: put the {what} itself there")
            elif stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                names.setdefault((info.st_dev, info.st_ino), []).append((path, info))
    return problems + _hard_links(source, names, cache, cache.recorded(source) if cache and names else {})


def _hard_links(source: Path, names: dict, cache: DvcCache | None, recorded: dict[str, str]) -> list[str]:
    """The files of `names` ({inode: [(path, stat)]}) with more names than those inside `source`, unless their
    inode is DVC's cache object for their content."""
    problems = []
    for inside in names.values():
        links = inside[0][1].st_nlink
        outside = links - len(inside)
        if outside <= 0:
            continue
        path, info = inside[0]
        relpath = path.relative_to(source).as_posix() if path != source else ""
        if cache and cache.holds(path, info, recorded.get(relpath)):
            continue  # DVC's cache object (the source added before; the same bytes in another source, linked too)
        for path, _ in inside:
            problems.append(f"{path}: hard link to a file outside {source} ({links} names, {outside} of them "
                            f"elsewhere); dvc add would cache that file and make it read-only: copy it in "
                            f"instead of linking it")
    return problems


def add_sources(sources: list[Path], repo: Path = Path("."), dvc_args: tuple[str, ...] = ()) -> int:
    """Check every source, then `dvc add` them all; raise PipelineError naming every outward link (nothing added).
    Returns dvc add's exit status."""
    cache = DvcCache(repo)
    problems = [line for source in sources for line in outward_links(Path(source), cache)]
    if problems:
        count = len(problems)
        raise PipelineError("\n".join(problems + [f"ham add: {count} link{'s' * (count != 1)} lead{'s' * (count == 1)} "
                                                  f"out of the source; nothing added"]))
    dvc = Path(sys.executable).parent / "dvc"
    command = [str(dvc) if dvc.exists() else "dvc", "add", *dvc_args, *map(os.fspath, sources)]
    return subprocess.run(command, cwd=repo).returncode
