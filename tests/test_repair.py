"""`ham repair` (pipeline/repair.py): damage done in place through each link of the demo's build (one inode for a
store file, its `release/` or annotated copy and DVC's cache object; a raw file and its cache object; a stage
output and its cache object) is found, every name of it removed and made again, and `ham verify`, DVC's cache and
`dvc status` come out correct. Real `dvc repro` in a throw-away copy of the repository (cache.type hardlink, as
committed), with a folder remote for the raw file that only a pull can bring back.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipeline.verify import verify
from tests.pipeline_repo import copy_repository, run

pytestmark = [pytest.mark.slow]

SOURCES = ["data/raw/sample/rosendahl", "data/raw/sample/vidir_modern", "data/raw/sample/vidir_molemax",
           "data/raw/sample/vienna_dias", "data/raw/sample/image_types.csv"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repair")
    repo = copy_repository(root / "repo")
    run(["dvc", "config", "--local", "core.site_cache_dir", str(root / "site-cache")], repo)
    run(["dvc", "remote", "add", "--local", "-d", "folder", str(root / "remote")], repo)
    run(["ham", "sample", "data/raw/sample"], repo)
    run(["dvc", "add", *SOURCES], repo)
    run(["dvc", "repro"], repo)
    run(["dvc", "push", "-q"], repo)
    assert verify(repo / "release").problems == []
    return repo


def cache_object(repo: Path, path: Path) -> Path:
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    return repo / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]


def damage_in_place(path: Path) -> bytes:
    """Truncate `path` through its inode (every hard link sees it); returns the good bytes."""
    good = path.read_bytes()
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.truncate(len(good) // 2)
    return good


def inode(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def repaired(repo: Path, *names: str) -> str:
    """`ham repair --check-only` names each damaged file (exit 1), `ham repair` mends it (exit 0), and the release,
    the cache and the pipeline are correct afterwards."""
    check = run(["ham", "repair", "--check-only"], repo, check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    for name in names:
        assert name in check.stdout, (name, check.stdout)
    result = run(["ham", "repair"], repo, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verify(repo / "release").problems == []
    again = run(["ham", "repair", "--check-only"], repo, check=False)
    assert again.returncode == 0 and "matches its record" in again.stdout, again.stdout
    assert "up to date" in run(["dvc", "status"], repo).stdout
    return result.stdout


def test_a_standardised_image_damaged_in_place_is_made_again_with_its_release_file_and_cache_object(built):
    repo = built
    released = sorted((repo / "release" / "train" / "images").glob("*.jpg"))[0]
    cached = cache_object(repo, released)
    store = next(p for p in (repo / "data" / "interim" / "standardised" / "images").iterdir()
                 if p.is_file() and inode(p) == inode(released))
    assert inode(cached) == inode(released)  # one inode: store, release/ and DVC's cache
    good = damage_in_place(released)
    output = repaired(repo, str(store.relative_to(repo)), str(released.relative_to(repo)),
                      str(cached.relative_to(repo)))
    assert "dvc repro --force -s standardise: exit 0" in output
    assert released.read_bytes() == good and store.read_bytes() == good and cached.read_bytes() == good
    assert hashlib.md5(cached.read_bytes()).hexdigest() == cached.parent.name + cached.name


def test_an_ingest_object_damaged_through_the_annotated_copy_is_made_again(built):
    repo = built
    objects = repo / "data" / "interim" / "ingest" / "objects"
    by_inode = {inode(p): p for p in objects.iterdir() if p.is_file()}
    annotated = next(p for p in sorted((repo / "data" / "interim" / "annotated").rglob("*"))
                     if p.is_file() and inode(p) in by_inode)
    victim = by_inode[inode(annotated)]
    good = damage_in_place(annotated)
    output = repaired(repo, str(victim.relative_to(repo)), "DVC cache object whose content no longer hashes")
    assert "dvc repro --force -s ingest: exit 0" in output
    assert victim.read_bytes() == good and annotated.read_bytes() == good
    assert cache_object(repo, annotated).read_bytes() == good


def test_a_raw_file_damaged_with_its_cache_object_is_pulled_again(built):
    repo = built
    run(["dvc", "checkout", "-q", "--relink", "data/raw/sample/vidir_modern.dvc"], repo)  # as a fresh checkout
    raw = next(p for p in sorted((repo / "data" / "raw" / "sample" / "vidir_modern").rglob("vid_*.jpg"))
               if inode(p) == inode(cache_object(repo, p)))  # one inode: the raw file is DVC's cache object
    cached = cache_object(repo, raw)
    good = damage_in_place(raw)
    output = repaired(repo, str(cached.relative_to(repo)))
    assert "dvc pull data/raw/sample/vidir_modern.dvc: exit 0" in output
    assert raw.read_bytes() == good and cached.read_bytes() == good


def test_a_stage_output_damaged_with_its_cache_object_is_made_again(built):
    repo = built
    candidates = repo / "data" / "interim" / "ingest" / "candidates.csv"
    cached = cache_object(repo, candidates)
    assert inode(cached) == inode(candidates)
    good = damage_in_place(cached)
    repaired(repo, str(cached.relative_to(repo)))
    assert candidates.read_bytes() == good and cache_object(repo, candidates) == cached
    assert cached.read_bytes() == good


def test_a_cache_object_damaged_with_the_store_but_not_the_release_copy_is_made_again(built):
    repo = built
    released = sorted((repo / "release" / "test" / "images").glob("*.jpg"))[0]
    cached = cache_object(repo, released)
    good = released.read_bytes()
    released.unlink()
    released.write_bytes(good)  # the release's file now a copy of its own (as with cache.type copy)
    damage_in_place(cached)  # and with it the standardised store's name of that inode, not the release's copy
    assert released.read_bytes() == good
    output = repaired(repo, str(cached.relative_to(repo)))
    assert str(cached.relative_to(repo)) in output.split("every name of each): ")[1].splitlines()[0]
    assert "dvc repro --force -s standardise: exit 0" in output
    assert cached.read_bytes() == good and released.read_bytes() == good
