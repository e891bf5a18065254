"""The light downstream install: `ham10000-loader` (loader/) goes into a fresh virtual environment, installed as
docs/downstream.md says, from a git repository holding this working tree, and brings Pillow and nothing else (no
python-pptx, openpyxl, matplotlib, dask, jsonschema, DVC or torch, not the pipeline); it loads a split of a release
built by `build_release` (the images of test_release.py's `inputs` fixture) with the labels of its metadata.csv.
With the CPU build of torch added (2.13.0, a wheel on the machine's disk), the guide's PyTorch example runs there.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline.common import read_csv
from tests.doc_blocks import block
from tests.pipeline_repo import copy_repository
from tests.release_repo import sh
from tests.test_release import build, inputs  # noqa: F401  (inputs: the fixture the release is built from)

HEAVY = {"python-pptx", "openpyxl", "matplotlib", "dask", "distributed", "jsonschema", "dvc", "torch", "numpy",
         "ham10000-repo", "click"}
# Loads every item of a split folder with the loader and prints what it got, one JSON list per item.
LOAD_SPLIT = """
import json, sys
from ham10000_loader import CLASSES, ReleaseDataset
dataset = ReleaseDataset(sys.argv[1])
print(json.dumps({"base": [c.__module__ for c in type(dataset).__mro__],
                  "items": [[type(image).__name__, list(image.size), label, row]
                            for image, label, row in (dataset[i] for i in range(len(dataset)))]}))
"""


def fresh_venv(folder: Path, env: dict) -> dict:
    """A new virtual environment (no system site packages) with a current pip; the environment to run in it."""
    sh([sys.executable, "-m", "venv", str(folder)], folder.parent)
    venv_env = {**env, "VIRTUAL_ENV": str(folder), "PATH": f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": ""}
    # Python 3.11's bundled pip (23.2) rejects a `name @ git+file:///...` requirement; users have a newer one.
    sh(["python", "-m", "pip", "install", "--quiet", "--upgrade", "pip"], folder.parent, venv_env)
    return venv_env


def installed(env: dict, cwd: Path) -> set[str]:
    listed = json.loads(sh(["python", "-m", "pip", "list", "--format=json"], cwd, env).stdout)
    return {entry["name"].lower().replace("_", "-") for entry in listed}


def expected_items(split_folder: Path) -> list[list]:
    from pipeline.vocabulary import CLASSES

    items = []
    for row in read_csv(split_folder / "metadata.csv"):
        with Image.open(split_folder / "images" / f"{row['image_id']}.jpg") as image:
            size = list(image.size)
        items.append(["Image", size, CLASSES.index(row["dx"]), {**row, "split": split_folder.name}])
    return items


@pytest.fixture(scope="module")
def light(inputs, tmp_path_factory):  # noqa: F811
    """A release, a git repository of the working tree, and the environment the guide's install commands run in."""
    root = tmp_path_factory.mktemp("light")
    build(inputs, root)
    repo = root / "repo"
    repo.mkdir()
    copy_repository(repo)
    return {"root": root, "release": root / "release", "env": {"REPO": f"file://{repo}"}}


def test_the_loader_installs_alone_and_loads_a_split(light):
    root, release = light["root"], light["release"]
    env = fresh_venv(root / "venv", light["env"])
    result = sh(block("loader-install"), root, env)  # the guide's two lines: install, then count a split
    assert result.stdout.strip().splitlines()[-1] == str(len(read_csv(release / "test" / "metadata.csv")))

    names = installed(env, root)
    assert {"ham10000-loader", "pillow"} <= names and not names & HEAVY, sorted(names)
    assert names - {"pip", "setuptools"} == {"ham10000-loader", "pillow"}, sorted(names)
    missing = sh(["python", "-c", "import pipeline"], root, env, check=False)
    assert missing.returncode == 1 and "No module named 'pipeline'" in missing.stderr

    for split in ("train", "test"):
        loaded = json.loads(sh(["python", "-c", LOAD_SPLIT, str(release / split)], root, env).stdout)
        assert loaded["base"] == ["ham10000_loader", "builtins"]  # no torch: a plain sequence
        assert loaded["items"] == expected_items(release / split)


def test_with_the_cpu_build_of_torch_the_guide_s_example_runs(light):
    """torch 2.13.0 (the CPU build, from the machine's wheel folder, as `make` installs it), then the loader with
    its `torch` extra, which that torch satisfies: the downstream guide's PyTorch example, as written."""
    root = light["root"]
    env = fresh_venv(root / "venv-torch", light["env"])
    sh(["python", "-m", "pip", "install", "--quiet", "torch==2.13.0"], root, env)
    sh(["python", "-m", "pip", "install", "--quiet",
        f"ham10000-loader[torch] @ git+{light['env']['REPO']}#subdirectory=loader"], root, env)
    names = installed(env, root)
    assert "torch" in names and not names & (HEAVY - {"torch"}), sorted(names)

    result = sh(["python", "-c", block("loader-example", fences=("```python",))], root, env)
    test_rows = read_csv(light["release"] / "test" / "metadata.csv")
    with Image.open(light["release"] / "test" / "images" / f"{test_rows[0]['image_id']}.jpg") as image:
        width, height = image.size
    assert f"torch.Size([{min(8, len(test_rows))}, 3, {height}, {width}])" in result.stdout, result.stdout
    loaded = json.loads(sh(["python", "-c", LOAD_SPLIT, str(light["release"] / "test")], root, env).stdout)
    assert "torch.utils.data.dataset" in loaded["base"]  # with torch: a torch Dataset
    assert loaded["items"] == expected_items(light["release"] / "test")


def test_the_loader_s_vocabulary_is_the_pipeline_s():
    """The loader cannot import the pipeline, so it carries the classes (label order) and splits itself."""
    import ham10000_loader
    import pipeline.loader
    from pipeline.vocabulary import CLASSES, SPLITS

    assert ham10000_loader.CLASSES == CLASSES and ham10000_loader.SPLITS == SPLITS
    assert pipeline.loader.ReleaseDataset is ham10000_loader.ReleaseDataset
    assert pipeline.loader.to_tensor is ham10000_loader.to_tensor
