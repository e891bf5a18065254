"""`ham publish`: `dvc push`, then prove the remote holds every object of what was pushed.

What it checks: every object DVC needs to pull the pushed revisions (the workspace, or `--rev REV` / `--all-tags`):
for each output of every stage and every `.dvc` file that DVC caches and pushes, the file object, or for a
directory its `.dir` object and every file object it lists (read from the local cache). The remote is listed
through its own file system (a folder remote by path, an S3 remote through s3fs) and each object is checked by
its content where the remote allows: a folder remote's objects are read and their md5 compared with their name; an
S3 object's ETag is its md5 when it was sent in one part (compared), else its size is compared with the local
cache's. Anything missing or damaged is named by output path, file, revision and md5; exit 1 then.

Why a push alone is not enough (found by killing `dvc push` with SIGKILL, see docs/reliability.md):
- DVC keeps what a push collected (every output's entries, keyed by the pushed data and the remote) in its site
  cache (`<site_cache_dir>/index/data/db.db`) and commits it output by output; a push killed while it collects
  leaves a part of it, and the next `dvc push` takes that part for the whole: it exits 0 ("N files pushed") and
  the remote lacks the objects of the outputs it never collected. `publish` drops that collection before pushing
  (`Repo.drop_data_index`), so each push collects afresh.
- DVC takes a directory as pushed whole when its `.dir` object is on the remote, and never re-checks its files: a
  file object lost or damaged on the remote later is never sent again. When the check finds one, `publish`
  removes from the remote the damaged objects and the `.dir` object of every directory with a missing or damaged
  file (only where the local cache holds a good copy of each), clears DVC's index of that remote, and pushes and
  checks again once.
Both are DVC's own state: the fix is to forget it, never to trust it. The transfers are DVC's own.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from .common import PipelineError

MAX_LINES = 50  # problems printed in full; the rest counted


@dataclass(frozen=True)
class Wanted:
    """One object the remote must hold: `oid` (md5, `.dir` suffix for a directory), where it is used (output path,
    file inside a directory, revision), and the directory objects that list it."""
    hash_name: str
    oid: str
    where: str


@dataclass
class Problem:
    oid: str
    where: str
    kind: str  # "missing" or "damaged"
    detail: str = ""

    def line(self, remote: str) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.kind} on remote '{remote}': {self.where} (md5 {self.oid}){extra}"


@dataclass
class Report:
    remote: str
    wanted: int = 0
    pushed: int = 0
    rounds: int = 0
    repaired: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # outputs whose objects cannot even be listed

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unresolved

    def lines(self) -> list[str]:
        out = [f"publish: {line}" for line in self.repaired]
        issues = self.unresolved + [p.line(self.remote) for p in self.problems]
        out += issues[:MAX_LINES]
        if len(issues) > MAX_LINES:
            out.append(f"... and {len(issues) - MAX_LINES} more")
        if self.ok:
            out.append(f"publish: remote '{self.remote}' holds all {self.wanted} objects, content checked "
                       f"({self.pushed} pushed)")
        else:
            out.append(f"publish: remote '{self.remote}' is incomplete: {len(self.problems)} of {self.wanted} objects "
                       f"missing or damaged" + (f", {len(self.unresolved)} outputs unchecked" if self.unresolved
                                                 else ""))
        return out


def _md5_file(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dir_entries(out, oid: str) -> list[tuple[str, str]]:
    """(relpath, md5) of every file a directory object lists, read from the local cache (a JSON list)."""
    import json

    with open(out.cache.oid_to_path(oid), encoding="utf-8") as handle:
        return [(entry["relpath"], entry["md5"]) for entry in json.load(handle)]


def wanted_objects(repo, revs=(), all_tags=False) -> tuple[dict[tuple[str, str], Wanted], dict[str, set[str]],
                                                             list[str]]:
    """The objects a pull of the workspace (or of `revs` / every tag) needs: {(hash_name, oid): Wanted},
    {file oid: the .dir oids that list it}, and one line per output that cannot be resolved (no hash recorded;
    its directory object missing from the local cache)."""
    wanted: dict[tuple[str, str], Wanted] = {}
    parents: dict[str, set[str]] = {}
    unresolved: list[str] = []
    for rev in repo.brancher(revs=list(revs) or None, all_tags=all_tags, workspace=not revs and not all_tags):
        label = rev if rev not in ("", "workspace") else "workspace"
        for out in repo.index.outs:
            if not out.use_cache or not out.can_push:
                continue
            name = posixpath.normpath(posixpath.join(posixpath.dirname(out.stage.path_in_repo), out.def_path))
            if not out.hash_info or not out.hash_info.value:
                unresolved.append(f"{name} ({label}): no hash recorded; run `dvc repro` or `dvc commit` first")
                continue
            oid, hash_name = out.hash_info.value, out.hash_name
            wanted.setdefault((hash_name, oid), Wanted(hash_name, oid, f"{name} ({label})"))
            if not out.hash_info.isdir:
                continue
            try:
                entries = _dir_entries(out, oid)
            except (OSError, ValueError, KeyError, TypeError):
                unresolved.append(f"{name} ({label}): its directory object {oid} is not readable in the local cache; "
                                  f"`dvc fetch` it or rebuild the output")
                continue
            for relpath, md5 in entries:
                wanted.setdefault((hash_name, md5), Wanted(hash_name, md5, f"{name}/{relpath} ({label})"))
                parents.setdefault(md5, set()).add(oid)
    return wanted, parents, unresolved


def _listing(odb) -> dict[str, tuple[int | None, str | None, str]]:
    """oid -> (size, md5 of the content where the remote gives it, path) of every object under the remote
    odb's folder; temporary files of an interrupted transfer (`.<token>.tmp`) are not objects."""
    found = {}
    if odb.fs.protocol == "local":
        for folder, _, files in os.walk(odb.path):
            prefix = os.path.basename(folder)
            if len(prefix) != 2 or os.path.dirname(folder) != odb.path.rstrip(os.sep):
                continue
            for name in files:
                if not name.startswith("."):
                    path = os.path.join(folder, name)
                    found[prefix + name] = (os.path.getsize(path), None, path)
        return found
    try:
        listed = odb.fs.fs.find(odb.path, detail=True)
    except FileNotFoundError:
        return found
    for path, info in listed.items():
        parts = path.rstrip("/").split("/")
        if len(parts) < 2 or len(parts[-2]) != 2 or parts[-1].startswith("."):
            continue
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        found[parts[-2] + parts[-1]] = (info.get("size"), etag if len(etag) == 32 and "-" not in etag else None, path)
    return found


