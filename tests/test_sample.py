"""The demo's synthetic sample (`ham sample`): the study's four routes, each read by its own reader kind, every raw
item accounted for, annotations keyed by the candidate IDs ingest computes, and the same bytes on every run."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pipeline.common import sha256_bytes
from pipeline.ingest import ingest
from pipeline.sample import ANNOTATIONS, SOURCES, write_sources


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_bytes(p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def ingested(sample_raw, tmp_path_factory):
    root, written = sample_raw
    configs = [{**source, "path": str(root / source["path"])} for source in SOURCES]
    out = tmp_path_factory.mktemp("ingest")
    return ingest(configs, Path("/"), out, 100_000_000), written


def test_same_seed_same_bytes(sample_raw, tmp_path):
    root, _ = sample_raw
    again = tmp_path / "again"
    for stale in ("rosendahl/rosendahl_2015.pptx", "vienna_dias/index.csv", "vidir_modern/images/old.jpg"):
        (again / stale).parent.mkdir(parents=True, exist_ok=True)
        (again / stale).write_bytes(b"from an older sample")
    (again / "README.md").write_text("not the sample's")
    write_sources(again)  # over an older sample: its source folders are replaced, nothing stale is left
    first, second = tree(root), tree(again)
    assert second.pop("README.md")  # anything else in the folder is left alone
    assert first == second
    assert {name.split("/")[0] for name in first} == {"rosendahl", "vidir_modern", "vidir_molemax", "vienna_dias",
                                                      ANNOTATIONS}


def test_params_yaml_lists_the_sample_sources(repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert params["ingest"]["sources"] == [{**source, "path": f"data/raw/sample/{source['path']}"}
                                           for source in SOURCES]
    assert params["filter"]["annotations"] == f"data/raw/sample/{ANNOTATIONS}"
    deps = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]["ingest"]["deps"]
    assert {f"data/raw/sample/{source['path']}" for source in SOURCES} <= set(deps)


def test_each_route_read_by_its_own_kind_every_item_accounted_for(ingested):
    result, written = ingested
    assert [s["kind"] for s in SOURCES] == ["pptx", "export", "series", "slides"]
    per_source = Counter(row["source"] for row in [*result.candidates, *result.rejects])
    assert per_source == {name: w.items for name, w in written.items()}
    assert {row["kind"] for row in result.candidates if row["source"] == "rosendahl"} == {"pptx"}
    by_source = {name: [r for r in result.candidates if r["source"] == name] for name in written}
    assert all(len(rows) >= 20 for rows in by_source.values())

    reasons = {(r["source"], r["origin"]): r["reason"] for r in result.rejects}
    assert len(reasons) == len(result.rejects) == 11
    assert "not a readable PowerPoint deck" in reasons[("rosendahl", "rosendahl_2018.pptx")]
    assert "slide 16: no lesion ID" in reasons[("rosendahl", "rosendahl_2017.pptx")]
    assert "empty" in reasons[("vidir_modern", "images/empty.jpg")]
    assert "not listed" in reasons[("vidir_modern", "images/notes.jpg")]
    assert "truncated" in reasons[("vidir_modern", "images/vid_trunc.jpg")]
    assert reasons[("vidir_modern", "images/vid_0003_copy.jpg")].startswith("duplicate of candidate")
    assert "impossible visit date" in reasons[("vidir_molemax", "P03/L1/2015-13-45.jpg")]
    assert "wrong depth" in reasons[("vidir_molemax", "P05/notes.txt")]
    assert "truncated" in reasons[("vienna_dias", "scans/1996/dia_0101.jpg")]
    assert "mount border detection failed" in reasons[("vienna_dias", "scans/1996/dia_0102.jpg")]
    assert "not listed" in reasons[("vienna_dias", "scans/1996/dia_0103.jpg")]
    assert not [r for r in result.rejects if "/tmp" in r["reason"] or "pytest" in r["reason"]]  # no local paths

    # What each reader joined: deck pictures get the workbook's pathology, series the follow-up rule, slides
    # their crop box; the export's odd encodings are normalised to RGB PNG objects.
    decks = by_source["rosendahl"]
    assert {r["origin"] for r in decks} == {"rosendahl_2016.pptx", "rosendahl_2017.pptx"}
    assert all(r["lesion_key"].isdigit() and len(r["lesion_key"]) == 7 and r["diagnosis"] for r in decks)
    assert {json.loads(r["extra"])["year"] for r in decks} == {"2016", "2017"}
    assert "No signs of residual tumor" in {r["diagnosis"] for r in decks}
    series = by_source["vidir_molemax"]
    follow_up = {r["lesion_key"] for r in series if r["dx_type"] == "follow_up"}
    assert len(follow_up) >= 12 and all(r["dx"] == "nv" for r in series if r["dx_type"] == "follow_up")
    assert {r["dx_type"] for r in series} == {"follow_up", "histo", ""}
    assert all(r["visit_date"] for r in series)
    slides = by_source["vienna_dias"]
    assert all(json.loads(r["extra"])["crop_box"] and r["format"] == "PNG" for r in slides)
    assert all(int(r["width"]) < 500 for r in slides)  # the mount is cut away
    assert {r["format"] for r in by_source["vidir_modern"]} == {"JPEG", "PNG"}
    assert {r["object"][-4:] for r in by_source["vidir_modern"]} == {".jpg", ".png"}


def test_annotations_are_candidate_ids_with_every_image_type(sample_raw, ingested):
    root, _ = sample_raw
    result, _ = ingested
    with open(root / ANNOTATIONS, newline="") as handle:
        annotations = {row["IMAGE"]: row["ANNOTATION"] for row in csv.DictReader(handle)}
    candidates = {row["candidate_id"]: row for row in result.candidates}
    assert set(annotations) <= set(candidates)
    assert 0.7 < len(annotations) / len(candidates) < 0.8  # the filter decides the rest
    types = Counter((candidates[c]["source"], a) for c, a in annotations.items())
    assert types[("rosendahl", "d")] and types[("rosendahl", "m")] and types[("rosendahl", "c")]
    assert types[("vienna_dias", "d")] and types[("vienna_dias", "m")] and types[("vidir_modern", "c")]
    # a close-up on a slide is not the slide's dermatoscopic picture: the labels follow the pictures
    clinical = [c for c, a in annotations.items() if a != "d" and candidates[c]["source"] == "rosendahl"]
    assert all(candidates[c]["member"] != "slide 1 picture 1" for c in clinical)
