"""The filter stages as DVC sees them, in a copy of this repository on the synthetic sample: a batch of unannotated
images re-runs `collect_annotated` (its output comes out unchanged) but not `train_filter`, and `filter` scores only
the new images (the rest come from the prediction cache)."""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import yaml

from pipeline.sample import _jpeg, draw
from tests.pipeline_repo import copy_repository, run

SAMPLE_RAW = [f"data/raw/sample/{name}" for name in
              ("rosendahl", "vidir_modern", "vidir_molemax", "vienna_dias", "image_types.csv")]


@pytest.mark.slow
def test_unannotated_batch_neither_retrains_nor_rescores(tmp_path):
    repo = copy_repository(tmp_path / "repo")
    run(["ham", "sample", "data/raw/sample"], repo)
    run(["dvc", "add", *SAMPLE_RAW], repo)
    first = run(["dvc", "repro", "filter"], repo)
    assert "Running stage 'train_filter'" in first.stdout
    assert re.search(r"\((\d+) scored on cpu, 0 from the prediction cache\)", first.stdout), first.stdout
    model = (repo / "models/filter.pt").read_bytes()

    # A new source of 6 images nobody annotated, added the way a maintainer adds one.
    folder = repo / "data/raw/new_batch"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    with open(folder / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "lesion"])
        for number in range(6):
            (folder / f"new{number}.jpg").write_bytes(_jpeg(draw(rng, ("dsc", "clinic")[number % 2], "nv")))
            writer.writerow([f"new{number}.jpg", f"N{number}"])
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["sources"].append({"name": "new_batch", "kind": "export", "path": "data/raw/new_batch",
                                        "dataset": "vidir_modern",
                                        "options": {"index": "index.csv", "columns": {"lesion_key": "lesion"}}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())
    stages["stages"]["ingest"]["deps"].insert(0, "data/raw/new_batch")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    run(["dvc", "add", "data/raw/new_batch"], repo)

    second = run(["dvc", "repro", "filter"], repo)
    assert "Running stage 'collect_annotated'" in second.stdout  # the objects changed ...
    assert "Stage 'train_filter' didn't change, skipping" in second.stdout, second.stdout  # ... the model did not
    assert (repo / "models/filter.pt").read_bytes() == model
    assert "(6 scored on cpu, " in second.stdout, second.stdout
    decisions = list(csv.DictReader(open(repo / "data/interim/filter/decisions.csv")))
    candidates = list(csv.DictReader(open(repo / "data/interim/ingest/candidates.csv")))
    assert len(decisions) == len(candidates) and sum(c["source"] == "new_batch" for c in candidates) == 6
