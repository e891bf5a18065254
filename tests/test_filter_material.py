"""The image-type filter's training material and its reproducibility: the same model bytes whatever kernels this
CPU's libraries would pick, labels imported in one command, training-only sources kept out of the release, and a
network that does not decide by a watermark, a crop or a resolution.

The first three need no real data (drawn images); the shortcut test trains on real collections of $HAM_DATA and
scores collections and conditions it never saw."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.annotations import import_labels, labels_from_manifest, read_annotations
from pipeline.common import PipelineError, read_csv, sha256_bytes
from pipeline.ingest import ingest

REPO = Path(__file__).resolve().parent.parent
AVX512 = ("AVX512F AVX512CD AVX512VL AVX512BW AVX512DQ AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR "
          "AVX512_KNL AVX512_KNM")


def _annotated_folder(root: Path, dsc: list[Path], clinic: list[Path]) -> Path:
    """An annotated folder as `collect-annotated` writes it (bench_filter's writer), from image files."""
    from benchmarks.bench_filter import write_annotated

    write_annotated([{"path": p, "truth": truth, "collection": truth, "condition": p.stem}
                     for truth, paths in (("dsc", dsc), ("clinic", clinic)) for p in paths], root)
    return root


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_training_gives_the_same_bytes_whatever_the_cpu_offers(tmp_path, drawn_images):
    """`ham train-filter` under every dispatch cap the libraries have, as machines with less than this one would
    run them: MKL limited to SSE4.2, AVX2 or AVX-512, oneDNN to AVX2, NumPy without AVX-512, ATen asked for its
    default or AVX-512 build by the environment. One model file, byte for byte."""
    if "avx2" not in _cpu_flags():
        pytest.skip("the pinned arithmetic needs AVX2, which this CPU lacks")
    annotated = _annotated_folder(tmp_path / "annotated", list(drawn_images["dsc"][:16]),
                                  list(drawn_images["clinic"][:16]))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["filter"].update(epochs=2, workers=0, holdout_fraction=0.25)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    variants = {"as found": {},
                "MKL SSE4.2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
                "MKL AVX2, oneDNN AVX2, NumPy without AVX-512": {"MKL_ENABLE_INSTRUCTIONS": "AVX2",
                                                                 "ONEDNN_MAX_CPU_ISA": "AVX2",
                                                                 "NPY_DISABLE_CPU_FEATURES": AVX512},
                "ATen default asked, MKL reproducibility off asked": {"ATEN_CPU_CAPABILITY": "default",
                                                                     "MKL_CBWR": "AUTO"}}
    if "avx512f" in _cpu_flags():
        variants["MKL AVX-512, ATen AVX-512 asked"] = {"MKL_ENABLE_INSTRUCTIONS": "AVX512",
                                                       "ATEN_CPU_CAPABILITY": "avx512"}
    hashes = {}
    ham = Path(sys.executable).parent / "ham"
    for name, env in variants.items():
        model = tmp_path / f"model-{len(hashes)}.pt"
        result = subprocess.run([str(ham), "train-filter", "--params", str(params_path), "--annotated",
                                 str(annotated), "--model", str(model), "--metrics", str(tmp_path / "m.json"),
                                 "--confusion", str(tmp_path / "c.csv")],
                                capture_output=True, text=True, env={**os.environ, **env}, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        hashes[name] = hashlib.sha256(model.read_bytes()).hexdigest()
    assert len(set(hashes.values())) == 1, hashes


def test_import_labels_from_folders_and_a_manifest(tmp_path, drawn_images):
    dsc, clinic = list(drawn_images["dsc"][:3]), list(drawn_images["clinic"][:2])
    folder = tmp_path / "material"
    for path in dsc:
        (folder / "dermatoscopic" / "sub").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / "dermatoscopic" / "sub" / path.name)
    (folder / "dermatoscopic" / "notes.txt").write_text("not an image")
    annotations = tmp_path / "image_types.csv"
    annotations.write_text("IMAGE,ANNOTATION,TIMESTAMP\nabc,m,2018-01-01T00:00:00")  # no final line end
    before = annotations.read_bytes()
    linked = tmp_path / "cache_object"  # as DVC's cache shares the tracked file's inode (cache type hardlink)
    os.link(annotations, linked)
    from pipeline.annotations import images_under

    counts = import_labels(annotations, [(p, "d") for p in images_under(folder / "dermatoscopic")])
    assert counts == {"added": 3, "unchanged": 0, "relabelled": 0}
    assert linked.read_bytes() == before, "the old inode (DVC's cache object) was written through"
    labels = read_annotations(annotations)
    assert labels["abc"] == "macro"
    assert {labels[sha256_bytes(p.read_bytes())] for p in dsc} == {"dsc"}

    manifest = tmp_path / "m" / "manifest.csv"
    manifest.parent.mkdir()
    rows = []
    for index, path in enumerate(clinic + dsc[:1]):
        shutil.copyfile(path, manifest.parent / path.name)
        rows.append({"file": path.name, "image_type": ["clinical: overview", "c", "dermoscopic"][index]})
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file", "image_type"])
        writer.writeheader()
        writer.writerows(rows)
    counts = import_labels(annotations, labels_from_manifest(manifest, "file", "image_type"))
    assert counts == {"added": 2, "unchanged": 1, "relabelled": 0}
    assert import_labels(annotations, labels_from_manifest(manifest, "file", "image_type"))["added"] == 0
    assert {read_annotations(annotations)[sha256_bytes(p.read_bytes())] for p in clinic} == {"clinic"}

    with open(manifest, "a") as handle:
        handle.write("missing.jpg,d\n")
    with pytest.raises(PipelineError, match=r"manifest.csv row 5: file 'missing.jpg': no such file"):
        labels_from_manifest(manifest, "file", "image_type")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"file,image_type\n{manifest.parent / clinic[0].name},histology\n")
    with pytest.raises(PipelineError, match=r"bad.csv row 2: image_type 'histology' is not an image type"):
        labels_from_manifest(bad, "file", "image_type")


