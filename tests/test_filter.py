"""Stages `collect_annotated`, `train_filter` and `filter` on real dermatoscopic (HAM10000) and clinical (DermNet)
photographs: what training reads, lesion-grouped hold-out, determinism, who decides (annotation, source, model),
the review queue, the prediction cache, and a public-release source that a model calling everything `macro` cannot
take out of the release."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.annotations import collect_annotated, read_annotations
from pipeline.common import PipelineError, read_csv
from pipeline.filter import decide
from pipeline.filter_model import ImageTypeNet, load_model, pick_device, save_model
from pipeline.ingest import ingest
from pipeline.train_filter import group_of, train_filter

pytestmark = pytest.mark.real_data

REPO = Path(__file__).resolve().parent.parent
# Small and quick (a few seconds of CPU per training).
TRAIN_PARAMS = {"image_size": 32, "width": 8, "blocks": 1, "epochs": 12, "batch_size": 16, "learning_rate": 0.005,
                "weight_decay": 0.0005, "seed": 20180814, "holdout_fraction": 0.25, "train_device": "cpu",
                "workers": 0}
DECIDE_PARAMS = {"keep_types": ["dsc"], "min_confidence": 0.5, "review_below": 0.9, "device": "cpu", "workers": 2,
                 "inference_batch_size": 32}
N_EACH = 60


def _export(root: Path, images: list[Path], lesions: dict[str, str]) -> None:
    root.mkdir(parents=True)
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "lesion_key"])
        for image in images:
            shutil.copyfile(image, root / image.name)  # a symlink out of the source would be rejected
            writer.writerow([image.name, lesions.get(image.stem, image.stem)])


def _annotations(path: Path, labels: dict[str, str]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["IMAGE", "ANNOTATION", "TIMESTAMP"])
        for number, (candidate_id, key) in enumerate(sorted(labels.items())):
            writer.writerow([candidate_id, key, f"2018-03-01T10:{number // 60:02d}:{number % 60:02d}"])
    return path


@pytest.fixture(scope="module")
def workspace(ham_data, tmp_path_factory):
    """An ingest of 60 dermatoscopic images (whole lesions, lesion keys kept) and 60 clinical ones, all but the
    last ten of each annotated (d / c), the annotated images collected, and one trained model."""
    root = tmp_path_factory.mktemp("filter")
    manifest = list(csv.DictReader(open(ham_data / "ham10000" / "images_manifest.csv")))
    lesions = {row["image_id"]: row["lesion_id"] for row in manifest}
    by_lesion = sorted(manifest, key=lambda row: (row["lesion_id"], row["image_id"]))[:N_EACH]
    dermoscopic = [ham_data / "ham10000" / "images" / f"{row['image_id']}.jpg" for row in by_lesion]
    clinical = sorted((ham_data / "clinical" / "dermnet").glob("*.jpg"))[::4][:N_EACH]
    assert len(dermoscopic) == len(clinical) == N_EACH
    _export(root / "raw" / "dsc", dermoscopic, lesions)
    _export(root / "raw" / "clinic", clinical, {})
    out = root / "ingest"
    result = ingest([{"name": "vidir_modern", "kind": "export", "path": "raw/dsc"},
                     {"name": "dermnet", "kind": "export", "path": "raw/clinic"}], root, out, 100_000_000)
    assert len(result.candidates) == 2 * N_EACH, result.rejects
    truth = {c["candidate_id"]: ("d" if c["source"] == "vidir_modern" else "c") for c in result.candidates}
    unannotated = {c["candidate_id"] for c in result.candidates[:10] + result.candidates[-10:]}
    annotations = _annotations(root / "image_types.csv",
                               {c: k for c, k in truth.items() if c not in unannotated})
    counts = collect_annotated(out / "candidates.csv", out / "objects", annotations, root / "annotated")
    model, metrics_path, confusion = root / "model.pt", root / "metrics.json", root / "confusion.csv"
    metrics = train_filter(root / "annotated", TRAIN_PARAMS, model, metrics_path, confusion)
    return {"root": root, "ingest": out, "truth": truth, "annotations": annotations, "model": model,
            "metrics": metrics, "metrics_path": metrics_path, "confusion": confusion,
            "candidates": result.candidates, "unannotated": unannotated, "collected": counts}


def test_collect_annotated_holds_only_annotated_images(workspace):
    root = workspace["root"]
    index = read_csv(root / "annotated" / "index.csv")
    assert workspace["collected"] == {"annotated": 2 * N_EACH - 20, "collected": 2 * N_EACH - 20, "waiting": 0}
    assert {row["candidate_id"] for row in index} == set(workspace["truth"]) - workspace["unannotated"]
    assert sorted(p.name for p in (root / "annotated" / "images").iterdir()) == sorted(
        Path(row["file"]).name for row in index)
    by_id = {c["candidate_id"]: c for c in workspace["candidates"]}
    for row in index:
        assert (root / "annotated" / row["file"]).read_bytes() == \
            (workspace["ingest"] / "objects" / by_id[row["candidate_id"]]["object"]).read_bytes()
        assert row["image_type"] == {"d": "dsc", "c": "clinic"}[workspace["truth"][row["candidate_id"]]]


def test_unannotated_batch_leaves_training_input_byte_identical(workspace, ham_data, tmp_path):
    """What DVC sees: more candidates and objects, same annotations -> the training stage's only input is
    unchanged, so `dvc repro` skips training."""
    root = workspace["root"]
    before = {p.relative_to(root / "annotated"): p.read_bytes() for p in (root / "annotated").rglob("*") if p.is_file()}
    grown = tmp_path / "grown"
    shutil.copytree(workspace["ingest"], grown / "ingest")
    extra = sorted((ham_data / "ham10000" / "test_images").glob("*.jpg"))[:5]
    _export(tmp_path / "raw" / "more", extra, {})
    result = ingest([{"name": "more", "kind": "export", "path": "raw/more"}], tmp_path, tmp_path / "more", 10 ** 8)
    rows = read_csv(grown / "ingest" / "candidates.csv") + read_csv(tmp_path / "more" / "candidates.csv")
    for path in (tmp_path / "more" / "objects").iterdir():
        if path.is_file() and path.name != "index.csv":
            shutil.copyfile(path, grown / "ingest" / "objects" / path.name)
    with open(grown / "ingest" / "candidates.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    assert len(result.candidates) == 5
    collect_annotated(grown / "ingest" / "candidates.csv", grown / "ingest" / "objects", workspace["annotations"],
                      grown / "annotated")
    after = {p.relative_to(grown / "annotated"): p.read_bytes() for p in (grown / "annotated").rglob("*")
             if p.is_file()}
    assert after == before


def test_training_metrics_and_lesion_grouped_holdout(workspace):
    metrics = workspace["metrics"]
    assert json.loads(workspace["metrics_path"].read_text()) == metrics
    assert metrics["annotated"] == 2 * N_EACH - 20
    assert metrics["trained_on"] + metrics["held_out"] == metrics["annotated"]
    assert 10 <= metrics["held_out"] <= 40
    assert metrics["per_type_train_counts"]["macro"] == 0
    assert sum(metrics["per_type_train_counts"].values()) == metrics["trained_on"]
    assert set(metrics["precision"]) == set(metrics["recall"]) == {"dsc", "macro", "clinic"}
    assert metrics["recall"]["macro"] is None  # no close-ups annotated: undefined, not 0
    accuracy = metrics["holdout_accuracy"]
    assert accuracy is not None and accuracy >= 0.75, f"held-out accuracy {accuracy} on {metrics['held_out']}"
    # The confusion matrix rows for `dvc plots`: one per held-out image, and agreeing with the metrics.
    confusion = read_csv(workspace["confusion"])
    assert len(confusion) == metrics["held_out"]
    assert sum(r["actual"] == r["predicted"] for r in confusion) / len(confusion) == pytest.approx(accuracy, abs=1e-4)
    assert {r["actual"] for r in confusion} == {"dsc", "clinic"}
    # Whole lesions are held out: no lesion has images on both sides, and the lesions have several images.
    index = read_csv(workspace["root"] / "annotated" / "index.csv")
    held = {r["candidate_id"] for r in confusion}
    sides = {}
    for row in index:
        sides.setdefault(group_of(row), set()).add(row["candidate_id"] in held)
    assert all(len(s) == 1 for s in sides.values())
    sizes = [sum(1 for r in index if group_of(r) == g) for g, s in sides.items() if True in s]
    assert max(sizes) > 1, "no held-out lesion with several images: the grouping went untested"


def test_per_type_train_counts_are_true_counts(workspace, tmp_path):
    """Each type's count is the number of training (not held-out) images annotated with it. Annotated here: every
    dermatoscopic image as d, half the clinical ones as c and a sixth as m, so the three counts differ and a swap
    of two labels cannot go unseen."""
    truth = workspace["truth"]
    clinical = sorted(c for c, key in truth.items() if key == "c")
    labels = {**{c: "d" for c, key in truth.items() if key == "d"}, **{c: "c" for c in clinical[:N_EACH // 2]},
              **{c: "m" for c in clinical[N_EACH // 2:N_EACH // 2 + N_EACH // 6]}}
    annotations = _annotations(tmp_path / "types.csv", labels)
    collect_annotated(workspace["ingest"] / "candidates.csv", workspace["ingest"] / "objects", annotations,
                      tmp_path / "annotated")
    metrics = train_filter(tmp_path / "annotated", {**TRAIN_PARAMS, "epochs": 1}, tmp_path / "model.pt",
                           tmp_path / "metrics.json", tmp_path / "confusion.csv")
    held = {row["candidate_id"] for row in read_csv(tmp_path / "confusion.csv")}
    trained = [c for c in labels if c not in held]
    expected = {name: sum(labels[c] == key for c in trained) for key, name in (("d", "dsc"), ("m", "macro"),
                                                                               ("c", "clinic"))}
    assert len(set(expected.values())) == 3, expected
    assert metrics["per_type_train_counts"] == expected
    assert metrics["trained_on"] == len(trained) and metrics["annotated"] == len(labels)


def test_training_is_byte_identical_whatever_the_workers(workspace, tmp_path):
    again, metrics = tmp_path / "model.pt", tmp_path / "metrics.json"
    train_filter(workspace["root"] / "annotated", {**TRAIN_PARAMS, "workers": 2}, again, metrics)
    assert again.read_bytes() == workspace["model"].read_bytes()
    assert metrics.read_bytes() == workspace["metrics_path"].read_bytes()


def test_decide_annotation_then_source_then_model(workspace, tmp_path):
    truth, candidates = workspace["truth"], workspace["candidates"]
    dsc_ids = sorted(c for c, key in truth.items() if key == "d")
    clinic_ids = sorted(c for c, key in truth.items() if key == "c")
    # A person annotated a few images, one dermatoscopic image deliberately as clinical and one clinical image as
    # close-up: the annotation wins over the model and over the source.
    overrides = {dsc_ids[0]: "c", clinic_ids[0]: "m", dsc_ids[1]: "d"}
    annotations = _annotations(tmp_path / "some.csv", overrides)
    # Two sources declare types: one says `dsc` of clinical photos (the model disagrees: review, but kept), one
    # says `clinic` of five dermatoscopic images.
    declared = {**{c: "dsc" for c in clinic_ids[1:6]}, **{c: "clinic" for c in dsc_ids[2:7]}, clinic_ids[0]: "dsc"}
    rows = read_csv(workspace["ingest"] / "candidates.csv")
    for row in rows:
        row["image_type_hint"] = declared.get(row["candidate_id"], "")
    candidates_csv = tmp_path / "candidates.csv"
    with open(candidates_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    decisions_csv, review_csv = tmp_path / "decisions.csv", tmp_path / "review.csv"
    counts = {}
    decisions = decide(candidates_csv, workspace["ingest"] / "objects", annotations, workspace["model"],
                       DECIDE_PARAMS, decisions_csv, review_csv, tmp_path / "cache", counts)
    assert counts == {"scored": len(candidates) - len(overrides), "cached": 0, "device": "cpu"}
    assert len(decisions) == len(candidates)
    assert read_csv(decisions_csv) == decisions
    by_id = {d["candidate_id"]: d for d in decisions}
    assert [d["candidate_id"] for d in decisions] == sorted(by_id)
    expected_type = {"c": "clinic", "m": "macro", "d": "dsc"}
    for candidate_id, key in overrides.items():
        decision = by_id[candidate_id]
        assert (decision["decided_by"], decision["image_type"], decision["confidence"], decision["review"]) == \
            ("annotation", expected_type[key], "1.00", "false")
        assert decision["keep"] == ("true" if key == "d" else "false")
        assert decision["p_dsc"] == decision["p_macro"] == decision["p_clinic"] == ""  # not scored

    for candidate_id, image_type in declared.items():
        if candidate_id in overrides:
            continue
        decision = by_id[candidate_id]
        probs = {t: float(decision[f"p_{t}"]) for t in ("dsc", "macro", "clinic")}
        model_type = max(probs, key=lambda t: (probs[t], -("dsc", "macro", "clinic").index(t)))
        assert (decision["decided_by"], decision["image_type"], decision["confidence"]) == \
            ("source", image_type, "1.00")
        assert decision["keep"] == str(image_type == "dsc").lower()  # the declared type, whatever the model says
        assert decision["review"] == str(model_type != image_type).lower()
    # The model mostly disagrees with these false declarations, so they reach the review queue.
    assert sum(by_id[c]["review"] == "true" for c in declared if c not in overrides) >= 6

    model_decisions = [d for d in decisions if d["decided_by"] == "model"]
    assert len(model_decisions) == len(candidates) - len(overrides) - len(set(declared) - set(overrides))
    for decision in model_decisions:
        probs = [float(decision[f"p_{t}"]) for t in ("dsc", "macro", "clinic")]
        assert all(len(decision[f"p_{t}"]) == 4 for t in ("dsc", "macro", "clinic"))  # 0.xx: two decimals
        confidence = float(decision["confidence"])
        assert confidence == max(probs) and abs(sum(probs) - 1) <= 0.015
        keep = decision["image_type"] == "dsc" and confidence >= DECIDE_PARAMS["min_confidence"]
        assert decision["keep"] == str(keep).lower()
        assert decision["review"] == str(confidence < DECIDE_PARAMS["review_below"]).lower()
    agree = sum(1 for d in model_decisions if d["image_type"] == expected_type[truth[d["candidate_id"]]])
    assert agree / len(model_decisions) >= 0.8, f"model agrees with the truth on {agree}/{len(model_decisions)}"

    review = read_csv(review_csv)
    assert {r["candidate_id"] for r in review} == {d["candidate_id"] for d in decisions if d["review"] == "true"}
    # Model decisions first, most uncertain first; then the sources the model contradicts.
    kinds = [r["decided_by"] for r in review]
    assert kinds == sorted(kinds, key=lambda k: k == "source")
    model_rows = [r for r in review if r["decided_by"] == "model"]
    assert [float(r["confidence"]) for r in model_rows] == sorted(float(r["confidence"]) for r in model_rows)
    origin = {c["candidate_id"]: (c["source"], c["origin"]) for c in candidates}
    for row in review:
        assert (row["source"], row["origin"]) == origin[row["candidate_id"]]
        assert row["image_type"] == by_id[row["candidate_id"]]["image_type"]
        if row["decided_by"] == "source":
            assert row["model_type"] != row["image_type"]
        else:
            assert row["model_type"] == row["image_type"]


def test_prediction_cache_scores_a_new_batch_alone(workspace, tmp_path):
    rows = read_csv(workspace["ingest"] / "candidates.csv")
    first, cache = tmp_path / "first.csv", tmp_path / "cache"
    _write_rows(first, rows[:70])
    none = tmp_path / "none.csv"
    counts = {}
    decide(first, workspace["ingest"] / "objects", none, workspace["model"], DECIDE_PARAMS, tmp_path / "d1.csv",
           tmp_path / "r1.csv", cache, counts)
    assert counts["scored"] == 70 and counts["cached"] == 0
    everything = tmp_path / "all.csv"
    _write_rows(everything, rows)
    decide(everything, workspace["ingest"] / "objects", none, workspace["model"], DECIDE_PARAMS,
           tmp_path / "d2.csv", tmp_path / "r2.csv", cache, counts)
    assert counts["scored"] == len(rows) - 70 and counts["cached"] == 70
    # The cached decisions are the ones a fresh run makes.
    decide(everything, workspace["ingest"] / "objects", none, workspace["model"], DECIDE_PARAMS,
           tmp_path / "d3.csv", tmp_path / "r3.csv", tmp_path / "fresh", counts)
    assert counts["scored"] == len(rows)
    assert (tmp_path / "d2.csv").read_bytes() == (tmp_path / "d3.csv").read_bytes()
    assert (tmp_path / "r2.csv").read_bytes() == (tmp_path / "r3.csv").read_bytes()
    # Another model is another cache key: everything is scored again.
    other = tmp_path / "other.pt"
    model, meta = load_model(workspace["model"], torch.device("cpu"), fold=False)
    with torch.no_grad():
        model.head[-1].bias.add_(0.5)
    save_model(model, other, meta)
    decide(everything, workspace["ingest"] / "objects", none, other, DECIDE_PARAMS, tmp_path / "d4.csv",
           tmp_path / "r4.csv", cache, counts)
    assert counts["scored"] == len(rows) and len(list(cache.iterdir())) == 2


def _write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path cannot be compared here")
def test_cuda_and_cpu_write_the_same_decisions(workspace, tmp_path):
    outputs = {}
    for device in ("cpu", "cuda"):
        decide(workspace["ingest"] / "candidates.csv", workspace["ingest"] / "objects", tmp_path / "none.csv",
               workspace["model"], {**DECIDE_PARAMS, "device": device}, tmp_path / f"{device}.csv",
               tmp_path / f"{device}_review.csv", tmp_path / f"cache_{device}")
        outputs[device] = ((tmp_path / f"{device}.csv").read_bytes(),
                           (tmp_path / f"{device}_review.csv").read_bytes())
    assert outputs["cpu"] == outputs["cuda"]


def test_device_and_input_errors(workspace, tmp_path):
    with pytest.raises(PipelineError, match="not one of auto, cpu, cuda"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="no CUDA device"):
            pick_device("cuda")
    bad = tmp_path / "bad.csv"
    bad.write_text("IMAGE,ANNOTATION,TIMESTAMP\nabc,d,t\nabd,x,t\n")
    with pytest.raises(PipelineError, match=r"bad.csv row 3: ANNOTATION 'x' is not one of d, c, m"):
        read_annotations(bad)
    with pytest.raises(PipelineError, match="no annotated image"):
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "index.csv").write_text("candidate_id,file,image_type,source,lesion_key\n")
        train_filter(empty, TRAIN_PARAMS, tmp_path / "m.pt", tmp_path / "m.json")


# ---- a public-release source is released whole, whatever the model says ---------------------------------------

def _macro_model(path: Path) -> Path:
    """A network that calls every image a clinical close-up with confidence ~1."""
    model = ImageTypeNet(8)
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.copy_(torch.tensor([0.0, 12.0, 0.0]))
    save_model(model.eval(), path, {"width": 8, "blocks": 1, "image_size": 32, "types": ["dsc", "macro", "clinic"]})
    return path


def test_public_release_is_released_whole_against_a_macro_model(ham_data, tmp_path):
    from pipeline.metadata import build_metadata
    from pipeline.standardise import standardise
    from tests.test_source_ham10000 import build_release

    build_release(tmp_path / "raw" / "public", ham_data)
    export = ham_data / "ham10000" / "metadata" / "ISIC_archive_HAM10000_collection_metadata.csv"
    (tmp_path / "raw" / "public" / export.name).symlink_to(export)  # the test images' lesions and dx_type
    out = tmp_path / "ingest"
    result = ingest([{"name": "public", "kind": "ham10000", "path": "raw/public",
                      "options": {"test_metadata": export.name}}], tmp_path, out, 10 ** 8)
    assert len(result.candidates) == 490 + 70 and all(c["image_type_hint"] == "dsc" for c in result.candidates)
    model = _macro_model(tmp_path / "macro.pt")
    decisions = decide(out / "candidates.csv", out / "objects", tmp_path / "none.csv", model, DECIDE_PARAMS,
                       tmp_path / "filter" / "decisions.csv", tmp_path / "filter" / "review.csv", tmp_path / "cache")
    assert {(d["decided_by"], d["image_type"], d["keep"], d["review"]) for d in decisions} == \
        {("source", "dsc", "true", "true")}
    assert all(float(d["p_macro"]) >= 0.99 for d in decisions)
    review = read_csv(tmp_path / "filter" / "review.csv")
    assert len(review) == len(decisions) and {r["model_type"] for r in review} == {"macro"}

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    standardise(out / "candidates.csv", tmp_path / "filter" / "decisions.csv", out / "objects",
                params["standardise"], tmp_path / "std" / "images", tmp_path / "std" / "index.csv")
    counts = build_metadata(out / "candidates.csv", tmp_path / "filter" / "decisions.csv",
                            tmp_path / "std" / "index.csv",
                            {**params["metadata"], "official_lesion_ids_from": ["public"]}, tmp_path / "registry",
                            tmp_path / "metadata")
    excluded = read_csv(tmp_path / "metadata" / "excluded.csv")
    assert [e for e in excluded if e["stage"] == "filter"] == []
    assert counts["rows"] == 490 + 70 and counts["excluded"] == 0, [e["reason"] for e in excluded[:3]]
    released = {row["image_id"] for row in read_csv(tmp_path / "metadata" / "metadata.csv")}
    assert released == {c["image_id"] for c in result.candidates}


def _full_size_release(root: Path, ham_data: Path) -> int:
    """The public release at full size: every row of the real metadata (10015) and of the ISIC 2018 test ground
    truth (1512) gets a distinct JPEG, made from the real images (cycled) with the image's number written into
    a few pixels, in the Dataverse zips."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    ham = ham_data / "ham10000"
    root.mkdir(parents=True)
    bases = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((ham / "images").glob("*.jpg")) +
             sorted((ham / "test_images").glob("*.jpg"))]
    shutil.copyfile(ham / "metadata" / "HAM10000_metadata.csv", root / "HAM10000_metadata.csv")
    shutil.copyfile(ham / "metadata" / "ISIC2018_Task3_Test_GroundTruth.csv",
                    root / "ISIC2018_Task3_Test_GroundTruth.csv")
    train_ids = [r["image_id"] for r in csv.DictReader(open(ham / "metadata" / "HAM10000_metadata.csv"))]
    test_ids = [r["image"] for r in csv.DictReader(open(ham / "metadata" / "ISIC2018_Task3_Test_GroundTruth.csv"))]
    assert (len(train_ids), len(test_ids)) == (10015, 1512)

    def jpeg(number: int) -> bytes:
        pixels = bases[number % len(bases)].copy()
        pixels[:8, :24] = np.frombuffer(number.to_bytes(3, "big") * 64, np.uint8).reshape(8, 24)[:, :24, None]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    half = len(train_ids) // 2
    for name, ids, offset, folder in (("HAM10000_images_part_1.zip", train_ids[:half], 0, ""),
                                      ("HAM10000_images_part_2.zip", train_ids[half:], half, ""),
                                      ("ISIC2018_Task3_Test_Input.zip", test_ids, len(train_ids),
                                       "ISIC2018_Task3_Test_Input/")):
        with zipfile.ZipFile(root / name, "w", zipfile.ZIP_STORED) as archive:
            for number, image_id in enumerate(ids, start=offset):
                archive.writestr(f"{folder}{image_id}.jpg", jpeg(number))
    return len(train_ids) + len(test_ids)


@pytest.mark.slow
def test_full_size_public_release_is_kept_whole_against_a_macro_model(ham_data, tmp_path):
    """10015 + 1512 distinct images through ingest and filter: a network that calls them all close-ups keeps
    every one (and queues them all for review)."""
    total = _full_size_release(tmp_path / "raw" / "public", ham_data)
    out = tmp_path / "ingest"
    result = ingest([{"name": "public", "kind": "ham10000", "path": "raw/public"}], tmp_path, out, 10 ** 8)
    assert len(result.candidates) == total == 11527, result.rejects[:3]
    decisions = decide(out / "candidates.csv", out / "objects", tmp_path / "none.csv",
                       _macro_model(tmp_path / "macro.pt"), DECIDE_PARAMS, tmp_path / "decisions.csv",
                       tmp_path / "review.csv", tmp_path / "cache")
    assert len(decisions) == total
    assert all(d["keep"] == "true" and d["decided_by"] == "source" for d in decisions)
    assert len(read_csv(tmp_path / "review.csv")) == total
