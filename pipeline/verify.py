"""`ham verify [PATH]`: check a release folder, or one split folder of it, against its manifest.

PATH is a folder holding `manifest.csv` (the release, or a split fetched alone with `dvc get ... release/test`),
or the manifest file itself. Every listed file must exist with the listed size and sha256; every file in the
folder must be listed (the manifest itself excepted). A split folder inside a release is checked against its own
manifest. Returns the problems, each naming the file: missing, altered (size or hash), extra; an unreadable or
malformed manifest is one problem naming the file and row. Every JPEG is also walked segment by segment
(`jpeg_segments.foreign_segments`): one that holds anything but pixel data and the fixed JFIF header (a comment,
EXIF, ICC, XMP, any other APPn, bytes after the image) is a `segment` problem naming the file and the segment,
whatever the manifest says (not with `hashes=False`, which reads no file). An extra file named as DVC names its
temporary copies (`.<22 characters>.tmp`) is a partial copy left by a `dvc pull` / `dvc checkout` killed while
placing files: a plain `dvc pull` then refuses to go on ("Can't remove the following unsaved files"), and the
problem says to run `dvc pull --force`.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from .common import sha256_bytes
from .jpeg_segments import foreign_segments

MANIFEST = "manifest.csv"
REQUIRED = ("path", "sha256", "bytes")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
JPEG_SUFFIXES = (".jpg", ".jpeg")
DVC_PARTIAL = re.compile(r"^\.[A-Za-z0-9_-]{22}\.tmp$")  # dvc_objects' tmp_fname(): "." + token_urlsafe(16) + ".tmp"


@dataclass(frozen=True)
class Problem:
    kind: str  # missing, altered, extra, manifest, segment
    path: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Report:
    folder: Path
    checked: int
    problems: list[Problem]
    header: dict | None = None


def read_manifest(path: Path) -> tuple[list[dict], list[Problem]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                return [], [Problem("manifest", str(path), f"missing column(s) {', '.join(missing)}")]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        return [], [Problem("manifest", str(path), f"unreadable: {error}")]
    problems, seen = [], set()
    for number, row in enumerate(rows, start=2):
        where = f"row {number}"
        name = row["path"] or ""
        if not name or name.startswith("/") or ".." in name.split("/") or "\\" in name:
            problems.append(Problem("manifest", str(path), f"{where}: bad path {name!r}"))
        elif name in seen:
            problems.append(Problem("manifest", str(path), f"{where}: {name} listed twice"))
        elif not SHA256.match(row["sha256"] or "") or not (row["bytes"] or "").isdigit():
            problems.append(Problem("manifest", str(path), f"{where}: {name}: bad sha256 or bytes"))
        seen.add(name)
    return rows, problems


def verify(path: Path, hashes: bool = True) -> Report:
    """Check the folder at `path` (or the folder of the manifest at `path`) against its manifest."""
    path = Path(path)
    manifest = path if path.is_file() else path / MANIFEST
    folder = manifest.parent
    if not manifest.is_file():
        return Report(folder, 0, [Problem("manifest", str(manifest), "not found: is this a release or split folder?")])
    rows, problems = read_manifest(manifest)
    if problems:
        return Report(folder, 0, problems)
    listed = set()
    for row in rows:
        listed.add(row["path"])
        target = folder / row["path"]
        if not target.is_file():
            problems.append(Problem("missing", row["path"]))
            continue
        size = target.stat().st_size
        if size != int(row["bytes"]):
            problems.append(Problem("altered", row["path"], f"{size} bytes, manifest says {row['bytes']}"))
        elif hashes:
            data = target.read_bytes()
            if sha256_bytes(data) != row["sha256"]:
                problems.append(Problem("altered", row["path"], "sha256 differs from the manifest"))
            if target.suffix.lower() in JPEG_SUFFIXES:
                problems += [Problem("segment", row["path"], reason) for reason in foreign_segments(data)]
    for file in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        relative = file.relative_to(folder).as_posix()
        if relative != MANIFEST and relative not in listed:
            partial = DVC_PARTIAL.match(file.name)
            problems.append(Problem("extra", relative, "a partial copy left by an interrupted dvc pull or checkout: "
                                    "run `dvc pull --force`" if partial else "not in the manifest"))
    header = None
    if (folder / "release.json").is_file():
        import json

        try:
            header = json.loads((folder / "release.json").read_text())
        except ValueError:
            header = None
    return Report(folder, len(rows), problems, header)


def format_report(report: Report) -> str:
    lines = [str(p) for p in report.problems]
    what = f"{report.folder} (release {report.header.get('version')})" if report.header else f"{report.folder}"
    if report.problems:
        kinds = {}
        for problem in report.problems:
            kinds[problem.kind] = kinds.get(problem.kind, 0) + 1
        lines.append(f"{what}: {report.checked} files listed; " +
                     ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    else:
        lines.append(f"{what}: all {report.checked} files match the manifest")
    return "\n".join(lines)
