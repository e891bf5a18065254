"""docs/s3-dask.md's server blocks, run as written: SeaweedFS started from nothing with its bucket made, and a Dask
scheduler and workers of which every listening port (scheduler, dashboards, workers, nannies) is on 127.0.0.1.

Each block starts its servers in the background and returns; the test then looks at the real processes (psutil)
and stops them by their process group. Skipped with the reason where `weed` or dask is missing.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.doc_blocks import block
from tests.release_repo import sh
from tests.seaweed import CREDENTIALS, MISSING, WEED, free_ports

psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.slow


def _start(code: str, cwd: Path, env: dict) -> subprocess.Popen:
    """The block in bash, in a session of its own (so its background servers can be stopped together)."""
    full = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    shell = subprocess.Popen(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=full, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return shell


def _session(pgid: int) -> list:
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == pgid:
                found.append(process)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def _listening(processes) -> set[tuple[str, int]]:
    addresses = set()
    for process in processes:
        try:
            for connection in process.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN:
                    addresses.add((connection.laddr.ip, connection.laddr.port))
        except psutil.Error:
            pass
    return addresses


def _stop(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _free_with_grpc(count: int) -> list[int]:
    """Free ports of 127.0.0.1 whose gRPC companions (port + 10000, as `weed server` takes them) are free too."""
    import random
    import socket

    chosen = []
    while len(chosen) < count:
        port = random.randrange(20000, 55000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        if port not in chosen:
            chosen.append(port)
    return chosen


def test_seaweedfs_from_nothing_serves_the_bucket(tmp_path):
    if WEED is None:
        pytest.skip(MISSING)
    master, volume, filer, s3 = _free_with_grpc(4)
    env = {"HOME": str(tmp_path / "home"), "MASTER_PORT": str(master), "VOLUME_PORT": str(volume),
           "FILER_PORT": str(filer), "S3_PORT": str(s3)}
    (tmp_path / "home").mkdir()
    shell = _start(block("seaweed-start") + '\necho "S3_URL=$S3_URL S3_ENDPOINT=$S3_ENDPOINT"\n', tmp_path, env)
    try:
        output, _ = shell.communicate(timeout=150)
        assert shell.returncode == 0, output
        assert "created bucket ham10000" in output
        assert f"S3_URL=s3://ham10000/store S3_ENDPOINT=http://127.0.0.1:{s3}" in output
        assert (tmp_path / "home" / "seaweedfs" / "weed.log").is_file()
        listening = _listening(_session(shell.pid))
        assert (("127.0.0.1", s3)) in listening and {ip for ip, _ in listening} == {"127.0.0.1"}, listening

        # DVC pushes to it as docs/s3-dask.md then does: a real object into the bucket, listed back.
        repo = tmp_path / "repo"
        repo.mkdir()
        s3_env = {**env, **CREDENTIALS}
        sh(["git", "init", "-q"], repo, s3_env)
        sh(["dvc", "init", "-q"], repo, s3_env)
        (repo / "data.txt").write_text("one object\n")
        sh(["dvc", "add", "-q", "data.txt"], repo, s3_env)
        sh(["dvc", "remote", "add", "-d", "shared", "s3://ham10000/store"], repo, s3_env)
        sh(["dvc", "remote", "modify", "shared", "endpointurl", f"http://127.0.0.1:{s3}"], repo, s3_env)
        sh(["dvc", "push", "-q"], repo, s3_env)
        status = sh(["dvc", "status", "--cloud"], repo, s3_env)
        assert "in sync" in status.stdout + status.stderr
    finally:
        _stop(shell.pid)


def test_dask_cluster_listens_on_loopback_only(tmp_path):
    pytest.importorskip("distributed", reason="dask[distributed] is not installed (the distributed extra)")
    from distributed import Client

    scheduler, dashboard = free_ports(2)
    shell = _start(block("dask-loopback"), tmp_path,
                   {"SCHEDULER_PORT": str(scheduler), "DASHBOARD_PORT": str(dashboard)})
    pgid = shell.pid
    try:
        output, _ = shell.communicate(timeout=30)
        assert shell.returncode == 0, output
        with Client(f"tcp://127.0.0.1:{scheduler}", timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
            workers = client.scheduler_info()["workers"]
        assert len(workers) == 2 and all(address.startswith("tcp://127.0.0.1:") for address in workers)
        processes = _session(pgid)
        # the scheduler, two nannies and two workers (each nanny's worker is its child)
        assert len(processes) >= 5, [p.cmdline() for p in processes]
        deadline = time.monotonic() + 10
        while True:
            listening = _listening(processes)
            if len(listening) >= 8 or time.monotonic() > deadline:  # scheduler + dashboard, 2 x (nanny, worker, dash)
                break
            time.sleep(0.5)
        assert ("127.0.0.1", scheduler) in listening and ("127.0.0.1", dashboard) in listening, listening
        assert len(listening) >= 8, listening
        assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
        assert (tmp_path / "scheduler.log").is_file() and (tmp_path / "workers.log").is_file()
    finally:
        _stop(pgid)