def test_import_labels_command(tmp_path, drawn_images):
    folder = tmp_path / "dsc"
    folder.mkdir()
    for path in drawn_images["dsc"][:2]:
        shutil.copyfile(path, folder / path.name)
    ham = Path(sys.executable).parent / "ham"
    annotations = tmp_path / "labels.csv"
    run = subprocess.run([str(ham), "import-labels", str(folder), "--type", "d", "--annotations", str(annotations),
                          "--params", str(REPO / "params.yaml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "2 labels added" in run.stdout
    assert set(read_annotations(annotations).values()) == {"dsc"}
    run = subprocess.run([str(ham), "import-labels", str(folder), "--annotations", str(annotations)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "--type is needed" in run.stderr


def test_the_filter_guide_s_import_block_runs_as_written(tmp_path, drawn_images):
    """docs/filter.md's `ham import-labels` block, in a project-shaped folder: two folders and an ISIC-style
    manifest, every image labelled in the annotations file params.yaml names."""
    from tests.doc_blocks import block
    from tests.release_repo import sh

    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    material = tmp_path / "data/raw/filter_training"
    dsc, clinic = list(drawn_images["dsc"][10:14]), list(drawn_images["clinic"][10:13])
    for index, path in enumerate(dsc[:3]):
        (material / "dermatoscopic" / f"collection{index % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, material / "dermatoscopic" / f"collection{index % 2}" / path.name)
    (material / "clinical").mkdir(parents=True)
    for path in clinic:
        shutil.copyfile(path, material / "clinical" / path.name)
    (material / "isic").mkdir()
    shutil.copyfile(dsc[3], material / "isic" / dsc[3].name)
    (material / "isic_export.csv").write_text(f"file,image_type\nisic/{dsc[3].name},dermoscopic\n")
    sh(block("filter-import-labels"), tmp_path)
    annotations = tmp_path / yaml.safe_load((REPO / "params.yaml").read_text())["filter"]["annotations"]
    labels = read_annotations(annotations)
    assert {labels[sha256_bytes(p.read_bytes())] for p in dsc} == {"dsc"}
    assert {labels[sha256_bytes(p.read_bytes())] for p in clinic} == {"clinic"}
    assert len(labels) == 7


def test_a_training_source_teaches_the_filter_and_is_never_released(tmp_path, drawn_images):
    from pipeline.annotations import collect_annotated
    from pipeline.filter import decide
    from pipeline.filter_model import ImageTypeNet, save_model
    from pipeline.metadata import check_datasets

    for name, images in (("clinic", drawn_images["clinic"][:4]), ("dsc", drawn_images["dsc"][:4]),
                         ("new", drawn_images["dsc"][4:7])):
        (tmp_path / "raw" / name).mkdir(parents=True)
        for path in images:
            shutil.copyfile(path, tmp_path / "raw" / name / path.name)
    (tmp_path / "raw/clinic/notes.md").write_text("where the photos came from")
    with open(tmp_path / "raw/new/index.csv", "w") as handle:
        handle.write("file\n" + "".join(f"{p.name}\n" for p in drawn_images["dsc"][4:7]))
    sources = [{"name": "material_clinic", "kind": "folder", "path": "raw/clinic", "role": "training",
                "options": {"index": None}},
               {"name": "material_dsc", "kind": "folder", "path": "raw/dsc", "role": "training",
                "options": {"image_type": "dsc", "index": None}},
               {"name": "vidir_modern", "kind": "folder", "path": "raw/new"}]
    with pytest.raises(PipelineError, match=r"role 'train' is not one of release, training"):
        ingest([{**sources[0], "role": "train"}], tmp_path, tmp_path / "bad", 100_000_000)
    result = ingest(sources, tmp_path, tmp_path / "ingest", 100_000_000)
    assert len(result.candidates) == 11, result.rejects
    assert [(r["source"], r["origin"]) for r in result.rejects] == [("material_clinic", "notes.md")]
    roles = {c["source"]: json.loads(c["extra"] or "{}").get("role") for c in result.candidates}
    assert roles == {"material_clinic": "training", "material_dsc": "training", "vidir_modern": None}
    check_datasets([c for c in result.candidates if c["source"] != "vidir_modern"], "candidates.csv")  # no raise

    annotations = tmp_path / "labels.csv"
    import_labels(annotations, [(tmp_path / "raw/clinic" / p.name, "c") for p in drawn_images["clinic"][:4]] +
                  [(tmp_path / "raw/dsc" / p.name, "d") for p in drawn_images["dsc"][:4]])
    counts = collect_annotated(tmp_path / "ingest/candidates.csv", tmp_path / "ingest/objects", annotations,
                               tmp_path / "annotated")
    assert counts["collected"] == 8
    model = tmp_path / "model.pt"
    save_model(ImageTypeNet(8, 1), model, {"width": 8, "blocks": 1, "image_size": 32, "types": ["dsc", "macro",
                                                                                                "clinic"]})
    params = {"keep_types": ["dsc"], "min_confidence": 0.5, "review_below": 0.9, "device": "cpu", "workers": 0,
              "trust_source_types": True}
    decisions = decide(tmp_path / "ingest/candidates.csv", tmp_path / "ingest/objects", annotations, model, params,
                       tmp_path / "decisions.csv", tmp_path / "review.csv", cache_dir=tmp_path / "cache")
    source_of = {c["candidate_id"]: c["source"] for c in result.candidates}
    for decision in decisions:
        if source_of[decision["candidate_id"]].startswith("material"):
            assert (decision["decided_by"], decision["keep"], decision["review"]) == ("training", "false", "false")
        else:
            assert decision["decided_by"] == "model"
    queued = {row["candidate_id"] for row in read_csv(tmp_path / "review.csv", ("candidate_id",))}
    assert not {c for c in queued if source_of[c].startswith("material")}


# ---- shortcuts, on real collections ---------------------------------------------------------------------------

@pytest.mark.real_data
def test_decisions_do_not_follow_a_watermark_crop_or_resolution(ham_data, tmp_path):
    """A network trained (small and short, for the test's time) on two dermatoscopic collections and a third of
    DermNet's conditions, scored on two other collections and conditions it never saw: pasting a DermNet-like
    logo onto dermatoscopic images, cropping the watermark part off clinical photos, squashing to 256x256 or
    shrinking to a third flips few decisions (bench_filter measures the full model on everything)."""
    import torch

    from benchmarks.filter_material import crop_watermark, material, paste_logo, shrink, squash
    from pipeline.filter_model import frame_pixels, load_model, open_rgb, predict_batch
    from pipeline.train_filter import train_filter

    items = material(ham_data)
    condition_index = {c: i for i, c in enumerate(sorted({i["condition"] for i in items
                                                          if i["collection"] == "dermnet"}))}

    def trained(item):
        if item["collection"] == "dermnet":
            return condition_index[item["condition"]] % 3 == 0
        return item["collection"] in ("derm7pt", "isic2017-256", "dermnet-dsc")

    train = [i for i in items if trained(i)]
    held = [i for i in items if not trained(i) and (i["collection"] in ("ham10000", "isic-uda1")
                                                    or condition_index[i["condition"]] % 3 == 1)]
    rng = np.random.default_rng(0)
    train = [train[i] for i in sorted(rng.choice(len(train), 360, replace=False))]
    held = [held[i] for i in sorted(rng.choice(len(held), 200, replace=False))]
    _annotated_folder(tmp_path / "annotated", [Path(i["path"]) for i in train if i["truth"] == "dsc"],
                      [Path(i["path"]) for i in train if i["truth"] == "clinic"])
    params = {"image_size": 48, "width": 8, "blocks": 1, "epochs": 10, "batch_size": 32, "learning_rate": 0.003,
              "weight_decay": 0.0005, "seed": 20180814, "holdout_fraction": 0.1, "train_device": "cpu",
              "workers": 0}
    train_filter(tmp_path / "annotated", params, tmp_path / "model.pt", tmp_path / "metrics.json")
    model, meta = load_model(tmp_path / "model.pt", torch.device("cpu"))
    frames = [open_rgb(i["path"], 256) for i in held]
    truth = np.array([i["truth"] == "dsc" for i in held])

    def kept(images):
        batch = torch.from_numpy(np.stack([frame_pixels(image, meta["image_size"]) for image in images]))
        return predict_batch(model, batch, torch.device("cpu")).argmax(1) == meta["types"].index("dsc")

    full = kept(frames)
    accuracy = float((full == truth).mean())
    assert accuracy >= 0.75, accuracy  # it learnt the types (a small, short training; the bench's full model more)
    logo = kept([paste_logo(f, n % 2) if t else f for n, (f, t) in enumerate(zip(frames, truth))])
    cropped = kept([f if t else crop_watermark(f) for f, t in zip(frames, truth)])
    squashed, shrunk = kept([squash(f) for f in frames]), kept([shrink(f) for f in frames])
    flips = {"logo on dsc": float((logo != full)[truth].mean()),
             "squashed": float((squashed != full).mean()), "shrunk": float((shrunk != full).mean())}
    assert all(share <= 0.05 for share in flips.values()), flips
    # Cropping reframes a photo (a closer view), so single decisions may move either way; what must not move much
    # is how many clinical photos are dropped. A network that learnt the watermark loses 50 points and more here
    # (17-43 % dropped once it is cropped, measured in issue 9); this small one moves by 5.8 (5 of 86 photos), the
    # full model in bench_filter by under one point.
    change = abs(float((~cropped)[~truth].mean()) - float((~full)[~truth].mean()))
    assert change <= 0.07, change
