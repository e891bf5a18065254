"""`ham tag`: make the git tag of a release once it is built, checked and committed.

A release folder cannot hold the git revision of the commit that records its hash in dvc.lock, so the tag is the
release's revision. Before tagging, every check a downstream user relies on must hold:
  - params `release.version` is set, and `v<version>` is not a tag yet;
  - release/release.json was built with that version, and `ham verify` finds every file as its manifest says;
  - `dvc status` reports the pipeline up to date (the release is what the committed inputs build);
  - `git status` is clean: params.yaml, dvc.yaml, dvc.lock, the .dvc files, registries and metrics are committed.
The annotated tag's message records the version and the sha256 of release.json and manifest.csv.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .common import PipelineError, sha256_file
from .verify import verify


def _run(command: list[str], cwd: Path) -> str:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise PipelineError(f"{command[0]}: not found on PATH") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise PipelineError(f"{' '.join(Path(c).name if c == sys.executable else c for c in command)}: "
                            f"{lines[-1] if lines else 'failed'}")
    return result.stdout


def tag_release(repo: Path, params: dict, release: str = "release", dry_run: bool = False) -> dict:
    repo = Path(repo)
    version = str(params.get("version") or "").strip()
    if not version or any(c.isspace() for c in version):
        raise PipelineError("params.yaml: release.version must be set (no spaces) before tagging")
    name = f"v{version}"
    if _run(["git", "tag", "--list", name], repo).strip():
        raise PipelineError(f"tag {name} exists already: raise release.version in params.yaml")
    header_path = repo / release / "release.json"
    if not header_path.is_file():
        raise PipelineError(f"{header_path}: not found; run `dvc repro` (or `dvc pull {release}`) first")
    header = json.loads(header_path.read_text())
    if header.get("version") != version:
        raise PipelineError(f"{header_path}: built as version {header.get('version')!r}, params.yaml says "
                            f"{version!r}; run `dvc repro`")
    report = verify(repo / release)
    if report.problems:
        raise PipelineError(f"{release}: {len(report.problems)} file(s) differ from the manifest, first: "
                            f"{report.problems[0]}; run `ham verify {release}`")
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], repo) or "{}")
    if status:
        raise PipelineError(f"dvc status: not up to date ({', '.join(sorted(status))}); run `dvc repro` and commit")
    dirty = _run(["git", "status", "--porcelain"], repo).splitlines()
    if dirty:
        raise PipelineError(f"uncommitted changes ({len(dirty)}), first: {dirty[0].strip()}; commit params.yaml, "
                            f"dvc.yaml, dvc.lock, the .dvc files, registry/ and metrics/ first")
    message = (f"HAM10000 release {version}\n\nrelease.json sha256 {sha256_file(header_path)}\n"
               f"manifest.csv sha256 {sha256_file(repo / release / 'manifest.csv')}\n")
    commit = _run(["git", "rev-parse", "HEAD"], repo).strip()
    if not dry_run:
        _run(["git", "tag", "-a", name, "-m", message], repo)
    return {"tag": name, "commit": commit, "message": message, "created": not dry_run}
