"""Benchmark: full ingest vs re-ingest after one new folder is added (only the new images should be decoded).

Builds three `export` sources from the real images in $HAM_DATA (default ../shared/data) in a temporary folder,
ingests them, adds a fourth source (one new batch) and ingests again. Prints both times and their ratio.
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
from pathlib import Path

from pipeline.ingest import ingest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HAM_DATA", REPO.parent / "shared" / "data"))


def make_source(folder: Path, images: list[Path]) -> dict:
    (folder / "images").mkdir(parents=True)
    with open(folder / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "lesion_key"])
        for path in images:
            shutil.copyfile(path, folder / "images" / path.name)
            writer.writerow([f"images/{path.name}", path.stem])
    return {"name": folder.name, "kind": "export", "path": str(folder), "options": {}}


def main() -> None:
    images = sorted((DATA / "ham10000/images").glob("*.jpg")) + sorted((DATA / "clinical/dermnet").glob("*.jpg"))
    batches = [images[i::4] for i in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = [make_source(tmp / f"batch{i}", batch) for i, batch in enumerate(batches[:3])]
        start = time.perf_counter()
        full = ingest(sources, Path("/"), tmp / "out", 100_000_000)
        full_s = time.perf_counter() - start
        sources.append(make_source(tmp / "batch3", batches[3]))
        start = time.perf_counter()
        again = ingest(sources, Path("/"), tmp / "out", 100_000_000)
        again_s = time.perf_counter() - start
    print(f"ingest full:        {len(full.candidates):5d} images, {full.decoded:5d} decoded, {full_s:6.2f} s")
    print(f"ingest +1 batch:    {len(again.candidates):5d} images, {again.decoded:5d} decoded, {again_s:6.2f} s")
    print(f"re-ingest / full (per image decoded): "
          f"{(again_s / max(1, again.decoded)) / (full_s / max(1, full.decoded)):.2f}; "
          f"re-ingest time / full time: {again_s / full_s:.2f} for {again.decoded / len(again.candidates):.0%} new")


if __name__ == "__main__":
    main()
