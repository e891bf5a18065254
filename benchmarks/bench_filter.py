"""The image-type filter on real collections and conditions it never saw in training, and its speed and memory.

    python -m benchmarks.bench_filter [--data ../shared/data] [--out bench-filter] [--params params.yaml]
                                      [--jobs 2] [--candidates 10000] [--skip-speed] [--set KEY=VALUE ...]

Material (`benchmarks/filter_material.py`): the real dermatoscopic collections of $HAM_DATA (HAM10000, Derm7pt,
ISIC UDA-1, ISIC 2017 squashed to 256x256, DermNet's few dermatoscopic photos) and DermNet's clinical photographs
of 171 conditions. Evaluation that cannot flatter: four folds, fold k trains on everything but dermatoscopic
collection k (leave-one-collection-out) and a quarter of the DermNet conditions (chosen by hashing the condition;
the dermatoscopic DermNet photos of those conditions go with them), and is scored on what it left out. Every image
is held out exactly once; the figures pool the four folds and are also given per held-out group. Training runs
`train_filter` with the params file's `filter` section on the CPU, one thread per fold (`--jobs` folds at once).

Reported (JSON on stdout and `<out>/bench_filter.json`, the reliability plot in `<out>/reliability.png`):
- raw keep/drop accuracy, deciding as `ham filter` does (rounded probabilities, `min_confidence`);
- at `review_below`: the share sent to review and the error rate among the decisions made without review;
- calibration: expected calibration error of the decision's confidence (10 bins) and the reliability table;
- shortcuts: the share of decisions that flip when a DermNet-like logo is pasted onto a dermatoscopic image, when
  the watermark part of a clinical photo is cropped off (and the change in clinical accuracy, in points), when an
  image is squashed to 256x256 or shrunk to a third;
- the training time of the full model (all the material) and inference: images/s of the `filter` scoring path on
  `--candidates` candidates (the real images in turn, cache empty), peak memory of the scoring process and workers.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.pinned_cpu import pin_environment  # noqa: E402

pin_environment()  # before torch runs anything: the folds train, and the parent scores, as `ham` would

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.filter_material import (DSC_COLLECTIONS, crop_watermark, material, paste_logo, shrink,  # noqa: E402
                                        squash)
from benchmarks.results import figure, record  # noqa: E402
from pipeline.common import load_params, sha256_bytes  # noqa: E402
from pipeline.filter_model import frame_pixels, load_model, open_rgb, pinned_cpu_numerics, predict_batch  # noqa: E402
from pipeline.train_filter import train_filter  # noqa: E402

FOLDS = len(DSC_COLLECTIONS)


def fold_of_condition(condition: str) -> int:
    return int(sha256_bytes(f"bench:{condition}".encode())[:8], 16) % FOLDS


def held_out_in(item: dict, fold: int) -> bool:
    if item["collection"] in DSC_COLLECTIONS:
        return item["collection"] == DSC_COLLECTIONS[fold]
    return fold_of_condition(item["condition"]) == fold


def write_annotated(items: list[dict], folder: Path) -> None:
    """An annotated folder as `collect-annotated` writes it (links to the real files, index.csv)."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in items:
        digest = sha256_bytes(Path(item["path"]).read_bytes())
        link = images / f"{digest}.jpg"
        if not link.exists():
            link.symlink_to(item["path"])
        rows.append({"candidate_id": digest, "file": f"images/{digest}.jpg", "image_type": item["truth"],
                     "source": item["collection"], "lesion_key": item["condition"]})
    with open(folder / "index.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["candidate_id", "file", "image_type", "source", "lesion_key"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["candidate_id"]))


def train_fold(args: tuple) -> dict:
    folder, params = args
    start = time.perf_counter()
    metrics = train_filter(Path(folder) / "annotated", params, Path(folder) / "filter.pt",
                           Path(folder) / "train_metrics.json")
    return {"folder": folder, "seconds": round(time.perf_counter() - start, 1), "metrics": metrics}


def probabilities(model, meta, images: list[Image.Image]) -> np.ndarray:
    """What `ham filter` computes for each frame (same squeeze, same network call), in chunks."""
    out = []
    for start in range(0, len(images), 256):
        batch = np.stack([frame_pixels(image, meta["image_size"]) for image in images[start:start + 256]])
        out.append(predict_batch(model, torch.from_numpy(batch), torch.device("cpu")))
    return np.concatenate(out) if out else np.zeros((0, len(meta["types"])), dtype=np.float32)


def decide(probs: np.ndarray, types: list[str], params: dict) -> tuple[np.ndarray, np.ndarray]:
    """keep, confidence, as `ham filter` decides for the model (probabilities rounded to two decimals)."""
    rounded = np.round(probs.astype(np.float64), 2)
    kind = [types[i] for i in rounded.argmax(1)]
    confidence = rounded.max(1)
    keep = np.array([k in params["keep_types"] and c >= params["min_confidence"] for k, c in zip(kind, confidence)])
    return keep, confidence


def score_fold(model_path: Path, held: list[dict], params: dict) -> list[dict]:
    """Per held-out image: truth, collection, the decision on the frame and on each perturbation."""
    model, meta = load_model(model_path, torch.device("cpu"))
    types = meta["types"]
    frames = [open_rgb(item["path"], 256) for item in held]
    variants = {"full": frames,
                "logo": [paste_logo(f, i % 2) if item["truth"] == "dsc" else f
                         for i, (f, item) in enumerate(zip(frames, held))],
                "cropped": [crop_watermark(f) if item["truth"] == "clinic" else f for f, item in zip(frames, held)],
                "squashed": [squash(f) for f in frames],
                "shrunk": [shrink(f) for f in frames]}
    decided = {}
    for name, images in variants.items():
        probs = probabilities(model, meta, images)
        decided[name] = (*decide(probs, types, params), probs[:, types.index("dsc")])
    rows = []
    for i, item in enumerate(held):
        row = {"collection": item["collection"], "condition": item["condition"], "truth": item["truth"],
               "file": Path(item["path"]).name}
        for name, (keep, confidence, _) in decided.items():
            row[f"keep_{name}"], row[f"confidence_{name}"] = bool(keep[i]), float(confidence[i])
        row["p_dsc"] = round(float(decided["full"][2][i]), 4)
        rows.append(row)
    return rows


def summarise(rows: list[dict], params: dict) -> dict:
    truth = np.array([r["truth"] == "dsc" for r in rows])
    keep = np.array([r["keep_full"] for r in rows])
    confidence = np.array([r["confidence_full"] for r in rows])
    right = keep == truth
    review = confidence < params["review_below"]
    decided = ~review
    by_threshold = {str(t): {"sent_to_review": round(float((confidence < t).mean()), 4),
                             "error_rate_without_review": round(float((~right & (confidence >= t)).sum() /
                                                                      max(1, (confidence >= t).sum())), 4)}
                    for t in (0.6, 0.7, 0.8, 0.9, 0.95, 0.98)}
    return {"images": len(rows), "raw_accuracy": round(float(right.mean()), 4), "by_threshold": by_threshold,
            "sent_to_review": round(float(review.mean()), 4),
            "errors_without_review": int((~right & decided).sum()), "decided_without_review": int(decided.sum()),
            "error_rate_without_review": round(float((~right & decided).sum() / max(1, decided.sum())), 4)}


def calibration(rows: list[dict], bins: int = 10) -> dict:
    """Expected calibration error of the decision's confidence (is the keep/drop decision right?), and the table."""
    truth = np.array([r["truth"] == "dsc" for r in rows])
    keep = np.array([r["keep_full"] for r in rows])
    confidence = np.array([r["confidence_full"] for r in rows])
    right = keep == truth
    edges = np.linspace(0, 1, bins + 1)
    table, ece = [], 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = abs(float(right[inside].mean()) - float(confidence[inside].mean()))
            ece += gap * inside.sum() / len(rows)
            table.append({"bin": f"{low:.1f}-{high:.1f}", "images": int(inside.sum()),
                          "confidence": round(float(confidence[inside].mean()), 4),
                          "accuracy": round(float(right[inside].mean()), 4)})
    return {"expected_calibration_error": round(ece, 4), "reliability": table}


def reliability_plot(table: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure_, axes = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    axes.plot([b["confidence"] for b in table], [b["accuracy"] for b in table], marker="o", label="filter")
    for b in table:
        axes.annotate(str(b["images"]), (b["confidence"], b["accuracy"]), fontsize=7, xytext=(3, -10),
                      textcoords="offset points")
    axes.set_xlabel("confidence of the decision")
    axes.set_ylabel("share of decisions right")
    axes.set_title("held-out collections and conditions")
    axes.set_xlim(0.3, 1.02)
    axes.set_ylim(0.3, 1.02)
    axes.legend(loc="upper left")
    figure_.tight_layout()
    figure_.savefig(path)
    plt.close(figure_)


def shortcuts(rows: list[dict]) -> dict:
    dsc = [r for r in rows if r["truth"] == "dsc"]
    clinic = [r for r in rows if r["truth"] == "clinic"]

    def flips(subset, name):
        return round(sum(r["keep_full"] != r[f"keep_{name}"] for r in subset) / max(1, len(subset)), 4)

    dropped = sum(not r["keep_full"] for r in clinic) / max(1, len(clinic))
    dropped_cropped = sum(not r["keep_cropped"] for r in clinic) / max(1, len(clinic))
    return {"logo_pasted_dsc_flips": flips(dsc, "logo"), "watermark_cropped_clinic_flips": flips(clinic, "cropped"),
            "clinic_dropped": round(dropped, 4), "clinic_dropped_watermark_cropped": round(dropped_cropped, 4),
            "watermark_crop_change_points": round(100 * (dropped - dropped_cropped), 2),
            "squashed_flips": flips(rows, "squashed"), "shrunk_flips": flips(rows, "shrunk")}


SPEED_CHILD = r"""
import csv, json, resource, sys, time
from pathlib import Path
from pipeline.filter import score
params = json.loads(sys.argv[1]); rows = list(csv.DictReader(open(sys.argv[2])))
counts = {}
start = time.perf_counter()
score(rows, Path("/"), Path(sys.argv[3]), params, Path(sys.argv[4]), counts)
elapsed = time.perf_counter() - start
print(json.dumps({"images": counts["scored"], "seconds": round(elapsed, 2),
                  "images_per_s": round(counts["scored"] / elapsed, 1), "device": counts["device"],
                  "workers": params.get("workers"),
                  # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child of a big bench
                  # process would report the bench's peak as its own
                  "peak_rss_mb": round(int(next(l for l in open("/proc/self/status")
                                                if l.startswith("VmHWM")).split()[1]) / 1024, 1),
                  "peak_rss_worker_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}))
"""


def real_images(data: Path) -> list[Path]:
    return sorted((data / "ham10000/images").glob("*.jpg")) + sorted((data / "clinical/dermnet").glob("*.jpg"))


def speed(model_path: Path, paths: list[Path], params: dict, count: int, root: Path, env: dict | None = None) -> dict:
    """`filter.score` over `count` candidates (the files `paths` listed in turn under distinct IDs, cache empty), in
    a fresh process: images/s of the scoring alone (start-up and model loading left out), peak RSS of the scoring
    process and of its largest decoding worker."""
    listing = root / "speed_candidates.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["candidate_id", "object"])
        for i in range(count):
            writer.writerow([f"{i:064x}", str(paths[i % len(paths)])])
    cache = root / f"speed_cache_{time.time_ns()}"
    output = subprocess.run([sys.executable, "-c", SPEED_CHILD, json.dumps(params), str(listing), str(model_path),
                             str(cache)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    if output.returncode:
        raise SystemExit(output.stderr)
    return {**json.loads(output.stdout.strip().splitlines()[-1]), "cpu_count": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("HAM_DATA", REPO.parent / "shared/data")))
    parser.add_argument("--out", type=Path, default=REPO / "bench-filter")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--jobs", type=int, default=2, help="folds trained at once (one core each)")
    parser.add_argument("--candidates", type=int, default=10000)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-full", action="store_true", help="no training on all the material")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a filter param (YAML value), e.g. --set epochs=40")
    args = parser.parse_args()
    import yaml
    params = load_params(args.params, "filter")
    for item in args.set:
        key, value = item.split("=", 1)
        params[key] = yaml.safe_load(value)
    params = {**params, "train_device": "cpu", "workers": 0}
    args.out.mkdir(parents=True, exist_ok=True)
    items = material(args.data)
    jobs = []
    for fold in range(FOLDS):
        folder = args.out / f"fold{fold}"
        write_annotated([i for i in items if not held_out_in(i, fold)], folder / "annotated")
        jobs.append((str(folder), params))
    if not args.skip_full:
        write_annotated(items, args.out / "full" / "annotated")
        jobs.append((str(args.out / "full"), params))
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        trained = list(pool.map(train_fold, jobs))
    rows = []
    with pinned_cpu_numerics():  # as `ham filter` scores on the CPU
        for fold in range(FOLDS):
            held = [i for i in items if held_out_in(i, fold)]
            rows += score_fold(args.out / f"fold{fold}" / "filter.pt", held, params)
    with open(args.out / "held_out_decisions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    groups = {}
    for row in rows:
        name = row["collection"] if row["truth"] == "dsc" else "dermnet clinical"
        groups.setdefault(name, []).append(row)
    report = {
        "params": {k: params[k] for k in sorted(params) if k not in ("annotations", "keep_types", "device",
                                                                        "workers", "inference_batch_size")},
        "material": {"dsc": sum(i["truth"] == "dsc" for i in items), "clinic": sum(i["truth"] == "clinic"
                                                                                  for i in items),
                     "collections": sorted({i["collection"] for i in items}),
                     "clinical_conditions": len({i["condition"] for i in items if i["truth"] == "clinic"})},
        "folds": [{"held_out_collection": DSC_COLLECTIONS[f], "trained_on": trained[f]["metrics"]["trained_on"],
                   "training_seconds": trained[f]["seconds"]} for f in range(FOLDS)],
        "held_out": summarise(rows, params),
        "per_group": {name: summarise(group, params) for name, group in sorted(groups.items())},
        **calibration(rows), "shortcuts": shortcuts(rows), "review_below": params["review_below"],
    }
    reliability_plot(report["reliability"], args.out / "reliability.png")
    if not args.skip_full:
        full = trained[-1]
        report["full_model"] = {"trained_on": full["metrics"]["trained_on"], "training_seconds_cpu": full["seconds"],
                                "torch_threads": 1,
                                "sha256": sha256_bytes((args.out / "full" / "filter.pt").read_bytes())}
        if not args.skip_speed:
            report["inference"] = speed(args.out / "full" / "filter.pt", real_images(args.data),
                                        {**params, "device": "cpu", "workers": load_params(args.params, "filter")
                                         .get("workers", 2)}, args.candidates, args.out)
    report["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    (args.out / "bench_filter.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if not args.set and not args.skip_full:  # only the params file's own settings go into bench/results.json
        record(results_figures(report))


def results_figures(report: dict) -> dict:
    """The figures of issue 22 for bench/results.json."""
    command = "python -m benchmarks.bench_filter"
    held = report["held_out"]
    where = (f"{held['images']} images of held-out collections and conditions (4 folds, leave-one-collection-out; "
             f"each image held out once)")
    threshold = f"at review_below {report['review_below']}"
    per_group = "; ".join(f"{name}: {g['raw_accuracy']:.1%} right, {g['sent_to_review']:.1%} to review, "
                          f"{g['errors_without_review']} wrong unreviewed of {g['images']}"
                          for name, g in report["per_group"].items())
    cuts = report["shortcuts"]
    figures = {
        "filter_raw_accuracy": figure(held["raw_accuracy"], "fraction", command, note=f"{where}; {per_group}"),
        "filter_sent_to_review": figure(held["sent_to_review"], "fraction", command, note=threshold),
        "filter_error_rate_without_review": figure(held["error_rate_without_review"], "fraction", command, note=(
            f"{threshold}: {held['errors_without_review']} wrong of {held['decided_without_review']} decided "
            f"without review")),
        "filter_expected_calibration_error": figure(report["expected_calibration_error"], "fraction", command,
                                                    note="10 bins of the decision's confidence, held-out images"),
        "filter_watermark_crop_change_points": figure(abs(cuts["watermark_crop_change_points"]), "points", command,
                                                      note=f"clinical dropped {cuts['clinic_dropped']:.1%} whole, "
                                                           f"{cuts['clinic_dropped_watermark_cropped']:.1%} with the "
                                                           f"watermark part cropped off"),
        "filter_logo_pasted_flips": figure(cuts["logo_pasted_dsc_flips"], "fraction", command,
                                           note="held-out dermatoscopic images with a DermNet-like logo pasted"),
        "filter_squashed_or_shrunk_flips": figure(max(cuts["squashed_flips"], cuts["shrunk_flips"]), "fraction",
                                                  command, note=f"squashed to 256x256 {cuts['squashed_flips']:.2%}, "
                                                                f"shrunk to a third {cuts['shrunk_flips']:.2%}"),
    }
    full = report.get("full_model")
    if full:
        figures["filter_training_seconds_cpu"] = figure(full["training_seconds_cpu"], "s", command, note=(
            f"all {full['trained_on']} images, {report['params'].get('epochs')} epochs, one compute thread"))
    inference = report.get("inference")
    if inference:
        note = (f"{inference['images']} candidates (the real images in turn), workers {inference['workers']}, "
                f"{inference['cpu_count']} cores")
        figures["filter_real_cpu_images_per_s"] = figure(inference["images_per_s"], "images/s", command, note=note)
        figures["filter_real_peak_rss_10k_mb"] = figure(
            round(inference["peak_rss_mb"] + (inference["workers"] or 0) * inference["peak_rss_worker_mb"], 1), "MB",
            command,
            note=f"the scoring process {inference['peak_rss_mb']} MB + its decoding workers at "
                 f"{inference['peak_rss_worker_mb']} MB each (RSS, shared pages counted in each), {note}")
    return figures


if __name__ == "__main__":
    main()