def check_remote(repo, remote: str | None, wanted: dict, content: bool = True) -> list[Problem]:
    """Every wanted object present on the remote and, where the remote allows, of the right content."""
    problems = []
    by_hash: dict[str, list[Wanted]] = {}
    for item in wanted.values():
        by_hash.setdefault(item.hash_name, []).append(item)
    for hash_name, items in sorted(by_hash.items()):
        odb = repo.cloud.get_remote_odb(remote, "publish", hash_name=hash_name)
        local = repo.cache.local if hash_name == "md5" else repo.cache.legacy
        listing = _listing(odb)
        for item in sorted(items, key=lambda w: w.where):
            entry = listing.get(item.oid)
            if entry is None:
                problems.append(Problem(item.oid, item.where, "missing"))
                continue
            size, md5, path = entry
            want = item.oid.removesuffix(".dir")
            if content and odb.fs.protocol == "local":
                try:
                    md5 = _md5_file(path)
                except OSError as error:
                    problems.append(Problem(item.oid, item.where, "damaged", f"unreadable: {error.strerror}"))
                    continue
            if md5 is not None and md5 != want:
                problems.append(Problem(item.oid, item.where, "damaged", f"its content hashes to md5 {md5}"))
                continue
            try:
                local_size = os.path.getsize(local.oid_to_path(item.oid))
            except OSError:
                local_size = None
            if md5 is None and size is not None and local_size is not None and size != local_size:
                problems.append(Problem(item.oid, item.where, "damaged", f"{size} bytes, the local cache's copy "
                                                                           f"{local_size}"))
    return problems


