"""Benchmark: the standardise stage against the authors' mogrify command, side by side in one run.

Takes 60 real HAM10000 images from $HAM_DATA (default ../shared/data), enlarges each to 3000x2250 (the size of
the sequential-imaging and slide-scan routes) and stores them as JPEG (quality 95), then times:
  - the authors' command, `mogrify -strip -rotate "90<" -resize "600x450^" ... -quality 100`, over a copy of the
    60 files, one invocation as they ran it;
  - `standardise()` (the stage function: draft decoding, reduce + Lanczos over the crop box, a process pool of
    `--workers`, default every core) over the same 60 files, from an empty output folder;
  - `standardise_image` in one process from fully decoded pixels with the old recipe (full-size Lanczos, then
    crop), for the record.
Prints the times, the speed-up over mogrify and the PSNR of our images against mogrify's (mean and worst), and
merges the figures into bench/results.json. Needs ImageMagick (`apt-get install imagemagick`).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.results import record
from pipeline.standardise import standardise

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HAM_DATA", REPO.parent / "shared" / "data"))
MOGRIFY_ARGS = ["-strip", "-rotate", "90<", "-resize", "600x450^", "-gravity", "center", "-crop", "600x450+0+0",
                "-density", "72", "-units", "PixelsPerInch", "-format", "jpg", "-quality", "100"]
PARAMS = {"width": 600, "height": 450, "quality": 100, "density": 72}


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.mean((np.asarray(a.convert("RGB"), np.float64) - np.asarray(b.convert("RGB"), np.float64)) ** 2)
    return math.inf if error == 0 else 10 * math.log10(255 ** 2 / error)


def old_recipe(path: Path) -> bytes:
    """The recipe as it was before draft decoding: every pixel decoded, Lanczos from full size, then crop."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    if image.width < image.height:
        image = image.transpose(Image.Transpose.ROTATE_270)
    scale = max(600 / image.width, 450 / image.height)
    size = (max(600, round(image.width * scale)), max(450, round(image.height * scale)))
    image = image.resize(size, Image.LANCZOS)
    left, top = (size[0] - 600) // 2, (size[1] - 450) // 2
    buffer = io.BytesIO()
    image.crop((left, top, left + 600, top + 450)).save(buffer, "JPEG", quality=100, subsampling=0, dpi=(72, 72))
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--workers", type=int, default=0, help="processes for standardise (0: every core)")
    args = parser.parse_args()
    mogrify = shutil.which("mogrify")
    if not mogrify or "ImageMagick" not in subprocess.run([mogrify, "-version"], capture_output=True,
                                                           text=True).stdout:
        sys.exit("bench_standardise: ImageMagick's mogrify is not installed (apt-get install imagemagick)")
    real = sorted((DATA / "ham10000" / "images").glob("*.jpg"))
    picks = real[::max(1, len(real) // args.images)][:args.images]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = tmp / "objects"
        inputs.mkdir()
        for path in picks:
            with Image.open(path) as image:
                image.convert("RGB").resize((3000, 2250), Image.LANCZOS).save(inputs / path.name, quality=95)
        with open(tmp / "candidates.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["candidate_id", "object"])
            writer.writerows([path.stem, path.name] for path in picks)
        with open(tmp / "decisions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["candidate_id", "keep"])
            writer.writerows([path.stem, "true"] for path in picks)

        work = tmp / "mogrify"
        shutil.copytree(inputs, work)
        start = time.perf_counter()
        subprocess.run([mogrify, *MOGRIFY_ARGS, *sorted(str(p) for p in work.iterdir())], check=True)
        mogrify_s = time.perf_counter() - start

        start = time.perf_counter()
        standardise(tmp / "candidates.csv", tmp / "decisions.csv", inputs, {**PARAMS, "workers": args.workers},
                    tmp / "ours", tmp / "index.csv")
        ours_s = time.perf_counter() - start

        start = time.perf_counter()
        for path in sorted(inputs.iterdir()):
            old_recipe(path)
        old_s = time.perf_counter() - start

        scores = []
        for path in picks:
            (ours,) = (tmp / "ours").glob(f"{path.stem}-*.jpg")
            with Image.open(work / path.name) as theirs, Image.open(ours) as mine:
                assert theirs.size == mine.size == (600, 450)
                scores.append(psnr(theirs, mine))

    cores = len(os.sched_getaffinity(0))
    print(f"{len(picks)} real images enlarged to 3000x2250 (JPEG q95), {cores} cores")
    print(f"{'run':44s} {'seconds':>8s} {'images/s':>9s} {'vs mogrify':>10s}")
    for label, seconds in ((f"authors' mogrify (one invocation)", mogrify_s),
                           (f"standardise() stage, workers={args.workers or cores}", ours_s),
                           ("old recipe, one process, full decode", old_s)):
        print(f"{label:44s} {seconds:8.2f} {len(picks) / seconds:9.1f} {mogrify_s / seconds:9.1f}x")
    print(f"PSNR of standardise vs mogrify: mean {np.mean(scores):.2f} dB, worst {min(scores):.2f} dB")
    record({
        "standardise_speedup_vs_mogrify": (round(mogrify_s / ours_s, 2), "x"),
        "standardise_seconds_60x3000x2250": (round(ours_s, 3), "s"),
        "mogrify_seconds_60x3000x2250": (round(mogrify_s, 3), "s"),
        "standardise_psnr_vs_mogrify_mean": (round(float(np.mean(scores)), 2), "dB"),
        "standardise_psnr_vs_mogrify_worst": (round(float(min(scores)), 2), "dB"),
    }, "make bench (python -m benchmarks.bench_standardise)")


if __name__ == "__main__":
    main()
