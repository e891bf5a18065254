"""Re-ingest reads only new or changed raw files: the read cache (`read_cache.json`, keyed by each file's stamp)
against a fresh ingest of the same sources, on dermatoscopic images (real where $HAM_DATA has them, else drawn: the
`some_images` fixture) and the authors' real decks (real data only)."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
from pptx import Presentation
from pptx.util import Inches

from pipeline.common import sha256_bytes
from pipeline.ingest import READ_CACHE, ingest

BIG = 100_000_000
TABLES = ("candidates.csv", "rejects.csv", "provenance.csv", "objects/index.csv")


@pytest.fixture(scope="module")
def real_images(some_images) -> list[Path]:
    return some_images.dsc


def write_index(root: Path, names: list[str]) -> None:
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "lesion_key", "dx"])
        for number, name in enumerate(names):
            writer.writerow([name, f"L{number:03d}", "nv"])


def export_source(root: Path) -> list[dict]:
    return [{"name": "vidir_modern", "kind": "export", "path": str(root), "options": {}}]


def same_tables(a: Path, b: Path) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in TABLES)


def test_unchanged_files_are_not_read_again_and_outputs_match_a_fresh_ingest(tmp_path, real_images):
    src = tmp_path / "src"
    src.mkdir()
    names = [f"img{i}.jpg" for i in range(6)]
    for name, path in zip(names, real_images):
        shutil.copyfile(path, src / name)
    (src / "bad.jpg").write_bytes(b"")  # a reject of the image check, also remembered
    write_index(src, [*names[:5], "bad.jpg"])
    out = tmp_path / "out"

    first = ingest(export_source(src), tmp_path, out, BIG)
    assert (first.units_read, first.units_cached, first.decoded) == (6, 0, 5)
    assert (out / READ_CACHE).is_file()

    again = ingest(export_source(src), tmp_path, out, BIG)
    assert (again.units_read, again.units_cached, again.decoded) == (0, 6, 0)
    assert again.rejects == first.rejects  # the empty file's reason is replayed word for word

    write_index(src, [*names[:5], "bad.jpg", names[5]])  # one new row and image; the others are as they were
    grown = ingest(export_source(src), tmp_path, out, BIG)
    assert (grown.units_read, grown.units_cached, grown.decoded) == (1, 6, 1)
    fresh = ingest(export_source(src), tmp_path, tmp_path / "fresh", BIG)
    assert (fresh.units_read, fresh.decoded) == (7, 6)
    assert same_tables(out, tmp_path / "fresh")

    # A file rewritten in place gets a new stamp and is read again (here with other pixels: a new candidate).
    shutil.copyfile(real_images[10], src / names[0])
    changed = ingest(export_source(src), tmp_path, out, BIG)
    assert (changed.units_read, changed.units_cached) == (1, 6)
    assert sha256_bytes(real_images[10].read_bytes()) in {c["candidate_id"] for c in changed.candidates}
    assert sha256_bytes(real_images[0].read_bytes()) not in {c["candidate_id"] for c in changed.candidates}

    # Only touched (same bytes, new mtime): read again, nothing decoded.
    os.utime(src / names[1], ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    touched = ingest(export_source(src), tmp_path, out, BIG)
    assert (touched.units_read, touched.decoded) == (1, 0)

    # An object missing from the store: its file is read and decoded again, not trusted from the cache.
    victim = next(c for c in touched.candidates if c["origin"] == names[2])
    (out / "objects" / victim["object"]).unlink()
    repaired = ingest(export_source(src), tmp_path, out, BIG)
    assert (repaired.units_read, repaired.decoded) == (1, 1)
    assert (out / "objects" / victim["object"]).is_file()

    # Another pixel limit invalidates the whole cache (the image checks depend on it).
    relimited = ingest(export_source(src), tmp_path, out, BIG - 1)
    assert relimited.units_cached == 0 and relimited.units_read == 7


def test_damaged_read_cache_is_rebuilt(tmp_path, real_images):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(real_images[0], src / "a.jpg")
    write_index(src, ["a.jpg"])
    out = tmp_path / "out"
    ingest(export_source(src), tmp_path, out, BIG)
    (out / READ_CACHE).write_text("{ not json")
    again = ingest(export_source(src), tmp_path, out, BIG)
    assert (again.units_read, len(again.candidates)) == (1, 1)
    assert ingest(export_source(src), tmp_path, out, BIG).units_cached == 1


def add_deck(path: Path, pictures: list[tuple[str, Path]]) -> None:
    """A deck of one slide per (lesion ID, picture), as in the authors' samples."""
    deck = Presentation()
    for lesion, picture in pictures:
        slide = deck.slides.add_slide(deck.slide_layouts[6])
        slide.shapes.add_picture(str(picture), Inches(1), Inches(1.5), width=Inches(4))
        slide.shapes.add_textbox(Inches(1), Inches(0.5), Inches(6), Inches(0.5)).text_frame.text = lesion
    deck.save(path)


