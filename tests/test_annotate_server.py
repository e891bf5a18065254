"""`ham annotate`'s server without a browser: its writes under a real `dvc add` with the project's cache settings,
the `Host` / `Origin` check of each request, and a connection the client closes early.

With `cache.type hardlink` (the project's `.dvc/config`) the annotations file that `dvc add` tracks is the cache
object's inode; an answer appended in place changed the cache object too, which then no longer hashed to its md5.
The answers here go through the page's HTTP endpoint as the page sends them.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from pipeline.annotate import make_server
from pipeline.annotations import read_annotations
from tests.release_repo import REPO_ROOT, sh

HEADER = "IMAGE,ANNOTATION,TIMESTAMP\n"


def _folder(tmp_path: Path, count: int = 3, size: tuple[int, int] = (40, 30)) -> tuple[Path, list[str]]:
    folder = tmp_path / "images"
    folder.mkdir()
    digests = []
    for number in range(count):
        path = folder / f"image{number}.png"
        if size[0] > 100:  # noise: a large file that compresses badly
            Image.frombytes("RGB", size, hashlib.shake_256(str(number).encode()).digest(size[0] * size[1] * 3)
                            ).save(path)
        else:
            Image.new("RGB", size, (50 * number, 90, 120)).save(path)
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    return folder, digests


@pytest.fixture
def serve():
    servers = []

    def start(annotations: Path, folder: Path):
        server = make_server(annotations, folder=folder, port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def request(port: int, method: str, path: str, body: dict | None = None, host: str | None = None,
            origin: str | None = "same") -> tuple[int, dict | bytes]:
    """One request as the page sends it (Host and Origin of the server itself) unless told otherwise."""
    headers = {"Host": host or f"127.0.0.1:{port}", "Content-Type": "application/json"}
    if origin == "same":
        origin = f"http://127.0.0.1:{port}"
    if origin is not None:
        headers["Origin"] = origin
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=json.dumps(body or {}).encode() if method == "POST" else None,
                           headers=headers)
        response = connection.getresponse()
        data = response.read()
        kind = response.getheader("Content-Type", "")
        return response.status, json.loads(data) if kind.startswith("application/json") else data
    finally:
        connection.close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_answers_leave_dvc_cache_objects_whole(tmp_path, serve):
    """`dvc add` the annotations with the project's .dvc/config (hardlink first): the tracked file is the cache
    object's inode. An answer and an undo through the page's endpoints replace the file; the cache object keeps
    its content and md5, `dvc status` sees the workspace file changed, and `dvc add` / `dvc checkout` work on."""
    repo = tmp_path / "repo"
    repo.mkdir()
    home = {"HOME": str(tmp_path / "home")}
    sh(["git", "init", "-q"], repo, home)
    sh(["dvc", "init", "-q"], repo, home)
    (repo / ".dvc" / "config").write_text((REPO_ROOT / ".dvc" / "config").read_text())
    folder, digests = _folder(tmp_path)
    annotations = repo / "image_types.csv"
    original = f"{HEADER}{digests[0]},c,2018-01-01T00:00:00\n"
    annotations.write_text(original)
    sh(["dvc", "add", "-q", "image_types.csv"], repo, home)
    recorded = (repo / "image_types.csv.dvc").read_text().split("md5: ")[1].split()[0]
    cache_object = repo / ".dvc" / "cache" / "files" / "md5" / recorded[:2] / recorded[2:]
    assert cache_object.stat().st_ino == annotations.stat().st_ino  # the project's setting: one inode
    assert annotations.stat().st_mode & 0o222 == 0  # DVC left it read-only
    assert "up to date" in sh(["dvc", "status"], repo, home).stdout.lower() or \
        sh(["dvc", "status", "--json"], repo, home).stdout.strip() == "{}"

    port = serve(annotations, folder)
    status, answer = request(port, "POST", "/answer", {"image": digests[1], "key": "d"})
    assert status == 200 and answer == {"image": digests[1], "key": "d"}
    assert md5(cache_object) == recorded and cache_object.read_text() == original  # the cache object is whole
    assert annotations.stat().st_ino != cache_object.stat().st_ino
    assert read_annotations(annotations) == {digests[0]: "clinic", digests[1]: "dsc"}
    changed = json.loads(sh(["dvc", "status", "--json"], repo, home).stdout)
    assert changed == {"image_types.csv.dvc": [{"changed outs": {"image_types.csv": "modified"}}]}

    status, undone = request(port, "POST", "/undo")
    assert status == 200 and undone == {"image": digests[1]}
    assert annotations.read_text() == original and md5(cache_object) == recorded
    assert json.loads(sh(["dvc", "status", "--json"], repo, home).stdout) == {}

    # A second answer, tracked again: a new cache object; checking out the first version gives it back whole.
    assert request(port, "POST", "/answer", {"image": digests[2], "key": "m"})[0] == 200
    sh(["dvc", "add", "-q", "image_types.csv"], repo, home)
    second = (repo / "image_types.csv.dvc").read_text().split("md5: ")[1].split()[0]
    assert second != recorded and md5(annotations) == second
    # The file `dvc add` linked again is the new cache object's inode; the next answer must leave it whole too.
    assert request(port, "POST", "/answer", {"image": digests[1], "key": "c"})[0] == 200
    second_object = repo / ".dvc" / "cache" / "files" / "md5" / second[:2] / second[2:]
    assert md5(second_object) == second and md5(cache_object) == recorded
    (repo / "image_types.csv.dvc").write_text((repo / "image_types.csv.dvc").read_text().replace(second, recorded))
    sh(["dvc", "checkout", "-q", "--force", "image_types.csv"], repo, home)
    assert annotations.read_text() == original
    assert "not in cache" not in sh(["dvc", "status"], repo, home).stdout


def test_foreign_host_or_origin_cannot_post(tmp_path, serve):
    """Another web page (another Origin), a DNS-rebinding page (another Host) and a request without an Origin are
    refused with 403 and write nothing; the page's own requests pass."""
    folder, digests = _folder(tmp_path)
    annotations = tmp_path / "answers.csv"
    port = serve(annotations, folder)
    body = {"image": digests[0], "key": "d"}
    for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", "null", f"https://127.0.0.1:{port}", None):
        status, answer = request(port, "POST", "/answer", body, origin=origin)
        assert status == 403 and "Origin" in answer["error"], (origin, answer)
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}"):
        status, answer = request(port, "POST", "/answer", body, host=host)
        assert status == 403 and "Host" in answer["error"], (host, answer)
        assert request(port, "GET", "/state", host=host)[0] == 403  # nor does such a page read the queue
    assert request(port, "POST", "/undo", origin="http://evil.example")[0] == 403
    assert not annotations.exists()

    assert request(port, "POST", "/answer", body)[0] == 200
    assert request(port, "POST", "/answer", {"image": digests[1], "key": "m"}, host=f"localhost:{port}",
                   origin=f"http://localhost:{port}")[0] == 200
    assert read_annotations(annotations) == {digests[0]: "dsc", digests[1]: "macro"}
    assert request(port, "GET", "/state")[1]["answered"] == {digests[0]: "d", digests[1]: "m"}


def test_closed_connections_print_no_traceback(tmp_path, serve, capfd):
    """Clients that hang up mid-image (a reset connection) leave nothing on the console; the server serves on."""
    folder, digests = _folder(tmp_path, count=2, size=(1200, 900))
    assert (folder / "image0.png").stat().st_size > 2_000_000  # more than the socket buffers hold
    port = serve(tmp_path / "answers.csv", folder)
    for _ in range(6):
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(f"GET /image/0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        client.recv(1024)  # the server is sending
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset: the server's next write fails
    time.sleep(1)
    status, data = request(port, "GET", "/image/1")
    assert status == 200 and hashlib.sha256(data).hexdigest() == digests[1]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err
