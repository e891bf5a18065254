"""The release in standard formats, read with the real libraries: each split's images/ folder loads with Hugging
Face `datasets` as an imagefolder (one row per image, the labels of the split's metadata.csv), and croissant.json
passes `mlcroissant validate` without a warning and loads with `mlcroissant`, one record per released image with its
fields and types, the sha256 of each FileObject right. The release is built once, by `build_release` on the images
of test_release.py's `inputs` fixture (real where $HAM_DATA has them, else drawn); the downstream guide's examples
run on it as written."""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline.common import read_csv, sha256_file
from pipeline.formats import FIELDS
from pipeline.vocabulary import RELEASE_COLUMNS
from tests.doc_blocks import block
from tests.release_repo import sh
from tests.test_release import PARAMS, build, inputs  # noqa: F401  (inputs: the fixture the release is built from)

datasets = pytest.importorskip("datasets", reason="datasets is not installed (the test extra has it)")
mlc = pytest.importorskip("mlcroissant", reason="mlcroissant is not installed (the test extra has it)")


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):  # noqa: F811
    """{"root": the folder holding release/, "release", "manifest": rows of release/manifest.csv, "rows": split ->
    metadata.csv rows by image_id, "env": a HOME and Hugging Face cache of the test's own, offline}."""
    root = tmp_path_factory.mktemp("formats")
    build(inputs, root)
    release = root / "release"
    splits = sorted(p.name for p in release.iterdir() if (p / "metadata.csv").is_file())
    assert splits == ["test", "train"]
    rows = {split: {r["image_id"]: r for r in read_csv(release / split / "metadata.csv")} for split in splits}
    env = {"HOME": str(root / "home"), "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    return {"root": root, "release": release, "manifest": read_csv(release / "manifest.csv"), "rows": rows,
            "env": env}


def images_of(built, split: str | None = None) -> list[dict]:
    return [m for m in built["manifest"] if m["image_id"] and (split is None or m["split"] == split)]


def same_age(value, text: str) -> bool:
    """An age as a library gives it (float, None or NaN) against metadata.csv's text ('45.0' or '')."""
    if not text:
        return value is None or (isinstance(value, float) and math.isnan(value))
    return isinstance(value, float) and value == float(text)


def test_the_new_files_are_in_both_manifests_and_the_ham_metadata_stays(built):
    release, manifest = built["release"], {m["path"]: m for m in built["manifest"]}
    assert "croissant.json" in manifest and manifest["croissant.json"]["split"] == ""
    for split in built["rows"]:
        assert manifest[f"{split}/images/metadata.jsonl"]["split"] == split
        own = {m["path"]: m for m in read_csv(release / split / "manifest.csv")}
        assert own["images/metadata.jsonl"]["sha256"] == sha256_file(release / split / "images" / "metadata.jsonl")
        with open(release / split / "metadata.csv", newline="") as handle:
            assert handle.readline().strip() == ",".join(RELEASE_COLUMNS)  # the HAM10000 file, unchanged


def test_each_split_loads_with_datasets_one_row_per_image_with_its_labels(built, tmp_path):
    release = built["release"]
    for split, by_id in built["rows"].items():
        loaded = datasets.load_dataset("imagefolder", data_dir=str(release / split / "images"), split="train",
                                       cache_dir=str(tmp_path / "cache"))
        assert loaded.num_rows == len(images_of(built, split)) == len(by_id)
        assert set(loaded.column_names) == {"image", *RELEASE_COLUMNS, "split"}
        assert loaded.features["image"] == datasets.Image() and loaded.features["age"].dtype == "float64"
        seen = set()
        for row in loaded:
            expected = by_id[row["image_id"]]
            assert {c: row[c] for c in RELEASE_COLUMNS if c != "age"} == \
                {c: expected[c] for c in RELEASE_COLUMNS if c != "age"}, row["image_id"]
            assert same_age(row["age"], expected["age"]) and row["split"] == split
            with Image.open(release / split / "images" / f"{row['image_id']}.jpg") as image:
                assert row["image"].size == image.size and row["image"].tobytes() == image.convert("RGB").tobytes()
            seen.add(row["image_id"])
        assert seen == set(by_id)


