"""The CPU inference path of `filter` against a stored expectation: the synthetic sample's candidates scored by a
fixed network (seeded initialisation, no training, so only decoding, batching, the network and the rounding are
under test) must give exactly the decisions in tests/data/filter_expected_decisions.csv. The same file is what a
CUDA run must write (`test_filter.py` compares the two devices where CUDA is present), so dvc.lock does not depend
on the machine.

Regenerate after a deliberate change of the preprocessing or the network: HAM_UPDATE_EXPECTED=1 pytest this file.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.filter import decide
from pipeline.filter_model import ImageTypeNet, save_model
from pipeline.ingest import ingest
from pipeline.sample import write_sample

EXPECTED = Path(__file__).parent / "data" / "filter_expected_decisions.csv"
REPO = Path(__file__).resolve().parent.parent
PARAMS = {"keep_types": ["dsc"], "min_confidence": 0.5, "review_below": 0.9, "workers": 2,
          "inference_batch_size": 16}


def _fixed_model(path: Path) -> Path:
    torch.manual_seed(20180814)
    model = ImageTypeNet(8)
    with torch.no_grad():  # spread the untrained network's outputs so decisions are not all ties
        model.head[-1].weight.mul_(300.0)
    save_model(model.eval(), path, {"width": 8, "blocks": 1, "image_size": 48, "types": ["dsc", "macro", "clinic"]})
    return path


@pytest.fixture(scope="module")
def sample_ingest(tmp_path_factory):
    root = tmp_path_factory.mktemp("expected")
    write_sample(root / "data" / "raw" / "sample")
    sources = yaml.safe_load((REPO / "params.yaml").read_text())["ingest"]["sources"]
    ingest(sources, root, root / "ingest", 10 ** 8)
    return root


def _run(root: Path, device: str, tmp_path: Path) -> bytes:
    decisions = tmp_path / f"decisions_{device}.csv"
    decide(root / "ingest" / "candidates.csv", root / "ingest" / "objects", None, _fixed_model(tmp_path / "m.pt"),
           {**PARAMS, "device": device}, decisions, tmp_path / f"review_{device}.csv", tmp_path / f"cache_{device}")
    return decisions.read_bytes()


def test_cpu_decisions_match_the_stored_expectation(sample_ingest, tmp_path):
    produced = _run(sample_ingest, "cpu", tmp_path)
    if os.environ.get("HAM_UPDATE_EXPECTED"):
        EXPECTED.parent.mkdir(exist_ok=True)
        EXPECTED.write_bytes(produced)
    lines = produced.decode().splitlines()
    assert len(lines) > 50 and {line.split(",")[6] for line in lines[1:]} == {"model"}
    assert len({line.split(",")[1] for line in lines[1:]}) >= 2  # not a degenerate network
    assert len({line.split(",")[2] for line in lines[1:]}) >= 20
    assert produced == EXPECTED.read_bytes()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path cannot be compared here")
def test_cuda_decisions_match_the_stored_expectation(sample_ingest, tmp_path):
    assert _run(sample_ingest, "cuda", tmp_path) == EXPECTED.read_bytes()
