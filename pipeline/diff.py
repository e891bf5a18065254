"""`ham diff REV_A REV_B`: what changed between two releases (git revisions or tags), read from git alone.

For each revision, `git show REV:dvc.lock` gives the md5 of the release folder; its directory listing and the
files it names (`release/manifest.csv`, `release/<split>/metadata.csv`) are read from the DVC cache, or through
`dvc.api.open(..., rev=REV)` (which pulls them from the remote) where the cache lacks them. No image is read and
nothing is checked out. Releases of either layout (one top-level manifest, or per-split manifests too) compare.

The comparison, by image ID:
    added / removed        images only in B / only in A, with split, class and source; a removed image with the
                           reason B excluded it (B's excluded.csv, from the DVC cache or remote, joined to the
                           image registry), or "not among B's candidates"
    relabelled             dx or dx_type differ (with the ISIC diagnosis change, from isic_contribution.csv)
    metadata               other columns differ (lesion_id, age, sex, localization, dataset)
    content                same image ID, different bytes (sha256)
    split_moves            lesions whose split differs between A and B (must be none: the registry forbids it)
    counts                 images per split and class in A and B
`--fail-on split-move,relabel,...` makes CI fail (exit 1) when one of the named kinds is not empty.
"""
from __future__ import annotations

import csv
import io
import json
import subprocess
from collections import Counter
from pathlib import Path

import yaml

from .common import PipelineError, yaml_load

KINDS = ("added", "removed", "relabelled", "metadata", "content", "split_moves")
FAIL_ON = {"added": "added", "removed": "removed", "relabel": "relabelled", "relabelled": "relabelled",
           "metadata": "metadata", "content": "content", "split-move": "split_moves", "split_moves": "split_moves"}
LABELS = ("dx", "dx_type")
OTHER = ("lesion_id", "age", "sex", "localization", "dataset")


def git(repo: Path, *args: str) -> bytes:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise PipelineError(f"git {' '.join(args)}: {message[-1] if message else 'failed'}")
    return result.stdout


