"""`linking.place`: release files are hard links to the standardised store (no bytes written), replaced by
rename and never written through, with a copy where no link can be made (another device)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pipeline import linking
from pipeline.linking import place


@pytest.fixture
def store(tmp_path, some_images) -> list[Path]:
    folder = tmp_path / "store"
    folder.mkdir()
    paths = []
    for source in some_images.dsc[:3]:
        (folder / source.name).write_bytes(source.read_bytes())
        paths.append(folder / source.name)
    return paths


def test_links_then_keeps(tmp_path, store):
    target = tmp_path / "release" / "train" / "images" / "x.jpg"
    assert place(store[0], target) == "linked"
    assert os.path.samefile(store[0], target) and target.read_bytes() == store[0].read_bytes()
    assert place(store[0], target) == "kept"
    assert [p.name for p in target.parent.iterdir()] == ["x.jpg"]  # no temporary file left


def test_replaces_a_link_to_another_file_without_writing_through(tmp_path, store):
    target = tmp_path / "x.jpg"
    place(store[1], target)
    before = store[1].read_bytes()
    assert place(store[0], target) == "linked"
    assert os.path.samefile(store[0], target)
    assert store[1].read_bytes() == before, "placing over a link wrote into the file it pointed at"


def test_copies_across_devices_and_keeps_an_identical_copy(tmp_path, store, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(linking.os, "link", no_link)
    target = tmp_path / "x.jpg"
    assert place(store[0], target) == "copied"
    assert target.read_bytes() == store[0].read_bytes() and not os.path.samefile(store[0], target)
    stamp = target.stat().st_mtime_ns, target.stat().st_ino
    assert place(store[0], target) == "kept"
    assert (target.stat().st_mtime_ns, target.stat().st_ino) == stamp
    assert place(store[1], target) == "copied" and target.read_bytes() == store[1].read_bytes()


def test_other_link_errors_are_not_hidden(tmp_path, store, monkeypatch):
    def broken(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(linking.os, "link", broken)
    with pytest.raises(OSError):
        place(store[0], tmp_path / "x.jpg")
    assert not list(tmp_path.glob(".x.jpg*"))
