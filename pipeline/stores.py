"""Content-addressed object stores: a local folder (the default) or an `s3://bucket/prefix` URL (fsspec / s3fs).

A store holds immutable objects named by content (ingest's `<sha256>.<ext>`, standardise's
`<candidate>-<recipe>.jpg`), so a write is idempotent: a worker that dies mid-write leaves nothing (a local write
goes through a temporary file and a rename; an S3 PUT is atomic) and a task run twice writes the same bytes.
What lists each object's hash (ingest's `objects/index.csv`, standardise's `SHA256SUMS` and `index.csv`) stays
in the local, DVC-tracked folder whatever the store, so a release stays pinned while its images live in a bucket.

`open_store(location, options)` gives a `LocalStore` for a path (plain `os`/`open` calls: the local code path is
as fast as before) and an `S3Store` for an `s3://` URL. `options` are s3fs's (`endpoint_url`, `key`, `secret`...);
where `endpoint_url` is not given, `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` from the environment is used, and
credentials come from the usual AWS variables or files. A task sent to another machine carries the location and
options (strings), never an open store, and opens it there (`open_store` keeps one per process).
s3fs is in the `distributed` extra; an `s3://` location without it is one clear error naming the extra.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import IO

from .common import PipelineError, atomic_write_bytes

EXTRA = 'pip install -e ".[distributed]"'


def is_remote(location) -> bool:
    return isinstance(location, str) and "://" in location


def s3_options(endpoint_url: str | None = None) -> dict:
    """s3fs options: the endpoint from params, else from the environment (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


class LocalStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.location = str(self.folder)

    def path(self, name: str) -> Path:
        return self.folder / name

    def exists(self, name: str) -> bool:
        return (self.folder / name).exists()

    def open(self, name: str) -> IO[bytes]:
        return open(self.folder / name, "rb")

    def read_bytes(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()

    def write_bytes(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.folder / name, data)

    def names(self) -> set[str]:
        return set(os.listdir(self.folder)) if self.folder.is_dir() else set()

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def url(self, name: str) -> str:
        return str(self.folder / name)


class S3Store:
    def __init__(self, url: str, options: dict):
        try:
            import s3fs
        except ImportError:
            raise PipelineError(f"store {url}: an s3:// store needs s3fs, in the `distributed` extra ({EXTRA})") \
                from None
        self.location = url.rstrip("/")
        self.prefix = self.location.split("://", 1)[1]
        self.fs = s3fs.S3FileSystem(**options)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.exists(self._key(name))

    def open(self, name: str) -> IO[bytes]:
        return self.fs.open(self._key(name), "rb")

    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self._key(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self._key(name), data)  # one PUT: the object appears whole or not at all

    def names(self) -> set[str]:
        try:
            listed = self.fs.ls(self.prefix, detail=False, refresh=True)
        except FileNotFoundError:
            return set()
        return {path.rsplit("/", 1)[1] for path in listed}

    def remove(self, name: str) -> None:
        try:
            self.fs.rm_file(self._key(name))
        except FileNotFoundError:
            pass

    def url(self, name: str) -> str:
        return f"{self.location}/{name}"


@lru_cache(maxsize=16)
def _open(location: str, options: tuple, pid: int) -> LocalStore | S3Store:
    if not is_remote(location):
        return LocalStore(Path(location))
    scheme = location.split("://", 1)[0]
    if scheme != "s3":
        raise PipelineError(f"store {location}: only local folders and s3:// URLs are supported")
    return S3Store(location, dict(options))


def open_store(location, options: dict | None = None) -> LocalStore | S3Store:
    """The store at a local path or an s3:// URL (one instance per location and options in each process)."""
    # Keyed by the process too: an S3 client made before a fork (a DataLoader's or a pool's workers) is not reused.
    return _open(str(location), tuple(sorted((options or {}).items())), os.getpid())


def open_url(url: str, options: dict | None = None) -> IO[bytes]:
    """One object by its full path or URL, for readers that take a file name (`Image.open`)."""
    if not is_remote(url):
        return open(url, "rb")
    location, name = url.rsplit("/", 1)
    return open_store(location, options or s3_options()).open(name)


def materialise(location, names, folder: Path, options: dict | None = None) -> Path:
    """Copy the named objects of a remote store into a local folder (what the head node needs in a release);
    objects already there with the same size are kept. For a local store, the folder itself."""
    store = open_store(location, options)
    if isinstance(store, LocalStore):
        return store.folder
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(set(names)):
        target = folder / name
        if not target.exists() or target.stat().st_size != store.fs.size(store._key(name)):
            atomic_write_bytes(target, store.read_bytes(name))
    return folder
