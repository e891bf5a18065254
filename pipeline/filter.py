"""Stage `filter`: decide each candidate's image type, keep the dermatoscopic ones, queue the doubtful for review.

Who decides, in order:
1. `annotation`: a person's d / c / m label (the annotations CSV) decides, confidence 1.
2. `source`: a source that declares its images' type (`image_type_hint`: the `ham10000` kind, ISIC's image_type,
   a source's `image_type` option) decides when `trust_source_types` is on (default). The model still scores the
   image; where the model's guess differs, the image goes to the review queue, and stays kept or dropped by its
   declared type until a person answers.
3. `model`: the network's most probable type; below `review_below` it goes to the review queue, below
   `min_confidence` it is not kept.
Candidates of a source with `role: training` (the filter's training material) are decided as above, then marked
`decided_by` `training` and never kept nor queued: they teach the network and stay out of every release.

On the CPU the network runs with the pinned arithmetic of training (`filter_model.pin_cpu_numerics`): the same
probabilities, bit for bit, on any x86-64 machine with AVX2. Probabilities are written, and every decision made,
at two decimals: a GPU's float32 results differ from the CPU's in the last bits only, so `decisions.csv` and
`review_queue.csv` come out identical there too (a probability would have to lie within float round-off of a
rounding boundary, x.xx5, to flip).

Inference streams: a DataLoader whose worker processes decode images (JPEG draft mode) in parallel feeds batches
to the device, so memory is bounded by batch_size x workers, not by the number of candidates. Predictions are
cached per (candidate content hash, model file hash, preprocessing) in `<cache>/<key>.csv`, not a DVC output and
appended batch by batch, so a new batch of candidates is scored alone and a killed run resumes.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .annotations import IMAGE_TYPES, read_annotations_if_any
from .common import PipelineError, is_training_material, read_csv, stable_hash, write_csv
from .codedeps import code_version
from .executors import LOCAL, Compute, run_map
from .integrity import check_objects
from .filter_model import (exact_float32, load_model, load_pixels, model_from_bytes, model_hash, pick_device,
                           pin_cpu_numerics, pinned_cpu_numerics, predict_batch)
from .stores import LocalStore, open_store, open_url

DECISION_COLUMNS = ("candidate_id", "image_type", "confidence", "p_dsc", "p_macro", "p_clinic", "decided_by",
                    "keep", "review")
REVIEW_COLUMNS = ("candidate_id", "object", "source", "origin", "member", "image_type", "decided_by", "model_type",
                  "confidence")
FEW = 256  # candidates to score up to which no decoding workers are started
CACHE_COLUMNS = ("candidate_id", *(f"p_{t}" for t in IMAGE_TYPES))


class CandidateImages(Dataset):
    """Images by local path, or by URL (str) in a remote object store (`stores`, with its s3fs `options`)."""

    def __init__(self, paths: list, size: int, options: dict | None = None):
        self.paths, self.size, self.options = paths, size, options or {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        if isinstance(path, str):
            with open_url(path, self.options) as handle:
                return torch.from_numpy(load_pixels(handle, self.size)), index
        return torch.from_numpy(load_pixels(path, self.size)), index


def _read_cache(path: Path) -> dict[str, tuple[float, ...]]:
    cached = {}
    if path.exists():
        with open(path, encoding="utf-8") as handle:
            next(handle, None)
            for line in handle:
                fields = line.rstrip("\n").split(",")
                if len(fields) == 4:  # a line cut short by a killed run is scored again
                    try:
                        cached[fields[0]] = tuple(float(v) for v in fields[1:])
                    except ValueError:
                        pass
    return cached


_MODELS: dict[str, tuple] = {}  # in a cluster's worker process: model key -> (model, device), loaded once


def _score_batch(task: tuple, model_bytes: bytes) -> tuple[list[int], list[tuple[float, ...]]]:
    """Cluster task: one batch's probabilities (a content-addressed object in the predictions store, where there
    is one: a batch scored before, by a worker since lost or by a killed run, is read back, not scored again)."""
    indices, ids, urls, size, device_name, key, location, options = task
    store = open_store(f"{location}/{key}", options) if location else None
    name = f"{stable_hash(ids)[:24]}.csv"
    if store is not None and store.exists(name):
        scored = _parse_cache(store.read_bytes(name).decode())
        if all(candidate_id in scored for candidate_id in ids):
            return indices, [scored[candidate_id] for candidate_id in ids]
    if key not in _MODELS:
        device = pick_device(device_name)
        exact_float32(device)
        if device.type == "cpu":  # a worker process scores only this way from now on
            pin_cpu_numerics()
        _MODELS[key] = (model_from_bytes(model_bytes, device)[0], device)
    model, device = _MODELS[key]
    dataset = CandidateImages(urls, size, options)
    batch = torch.stack([dataset[i][0] for i in range(len(urls))])
    values = [tuple(float(v) for v in p) for p in predict_batch(model, batch, device)]
    if store is not None:
        store.write_bytes(name, ("".join(f"{c},{','.join(repr(v) for v in p)}\n" for c, p in zip(ids, values))
                                 ).encode())
    return indices, values


def _score_on_cluster(todo: list[dict], paths: list, model_path: Path, key: str, size: int, batch_size: int,
                      params: dict, compute: Compute):
    """The same batches as the local DataLoader (sorted candidates, `inference_batch_size` each), one task each:
    a batch, not an image, so a worker loads the model once and scores a batch in one pass."""
    urls = [str(p) for p in paths]
    tasks = [(list(range(start, min(start + batch_size, len(todo)))),
              [row["candidate_id"] for row in todo[start:start + batch_size]], urls[start:start + batch_size], size,
              params.get("device", "auto"), key, compute.predictions_store, compute.options)
             for start in range(0, len(todo), batch_size)]
    return run_map(_score_batch, tasks, compute, "filter", shared=Path(model_path).read_bytes())


def _parse_cache(text: str) -> dict[str, tuple[float, ...]]:
    scored = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) == 4:
            try:
                scored[fields[0]] = tuple(float(v) for v in fields[1:])
            except ValueError:
                pass
    return scored


def _read_remote_cache(compute: Compute, key: str) -> dict[str, tuple[float, ...]]:
    store = open_store(f"{compute.predictions_store}/{key}", compute.options)
    scored = {}
    for name in sorted(store.names()):
        scored.update(_parse_cache(store.read_bytes(name).decode()))
    return scored


def score(candidates: list[dict], objects_dir: Path, model_path: Path, params: dict, cache_dir: Path,
          counts: dict | None = None, compute: Compute | None = None) -> dict[str, tuple[float, ...]]:
    """candidate_id -> the model's probabilities (float32 values, IMAGE_TYPES order), from the cache where known.
    `compute.objects_store` (params `compute`): the objects are read from that S3 store instead of `objects_dir`."""
    device = pick_device(params.get("device", "auto"))
    # The model's bytes and the code that decodes and scores an image (filter_model's import closure).
    key = stable_hash([model_hash(model_path), code_version("pipeline.filter_model")])[:24]
    cache_path = Path(cache_dir) / f"{key}.csv"
    cached = _read_cache(cache_path)
    if (compute or LOCAL).predictions_store:  # what the cluster's workers scored before (a killed run's batches)
        cached = {**_read_remote_cache(compute, key), **cached}
    todo = sorted({row["candidate_id"]: row for row in candidates if row["candidate_id"] not in cached}.values(),
                  key=lambda row: row["candidate_id"])
    if counts is not None:
        counts.update(scored=len(todo), cached=len({r["candidate_id"] for r in candidates}) - len(todo),
                      device=device.type)
    if not todo:
        return cached
    model, meta = load_model(model_path, device)
    exact_float32(device)
    workers = int(params.get("workers", min(4, os.cpu_count() or 1)))
    numerics = contextlib.ExitStack()
    if device.type == "cpu":  # the same probabilities on any x86-64 CPU; one compute thread beside the decoders
        numerics.enter_context(pinned_cpu_numerics())
    store = open_store((compute or LOCAL).store("objects", objects_dir), (compute or LOCAL).options)
    if isinstance(store, LocalStore):
        paths = [Path(objects_dir) / row["object"] for row in todo]
        missing = [p for p in paths if not p.exists()]
    else:
        present = store.names()
        paths = [store.url(row["object"]) for row in todo]
        missing = [store.url(row["object"]) for row in todo if row["object"] not in present]
    if missing:
        raise PipelineError(f"{missing[0]}: object missing from {store.location} ({len(missing)} missing)")
    if isinstance(store, LocalStore):  # the store is not a DVC output: a damaged object is caught here
        check_objects(Path(objects_dir), [row["object"] for row in todo])
    batch_size = int(params.get("inference_batch_size", 256))
    if (compute or LOCAL).executor != "local":
        batches = _score_on_cluster(todo, paths, Path(model_path), key, meta["image_size"], batch_size, params,
                                    compute)
    else:
        # A few new candidates (a re-run after adding a batch) are decoded here: starting worker processes, each
        # importing torch, would cost more than decoding them.
        loader = DataLoader(CandidateImages(paths, meta["image_size"], (compute or LOCAL).options),
                            batch_size=batch_size, num_workers=workers if len(todo) > FEW else 0,
                            pin_memory=device.type == "cuda")
        batches = ((index.tolist(), predict_batch(model, batch, device)) for batch, index in loader)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not cache_path.exists() or cache_path.stat().st_size == 0
    done = 0
    try:
        with open(cache_path, "a", encoding="utf-8") as handle:
            if new_file:
                handle.write(",".join(CACHE_COLUMNS) + "\n")
            for index, probabilities in batches:
                lines = []
                for i, p in zip(index, probabilities):
                    values = tuple(float(v) for v in p)  # float32 -> float: exact, and exact again through repr
                    cached[todo[i]["candidate_id"]] = values
                    lines.append(f"{todo[i]['candidate_id']},{','.join(repr(v) for v in values)}\n")
                handle.write("".join(lines))
                handle.flush()
                done += len(lines)
                print(f"filter ({device.type}): {done}/{len(todo)} scored", flush=True)
    finally:
        numerics.close()
    return cached


def _rounded(probabilities) -> list[float]:
    return [round(float(p), 2) for p in probabilities]


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def decide(candidates_csv: Path, objects_dir: Path, annotations_csv: Path | None, model_path: Path, params: dict,
           decisions_csv: Path, review_csv: Path, cache_dir: Path | None = None,
           counts: dict | None = None, compute: Compute | None = None) -> list[dict]:
    candidates = read_csv(candidates_csv, ("candidate_id", "object", "source", "origin", "member"))
    labels = read_annotations_if_any(annotations_csv)
    trust = params.get("trust_source_types", True)
    hints = {row["candidate_id"]: (row.get("image_type_hint") or "") for row in candidates}
    for number, row in enumerate(candidates, start=2):
        if hints[row["candidate_id"]] not in ("", *IMAGE_TYPES):
            raise PipelineError(f"{candidates_csv} row {number}: image_type_hint {hints[row['candidate_id']]!r} is "
                                f"not one of {', '.join(IMAGE_TYPES)}")
    training = {row["candidate_id"] for row in candidates if is_training_material(row)}
    to_score = [row for row in candidates if row["candidate_id"] not in labels]
    cache_dir = Path(cache_dir) if cache_dir else Path(decisions_csv).parent / "predictions"
    predicted = (score(to_score, Path(objects_dir), Path(model_path), params, cache_dir, counts, compute)
                 if to_score else {})

    decisions, review = {}, []
    for row in candidates:
        candidate_id = row["candidate_id"]
        if candidate_id in decisions:
            continue
        probs = _rounded(predicted[candidate_id]) if candidate_id in predicted else None
        # Ties at two decimals go to the first type in IMAGE_TYPES order: the same on every machine.
        model_type = IMAGE_TYPES[int(np.argmax(probs))] if probs else ""
        model_confidence = max(probs) if probs else None
        if candidate_id in labels:
            image_type, confidence, decided_by, needs_review = labels[candidate_id], 1.0, "annotation", False
        elif trust and hints[candidate_id]:
            image_type, confidence, decided_by = hints[candidate_id], 1.0, "source"
            needs_review = model_type != image_type
        else:
            image_type, confidence, decided_by = model_type, model_confidence, "model"
            needs_review = confidence < params["review_below"]
        keep = image_type in params["keep_types"] and (decided_by != "model" or confidence >= params["min_confidence"])
        if candidate_id in training:  # the filter's own material: never released, never queued
            decided_by, keep, needs_review = "training", False, False
        decisions[candidate_id] = {
            "candidate_id": candidate_id, "image_type": image_type, "confidence": _fmt(confidence),
            **{f"p_{t}": (_fmt(p) if probs else "") for t, p in zip(IMAGE_TYPES, probs or IMAGE_TYPES)},
            "decided_by": decided_by, "keep": str(keep).lower(), "review": str(needs_review).lower()}
        if needs_review:
            review.append({**{k: row[k] for k in ("candidate_id", "object", "source", "origin", "member")},
                           "image_type": image_type, "decided_by": decided_by, "model_type": model_type,
                           "confidence": _fmt(model_confidence)})
    ordered = [decisions[c] for c in sorted(decisions)]
    # Most doubtful first: the model's own unsure decisions by confidence, then the sources the model contradicts.
    review.sort(key=lambda r: (r["decided_by"] == "source", float(r["confidence"]), r["candidate_id"]))
    write_csv(decisions_csv, ordered, DECISION_COLUMNS)
    write_csv(review_csv, review, REVIEW_COLUMNS)
    return ordered
