"""Stage `train_filter`: the annotated images (folder written by `ham collect-annotated`) -> image-type model,
held-out metrics and a confusion matrix.

Reads only `<annotated>/index.csv` (candidate_id, file, image_type, source, lesion_key) and the files it lists, so
a batch of unannotated images never retrains the network.

- Held-out set: whole groups, a group being one lesion of one source (`source` + `lesion_key`; an image without a
  lesion key is its own group), chosen by hashing the group with the seed: images of one lesion never sit on both
  sides, so the held-out figure is not inflated by near-copies.
- Class-balanced sampling: every epoch draws as many training images as there are, each class equally often
  (classes without annotations are left out).
- Augmentation (`filter_model.augment`): corner marks and erasing, borders, random resized crops, flips, quarter
  turns, colour jitter, JPEG re-encoding, random erasing. Each view's randomness is seeded by (seed, epoch,
  position), so the result does not depend on the number of loader workers.
- Deterministic on the CPU (fixed seed, deterministic algorithms, one compute thread): the same annotations and
  params give the same model file byte for byte. On CUDA (`train_device: cuda`, or `auto` with a GPU) training uses
  bfloat16 autocast and is not bit-reproducible.

- Calibration: the softmax temperature that fits the held-out images best (`fit_temperature`), kept in the model
  file and applied by every scoring path.

Writes the model, `metrics` (accuracy, per-class and per-source figures, counts, the temperature, the material
and training settings, the model file's sha256: what a release names) and `confusion` (one row per held-out
image: candidate_id, actual, predicted; `dvc plots` draws it with the confusion template).
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .annotations import IMAGE_TYPES, read_annotations  # noqa: F401  (read_annotations kept for old imports)
from .common import PipelineError, atomic_write_bytes, read_csv, sha256_bytes, write_csv
from .filter_model import (ImageTypeNet, augment, load_pixels, open_rgb, pick_device, pinned_cpu_numerics,
                           save_model)

CONFUSION_COLUMNS = ("candidate_id", "actual", "predicted")


def group_of(row: dict) -> str:
    return f"{row['source']}/{row['lesion_key'] or row['candidate_id']}"


def in_holdout(group: str, seed: int, fraction: float) -> bool:
    return int(sha256_bytes(f"{seed}:{group}".encode())[:8], 16) / 0xFFFFFFFF < fraction


class AugmentedViews(Dataset):
    """Position k of epoch e: image `order[k]` seen through augmentation seeded by (seed, e, k)."""

    def __init__(self, images: list[np.ndarray], labels: list[int], order: np.ndarray, size: int, seed: int,
                 epoch: int):
        self.images, self.labels, self.order = images, labels, order
        self.size, self.seed, self.epoch = size, seed, epoch

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int):
        index = int(self.order[k])
        rng = np.random.default_rng([self.seed, self.epoch, k])
        view = augment(Image.fromarray(self.images[index]), self.size, rng)
        return torch.from_numpy(view), self.labels[index]


def _base_image(path: Path, size: int) -> np.ndarray:
    """Decoded once per training: short side 2 x size (aspect kept), the material augmentations crop from."""
    image = open_rgb(path, 2 * size)
    scale = 2 * size / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def balanced_order(labels: list[int], count: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.asarray(labels)
    present = np.unique(labels)
    per_class = np.array([np.sum(labels == c) for c in present])
    weights = np.zeros(len(labels))
    for c, n in zip(present, per_class):
        weights[labels == c] = 1.0 / (n * len(present))
    return rng.choice(len(labels), size=count, replace=True, p=weights)


# The keys of the `filter` section that shape the model (dvc.yaml's train_filter params list the same).
TRAINING_PARAMS = ("image_size", "width", "blocks", "epochs", "batch_size", "learning_rate", "weight_decay",
                   "seed", "holdout_fraction", "train_device")


def fit_temperature(logits: torch.Tensor, actual: torch.Tensor) -> float:
    """The softmax temperature that makes the held-out images' probabilities honest (least negative
    log-likelihood, searched on a fixed grid of 1.00-5.00 in steps of 0.05, so the result is exact and the same on
    every machine); 1.0 without held-out images. A network trained to certainty on its own material is
    over-confident elsewhere: the temperature only softens, never sharpens, its probabilities."""
    if not len(actual):
        return 1.0
    grid = [1 + step / 20 for step in range(81)]
    losses = [float(nn.functional.cross_entropy(logits / t, actual)) for t in grid]
    return grid[int(np.argmin(losses))]


def _ratio(numerator: int, denominator: int):
    return round(numerator / denominator, 4) if denominator else None


def classification_metrics(actual: list[int], predicted: list[int]) -> dict:
    matrix = np.zeros((len(IMAGE_TYPES), len(IMAGE_TYPES)), dtype=np.int64)
    for a, p in zip(actual, predicted):
        matrix[a, p] += 1
    correct = int(np.trace(matrix))
    return {
        "holdout_accuracy": _ratio(correct, len(actual)),
        "precision": {t: _ratio(int(matrix[i, i]), int(matrix[:, i].sum())) for i, t in enumerate(IMAGE_TYPES)},
        "recall": {t: _ratio(int(matrix[i, i]), int(matrix[i].sum())) for i, t in enumerate(IMAGE_TYPES)},
        "held_out_per_type": {t: int(matrix[i].sum()) for i, t in enumerate(IMAGE_TYPES)},
    }


def train_filter(annotated_dir: Path, params: dict, model_path: Path, metrics_path: Path,
                 confusion_path: Path | None = None) -> dict:
    annotated_dir = Path(annotated_dir)
    index_csv = annotated_dir / "index.csv"
    rows = read_csv(index_csv, ("candidate_id", "file", "image_type", "source", "lesion_key"))
    for number, row in enumerate(rows, start=2):
        if row["image_type"] not in IMAGE_TYPES:
            raise PipelineError(f"{index_csv} row {number}: image_type {row['image_type']!r} is not one of "
                                f"{', '.join(IMAGE_TYPES)}")
    if not rows:
        raise PipelineError(f"{index_csv}: no annotated image is among the candidates; annotate some "
                            f"(`ham annotate`) before training")
    seed, size = int(params["seed"]), int(params["image_size"])
    device = pick_device(params.get("train_device", "cpu"))
    # On the CPU the same bytes on any x86-64 machine with AVX2 (filter_model.pin_cpu_numerics)
    with pinned_cpu_numerics() if device.type == "cpu" else contextlib.nullcontext():
        torch.use_deterministic_algorithms(device.type == "cpu")
        try:
            return _train(rows, index_csv, annotated_dir, params, device, seed, size, Path(model_path),
                          Path(metrics_path), confusion_path)
        finally:
            torch.use_deterministic_algorithms(False)


def _train(rows: list[dict], index_csv: Path, annotated_dir: Path, params: dict, device: torch.device, seed: int,
           size: int, model_path: Path, metrics_path: Path, confusion_path: Path | None) -> dict:
    torch.manual_seed(seed)
    holdout = [r for r in rows if in_holdout(group_of(r), seed, params["holdout_fraction"])]
    train = [r for r in rows if not in_holdout(group_of(r), seed, params["holdout_fraction"])]
    if not train:
        raise PipelineError(f"{index_csv}: all {len(rows)} annotated images fell in the held-out set; "
                            f"lower filter.holdout_fraction")
    images = [_base_image(annotated_dir / r["file"], size) for r in train]
    labels = [IMAGE_TYPES.index(r["image_type"]) for r in train]

    width, blocks = int(params["width"]), int(params.get("blocks", 1))
    model = ImageTypeNet(width, blocks).to(device)
    epochs, batch_size = int(params["epochs"]), int(params["batch_size"])
    optimiser = torch.optim.AdamW(model.parameters(), lr=params["learning_rate"],
                                  weight_decay=params.get("weight_decay", 0.0005))
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total_steps = max(1, epochs * steps_per_epoch)
    warmup = max(1, total_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps)))))
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    workers = int(params.get("workers", 0))
    for epoch in range(epochs):
        model.train()
        views = AugmentedViews(images, labels, balanced_order(labels, len(train), rng), size, seed, epoch)
        loader = DataLoader(views, batch_size=batch_size, shuffle=False, num_workers=workers,
                            pin_memory=device.type == "cuda")
        total = 0.0
        for batch, target in loader:
            batch, target = batch.to(device, non_blocking=True), target.to(device, non_blocking=True)
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_fn(model(batch).float(), target)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(target)
        print(f"train_filter: epoch {epoch + 1}/{epochs} loss {total / len(train):.4f}", flush=True)

    model.eval()
    actual = [IMAGE_TYPES.index(r["image_type"]) for r in holdout]
    logits = []
    with torch.no_grad():
        for start in range(0, len(holdout), 64):
            chunk = holdout[start:start + 64]
            batch = torch.from_numpy(np.stack([load_pixels(annotated_dir / r["file"], size) for r in chunk]))
            logits.append(model(batch.to(device)).float().cpu())
    logits = torch.cat(logits) if logits else torch.zeros((0, len(IMAGE_TYPES)))
    predicted = logits.argmax(1).tolist()
    temperature = fit_temperature(logits, torch.tensor(actual, dtype=torch.long))

    metrics = {
        "annotated": len(rows), "trained_on": len(train), "held_out": len(holdout),
        "held_out_groups": len({group_of(r) for r in holdout}),
        "per_type_train_counts": {t: labels.count(i) for i, t in enumerate(IMAGE_TYPES)},
        **classification_metrics(actual, predicted),
        "held_out_per_source": {source: classification_metrics(
            [a for a, r in zip(actual, holdout) if r["source"] == source],
            [p for p, r in zip(predicted, holdout) if r["source"] == source])["holdout_accuracy"]
            for source in sorted({r["source"] for r in holdout})},
        "temperature": temperature,
        # what a release names: the material the model saw and the settings it was trained with
        "material": {"index_sha256": sha256_bytes(index_csv.read_bytes()),
                     "per_source": {source: {t: sum(r["source"] == source and r["image_type"] == t for r in rows)
                                             for t in IMAGE_TYPES} for source in sorted({r["source"] for r in rows})}},
        "params": {key: params[key] for key in TRAINING_PARAMS if key in params},
    }
    meta = {"width": width, "blocks": blocks, "image_size": size, "types": list(IMAGE_TYPES),
            "trained_on": device.type, "temperature": temperature}
    save_model(model.cpu(), Path(model_path), meta)
    metrics["model_sha256"] = sha256_bytes(Path(model_path).read_bytes())
    atomic_write_bytes(Path(metrics_path), (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
    if confusion_path:
        write_csv(Path(confusion_path), sorted(
            ({"candidate_id": r["candidate_id"], "actual": r["image_type"], "predicted": IMAGE_TYPES[p]}
             for r, p in zip(holdout, predicted)), key=lambda row: row["candidate_id"]), CONFUSION_COLUMNS)
    return metrics
