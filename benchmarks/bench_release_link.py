"""Benchmark: the release's images placed by the release stage (`release.update_images`, hard links from the
standardised store) from an empty folder, against an in-place update after 1 % of the images changed, side by
side, with copying every image as the baseline.

Makes a store of --images standardised JPEGs (the real images of $HAM_DATA through standardise_image, repeated
under distinct names with one byte changed so every file is its own), then times, each followed by os.sync():
  - copy: every image copied into an empty release folder (what the stage did before it linked);
  - full: `update_images` + `remove_stale` into an empty folder, as a clean build (or a folder DVC removed);
  - incremental: 1 % of the store replaced by new files (new bytes, new sha256), then the same two calls on the
    folder the full build left: it links the changed images and only stats the others.
Prints the times (with the os.sync, and before it: the sync also flushes what other processes wrote), what each
wrote and the incremental/full fraction (target: about 1 %), and merges them into bench/results.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.results import record
from pipeline.common import atomic_write_bytes, sha256_bytes
from pipeline.release import remove_stale, update_images
from pipeline.standardise import standardise_image

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HAM_DATA", REPO.parent / "shared" / "data"))


def copy_all(plan: list[tuple[str, Path, str]], release: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    for path, source, _ in plan:
        target = release / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    os.sync()
    return time.perf_counter() - start, {"copied": len(plan)}


def place_all(plan: list[tuple[str, Path, str]], release: Path, state: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    placed = update_images(release, plan, state)
    counts = {**placed["counts"], "removed": remove_stale(release, {path for path, _, _ in plan}, placed["files"])}
    counts["before_sync_s"] = time.perf_counter() - start
    os.sync()
    return time.perf_counter() - start, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    args = parser.parse_args()
    real = sorted((DATA / "ham10000" / "images").glob("*.jpg"))
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:  # inside the repository: the store's file system
        tmp = Path(tmp)
        plan, standardised = [], {}
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
            plan.append((f"{'test' if number % 5 == 0 else 'train'}/images/img{number:05d}.jpg", str(path),
                         sha256_bytes(bytes(data))))  # the store path as a string, as build_release gives it
        megabytes = sum(os.path.getsize(p) for _, p, _ in plan) / 1e6
        os.sync()
        copy_s, _ = copy_all(plan, tmp / "copied")
        full_s, full = place_all(plan, tmp / "release", tmp / "state.json")
        changed = plan[::100]  # 1 % of the images re-standardised: new files (new bytes) under their names
        for number, (path, source, _) in enumerate(plan):
            if number % 100 == 0:
                data = bytearray(Path(source).read_bytes())
                data[-3] = (data[-3] + 1) % 256  # new bytes (the end marker FF D9 stays)
                data = bytes(data)
                atomic_write_bytes(Path(source), data)
                plan[number] = (path, source, sha256_bytes(data))
        again_s, again = place_all(plan, tmp / "release", tmp / "state.json")
        # What `dvc repro` does (release is not a persistent output): DVC deletes the folder, the stage links every
        # image again; those whose store file is unchanged since they were checked are linked unread.
        for number, (path, source, _) in enumerate(plan):
            if number % 100 == 50:
                data = bytearray(Path(source).read_bytes())
                data[-3] = (data[-3] + 1) % 256
                atomic_write_bytes(Path(source), bytes(data))
                plan[number] = (path, source, sha256_bytes(bytes(data)))
        shutil.rmtree(tmp / "release")
        dvc_s, dvc = place_all(plan, tmp / "release", tmp / "state.json")
    fraction = again_s / full_s
    print(f"release of {args.images} images ({megabytes:.0f} MB), {len(changed)} changed (1 %)")
    print(f"  copy every image             {copy_s:7.3f} s  {args.images} files copied ({megabytes:.0f} MB written)")
    print(f"  full build (link every one)  {full_s:7.3f} s  {full['linked']} linked, {full['copied']} copied "
          f"({full['before_sync_s']:.3f} s before os.sync)")
    print(f"  in place after a 1 % change  {again_s:7.3f} s  {again['linked']} linked, {again['kept']} kept "
          f"({again['rehashed']} re-hashed), {again['removed']} removed "
          f"({again['before_sync_s']:.3f} s before os.sync)")
    print(f"  incremental / full           {fraction:7.1%}   (of the copy: {again_s / copy_s:.1%}; before os.sync "
          f"{again['before_sync_s'] / full['before_sync_s']:.1%})")
    print(f"  folder deleted (dvc repro), another 1 % changed  {dvc_s:7.3f} s  {dvc['linked']} linked "
          f"({dvc['relinked_unread']} unread), {dvc['copied']} copied: {dvc_s / full_s:.1%} of the full build, "
          f"{dvc_s / copy_s:.1%} of the copy")
    record({"release_copy_seconds": (round(copy_s, 3), "s"), "release_link_seconds": (round(full_s, 3), "s"),
            "release_incremental_1pct_seconds": (round(again_s, 3), "s"),
            "release_incremental_1pct_share_of_full": (round(fraction, 4), "fraction"),
            "release_incremental_1pct_files_linked": (again["linked"] + again["copied"], "files"),
            "release_dvc_rebuild_1pct_seconds": (round(dvc_s, 3), "s"),
            "release_dvc_rebuild_1pct_share_of_copy": (round(dvc_s / copy_s, 4), "fraction")},
           f"make bench (python -m benchmarks.bench_release_link --images {args.images})")


if __name__ == "__main__":
    main()