def test_one_new_deck_is_the_only_deck_opened(tmp_path, ham_data, real_images):
    src = tmp_path / "rosendahl"
    src.mkdir()
    for deck in sorted((ham_data / "ham10000" / "pptx_samples").glob("*.pptx")):
        shutil.copyfile(deck, src / deck.name)
    source = [{"name": "rosendahl", "kind": "pptx", "path": str(src), "options": {}}]
    out = tmp_path / "out"
    first = ingest(source, tmp_path, out, BIG)
    assert (first.units_read, len(first.candidates)) == (2, 4)

    add_deck(src / "rosendahl_2001.pptx", [(str(1000001 + i), path) for i, path in enumerate(real_images[:3])])
    second = ingest(source, tmp_path, out, BIG)
    assert (second.units_read, second.units_cached, second.decoded) == (1, 2, 3)
    assert len(second.candidates) == 7
    new = [c for c in second.candidates if c["origin"] == "rosendahl_2001.pptx"]
    assert sorted(c["lesion_key"] for c in new) == ["1000001", "1000002", "1000003"]
    fresh = ingest(source, tmp_path, tmp_path / "fresh", BIG)
    assert fresh.units_read == 3
    assert same_tables(out, tmp_path / "fresh")


def test_an_unchanged_source_is_replayed_without_running_its_reader(tmp_path, real_images, monkeypatch):
    """The source memo: a folder whose files all have the stamps of the last run gives the same tables without
    its reader listing, matching or stamping anything; any change under the folder runs the reader again."""
    from pipeline import sources

    src = tmp_path / "src"
    src.mkdir()
    names = [f"img{i}.jpg" for i in range(4)]
    for name, path in zip(names, real_images):
        shutil.copyfile(path, src / name)
    (src / "bad.jpg").write_bytes(b"")
    (src / "dup.jpg").write_bytes((src / names[0]).read_bytes())  # a duplicate, rejected as one on replay too
    write_index(src, [*names, "bad.jpg"])
    with open(src / "index.csv", "a", newline="") as handle:
        handle.write("dup.jpg,L000,nv\n")  # the same lesion as img0.jpg: a plain duplicate, not a conflict
    out = tmp_path / "out"
    first = ingest(export_source(src), tmp_path, out, BIG)
    tables = {name: (out / name).read_bytes() for name in TABLES}

    real_reader_for = sources.reader_for
    calls = []

    def counting_reader_for(kind):
        read = real_reader_for(kind)

        def reader(root, options):
            calls.append(kind)
            return read(root, options)
        reader.__module__ = read.__module__
        return reader

    monkeypatch.setattr(sources, "reader_for", counting_reader_for)
    again = ingest(export_source(src), tmp_path, out, BIG)
    assert calls == [] and (again.units_read, again.units_cached, again.decoded) == (0, 6, 0)
    assert {name: (out / name).read_bytes() for name in TABLES} == tables
    assert again.rejects == first.rejects

    (src / "notes.txt").write_text("a file the index does not list")  # still a change under the folder
    noted = ingest(export_source(src), tmp_path, out, BIG)
    assert calls == ["export"] and (noted.units_read, noted.units_cached) == (0, 6)
    assert {name: (out / name).read_bytes() for name in TABLES} == tables

    os.utime(src / names[1], ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    touched = ingest(export_source(src), tmp_path, out, BIG)
    assert calls == ["export", "export"] and (touched.units_read, touched.decoded) == (1, 0)
    # and the units of a source replayed whole stay in the read cache for the run after the next change
    ingest(export_source(src), tmp_path, out, BIG)
    (src / "notes.txt").unlink()
    after = ingest(export_source(src), tmp_path, out, BIG)
    assert (after.units_read, after.units_cached) == (0, 6)