def _forget_push_state(repo, remote: str | None) -> None:
    """Drop what DVC remembers of earlier pushes: the collected push index (a killed push leaves a part of it, taken
    for the whole next time) and the remote's index of directories it took as pushed whole."""
    from dvc_data.hashfile.db import get_index

    repo.drop_data_index()
    for hash_name in ("md5",):
        odb = repo.cloud.get_remote_odb(remote, "publish", hash_name=hash_name)
        index = get_index(odb)
        try:
            index.clear()
        finally:
            index.close()


def _clear_for_push_again(repo, remote: str | None, problems: list[Problem], parents: dict[str, set[str]],
                          wanted: dict) -> list[str]:
    """Remove from the remote each damaged object and each `.dir` object listing a missing or damaged file (DVC
    would take that directory as whole and send nothing), where the local cache holds a good copy to send again.
    Returns one line per removal."""
    done = []
    local = repo.cache.local
    odb = repo.cloud.get_remote_odb(remote, "publish", hash_name="md5")
    listing = _listing(odb)

    def good_locally(oid: str) -> bool:
        try:
            return _md5_file(local.oid_to_path(oid)) == oid.removesuffix(".dir")
        except OSError:
            return False

    bad = {p.oid for p in problems}
    removals = {p.oid for p in problems if p.kind == "damaged"}
    for oid in bad:
        removals |= parents.get(oid, set())
    for oid in sorted(removals):
        if oid not in listing:
            continue
        if not all(good_locally(m) for m in [oid] + [m for m in bad if oid in parents.get(m, ())]):
            continue  # nothing good to send instead: leave it, the check names it
        odb.fs.rm(listing[oid][2])
        where = next((w.where for (_, o), w in wanted.items() if o == oid), oid)
        why = "damaged" if oid in bad else "a directory with files missing or damaged there"
        done.append(f"removed {oid} from the remote ({why}: {where}), to push it again")
    return done


def publish(root: Path = Path("."), remote: str | None = None, revs=(), all_tags: bool = False,
            content: bool = True, push: bool = True, jobs: int | None = None) -> Report:
    """Push (unless `push` is False), then check the remote; once more after clearing what blocks DVC from
    sending a missing or damaged object again. The Report names every object still missing or damaged."""
    from dvc.config import NoRemoteError
    from dvc.exceptions import DvcException, UploadError
    from dvc.repo import Repo

    try:
        repo = Repo(os.fspath(root))
    except DvcException as error:
        raise PipelineError(f"{root}: not a DVC repository ({error})") from None
    with repo:
        try:
            name = remote or repo.config["core"].get("remote")
            if not name:
                raise NoRemoteError("publish")
            repo.cloud.get_remote_odb(name, "publish")
        except (NoRemoteError, DvcException) as error:
            raise PipelineError(f"publish: no usable remote ({error}); name one with -r or `dvc remote default`") \
                from None
        report = Report(remote=name)
        try:
            wanted, parents, report.unresolved = wanted_objects(repo, revs, all_tags)
        except DvcException as error:
            raise PipelineError(f"publish: {error}") from None
        report.wanted = len(wanted)
        for round_ in range(2 if push else 1):
            report.rounds = round_ + 1
            if push:
                _forget_push_state(repo, name)
                try:
                    report.pushed += repo.push(remote=name, revs=list(revs) or None, all_tags=all_tags,
                                               workspace=not revs and not all_tags, jobs=jobs)
                except UploadError as error:
                    report.repaired.append(f"dvc push: {error}; checking what the remote holds")
            report.problems = check_remote(repo, name, wanted, content)
            if not report.problems or not push or round_:
                break
            cleared = _clear_for_push_again(repo, name, report.problems, parents, wanted)
            report.repaired += cleared or [f"{len(report.problems)} objects missing after dvc push; pushing again"]
    return report
