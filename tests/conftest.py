"""Shared test fixtures.

The real HAM10000 / DermNet test material lives outside the project (never copied into it). Tests find it through
the HAM_DATA environment variable, defaulting to ../shared/data beside the repository, and are skipped with a
visible reason where it is absent. A test that uses it (the `ham_data` fixture, directly or through another
fixture) is marked `real_data` automatically, so `pytest -m "not real_data"` runs exactly the tests that need none.

Tests that need *some* images of the right kind rather than particular real ones (readers, ingest) take
`some_images`: the real images where $HAM_DATA has them, else images drawn by the demo's sample generator. The
demo's whole synthetic sample (`pipeline/sample.py`, the four routes) is the `sample_raw` fixture.
"""
import csv
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

from pipeline.pinned_cpu import pin_environment  # noqa: E402

pin_environment()  # as every `ham` process does: tests that train in-process get the stage's arithmetic


def ham_data_dir() -> Path:
    return Path(os.environ.get("HAM_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def pytest_configure(config):
    config.addinivalue_line("markers", "real_data: needs the real test data in $HAM_DATA (../shared/data)")
    config.addinivalue_line("markers", "slow: runs the whole DVC pipeline")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "ham_data" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("real_data"):
            item.add_marker(pytest.mark.real_data)


@pytest.fixture(scope="session")
def ham_data() -> Path:
    path = ham_data_dir()
    if not (path / "ham10000").is_dir():
        pytest.skip(f"real test data not found at {path} (set HAM_DATA)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


class DrawnImages(Sequence):
    """JPEGs drawn by pipeline.sample at the HAM10000 size (600x450), each on first use and from its own seed, so
    a test gets the same bytes whichever images other tests asked for first. Every file's bytes differ. Kinds:
    `dsc`, `clinic`, and `film` (dermatoscopic pictures filling the frame, as on the scanned slides)."""

    def __init__(self, folder: Path, kind: str, count: int):
        self.folder, self.kind, self.count = folder, kind, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not -self.count <= index < self.count:
            raise IndexError(index)
        index %= self.count
        path = self.folder / self.kind / f"{self.kind}_{index:04d}.jpg"
        if not path.is_file():
            import io

            import numpy as np
            from PIL import Image

            from pipeline.sample import SEED, draw

            rng = np.random.default_rng([SEED, ("dsc", "clinic", "film").index(self.kind), index])
            classes = ("nv", "mel", "bkl", "bcc", "akiec", "df", "vasc")
            image = draw(rng, "dsc" if self.kind == "film" else self.kind, classes[index % len(classes)],
                         field_stop=self.kind != "film").resize((600, 450), Image.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buffer.getvalue())
        return path


class SomeImages:
    """Dermatoscopic images (`dsc`) and clinical photographs (`clinic`) for tests that need some images of the
    right kind: the real HAM10000 and DermNet images where $HAM_DATA has them (`real` is True, `data` is that
    folder), else `DrawnImages`."""

    def __init__(self, data: Path | None, dsc: Sequence[Path], clinic: Sequence[Path], manifest: list[dict],
                 film: Sequence[Path] = (), files: Path | None = None):
        self.data, self.real, self.dsc, self.clinic, self._manifest = data, data is not None, dsc, clinic, manifest
        self._film, self._files = film, files

    @property
    def manifest(self) -> list[dict]:
        """Rows of HAM10000's images_manifest.csv (image_id, lesion_id, dx, dx_type, dataset, sha256, ...): the real
        490 images, or made-up rows over small noise JPEGs for tests that need image files with lesions and classes
        but not their pixels."""
        if not self._manifest and not self.real:
            self._manifest = _made_up_manifest(self._files)
        return self._manifest

    def file(self, image_id: str) -> Path:
        """The image file of a manifest row."""
        return (self.data / "ham10000" / "images" if self.real else self._files) / f"{image_id}.jpg"

    def of(self, dataset: str, **match: str) -> Sequence[Path]:
        """Dermatoscopic images of one HAM10000 collection (rows of the real manifest matching `match`); drawn
        images belong to no collection: `vienna_dias` gets the drawn film pictures, any other name all the
        drawn dermatoscopic images."""
        if not self.real:
            return self._film if dataset == "vienna_dias" else self.dsc
        rows = [r for r in self._manifest
                if r["dataset"] == dataset and all(r[key] == value for key, value in match.items())]
        return [self.data / "ham10000" / "images" / f"{row['image_id']}.jpg" for row in rows]


def _made_up_manifest(folder: Path, count: int = 320) -> list[dict]:
    import hashlib
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(20180814)
    classes = ("nv", "bkl", "mel", "nv", "bcc", "akiec", "nv", "df", "vasc")
    datasets = ("rosendahl", "vidir_modern", "vidir_molemax", "vienna_dias")
    sizes = (1, 1, 2, 1, 3, 1, 2)  # a cycle of 7 against 4 datasets: every collection gets every size
    rows, lesion = [], 0
    folder.mkdir(parents=True, exist_ok=True)
    while len(rows) < count:
        dx, dataset = classes[lesion % len(classes)], datasets[lesion % len(datasets)]
        dx_type = "follow_up" if dx == "nv" and dataset == "vidir_molemax" else "histo"
        for _ in range(sizes[lesion % len(sizes)]):
            image_id = f"ISIC_{24000 + len(rows):07d}"
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8), "RGB").save(buffer, format="JPEG")
            (folder / f"{image_id}.jpg").write_bytes(buffer.getvalue())
            rows.append({"image_id": image_id, "lesion_id": f"HAM_{lesion:07d}", "dx": dx, "dx_type": dx_type,
                         "dataset": dataset, "width": "60", "height": "45", "bytes": str(len(buffer.getvalue())),
                         "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()})
        lesion += 1
    return rows


@pytest.fixture(scope="session")
def some_images(tmp_path_factory) -> SomeImages:
    path = ham_data_dir()
    if (path / "ham10000").is_dir():
        with open(path / "ham10000" / "images_manifest.csv", newline="") as handle:
            manifest = list(csv.DictReader(handle))
        return SomeImages(path, sorted((path / "ham10000" / "images").glob("*.jpg")),
                          sorted((path / "clinical" / "dermnet").glob("*.jpg")), manifest)
    folder = tmp_path_factory.mktemp("drawn")
    return SomeImages(None, DrawnImages(folder, "dsc", 400), DrawnImages(folder, "clinic", 200), [],
                      DrawnImages(folder, "film", 50), folder / "manifest")


@pytest.fixture(scope="session")
def drawn_images(tmp_path_factory) -> dict:
    """Drawn images whatever $HAM_DATA holds: {'dsc': DrawnImages, 'clinic': DrawnImages}."""
    folder = tmp_path_factory.mktemp("drawn-always")
    return {"dsc": DrawnImages(folder, "dsc", 60), "clinic": DrawnImages(folder, "clinic", 60)}


@pytest.fixture(scope="session")
def sample_raw(tmp_path_factory):
    """The demo's synthetic sample written once: (folder, {source name: pipeline.sample.Written})."""
    from pipeline.sample import write_sources

    root = tmp_path_factory.mktemp("sample")
    return root, write_sources(root)
