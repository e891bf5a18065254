"""Benchmark: standardise on the local pool and on Dask distributed (1 and 2 workers), the same work; a cost model.

Takes `--images` real HAM10000 images from $HAM_DATA (default ../shared/data), enlarged to 3000x2250 and stored as
JPEG quality 95 (the size of the sequential-imaging and slide-scan routes, as benchmarks/bench_standardise.py),
and times `standardise()` from an empty output folder:
  - in one process (`workers: 1`, local executor): the per-image time the cost model starts from;
  - on the local process pool with 2 processes (`executor: local`, the default);
  - on a Dask `LocalCluster` of 1 and then 2 worker processes (`executor: dask`, at the cluster's address; the
    cluster is started, and its workers have imported the stage's code, before the clock, as a running cluster
    would be; the stage's own connection to the scheduler is timed).
Every run writes the same bytes (checked). Figures merged into bench/results.json:
`distributed_standardise_images_per_s_{one_process,local_pool_2,dask_1_worker,dask_2_workers}`,
`distributed_dask_overhead_ms_per_image` (dask with 2 workers against the local pool with 2 processes, per image)
and `distributed_cost_1e6_images_hours_{1,10,100}_machines`: the cost model of docs/s3-dask.md,
whose assumptions are the constants below.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from benchmarks.results import figure, machine, missing, record
from pipeline.executors import Compute
from pipeline.standardise import standardise

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HAM_DATA", REPO.parent / "shared" / "data"))
PARAMS = {"width": 600, "height": 450, "quality": 100, "density": 72}
COMMAND = "make bench (python -m benchmarks.bench_distributed)"

# Cost model assumptions (docs/s3-dask.md): each machine has CORES worker processes; the per-image
# work of the four per-image steps is STEPS_PER_IMAGE times standardise's (vet + hash at ingest, filter scoring on
# a CPU, standardise, phash); every image crosses the network twice (raw object in, standardised out) at
# MEAN_OBJECT_MB each way per image, MACHINE_MBIT per machine, shared with the bucket; the head node's own work
# (reading the sources, writing the index files, the all-pairs near-duplicate comparison, which grows with the
# square and is outside the map) is HEAD_HOURS; the engine's overhead per task is the one measured here.
IMAGES = 1_000_000
CORES = 16
STEPS_PER_IMAGE = 3.0
MEAN_OBJECT_MB = 1.5
MACHINE_MBIT = 1000
HEAD_HOURS = 2.0


def run(tmp: Path, inputs: Path, name: str, params: dict, compute: Compute | None) -> tuple[float, dict]:
    out = tmp / name
    start = time.perf_counter()
    standardise(tmp / "candidates.csv", tmp / "decisions.csv", inputs, params, out, tmp / f"{name}.csv", compute)
    seconds = time.perf_counter() - start
    return seconds, {p.name: p.read_bytes() for p in out.iterdir()}


def cost_hours(machines: int, per_image_s: float, overhead_s: float) -> float:
    compute_s = IMAGES * (per_image_s * STEPS_PER_IMAGE + overhead_s) / (machines * CORES)
    network_s = IMAGES * 2 * MEAN_OBJECT_MB * 8 / (machines * MACHINE_MBIT)
    return round(HEAD_HOURS + max(compute_s, network_s) / 3600, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:  # `make bench` installs the project only: the figures say why they are missing
        reason = 'dask is not installed: pip install -e ".[distributed]" (or make test, whose extra has it)'
        names = [f"distributed_standardise_images_per_s_{n}" for n in
                 ("one_process", "local_pool_2", "dask_1_worker", "dask_2_workers")]
        record({**{n: missing("images/s", COMMAND, reason) for n in names},
                "distributed_dask_overhead_ms_per_image": missing("ms", COMMAND, reason)})
        print(f"bench_distributed: {reason}")
        return

    real = sorted((DATA / "ham10000" / "images").glob("*.jpg"))
    if not real:
        raise SystemExit(f"bench_distributed: no images under {DATA / 'ham10000' / 'images'} (set HAM_DATA)")
    picks = real[::max(1, len(real) // args.images)][:args.images]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = tmp / "objects"
        inputs.mkdir()
        for path in picks:
            with Image.open(path) as image:
                image.convert("RGB").resize((3000, 2250), Image.LANCZOS).save(inputs / path.name, quality=95)
        with open(tmp / "candidates.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([["candidate_id", "object"], *([p.stem, p.name] for p in picks)])
        with open(tmp / "decisions.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([["candidate_id", "keep"], *([p.stem, "true"] for p in picks)])

        seconds, outputs = {}, {}
        seconds["one_process"], outputs["one_process"] = run(tmp, inputs, "one", {**PARAMS, "workers": 1}, None)
        seconds["local_pool_2"], outputs["local_pool_2"] = run(tmp, inputs, "pool", {**PARAMS, "workers": 2}, None)
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=":0") as cluster:
                compute = Compute.of({"executor": "dask", "address": cluster.scheduler_address})
                with Client(cluster) as client:  # a running cluster's workers have the code imported already
                    client.run(importlib.import_module, "pipeline.standardise")
                name = f"dask_{workers}_worker" + ("s" if workers > 1 else "")
                seconds[name], outputs[name] = run(tmp, inputs, name, PARAMS, compute)
        assert all(files == outputs["one_process"] for files in outputs.values()), "outputs differ between runs"

    count = len(picks)
    per_image = seconds["one_process"] / count
    overhead = (seconds["dask_2_workers"] - seconds["local_pool_2"]) / count
    print(f"{count} real images enlarged to 3000x2250 (JPEG q95); standardise from an empty folder")
    print(f"{'run':28s} {'seconds':>8s} {'images/s':>9s}")
    for name, value in seconds.items():
        print(f"{name:28s} {value:8.2f} {count / value:9.1f}")
    print(f"dask overhead against the local pool: {overhead * 1000:.1f} ms per image")
    where = machine()
    figures = {f"distributed_standardise_images_per_s_{name}": figure(
        round(count / value, 2), "images/s", COMMAND, machine=where,
        note=f"{count} real images at 3000x2250, standardise() from an empty folder; same bytes in every run")
        for name, value in seconds.items()}
    figures["distributed_dask_overhead_ms_per_image"] = figure(
        round(overhead * 1000, 1), "ms", COMMAND, machine=where,
        note="(dask with 2 workers - local pool with 2 processes) / images, the same work; negative: dask faster")
    for machines in (1, 10, 100):
        figures[f"distributed_cost_1e6_images_hours_{machines}_machines"] = figure(
            cost_hours(machines, per_image, max(overhead, 0.0)), "h", COMMAND, machine=where,
            note=f"cost model (docs/s3-dask.md): {IMAGES:.0e} images, {CORES} workers a machine, "
                 f"{per_image * 1000:.0f} ms/image measured x {STEPS_PER_IMAGE:g} steps, {MEAN_OBJECT_MB} MB each "
                 f"way at {MACHINE_MBIT} Mbit/s, {HEAD_HOURS:g} h on the head node")
    record(figures)


if __name__ == "__main__":
    main()
