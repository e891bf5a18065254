"""The release stage under a real `dvc repro`.

The project declares `release` an ordinary output: DVC deletes the folder before the stage, the stage links every
image from the standardised store, and DVC links the files to its cache, so the release is stored once (tested
below on the project's cache settings). Declared `persist: true`, the stage updates the folder in place instead:
after a 1 % change it links about 1 % of the images, and the release DVC records is the one a clean build writes
(tested too: the trade, a private copy of every image once DVC has unprotected the folder, is why the project
does not declare it)."""
from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.common import atomic_write_bytes, read_csv, sha256_file, write_csv
from tests.release_repo import PARAMS, REPO_ROOT, init_release_repo, sample_rows, sh, stage_inputs

pytestmark = pytest.mark.real_data

LINE = re.compile(r"release: (\d+) images: (\d+) kept, (\d+) linked, (\d+) copied \((\d+) re-hashed, "
                  r"(\d+) linked again unread\); "
                  r"\d+ other files written, (\d+) stale files removed")


def _restandardise(folder: Path, rows: list[dict], quality: int) -> None:
    """New bytes for these standardised images (written as the store writes: a new file), their sha256 updated."""
    from PIL import Image

    images = read_csv(folder / "images.csv")
    for row in images:
        if row["image_id"] in {r["image_id"] for r in rows}:
            buffer = io.BytesIO()
            with Image.open(folder / "std" / row["file"]) as image:
                image.save(buffer, format="JPEG", quality=quality)
            atomic_write_bytes(folder / "std" / row["file"], buffer.getvalue())
            row["sha256"] = sha256_file(folder / "std" / row["file"])
    write_csv(folder / "images.csv", images, list(images[0]))


def _repro(root: Path) -> tuple[int, ...]:
    result = sh(["dvc", "repro"], root)
    found = LINE.search(result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    return tuple(int(n) for n in found.groups())


def _project_cache_config() -> str:
    return "[cache]" + (REPO_ROOT / ".dvc" / "config").read_text().split("[cache]")[1].split("[")[0]


def test_project_release_is_stored_once(repo_root, tmp_path, ham_data):
    stage = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]["release"]
    assert "release" in stage["outs"]  # an ordinary output, not {"release": {"persist": true}}
    root = tmp_path / "repo"
    init_release_repo(root, dvc_config=_project_cache_config())
    rows = sample_rows(ham_data, 40)
    lesions = sorted({r["lesion_id"] for r in rows})
    stage_inputs(root / "in", rows, ham_data, {lesion: "test" if n % 5 == 0 else "train"
                                                for n, lesion in enumerate(lesions)})
    for attempt in range(2):  # the first build, then a rebuild after a change
        if attempt:
            _restandardise(root / "in", rows[:1], 70)
        counts = _repro(root)
        assert counts[2] == len(rows) and counts[3] == 0  # every image linked, none copied
        # The rebuild links again, unread, every image whose store file is the one checked the first time; the
        # changed one is checked against its new sha256.
        assert counts[5] == (len(rows) - 1 if attempt else 0)
        released = sorted((root / "release").rglob("*.jpg"))
        assert len(released) == len(rows)
        for path in released:  # one inode shared with DVC's cache: the release's bytes are on disk once
            cached = root / ".dvc" / "cache" / "files" / "md5"
            digest = sh(["md5sum", str(path)], root).stdout.split()[0]
            assert os.stat(path).st_ino == os.stat(cached / digest[:2] / digest[2:]).st_ino


def test_persistent_release_links_one_percent_after_a_one_percent_change(tmp_path, ham_data):
    root = tmp_path / "repo"
    init_release_repo(root, dvc_config=_project_cache_config())
    (root / "dvc.yaml").write_text((root / "dvc.yaml").read_text().replace(
        "outs: [release]", "outs: [{release: {persist: true}}]"))
    rows = sample_rows(ham_data, 200)
    lesions = sorted({r["lesion_id"] for r in rows})
    split_of = {lesion: "test" if number % 5 == 0 else "train" for number, lesion in enumerate(lesions)}
    stage_inputs(root / "in", rows, ham_data, split_of)
    images = len(rows)
    assert _repro(root)[:4] == (images, 0, images, 0)

    # 1 % of the images change: the stage links those and keeps the rest. DVC unprotected the persistent folder
    # first (a copy of every file that was a link, here all of them), so the kept images were checked by their
    # bytes this once.
    _restandardise(root / "in", rows[:2], 70)
    assert _repro(root)[:5] == (images, images - 2, 2, 0, images - 2)
    # From then on only what the run before linked is copied by DVC and re-hashed by the stage.
    _restandardise(root / "in", rows[10:12], 70)
    assert _repro(root) == (images, images - 2, 2, 0, 2, 0, 0)
    assert "up to date" in sh(["dvc", "status"], root).stdout

    # A lesion leaves the release: its images go, nothing else is placed.
    gone = {r["image_id"] for r in rows if r["lesion_id"] == lesions[1]}
    metadata = read_csv(root / "in" / "metadata.csv")
    write_csv(root / "in" / "metadata.csv", [r for r in metadata if r["image_id"] not in gone], list(metadata[0]))
    counts = _repro(root)
    assert counts[2] == 0 and counts[6] == len(gone)

    # What DVC recorded is a clean build of the same inputs, file for file.
    clean = tmp_path / "clean"
    shutil.copytree(root / "in", clean / "in")
    from pipeline.release import build_release

    build_release(clean / "in" / "metadata.csv", clean / "in" / "images.csv", clean / "in" / "splits.csv",
                  clean / "in" / "std", PARAMS, clean / "release", clean / "summary.json")
    tree = {p.relative_to(clean / "release").as_posix(): p.read_bytes()
            for p in (clean / "release").rglob("*") if p.is_file()}
    shutil.rmtree(root / "release")
    sh(["dvc", "checkout", "release"], root)
    assert {p.relative_to(root / "release").as_posix(): p.read_bytes()
            for p in (root / "release").rglob("*") if p.is_file()} == tree
