"""Stages `train_filter` and `filter`: a small image-type model trained on real dermatoscopic (HAM10000) and
clinical (DermNet) photographs, determinism of training, and the decisions / review queue of `decide`."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline.common import read_csv
from pipeline.filter import decide
from pipeline.ingest import ingest
from pipeline.train_filter import in_holdout, train_filter

pytestmark = pytest.mark.real_data

# Small and quick (about 1 s of CPU per training). With 8 epochs this net stays near chance (held-out 0.73, loss
# 0.69 after 8 epochs); 30 epochs reach 0.83 on the 30 held-out images.
TRAIN_PARAMS = {"image_size": 32, "width": 8, "epochs": 30, "batch_size": 16, "learning_rate": 0.003,
                "seed": 20180814, "holdout_fraction": 0.25}
N_EACH = 60


def _export(root: Path, images: list[Path]) -> None:
    root.mkdir(parents=True)
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "lesion"])
        for image in images:
            (root / image.name).symlink_to(image)  # the real data is read in place
            writer.writerow([image.name, image.stem])


def _annotations(path: Path, labels: dict[str, str]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["IMAGE", "ANNOTATION", "TIMESTAMP"])
        for number, (candidate_id, key) in enumerate(sorted(labels.items())):
            writer.writerow([candidate_id, key, f"2018-03-01T10:{number // 60:02d}:{number % 60:02d}"])
    return path


@pytest.fixture(scope="module")
def workspace(ham_data, tmp_path_factory):
    """An ingest of 60 dermatoscopic and 60 clinical images, annotated (d / c), and one trained model."""
    root = tmp_path_factory.mktemp("filter")
    dermoscopic = sorted((ham_data / "ham10000" / "images").glob("*.jpg"))[::8][:N_EACH]
    clinical = sorted((ham_data / "clinical" / "dermnet").glob("*.jpg"))[::4][:N_EACH]
    assert len(dermoscopic) == len(clinical) == N_EACH
    _export(root / "raw" / "dsc", dermoscopic)
    _export(root / "raw" / "clinic", clinical)
    out = root / "ingest"
    result = ingest([{"name": "vidir_modern", "kind": "export", "path": "raw/dsc"},
                     {"name": "dermnet", "kind": "export", "path": "raw/clinic"}], root, out, 100_000_000)
    assert len(result.candidates) == 2 * N_EACH, result.rejects
    truth = {c["candidate_id"]: ("d" if c["source"] == "vidir_modern" else "c") for c in result.candidates}
    annotations = _annotations(root / "image_types.csv", truth)
    model, metrics_path = root / "model.pt", root / "metrics.json"
    metrics = train_filter(out / "candidates.csv", out / "objects", annotations, TRAIN_PARAMS, model, metrics_path)
    return {"root": root, "ingest": out, "truth": truth, "annotations": annotations, "model": model,
            "metrics": metrics, "metrics_path": metrics_path, "candidates": result.candidates}


def test_training_reports_held_out_accuracy(workspace):
    metrics = workspace["metrics"]
    assert json.loads(workspace["metrics_path"].read_text()) == metrics
    assert metrics["annotated"] == 2 * N_EACH
    assert metrics["trained_on"] + metrics["held_out"] == 2 * N_EACH
    assert 15 <= metrics["held_out"] <= 45
    accuracy = metrics["holdout_accuracy"]
    assert accuracy is not None and accuracy >= 0.75, \
        f"held-out accuracy {accuracy} on {metrics['held_out']} images (dermatoscopic vs clinical)"


def test_per_type_train_counts_are_true_counts(workspace, tmp_path):
    """Each type's count is the number of training (not held-out) images annotated with it. Annotated here: every
    dermatoscopic image as d, half the clinical ones as c and a sixth as m, so the three counts differ and a swap
    of two labels cannot go unseen."""
    truth = workspace["truth"]
    clinical = sorted(c for c, key in truth.items() if key == "c")
    labels = {**{c: "d" for c, key in truth.items() if key == "d"}, **{c: "c" for c in clinical[:N_EACH // 2]},
              **{c: "m" for c in clinical[N_EACH // 2:N_EACH // 2 + N_EACH // 6]}}
    params = {**TRAIN_PARAMS, "epochs": 1}
    metrics = train_filter(workspace["ingest"] / "candidates.csv", workspace["ingest"] / "objects",
                           _annotations(tmp_path / "types.csv", labels), params, tmp_path / "model.pt",
                           tmp_path / "metrics.json")
    trained = [c for c in labels if not in_holdout(c, params["seed"], params["holdout_fraction"])]
    expected = {name: sum(labels[c] == key for c in trained) for key, name in (("d", "dsc"), ("m", "macro"),
                                                                               ("c", "clinic"))}
    assert len(set(expected.values())) == 3, expected
    assert metrics["per_type_train_counts"] == expected
    assert metrics["trained_on"] == len(trained) and metrics["annotated"] == len(labels)

    # The workspace's model: dermatoscopic and clinical only.
    counts = workspace["metrics"]["per_type_train_counts"]
    trained = [c for c in truth if not in_holdout(c, TRAIN_PARAMS["seed"], TRAIN_PARAMS["holdout_fraction"])]
    assert counts == {"dsc": sum(truth[c] == "d" for c in trained), "macro": 0,
                      "clinic": sum(truth[c] == "c" for c in trained)}


def test_training_is_byte_identical(workspace, tmp_path):
    ingest_dir = workspace["ingest"]
    again, metrics = tmp_path / "model.pt", tmp_path / "metrics.json"
    train_filter(ingest_dir / "candidates.csv", ingest_dir / "objects", workspace["annotations"], TRAIN_PARAMS,
                 again, metrics)
    assert again.read_bytes() == workspace["model"].read_bytes()
    assert metrics.read_bytes() == workspace["metrics_path"].read_bytes()


def test_decide_annotation_beats_model_and_review_queue(workspace, tmp_path):
    truth, candidates = workspace["truth"], workspace["candidates"]
    dsc_ids = sorted(c for c, key in truth.items() if key == "d")
    clinic_ids = sorted(c for c, key in truth.items() if key == "c")
    # A person annotated a few images; one dermatoscopic image is (deliberately) annotated as clinical, and one
    # clinical image as close-up: the annotation must win over whatever the model says.
    overrides = {dsc_ids[0]: "c", clinic_ids[0]: "m", dsc_ids[1]: "d"}
    annotations = _annotations(tmp_path / "some.csv", overrides)
    params = {"keep_types": ["dsc"], "min_confidence": 0.5, "review_below": 0.95, "batch_size": 64}
    decisions_csv, review_csv = tmp_path / "decisions.csv", tmp_path / "review.csv"
    decisions = decide(workspace["ingest"] / "candidates.csv", workspace["ingest"] / "objects", annotations,
                       workspace["model"], params, decisions_csv, review_csv)

    assert len(decisions) == len(candidates)
    assert read_csv(decisions_csv) == decisions
    by_id = {d["candidate_id"]: d for d in decisions}
    assert [d["candidate_id"] for d in decisions] == sorted(by_id)
    expected_type = {"c": "clinic", "m": "macro", "d": "dsc"}
    for candidate_id, key in overrides.items():
        decision = by_id[candidate_id]
        assert decision["decided_by"] == "annotation"
        assert decision["image_type"] == expected_type[key]
        assert decision["confidence"] == "1.0000" and decision["review"] == "false"
        assert decision["keep"] == ("true" if key == "d" else "false")

    model_decisions = [d for d in decisions if d["decided_by"] == "model"]
    assert len(model_decisions) == len(candidates) - len(overrides)
    for decision in model_decisions:
        confidence = float(decision["confidence"])
        assert confidence == max(float(decision[f"p_{t}"]) for t in ("dsc", "macro", "clinic"))
        assert abs(sum(float(decision[f"p_{t}"]) for t in ("dsc", "macro", "clinic")) - 1) < 1e-3
        keep = decision["image_type"] == "dsc" and confidence >= params["min_confidence"]
        assert decision["keep"] == str(keep).lower()
        assert decision["review"] == str(confidence < params["review_below"]).lower()

    # The model mostly agrees with the truth (it saw most of these images in training).
    agree = sum(1 for d in model_decisions if d["image_type"] == {"d": "dsc", "c": "clinic"}[truth[d["candidate_id"]]])
    assert agree / len(model_decisions) >= 0.8, f"model agrees with the truth on {agree}/{len(model_decisions)}"
    kept = {d["candidate_id"] for d in decisions if d["keep"] == "true"}
    assert len(kept & set(dsc_ids)) >= 0.75 * len(dsc_ids), f"{len(kept & set(dsc_ids))}/{len(dsc_ids)} dsc kept"

    review = read_csv(review_csv)
    assert 0 < len(review) < len(model_decisions), f"{len(review)} of {len(model_decisions)} queued for review"
    print(f"model agrees with the truth on {agree}/{len(model_decisions)}; {len(review)} queued for review")
    expected = sorted((d for d in model_decisions if float(d["confidence"]) < params["review_below"]),
                      key=lambda d: (float(d["confidence"]), d["candidate_id"]))
    assert [r["candidate_id"] for r in review] == [d["candidate_id"] for d in expected]
    assert [float(r["confidence"]) for r in review] == sorted(float(r["confidence"]) for r in review)
    origin = {c["candidate_id"]: (c["source"], c["origin"]) for c in candidates}
    for row in review:
        assert (row["source"], row["origin"]) == origin[row["candidate_id"]]
        assert row["image_type"] == by_id[row["candidate_id"]]["image_type"]