class ReleaseAt:
    """The release of one git revision, its small files read without checking anything out."""

    def __init__(self, repo: Path, rev: str, release: str = "release"):
        self.repo, self.rev, self.release = Path(repo), rev, release.rstrip("/")
        try:
            self.commit = git(self.repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
        except PipelineError:
            raise PipelineError(f"{rev}: not a git revision or tag of {self.repo.resolve()}") from None
        try:
            lock = yaml_load(git(self.repo, "show", f"{self.commit}:dvc.lock")) or {}
        except PipelineError:
            raise PipelineError(f"{rev}: no dvc.lock committed; is the release built and committed there?") from None
        outs = (lock.get("stages", {}).get("release") or {}).get("outs", [])
        entry = next((o for o in outs if o.get("path") == self.release), None)
        if entry is None:
            raise PipelineError(f"{rev}: dvc.lock has no output {self.release} of stage release")
        self.dir_md5 = entry["md5"]
        self._listing = None
        self.lock = lock

    def _cache(self, md5: str) -> Path:
        return self.repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]

    def listing(self) -> dict[str, str] | None:
        if self._listing is None:
            path = self._cache(self.dir_md5)
            if path.is_file():
                self._listing = {e["relpath"]: e["md5"] for e in json.loads(path.read_text())}
        return self._listing

    def read(self, relpath: str) -> str | None:
        """A file of the release as text, or None where the release has no such file."""
        listing = self.listing()
        if listing is not None:
            if relpath not in listing:
                return None
            cached = self._cache(listing[relpath])
            if cached.is_file():
                return cached.read_text(encoding="utf-8")
        import dvc.api

        try:
            with dvc.api.open(f"{self.release}/{relpath}", repo=str(self.repo), rev=self.commit,
                              encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError as error:
            if listing is not None:  # listed in the release, so the remote is what is missing, not the file
                raise PipelineError(self.unreadable(relpath, error)) from None
            return None
        except Exception as error:  # dvc raises many types: no remote, not in cache, ...
            raise PipelineError(self.unreadable(relpath, error)) from None

    def isic_diagnoses(self, splits) -> dict[str, str]:
        """image ID -> the ISIC diagnosis node of the release's isic_contribution.csv (empty where it has none)."""
        found = {}
        for split in sorted(splits):
            try:
                text = self.read(f"{split}/isic_contribution.csv")
            except PipelineError:
                text = None
            for row in csv.DictReader(io.StringIO(text or "")):
                found[Path(row.get("filename") or "").stem] = row.get("diagnosis") or ""
        return found

    def exclusions(self) -> dict[str, str]:
        """image ID -> why the image is not in this revision's release ("stage: reason"), from the metadata
        stage's excluded.csv (DVC cache or remote) joined to the image registry (git); {} where unreadable."""
        outs = (self.lock.get("stages", {}).get("metadata") or {}).get("outs", [])
        entry = next((o for o in outs if str(o.get("path", "")).endswith("excluded.csv")), None)
        if entry is None:
            return {}
        text = None
        cached = self._cache(str(entry.get("md5", "")))
        if cached.is_file():
            text = cached.read_text(encoding="utf-8")
        else:
            try:
                import dvc.api

                with dvc.api.open(entry["path"], repo=str(self.repo), rev=self.commit, encoding="utf-8") as handle:
                    text = handle.read()
            except Exception:  # no remote, not pushed: the reason stays unknown, the diff goes on
                return {}
        try:
            registry = git(self.repo, "show", f"{self.commit}:registry/images.csv").decode()
        except PipelineError:
            return {}
        image_of = {row["key"]: row["id"] for row in csv.DictReader(io.StringIO(registry))}
        return {image_of[row["candidate_id"]]: f"{row['stage']}: {row['reason']}"
                for row in csv.DictReader(io.StringIO(text)) if row.get("candidate_id") in image_of}

    def unreadable(self, relpath: str, error: Exception) -> str:
        """One line naming the file and a DVC 3 command that gets it (`dvc fetch` has no `--rev`: it fetches the
        outputs of the checked-out revision, or of every tag with `--all-tags`)."""
        return (f"{self.rev}: cannot read {self.release}/{relpath} from the DVC cache or remote "
                f"({type(error).__name__}: {error}); fetch that release into the cache where its remote is "
                f"reachable: `git checkout {self.rev} && dvc fetch {self.release} && git checkout -` (add `-r NAME` "
                f"for a remote other than the default, see `dvc remote list`; a tag made before the releases moved "
                f"needs the new remote in config.local, see the downstream guide)")

    def images(self) -> dict[str, dict]:
        """image ID -> manifest fields (split, lesion, dx, sha256) + metadata row (dx_type, age, ...)."""
        manifest = self.read("manifest.csv")
        if manifest is None:
            raise PipelineError(f"{self.rev}: {self.release}/manifest.csv not in the release")
        rows = {}
        for row in csv.DictReader(io.StringIO(manifest)):
            if row.get("image_id"):
                rows[row["image_id"]] = {"split": row["split"], "sha256": row["sha256"], "lesion_id": row["lesion_id"],
                                         "dx": row["dx"]}
        for split in sorted({r["split"] for r in rows.values()}):
            text = self.read(f"{split}/metadata.csv")
            for row in csv.DictReader(io.StringIO(text or "")):
                if row["image_id"] in rows:
                    rows[row["image_id"]].update(row)
        return rows


def _described(row: dict) -> dict:
    return {"image_id": row["image_id"], "split": row.get("split", ""), "dx": row.get("dx", ""),
            "source": row.get("dataset", "")}


def compare(a: dict[str, dict], b: dict[str, dict], why_gone: dict[str, str] | None = None,
            isic: tuple[dict, dict] = ({}, {})) -> dict:
    """`why_gone`: image ID -> why an image is not in B (B's exclusions); `isic`: the ISIC diagnosis of each
    image in A and in B. Added and removed images carry split, class and source; removed ones the reason."""
    shared = sorted(a.keys() & b.keys())
    why_gone = why_gone or {}
    result = {"added": [_described({"image_id": i, **b[i]}) for i in sorted(b.keys() - a.keys())],
              "removed": [{**_described({"image_id": i, **a[i]}),
                           "reason": why_gone.get(i, "not among B's candidates (its source or file is gone)")}
                          for i in sorted(a.keys() - b.keys())],
              "relabelled": [], "metadata": [], "content": [], "split_moves": []}
    for image_id in shared:
        old, new = a[image_id], b[image_id]
        labels = {f: [old.get(f, ""), new.get(f, "")] for f in LABELS if old.get(f, "") != new.get(f, "")}
        if labels:
            if isic[0].get(image_id, "") != isic[1].get(image_id, ""):
                labels["isic_diagnosis"] = [isic[0].get(image_id, ""), isic[1].get(image_id, "")]
            result["relabelled"].append({"image_id": image_id, "split": new.get("split", ""),
                                         "source": new.get("dataset", ""), **labels})
        other = {f: [old.get(f, ""), new.get(f, "")] for f in OTHER if old.get(f, "") != new.get(f, "")}
        if other:
            result["metadata"].append({"image_id": image_id, **other})
        if old["sha256"] != new["sha256"]:
            result["content"].append(image_id)
    split_a = {r["lesion_id"]: r["split"] for r in a.values()}
    split_b = {r["lesion_id"]: r["split"] for r in b.values()}
    for lesion in sorted(split_a.keys() & split_b.keys()):
        if split_a[lesion] != split_b[lesion]:
            result["split_moves"].append({"lesion_id": lesion, "from": split_a[lesion], "to": split_b[lesion]})
    # a lesion ID that changed with its images: compare by image too, so a move cannot hide behind a new ID
    for image_id in shared:
        if a[image_id]["split"] != b[image_id]["split"] and a[image_id]["lesion_id"] != b[image_id]["lesion_id"]:
            result["split_moves"].append({"lesion_id": f"{a[image_id]['lesion_id']}->{b[image_id]['lesion_id']}",
                                          "image_id": image_id, "from": a[image_id]["split"],
                                          "to": b[image_id]["split"]})
    count_a = Counter((r["split"], r["dx"]) for r in a.values())
    count_b = Counter((r["split"], r["dx"]) for r in b.values())
    result["counts"] = [{"split": s, "dx": dx, "a": count_a[(s, dx)], "b": count_b[(s, dx)],
                         "change": count_b[(s, dx)] - count_a[(s, dx)]}
                        for s, dx in sorted(count_a.keys() | count_b.keys())]
    result["images"] = {"a": len(a), "b": len(b)}
    return result


def diff_revisions(repo: Path, rev_a: str, rev_b: str, release: str = "release") -> dict:
    a, b = ReleaseAt(repo, rev_a, release), ReleaseAt(repo, rev_b, release)
    images_a, images_b = a.images(), b.images()
    changed = any(images_a[i].get(f) != images_b[i].get(f) for i in images_a.keys() & images_b.keys()
                  for f in LABELS)
    isic = ((a.isic_diagnoses({r["split"] for r in images_a.values()}),
             b.isic_diagnoses({r["split"] for r in images_b.values()})) if changed else ({}, {}))
    result = compare(images_a, images_b, b.exclusions() if images_a.keys() - images_b.keys() else {}, isic)
    result["a"] = {"rev": rev_a, "commit": a.commit}
    result["b"] = {"rev": rev_b, "commit": b.commit}
    return result


def parse_fail_on(text: str) -> list[str]:
    kinds = []
    for name in filter(None, (part.strip() for part in (text or "").split(","))):
        if name not in FAIL_ON:
            raise PipelineError(f"--fail-on: unknown kind {name!r}; choose from split-move, relabel, added, removed, "
                                f"metadata, content")
        kinds.append(FAIL_ON[name])
    return kinds


def format_diff(result: dict, limit: int = 20) -> str:
    a, b = result["a"], result["b"]
    lines = [f"release {a['rev']} ({a['commit'][:10]}) -> {b['rev']} ({b['commit'][:10]}): "
             f"{result['images']['a']} -> {result['images']['b']} images"]

    def section(title: str, items: list, show) -> None:
        lines.append(f"{title}: {len(items) if items else 'none'}")
        for item in items[:limit]:
            lines.append(f"  {show(item)}")
        if len(items) > limit:
            lines.append(f"  ... {len(items) - limit} more (--json lists all)")

    changes = lambda item: "  ".join(f"{k} {v[0] or '-'} -> {v[1] or '-'}" for k, v in item.items()
                                     if isinstance(v, list))
    where = lambda item: f"{item['image_id']}  {item.get('split') or '-'}  {item.get('dx') or '-'}  " \
                         f"{item.get('source') or '-'}"
    section("added", result["added"], where)
    section("removed", result["removed"], lambda i: f"{where(i)}  ({i['reason']})")
    section("relabelled", result["relabelled"],
            lambda i: f"{i['image_id']}  {i.get('split') or '-'}  {i.get('source') or '-'}  {changes(i)}")
    section("other metadata changed", result["metadata"], lambda i: f"{i['image_id']}  {changes(i)}")
    section("image bytes changed", result["content"], str)
    section("lesions that moved split", result["split_moves"],
            lambda m: f"{m['lesion_id']}  {m['from']} -> {m['to']}")
    changed = [c for c in result["counts"] if c["change"]]
    lines.append("per-class counts: " + ("unchanged" if not changed else ""))
    if changed:
        lines.append(f"  {'split':<6} {'dx':<6} {'before':>6} {'after':>6} {'change':>6}")
        for c in changed:
            lines.append(f"  {c['split']:<6} {c['dx']:<6} {c['a']:>6} {c['b']:>6} {c['change']:>+6}")
    return "\n".join(lines)
