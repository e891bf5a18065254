"""Benchmark: a release folder built by copying every image against one built with `linking.place` (hard links
from the standardised store), and a rebuild after 1 % of the images changed.

Makes a store of --images standardised JPEGs (the real images of $HAM_DATA through standardise_image,
repeated under distinct names with one byte changed so every file is its own), then times, each from an empty
release folder as the release stage does: copying every file; placing (linking) every file; and after 1 % of
the store is replaced, placing again. Prints the times and the bytes written into the release folder, and
merges them into bench/results.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.results import record
from pipeline.common import atomic_write_bytes
from pipeline.linking import place
from pipeline.standardise import standardise_image

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HAM_DATA", REPO.parent / "shared" / "data"))


def build(store: list[Path], release: Path, put) -> tuple[float, int]:
    if release.exists():
        shutil.rmtree(release)
    start = time.perf_counter()
    for path in store:
        target = release / "train" / "images" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        put(path, target)
    os.sync()
    seconds = time.perf_counter() - start
    written = sum(p.stat().st_size for p in (release / "train" / "images").iterdir() if p.stat().st_nlink == 1)
    return seconds, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    real = sorted((DATA / "ham10000" / "images").glob("*.jpg"))
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:  # inside the repository: the store's file system
        tmp = Path(tmp)
        store, standardised = [], {}
        for number in range(args.images):
            source = real[number % len(real)]
            if source not in standardised:
                from PIL import Image

                with Image.open(source) as image:
                    standardised[source] = standardise_image(image)
            data = bytearray(standardised[source])
            data[-3] = number % 251  # inside the JPEG's last bytes: a file of its own
            path = tmp / "store" / f"img{number:05d}.jpg"
            atomic_write_bytes(path, bytes(data))
            store.append(path)
        os.sync()
        copy_s, copy_bytes = build(store, tmp / "release", shutil.copyfile)
        link_s, link_bytes = build(store, tmp / "release", place)
        for path in store[::100]:  # 1 % of the images re-standardised: new files under their names
            atomic_write_bytes(path, path.read_bytes()[:-1] + b"\xd9")
        again_s, again_bytes = build(store, tmp / "release", place)
    print(f"release of {args.images} images ({copy_bytes / 1e6:.0f} MB)")
    print(f"  copy every image        {copy_s:7.3f} s  {copy_bytes / 1e6:8.1f} MB written")
    print(f"  link every image        {link_s:7.3f} s  {link_bytes / 1e6:8.1f} MB written  "
          f"({link_s / copy_s:.1%} of the copy)")
    print(f"  link after a 1 % change {again_s:7.3f} s  {again_bytes / 1e6:8.1f} MB written  "
          f"({again_s / copy_s:.1%} of the copy)")
    record({"release_copy_seconds": (round(copy_s, 3), "s"), "release_link_seconds": (round(link_s, 3), "s"),
            "release_link_after_1pct_change_share_of_copy": (round(again_s / copy_s, 4), "fraction"),
            "release_link_bytes_written": (link_bytes, "bytes")},
           f"make bench (python -m benchmarks.bench_release_link --images {args.images})")


if __name__ == "__main__":
    main()
