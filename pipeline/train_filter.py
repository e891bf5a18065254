"""Stage `train_filter`: annotations (IMAGE, ANNOTATION d/c/m, TIMESTAMP) -> image-type model + held-out accuracy.

Deterministic: fixed seed, one CPU thread, deterministic algorithms, a hold-out chosen by hashing the image
hash, so the same annotations and params give the same weights byte for byte.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .common import PipelineError, atomic_write_bytes, read_csv, sha256_bytes, progress
from .filter_model import ImageTypeNet, load_pixels, save_model
from .vocabulary import ANNOTATION_KEYS, IMAGE_TYPES


def read_annotations(path: Path) -> dict[str, str]:
    """candidate_id -> image type; a later annotation of the same image overrides an earlier one (resumed work)."""
    rows = read_csv(path, ("IMAGE", "ANNOTATION"))
    labels = {}
    for number, row in enumerate(rows, start=2):
        key = row["ANNOTATION"].strip().lower()
        if key not in ANNOTATION_KEYS:
            raise PipelineError(f"{path} row {number}: ANNOTATION {row['ANNOTATION']!r} is not one of d, c, m")
        labels[row["IMAGE"].strip()] = ANNOTATION_KEYS[key]
    return labels


def in_holdout(candidate_id: str, seed: int, fraction: float) -> bool:
    return int(sha256_bytes(f"{seed}:{candidate_id}".encode())[:8], 16) / 0xFFFFFFFF < fraction


def train_filter(candidates_csv: Path, objects_dir: Path, annotations_csv: Path, params: dict,
                 model_path: Path, metrics_path: Path) -> dict:
    torch.manual_seed(params["seed"])
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    size = params["image_size"]
    labels = read_annotations(annotations_csv)
    candidates = {row["candidate_id"]: row for row in read_csv(candidates_csv, ("candidate_id", "object"))}
    known = sorted(c for c in labels if c in candidates)
    if not known:
        raise PipelineError(f"{annotations_csv}: none of the {len(labels)} annotated images is among the candidates")
    holdout = [c for c in known if in_holdout(c, params["seed"], params["holdout_fraction"])]
    train = [c for c in known if c not in set(holdout)]

    def tensors(ids, label):
        pixels = np.stack([load_pixels(objects_dir / candidates[c]["object"], size)
                           for c in progress(ids, label)]) if ids else np.zeros((0, 3, size, size), np.float32)
        targets = np.array([IMAGE_TYPES.index(labels[c]) for c in ids], dtype=np.int64)
        return torch.from_numpy(pixels), torch.from_numpy(targets)

    train_x, train_y = tensors(train, "load training images")
    holdout_x, holdout_y = tensors(holdout, "load held-out images")
    model = ImageTypeNet(params["width"])
    optimiser = torch.optim.Adam(model.parameters(), lr=params["learning_rate"])
    # Weight classes by inverse frequency: dermatoscopic images far outnumber the others.
    counts = torch.bincount(train_y, minlength=len(IMAGE_TYPES))
    weights = counts.clamp(min=1).float()
    loss_fn = nn.CrossEntropyLoss(weight=weights.sum() / weights)
    generator = torch.Generator().manual_seed(params["seed"])
    for epoch in range(params["epochs"]):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        total = 0.0
        for start in range(0, len(order), params["batch_size"]):
            index = order[start:start + params["batch_size"]]
            batch = train_x[index]
            if torch.rand(1, generator=generator).item() < 0.5:  # mirror: the image type has no handedness
                batch = batch.flip(3)
            optimiser.zero_grad()
            loss = loss_fn(model(batch), train_y[index])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(index)
        print(f"train_filter: epoch {epoch + 1}/{params['epochs']} loss {total / max(1, len(order)):.4f}", flush=True)

    model.eval()
    with torch.no_grad():
        predicted = model(holdout_x).argmax(1) if len(holdout_x) else torch.zeros(0, dtype=torch.long)
    correct = int((predicted == holdout_y).sum())
    metrics = {
        "annotated": len(labels), "trained_on": len(train), "held_out": len(holdout),
        "holdout_accuracy": round(correct / len(holdout), 4) if holdout else None,
        "per_type_train_counts": {t: int(counts[i]) for i, t in enumerate(IMAGE_TYPES)},
    }
    save_model(model, Path(model_path), {"width": params["width"], "image_size": size, "types": list(IMAGE_TYPES)})
    atomic_write_bytes(Path(metrics_path), (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
    return metrics
