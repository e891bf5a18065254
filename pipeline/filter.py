"""Stage `filter`: decide each candidate's image type, keep the dermatoscopic ones, queue the uncertain for review.

A person's annotation beats the model: annotated candidates are decided by it with confidence 1. Model decisions
below `review_below` go to the review queue (most uncertain first); below `min_confidence` they are not kept.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import read_csv, write_csv, progress
from .filter_model import load_model, load_pixels, pick_device, predict_probabilities
from .vocabulary import IMAGE_TYPES
from .train_filter import read_annotations

DECISION_COLUMNS = ("candidate_id", "image_type", "confidence", "p_dsc", "p_macro", "p_clinic", "decided_by",
                    "keep", "review")
REVIEW_COLUMNS = ("candidate_id", "object", "source", "origin", "member", "image_type", "confidence")


def _fmt(probability: float) -> str:
    # Rounded so CPU and GPU runs, whose last bits differ, write the same table.
    return f"{probability:.4f}"


def decide(candidates_csv: Path, objects_dir: Path, annotations_csv: Path, model_path: Path, params: dict,
           decisions_csv: Path, review_csv: Path) -> list[dict]:
    candidates = read_csv(candidates_csv, ("candidate_id", "object"))
    labels = read_annotations(annotations_csv) if annotations_csv and Path(annotations_csv).exists() else {}
    device = pick_device()
    model, meta = load_model(model_path, device)
    to_predict = [row for row in candidates if row["candidate_id"] not in labels]
    pixels = np.stack([load_pixels(objects_dir / row["object"], meta["image_size"])
                       for row in progress(to_predict, f"filter ({device.type})")]) if to_predict else np.zeros(0)
    probabilities = predict_probabilities(model, pixels, device, params.get("batch_size", 256)) if to_predict else []
    predicted = {row["candidate_id"]: p for row, p in zip(to_predict, probabilities)}

    decisions, review = [], []
    for row in candidates:
        candidate_id = row["candidate_id"]
        if candidate_id in labels:
            image_type = labels[candidate_id]
            probs = [1.0 if t == image_type else 0.0 for t in IMAGE_TYPES]
            decided_by = "annotation"
        else:
            probs = [float(p) for p in predicted[candidate_id]]
            image_type = IMAGE_TYPES[int(np.argmax(probs))]
            decided_by = "model"
        confidence = float(_fmt(max(probs)))
        needs_review = decided_by == "model" and confidence < params["review_below"]
        keep = image_type in params["keep_types"] and confidence >= params["min_confidence"]
        decisions.append({"candidate_id": candidate_id, "image_type": image_type, "confidence": _fmt(confidence),
                          **{f"p_{t}": _fmt(p) for t, p in zip(IMAGE_TYPES, probs)}, "decided_by": decided_by,
                          "keep": str(keep).lower(), "review": str(needs_review).lower()})
        if needs_review:
            review.append({**{k: row[k] for k in ("candidate_id", "object", "source", "origin", "member")},
                           "image_type": image_type, "confidence": _fmt(confidence)})
    decisions.sort(key=lambda d: d["candidate_id"])
    review.sort(key=lambda r: (float(r["confidence"]), r["candidate_id"]))
    write_csv(decisions_csv, decisions, DECISION_COLUMNS)
    write_csv(review_csv, review, REVIEW_COLUMNS)
    return decisions
