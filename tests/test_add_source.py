"""`ham add` (pipeline/add_source.py): links that lead out of a raw source are named and nothing is cached; a
clean source is `dvc add`ed, and added again later (its files then hard-linked to DVC's cache).

Real `dvc add` in a temporary git + DVC repository with the project's `.dvc/config` (cache.type hardlink first),
on real images from $HAM_DATA; the outside files live in a folder beside the repository.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.doc_blocks import block
from tests.release_repo import REPO_ROOT, sh


@pytest.fixture
def repo(tmp_path, ham_data):
    root = tmp_path / "repo"
    root.mkdir()
    env = {"HOME": str(tmp_path)}
    sh(["git", "init", "-q"], root, env)
    sh(["dvc", "init", "-q"], root, env)
    shutil.copyfile(REPO_ROOT / ".dvc" / "config", root / ".dvc" / "config")
    sh(["dvc", "config", "--local", "core.site_cache_dir", str(tmp_path / "site-cache")], root, env)
    images = sorted((ham_data / "ham10000" / "images").glob("*.jpg"))[:6]
    source = root / "data" / "raw" / "queensland_2019"
    source.mkdir(parents=True)
    for image in images[:3]:
        shutil.copyfile(image, source / image.name)
    outside = tmp_path / "outside"
    outside.mkdir()
    for image in images[3:]:
        shutil.copyfile(image, outside / image.name)
    return root, source, outside, env


def cached(root: Path) -> list[Path]:
    return [p for p in (root / ".dvc" / "cache").rglob("*") if p.is_file()] if (root / ".dvc" / "cache").exists() \
        else []


def test_links_out_of_the_source_are_named_and_nothing_is_cached(repo):
    root, source, outside, env = repo
    outer = sorted(outside.iterdir())
    (source / "slide.jpg").symlink_to(outer[0])
    os.link(outer[1], source / "scan.jpg")
    (source / "more").symlink_to(outside)
    (source / "gone.jpg").symlink_to(source / "nowhere.jpg")
    # Links within the source are DVC's to copy: a second name of a file, a link to a sibling.
    first = sorted(source.glob("ISIC_*.jpg"))[0]
    os.link(first, source / "again.jpg")
    (source / "alias.jpg").symlink_to(first.name)

    result = sh(["ham", "add", "data/raw/queensland_2019"], root, env, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert lines[0].startswith("Error: ")
    assert lines[-1] == "ham add: 4 links lead out of the source; nothing added"
    named = {line.removeprefix("Error: ").split(":")[0] for line in lines[:-1]}
    assert named == {f"data/raw/queensland_2019/{n}" for n in ("slide.jpg", "scan.jpg", "more", "gone.jpg")}
    assert f"symbolic link to the file {outer[0]}, outside data/raw/queensland_2019" in result.stderr
    assert "scan.jpg: hard link to a file outside data/raw/queensland_2019 (2 names, 1 of them elsewhere)" \
        in result.stderr
    assert cached(root) == [] and not (source.parent / "queensland_2019.dvc").exists()
    assert outer[1].stat().st_mode & 0o200  # the outside file is untouched, still writable

    # What the check prevents: plain `dvc add` caches the outside files and makes the hard-linked one read-only.
    (source / "gone.jpg").unlink()
    sh(["dvc", "add", "-q", "data/raw/queensland_2019"], root, env)
    assert not outer[1].stat().st_mode & 0o222
    md5s = {sh(["md5sum", str(p)], root).stdout.split()[0] for p in outer[:2]}  # the file links
    assert md5s <= {p.parent.name + p.name for p in cached(root)}


def test_a_clean_source_is_added_and_added_again(repo):
    root, source, outside, env = repo
    first = sorted(source.glob("*.jpg"))[0]
    os.link(first, source / "again.jpg")
    shown = sh(block("add-source"), root, env)  # docs/maintainer.md's block, as written
    assert "Data and pipelines are up to date." in shown.stdout
    record = source.parent / "queensland_2019.dvc"
    assert record.exists() and len(cached(root)) == 4  # three images and the directory object
    assert first.stat().st_nlink == 3  # DVC linked the cache object to both names (cache.type hardlink)

    # Added again: every file is now a hard link to DVC's cache, which is no outward link; a new file is added.
    shutil.copyfile(sorted(outside.iterdir())[0], source / "new.jpg")
    again = sh(["ham", "add", "data/raw/queensland_2019"], root, env, check=False)
    assert again.returncode == 0, again.stderr
    assert len(cached(root)) == 6  # the new image and the new directory object

    # The same bytes in a second source: DVC links both to one cache object; neither is refused.
    other = source.parent / "vienna_2020"
    other.mkdir()
    shutil.copyfile(first, other / first.name)
    assert sh(["ham", "add", "data/raw/vienna_2020"], root, env, check=False).returncode == 0
    (other / first.name).unlink()
    sh(["dvc", "checkout", "-q", "data/raw/vienna_2020.dvc"], root, env)  # a checkout links it to the cache
    assert first.stat().st_nlink == 4
    assert sh(["ham", "add", "data/raw/queensland_2019", "data/raw/vienna_2020"], root, env,
              check=False).returncode == 0


def test_a_source_that_is_itself_a_link_is_refused(repo):
    root, source, outside, env = repo
    (source.parent / "elsewhere").symlink_to(outside)
    result = sh(["ham", "add", "data/raw/elsewhere"], root, env, check=False)
    assert result.returncode == 1 and "data/raw/elsewhere: the source is itself a symbolic link" in result.stderr
    assert cached(root) == []


def test_one_file_source_hard_linked_out_is_refused_and_a_plain_one_added(repo):
    root, source, outside, env = repo
    notes = outside / "annotations.csv"
    notes.write_text("IMAGE,ANNOTATION,TIMESTAMP\n")
    os.link(notes, source.parent / "image_types.csv")
    result = sh(["ham", "add", "data/raw/image_types.csv"], root, env, check=False)
    assert result.returncode == 1 and "data/raw/image_types.csv: hard link to a file outside" in result.stderr
    assert cached(root) == []
    (source.parent / "image_types.csv").unlink()
    shutil.copyfile(notes, source.parent / "image_types.csv")
    assert sh(["ham", "add", "data/raw/image_types.csv"], root, env, check=False).returncode == 0
    assert sh(["ham", "add", "data/raw/image_types.csv"], root, env, check=False).returncode == 0  # linked by DVC now
    assert (source.parent / "image_types.csv").stat().st_nlink == 2