def test_the_guide_s_datasets_example_runs(built):
    result = sh([sys.executable, "-c", block("datasets-example", fences=("```python",))], built["root"],
                built["env"])
    first, second = result.stdout.strip().splitlines()[-2:]
    assert first.startswith(f"{len(images_of(built, 'train'))} (")
    assert json.loads(second.replace("'", '"')) == {s: len(images_of(built, s)) for s in ("train", "test")}


def test_croissant_validates_without_a_warning(built):
    result = sh(block("croissant-validate"), built["root"], built["env"])
    output = result.stdout + result.stderr
    assert "Done." in output and "warning" not in output.lower() and "error" not in output.lower(), output
    dataset = mlc.Dataset(built["release"] / "croissant.json")
    assert not dataset.metadata.ctx.issues.warnings and not dataset.metadata.ctx.issues.errors
    descriptor = json.loads((built["release"] / "croissant.json").read_text())
    assert descriptor["conformsTo"] == "http://mlcommons.org/croissant/1.0"
    assert descriptor["license"] == "https://creativecommons.org/licenses/by-nc/4.0/"
    assert (descriptor["version"], descriptor["datePublished"], descriptor["citeAs"]) == \
        (PARAMS["version"], PARAMS["date_published"], PARAMS["attribution"])


def test_croissant_validation_is_not_vacuous(built, tmp_path):
    """Without the date published (a release whose params lack it) the same validator warns."""
    descriptor = json.loads((built["release"] / "croissant.json").read_text())
    del descriptor["datePublished"]
    (tmp_path / "croissant.json").write_text(json.dumps(descriptor))
    result = sh([str(Path(sys.executable).parent / "mlcroissant"), "validate", "--jsonld", "croissant.json"],
                tmp_path, built["env"])
    assert "datePublished" in result.stdout + result.stderr


def test_croissant_file_objects_carry_the_right_sha256(built):
    release, manifest = built["release"], {m["path"]: m for m in built["manifest"]}
    descriptor = json.loads((release / "croissant.json").read_text())
    objects = [d for d in descriptor["distribution"] if d["@type"] == "cr:FileObject"]
    assert sorted(o["contentUrl"] for o in objects) == sorted(f"{s}/images/metadata.jsonl" for s in built["rows"])
    for item in objects:
        path = release / item["contentUrl"]
        assert item["sha256"] == sha256_file(path) == manifest[item["contentUrl"]]["sha256"]
        assert item["contentSize"] == f"{path.stat().st_size} B"


def test_croissant_loads_one_record_per_released_image_with_fields_and_types(built):
    release = built["release"]
    records = list(mlc.Dataset(release / "croissant.json").records("images"))
    assert len(records) == len(images_of(built)) == sum(len(rows) for rows in built["rows"].values())
    split_of = {m["image_id"]: m["split"] for m in images_of(built)}
    seen = set()
    for record in records:
        assert set(record) == {f"images/{name}" for name in ("image", "file_name", *FIELDS)}
        text = {name: record[f"images/{name}"].decode() for name in FIELDS if name != "age"}
        image_id = text["image_id"]
        expected = built["rows"][split_of[image_id]][image_id]
        assert {c: text[c] for c in RELEASE_COLUMNS if c != "age"} == \
            {c: expected[c] for c in RELEASE_COLUMNS if c != "age"}, image_id
        assert text["split"] == split_of[image_id] and same_age(record["images/age"], expected["age"])
        image = record["images/image"]
        assert isinstance(image, Image.Image)
        with Image.open(release / split_of[image_id] / "images" / f"{image_id}.jpg") as original:
            assert image.size == original.size and image.tobytes() == original.convert("RGB").tobytes()
        seen.add(image_id)
    assert seen == set(split_of)


def test_the_guide_s_croissant_example_runs(built):
    result = sh([sys.executable, "-c", block("croissant-example", fences=("```python",))], built["root"],
                built["env"])
    found = re.match(r"\((\d+), (\d+)\) \{.*'images/image_id': b'(ISIC_\d+)'.*'images/split': b'(\w+)'",
                     result.stdout)
    assert found, result.stdout
    width, height, image_id, split = found.groups()
    assert image_id in built["rows"][split]
    with Image.open(built["release"] / split / "images" / f"{image_id}.jpg") as image:
        assert image.size == (int(width), int(height))
