"""A `Dataset` over a release of the HAM10000 dataset repository: a release folder, one split folder, or a git
revision of the repository (a URL or a local path) read through `dvc.api.DVCFileSystem`, which fetches only the
files asked for.

Each item is `(image, label, row)`: the image (a PIL RGB image, or whatever `transform` makes of it), the label
(index of `dx` in CLASSES, or what `target_transform` makes of it) and the metadata row (a dict of strings:
lesion_id, image_id, dx, dx_type, age, sex, localization, dataset, split). Items are ordered by split, then as in
the split's metadata.csv.

    from ham10000_loader import ReleaseDataset, to_tensor
    train = ReleaseDataset("release", split="train", transform=to_tensor)
    test = ReleaseDataset.from_git("https://example.org/ham10000-repo", rev="v1.1", split="test")

This module is the distribution `ham10000-loader` (loader/pyproject.toml): it needs Pillow and nothing else, so a
downstream user installs it without the pipeline. With PyTorch installed, ReleaseDataset is a
`torch.utils.data.Dataset` and `to_tensor` makes tensors; without it, the same class is a plain sequence. DVC is
imported only by `from_git`. `pipeline.loader` re-exports it for the maintainer's checkout.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable

from PIL import Image

try:  # optional: PyTorch's base class adds only `+` (ConcatDataset); a DataLoader takes any sequence
    from torch.utils.data import Dataset
except ImportError:  # pragma: no cover - exercised by tests/test_loader_light.py in a venv without torch
    Dataset = object

# The release's vocabulary the loader needs (pipeline/vocabulary.py defines it for the pipeline; this distribution
# cannot import the pipeline, and tests/test_loader_light.py checks the two are equal). The label of an item is
# its dx's index here: the order is part of the loader's contract.
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
SPLITS = ("train", "val", "test")


def to_tensor(image: Image.Image):
    """PIL image -> float tensor C x H x W in [0, 1] (torchvision's ToTensor without torchvision or numpy)."""
    import torch

    if image.mode != "RGB":
        image = image.convert("RGB")
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255.0


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
