"""The keys of the per-item caches kept beside the stages' outputs, each shown to invalidate on every part it names
(the near-duplicate hashes are in test_dedupe.py, `ValidRows` in test_validate.py): the filter's prediction cache
(model bytes, the scoring code) and ingest's read cache (the per-image limits). On drawn images, no data needed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.common import read_csv
from pipeline.ingest import Limits, ingest
from tests.test_ingest import config, make_export


@pytest.fixture
def ingested(tmp_path, drawn_images) -> tuple[list[dict], Path]:
    files = {f"img{n}.jpg": path.read_bytes() for n, path in enumerate(drawn_images["dsc"][20:24])}
    make_export(tmp_path / "raw", files, list(files))
    result = ingest([config("vidir_modern", "raw")], tmp_path, tmp_path / "ingest", 100_000_000)
    assert len(result.candidates) == 4 and not result.rejects
    return read_csv(tmp_path / "ingest" / "candidates.csv"), tmp_path / "ingest" / "objects"


def _model(path: Path, seed: int) -> Path:
    from pipeline.filter_model import ImageTypeNet, save_model

    torch.manual_seed(seed)
    save_model(ImageTypeNet(8, 1), path, {"width": 8, "blocks": 1, "image_size": 32,
                                          "types": ["dsc", "macro", "clinic"]})
    return path


def test_prediction_cache_follows_the_model_bytes_and_the_scoring_code(tmp_path, ingested, monkeypatch):
    import pipeline.filter as filter_module

    candidates, objects = ingested
    params, cache = {"device": "cpu", "workers": 0}, tmp_path / "predictions"

    def score(model: Path) -> tuple[dict, dict]:
        counts = {}
        return filter_module.score(candidates, objects, model, params, cache, counts), counts

    first, counts = score(_model(tmp_path / "a.pt", 1))
    assert (counts["scored"], counts["cached"]) == (4, 0)
    again, counts = score(tmp_path / "a.pt")
    assert (counts["scored"], counts["cached"]) == (0, 4) and again == first
    other, counts = score(_model(tmp_path / "b.pt", 2))  # other weights: scored anew, not taken from a's cache
    assert (counts["scored"], counts["cached"]) == (4, 0) and other != first
    _, counts = score(_model(tmp_path / "a-again.pt", 1))  # the same bytes under another name: cached
    assert (counts["scored"], counts["cached"]) == (0, 4)
    real_version = filter_module.code_version
    monkeypatch.setattr(filter_module, "code_version",
                        lambda *modules: "changed" if "pipeline.filter_model" in modules else real_version(*modules))
    _, counts = score(tmp_path / "a.pt")  # the code that decodes and scores changed: scored anew
    assert (counts["scored"], counts["cached"]) == (4, 0)
    assert len(list(cache.glob("*.csv"))) == 3


def test_read_cache_follows_the_limits(tmp_path, drawn_images):
    """Ingest's read cache replays a file's outcome only under the same per-image limits: a lower pixel limit
    reads every file again and rejects them, a higher one takes them again."""
    files = {f"img{n}.jpg": path.read_bytes() for n, path in enumerate(drawn_images["dsc"][24:27])}
    make_export(tmp_path / "raw", files, list(files))
    out = tmp_path / "ingest"
    first = ingest([config("vidir_modern", "raw")], tmp_path, out, 100_000_000)
    again = ingest([config("vidir_modern", "raw")], tmp_path, out, 100_000_000)
    assert (first.units_read, again.units_read, again.units_cached) == (3, 0, 3)
    small = ingest([config("vidir_modern", "raw")], tmp_path, out, Limits(max_pixels=600 * 450 - 1))
    assert (small.units_read, small.units_cached, len(small.candidates)) == (3, 0, 0)
    assert all("over the limit" in r["reason"] for r in small.rejects) and len(small.rejects) == 3
    large = ingest([config("vidir_modern", "raw")], tmp_path, out, 100_000_000)
    assert (large.units_read, len(large.candidates)) == (3, 3)
