"""Put a file at a release path without writing its bytes again: `place(src, dst)`.

`place` makes `dst` a hard link to `src` (one inode: no data written, no space used). Where a hard link cannot
be made (`src` and `dst` on different file systems, a file system without links, a link count at its limit) it
copies, unless `dst` already holds the same bytes. A `dst` that is already a link to `src` is left as it is.
It returns how the file got there: "linked", "copied" or "kept".

A hard-linked file must never be edited in place: writing into `dst` would change `src` (and, with DVC's
`cache.type` set to hardlink, the DVC cache object behind both). The pipeline only ever replaces files (write to
a temporary name, then rename, see `common.atomic_write_bytes`) or deletes them, which leaves the other names
of the inode untouched; DVC itself makes linked workspace files read-only, and `dvc unprotect PATH` turns a
path back into a private copy before a hand edit.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

# A hard link is impossible here, not a failure: fall back to copying.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}


def _same_inode(src: Path, dst: Path) -> bool:
    try:
        a, b = src.stat(), dst.stat()
    except FileNotFoundError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _same_bytes(src: Path, dst: Path) -> bool:
    if not dst.is_file() or dst.is_symlink() or src.stat().st_size != dst.stat().st_size:
        return False
    with open(src, "rb") as left, open(dst, "rb") as right:
        while True:
            chunk = left.read(1 << 20)
            if chunk != right.read(1 << 20):
                return False
            if not chunk:
                return True


def place(src: Path, dst: Path) -> str:
    """Make `dst` hold `src`'s bytes: "kept" (already did), "linked" (hard link) or "copied" (fallback)."""
    try:
        os.link(src, dst)  # the common case, a new release file: one system call (str or Path, unconverted)
        return "linked"
    except FileExistsError:
        src, dst = Path(src), Path(dst)
        if _same_inode(src, dst) and not dst.is_symlink():
            return "kept"
    except FileNotFoundError:
        src, dst = Path(src), Path(dst)
        if not src.exists():
            raise
        dst.parent.mkdir(parents=True, exist_ok=True)
        return place(src, dst)
    except OSError as error:
        if error.errno not in _NO_LINK:
            raise
        src, dst = Path(src), Path(dst)
    # dst holds something else, or no link can be made: link or copy under a temporary name, then rename over
    # dst, so a killed run never leaves a half-written file and an old dst (maybe a link) is never written through.
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
            how = "linked"
        except OSError as error:
            if error.errno not in _NO_LINK:
                raise
            if _same_bytes(src, dst):  # a copy made by an earlier run: reading is cheaper than writing
                return "kept"
            shutil.copyfile(src, tmp)
            how = "copied"
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return how
