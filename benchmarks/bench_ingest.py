"""Benchmark: a full ingest against re-ingests that should only touch new material.

Builds, in a temporary folder, three `export` batches and a `pptx` source of four yearly decks, all from the
real images in $HAM_DATA (default ../shared/data), ingests them from nothing, then measures side by side:
  - a re-run with nothing changed (every raw file comes from the read cache: nothing opened, nothing hashed);
  - a re-run after one new export batch (folder) is added;
  - a re-run after one new deck is added to the pptx source.
Prints the times, how many raw files were read and images decoded, and each re-run's time as a share of the full
ingest's, next to the share of new material, and merges the three shares into bench/results.json
(`ingest_noop_fraction`, `ingest_plus_folder_fraction`, `ingest_plus_deck_fraction`).
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
from pathlib import Path

from pptx import Presentation
from pptx.util import Inches

from benchmarks.results import figure, machine, record
from pipeline.ingest import ingest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HAM_DATA", REPO.parent / "shared" / "data"))
BIG = 100_000_000


def make_batch(folder: Path, images: list[Path]) -> dict:
    (folder / "images").mkdir(parents=True)
    with open(folder / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "lesion_key"])
        for path in images:
            shutil.copyfile(path, folder / "images" / path.name)
            writer.writerow([f"images/{path.name}", path.stem])
    return {"name": folder.name, "kind": "export", "path": str(folder), "options": {}}


def make_deck(path: Path, images: list[Path], first_id: int) -> None:
    deck = Presentation()
    for number, image in enumerate(images):
        slide = deck.slides.add_slide(deck.slide_layouts[6])
        slide.shapes.add_picture(str(image), Inches(1), Inches(1.5), width=Inches(4))
        slide.shapes.add_textbox(Inches(1), Inches(0.5), Inches(6), Inches(0.5)).text_frame.text = \
            str(first_id + number)
    deck.save(path)


def timed(sources: list[dict], out: Path):
    start = time.perf_counter()
    result = ingest(sources, Path("/"), out, BIG)
    return result, time.perf_counter() - start


def main() -> None:
    images = sorted((DATA / "ham10000/images").glob("*.jpg")) + sorted((DATA / "clinical/dermnet").glob("*.jpg"))
    batches, decks = images[:400], images[400:]
    batch_parts = [batches[i::4] for i in range(4)]
    deck_parts = [decks[i::5] for i in range(5)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = [make_batch(tmp / f"batch{i}", part) for i, part in enumerate(batch_parts[:3])]
        (tmp / "decks").mkdir()
        for year, part in zip(range(1999, 2003), deck_parts[:4]):
            make_deck(tmp / "decks" / f"rosendahl_{year}.pptx", part, 100000 * (year - 1990))
        sources.append({"name": "rosendahl", "kind": "pptx", "path": str(tmp / "decks"), "options": {}})
        out = tmp / "out"

        runs = [("full ingest", *timed(sources, out))]
        runs.append(("re-run, nothing new", *timed(sources, out)))
        sources.insert(3, make_batch(tmp / "batch3", batch_parts[3]))
        runs.append(("re-run, +1 folder", *timed(sources, out)))
        make_deck(tmp / "decks" / "rosendahl_2003.pptx", deck_parts[4], 1300000)
        runs.append(("re-run, +1 deck", *timed(sources, out)))

    full_s = runs[0][2]
    print(f"{'run':22s} {'images':>6s} {'files read':>10s} {'cached':>6s} {'decoded':>7s} {'seconds':>8s} "
          f"{'/ full':>6s} {'new':>5s}")
    previous = 0
    for label, result, seconds in runs:
        new = (len(result.candidates) - previous) / len(result.candidates)
        previous = len(result.candidates)
        print(f"{label:22s} {len(result.candidates):6d} {result.units_read:10d} {result.units_cached:6d} "
              f"{result.decoded:7d} {seconds:8.3f} {seconds / full_s:6.1%} {new:5.0%}")
    keys = {"re-run, nothing new": "ingest_noop_fraction", "re-run, +1 folder": "ingest_plus_folder_fraction",
            "re-run, +1 deck": "ingest_plus_deck_fraction"}
    record({keys[label]: figure(round(seconds / full_s, 3), "fraction", "python -m benchmarks.bench_ingest",
                                note=f"{label}: {seconds:.2f} s of the full ingest's {full_s:.2f} s "
                                     f"({len(runs[0][1].candidates)} images); ingest alone, in process",
                                machine=machine())
            for label, result, seconds in runs[1:]})


if __name__ == "__main__":
    main()
