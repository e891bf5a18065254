"""Helpers for tests of tagged releases: a small git + DVC repository whose `release` stage runs `build_release` on
real images, so DVC really hashes, caches, pushes and pulls release folders."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.common import read_csv, sha256_file, write_csv
from pipeline.metadata import METADATA_COLUMNS

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS = {"isic_attribution": "ViDIR Group", "isic_license": "CC-BY-NC", "attribution": "Tschandl et al. 2018",
          "license": "CC BY-NC 4.0", "version": "1"}
IMAGES_COLUMNS = ("image_id", "lesion_id", "candidate_id", "file", "sha256", "split_hint")


def sh(command: list[str] | str, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (a list, or a bash script when a string) with the venv first on PATH and `env` added."""
    full = dict(os.environ)
    full["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full.get('PATH', '')}"
    for key, value in {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.org",
                       "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.org"}.items():
        full.setdefault(key, value)
    full.update(env or {})
    if isinstance(command, str):
        command = ["bash", "-euo", "pipefail", "-c", command]
    result = subprocess.run(command, cwd=cwd, env=full, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def sample_rows(ham_data: Path, count: int = 60) -> list[dict]:
    truth = read_csv(ham_data / "ham10000" / "metadata" / "HAM10000_metadata_with_dataset_DERIVED.csv")
    wanted = {r["image_id"] for r in read_csv(ham_data / "ham10000" / "images_manifest.csv")}
    return sorted((r for r in truth if r["image_id"] in wanted), key=lambda r: r["image_id"])[:count]


def stage_inputs(folder: Path, rows: list[dict], ham_data: Path, split_of: dict[str, str]) -> None:
    """metadata.csv, images.csv, splits.csv and standardised images for `rows` in `folder` (the stage's inputs)."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "std").mkdir(parents=True)
    for row in rows:
        shutil.copyfile(ham_data / "ham10000" / "images" / f"{row['image_id']}.jpg",
                        folder / "std" / f"{row['image_id']}.jpg")
    write_csv(folder / "metadata.csv", sorted(rows, key=lambda r: (r["lesion_id"], r["image_id"])), METADATA_COLUMNS)
    # The sha256 the metadata stage records for each standardised image: the release checks what it places.
    write_csv(folder / "images.csv", ({"image_id": r["image_id"], "lesion_id": r["lesion_id"],
                                       "file": f"{r['image_id']}.jpg",
                                       "sha256": sha256_file(folder / "std" / f"{r['image_id']}.jpg")}
                                      for r in rows), IMAGES_COLUMNS)
    write_csv(folder / "splits.csv", ({"lesion_id": l, "split": s} for l, s in sorted(split_of.items())),
              ("lesion_id", "split"))


def init_release_repo(root: Path, env: dict | None = None, dvc_config: str | None = None) -> None:
    """git + dvc init in `root` with a `release` stage; `dvc_config` replaces .dvc/config (e.g. the project's)."""
    root.mkdir(parents=True, exist_ok=True)
    sh(["git", "init", "-q"], root, env)
    sh(["dvc", "init", "-q"], root, env)
    if dvc_config is not None:
        (root / ".dvc" / "config").write_text(dvc_config)
    (root / "build.py").write_text(
        "from pathlib import Path\nfrom pipeline.release import build_release\n"
        f"build_release(Path('in/metadata.csv'), Path('in/images.csv'), Path('in/splits.csv'), Path('in/std'), "
        f"{PARAMS!r}, Path('release'), Path('summary.json'))\n")
    (root / "dvc.yaml").write_text("stages:\n  release:\n    cmd: python build.py\n    deps: [in, build.py]\n"
                                   "    outs: [release]\n    metrics: [{summary.json: {cache: false}}]\n")
    (root / ".gitignore").write_text("/in/\n")


def commit_release(root: Path, rows: list[dict], split_of: dict, ham_data: Path, message: str,
                   env: dict | None = None, tag: str | None = None) -> None:
    stage_inputs(root / "in", rows, ham_data, split_of)
    sh(["dvc", "repro", "-q"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-q", "-m", message], root, env)
    if tag:
        sh(["git", "tag", tag], root, env)
