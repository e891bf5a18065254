"""A PyTorch `Dataset` over a release: a release folder, one split folder, or a git revision of a repository
(a URL or a local path) read through `dvc.api.DVCFileSystem`, which fetches only the files asked for.

Each item is `(image, label, row)`: the image (a PIL RGB image, or whatever `transform` makes of it), the label
(index of `dx` in CLASSES, or what `target_transform` makes of it) and the metadata row (a dict of strings:
lesion_id, image_id, dx, dx_type, age, sex, localization, dataset, split). Items are ordered by split, then as in
the split's metadata.csv.

    from pipeline.loader import ReleaseDataset, to_tensor
    train = ReleaseDataset("release", split="train", transform=to_tensor)
    test = ReleaseDataset.from_git("https://example.org/ham10000-repo", rev="v1.1", split="test")
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable

from PIL import Image
from torch.utils.data import Dataset

from .vocabulary import CLASSES, SPLITS


def to_tensor(image: Image.Image):
    """PIL image -> float tensor C x H x W in [0, 1] (torchvision's ToTensor without torchvision)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)


class _LocalFiles:
    def __init__(self, root: Path):
        self.root = Path(root)

    def exists(self, path: str) -> bool:
        return (self.root / path).exists()

    def read_bytes(self, path: str) -> bytes:
        return (self.root / path).read_bytes()


class _DvcFiles:
    """Files of a repository at one revision; images are fetched from the DVC remote one by one, on demand."""

    def __init__(self, repo: str, rev: str | None, root: str):
        from dvc.api import DVCFileSystem

        self.fs = DVCFileSystem(repo, rev=rev)
        self.root = root.strip("/")

    def exists(self, path: str) -> bool:
        return self.fs.exists(f"{self.root}/{path}")

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open(f"{self.root}/{path}", "rb") as handle:
            return handle.read()


class ReleaseDataset(Dataset):
    def __init__(self, root: str | Path = "release", split: str | None = None,
                 transform: Callable | None = None, target_transform: Callable | None = None, _files=None):
        """`root`: a release folder (all its splits, or `split`) or one split folder (holding metadata.csv)."""
        self.files = _files or _LocalFiles(Path(root))
        self.transform, self.target_transform = transform, target_transform
        if self.files.exists("metadata.csv"):  # a split folder
            self.rows = self._rows("", split or Path(str(root)).name)
        else:
            wanted = [split] if split else [s for s in SPLITS if self.files.exists(f"{s}/metadata.csv")]
            if not wanted or not all(self.files.exists(f"{s}/metadata.csv") for s in wanted):
                raise FileNotFoundError(f"{root}: no {'split ' + split if split else 'split'} with a metadata.csv "
                                        f"(is this a release folder?)")
            self.rows = [row for s in wanted for row in self._rows(f"{s}/", s)]

    @classmethod
    def from_git(cls, repo: str, rev: str | None = None, split: str | None = None, path: str = "release",
                 **options) -> "ReleaseDataset":
        """The release at git revision `rev` (a tag, branch or commit) of `repo` (a URL or a local path)."""
        return cls(path, split=split, _files=_DvcFiles(repo, rev, path), **options)

    def _rows(self, prefix: str, split: str) -> list[dict]:
        text = self.files.read_bytes(f"{prefix}metadata.csv").decode("utf-8")
        return [{**row, "split": split, "_path": f"{prefix}images/{row['image_id']}.jpg"}
                for row in csv.DictReader(io.StringIO(text))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = dict(self.rows[index])
        path = row.pop("_path")
        with Image.open(io.BytesIO(self.files.read_bytes(path))) as image:
            image = image.convert("RGB")
        label = CLASSES.index(row["dx"])
        if self.transform:
            image = self.transform(image)
        if self.target_transform:
            label = self.target_transform(label)
        return image, label, row
