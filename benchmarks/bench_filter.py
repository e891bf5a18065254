"""The image-type filter on real images it never saw in training, and its inference speed and memory.

    python -m benchmarks.bench_filter [--data ../shared/data] [--out bench-filter] [--candidates 10000]
                                      [--params params.yaml] [--skip-speed]

Training material: the real HAM10000 images (dermatoscopic, `d`) and DermNet photographs (clinical, `c`) of
$HAM_DATA, minus what is held out:
- dermatoscopic: whole lesions (one in four `lesion_id`s, chosen by hashing), plus all ISIC 2018 test images
  (a lesion-disjoint set by construction);
- clinical: whole conditions (four of the sixteen DermNet categories), so the clinical figures are on conditions
  the network never saw.
Training runs `train_filter` with the params file's `filter` section (its own hold-out switched off: the split
above is the hold-out) on the CPU.

Reported (JSON on stdout and `<out>/bench_filter.json`), on the held-out images:
- raw keep/drop accuracy: a dermatoscopic image is right when kept, a clinical one when dropped, deciding as
  `ham filter` does (rounded probabilities, `min_confidence`);
- at `review_below`: the share of images sent to review and the error rate among the decisions made without review;
- clinical accuracy with the full frame and with the watermark corner cropped away (the left third of the frame
  removed, which holds DermNet's lower-left logo and text);
- inference: images/s of the `filter` scoring path (DataLoader workers decoding, params `workers`, `device`) on
  `--candidates` candidates (the real images listed repeatedly under distinct IDs, cache empty), and the peak
  resident memory of the scoring process and of its largest worker.
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
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.results import figure, record  # noqa: E402
from pipeline.common import load_params, sha256_bytes  # noqa: E402
from pipeline.filter_model import (draft_side, frame_pixels, load_model, open_rgb,  # noqa: E402
                                   predict_batch)
from pipeline.train_filter import train_filter  # noqa: E402

HELD_OUT_CONDITIONS = 4


def held_out_lesion(lesion_id: str) -> bool:
    return int(sha256_bytes(f"bench:{lesion_id}".encode())[:8], 16) % 4 == 0


def build_split(data: Path, root: Path) -> tuple[list[dict], list[dict]]:
    """Training rows (written as an annotated folder under root) and held-out rows (path, truth, group)."""
    manifest = list(csv.DictReader(open(data / "ham10000/images_manifest.csv")))
    clinical = list(csv.DictReader(open(data / "clinical/clinical_manifest.csv")))
    conditions = sorted({row["dermnet_category"] for row in clinical})
    held_conditions = set(conditions[::len(conditions) // HELD_OUT_CONDITIONS][:HELD_OUT_CONDITIONS])
    train, held = [], []
    for row in manifest:
        item = {"path": data / "ham10000/images" / f"{row['image_id']}.jpg", "truth": "dsc",
                "source": row["dataset"], "lesion_key": row["lesion_id"]}
        (held if held_out_lesion(row["lesion_id"]) else train).append(item)
    for path in sorted((data / "ham10000/test_images").glob("*.jpg")):
        held.append({"path": path, "truth": "dsc", "source": "isic2018_test", "lesion_key": path.stem})
    for row in clinical:
        item = {"path": data / "clinical/dermnet" / row["file"], "truth": "clinic", "source": "dermnet",
                "lesion_key": row["dermnet_category"]}
        (held if row["dermnet_category"] in held_conditions else train).append(item)
    images = root / "annotated" / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(root / "annotated" / "index.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["candidate_id", "file", "image_type", "source", "lesion_key"],
                                lineterminator="\n")
        writer.writeheader()
        for item in train:
            digest = sha256_bytes(item["path"].read_bytes())
            link = images / f"{digest}.jpg"
            if not link.exists():
                link.symlink_to(item["path"])
            writer.writerow({"candidate_id": digest, "file": f"images/{digest}.jpg", "image_type": item["truth"],
                             "source": item["source"], "lesion_key": item["lesion_key"]})
    return train, held


def probabilities(model, meta, images: list[Image.Image]) -> np.ndarray:
    """What `ham filter` computes for each frame (same squeeze, same network call)."""
    batch = np.stack([frame_pixels(image, meta["image_size"]) for image in images])
    return predict_batch(model, torch.from_numpy(batch), torch.device("cpu"))


def evaluate(model_path: Path, held: list[dict], params: dict) -> dict:
    model, meta = load_model(model_path, torch.device("cpu"))
    size = meta["image_size"]
    frames = [open_rgb(item["path"], draft_side(size)) for item in held]  # decoded as `ham filter` decodes
    full = probabilities(model, meta, frames)
    types = meta["types"]

    def decisions(probs):
        rounded = np.round(probs.astype(np.float64), 2)
        kind = [types[i] for i in rounded.argmax(1)]
        confidence = rounded.max(1)
        keep = np.array([k in params["keep_types"] and c >= params["min_confidence"]
                         for k, c in zip(kind, confidence)])
        return keep, confidence

    truth_keep = np.array([item["truth"] in params["keep_types"] for item in held])
    keep, confidence = decisions(full)
    right = keep == truth_keep
    review = confidence < params["review_below"]
    clinical = ~truth_keep
    cropped_frames = [f.crop((f.width // 3, 0, f.width, f.height)) for f, c in zip(frames, clinical) if c]
    cropped_keep, _ = decisions(probabilities(model, meta, cropped_frames))
    result = {
        "held_out": {"dsc": int(truth_keep.sum()), "clinic": int(clinical.sum())},
        "raw_accuracy": round(float(right.mean()), 4),
        "dsc_kept": round(float(keep[truth_keep].mean()), 4),
        "clinic_dropped": round(float((~keep[clinical]).mean()), 4),
        "clinic_dropped_watermark_cropped": round(float((~cropped_keep).mean()), 4),
        "review_below": params["review_below"],
        "sent_to_review": round(float(review.mean()), 4),
        "sent_to_review_dsc": round(float(review[truth_keep].mean()), 4),
        "errors_without_review": int((~right & ~review).sum()),
        "decided_without_review": int((~review).sum()),
        "error_rate_without_review": round(float((~right & ~review).sum() / max(1, (~review).sum())), 4),
        "median_confidence_dsc": float(np.median(confidence[truth_keep])),
    }
    result["by_threshold"] = {
        str(t): {"sent_to_review": round(float((confidence < t).mean()), 4),
                 "error_rate_without_review": round(float((~right & (confidence >= t)).sum() /
                                                          max(1, (confidence >= t).sum())), 4)}
        for t in (0.6, 0.7, 0.8, 0.9, 0.95)}
    result["watermark_crop_change_points"] = round(
        100 * (result["clinic_dropped"] - result["clinic_dropped_watermark_cropped"]), 2)
    return result


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
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
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
    parser.add_argument("--candidates", type=int, default=10000)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a filter param (YAML value), e.g. --set epochs=40")
    args = parser.parse_args()
    import yaml
    params = load_params(args.params, "filter")
    for item in args.set:
        key, value = item.split("=", 1)
        params[key] = yaml.safe_load(value)
    params = {**params, "holdout_fraction": 0.0, "train_device": "cpu"}
    args.out.mkdir(parents=True, exist_ok=True)
    train, held = build_split(args.data, args.out)
    start = time.perf_counter()
    model_path = args.out / "filter.pt"
    train_filter(args.out / "annotated", params, model_path, args.out / "train_metrics.json")
    seconds = time.perf_counter() - start
    report = {"params": {k: params[k] for k in ("image_size", "width", "blocks", "epochs", "batch_size",
                                                 "learning_rate", "review_below", "min_confidence") if k in params},
              "trained_on": {"dsc": sum(i["truth"] == "dsc" for i in train),
                             "clinic": sum(i["truth"] == "clinic" for i in train)},
              "training_seconds_cpu": round(seconds, 1), "torch_threads_training": 1,
              **evaluate(model_path, held, params)}
    if not args.skip_speed:
        report["inference"] = speed(model_path, real_images(args.data), {**params, "device": "cpu"}, args.candidates,
                                    args.out)
    report["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    (args.out / "bench_filter.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if not args.set:  # only the params file's own settings go into bench/results.json
        record(results_figures(report))


def results_figures(report: dict) -> dict:
    """The figures of issue 9 for bench/results.json."""
    command = "python -m benchmarks.bench_filter"
    held = (f"{report['held_out']['dsc']} dermatoscopic + {report['held_out']['clinic']} clinical images training "
            f"never saw; trained {report['training_seconds_cpu']} s on the CPU, one thread")
    threshold = f"at review_below {report['review_below']}"
    figures = {
        "filter_raw_accuracy": figure(report["raw_accuracy"], "fraction", command, note=(
            f"{held}; dermatoscopic kept {report['dsc_kept']:.1%}, clinical dropped {report['clinic_dropped']:.1%}")),
        "filter_sent_to_review": figure(report["sent_to_review"], "fraction", command, note=threshold),
        "filter_error_rate_without_review": figure(report["error_rate_without_review"], "fraction", command, note=(
            f"{threshold}: {report['errors_without_review']} wrong of {report['decided_without_review']} decided "
            f"without review")),
        "filter_watermark_crop_change_points": figure(abs(report["watermark_crop_change_points"]), "points", command,
                                                      note=f"clinical dropped {report['clinic_dropped']:.1%} whole, "
                                                           f"{report['clinic_dropped_watermark_cropped']:.1%} with "
                                                           f"the left third cropped away"),
    }
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
