"""`ham diff REV_A REV_B` in a real git + DVC repository: two tagged releases built by `build_release` from real
images, one with an image added, one removed, one relabelled, one with other metadata changed; a third revision
moves a lesion to the other split. Read from git and the DVC cache, then from the remote once the cache is gone."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.common import read_csv, write_csv
from pipeline.metadata import METADATA_COLUMNS
from pipeline.release import build_release
from tests.pipeline_repo import run

pytestmark = pytest.mark.real_data

PARAMS = {"isic_attribution": "ViDIR Group", "isic_license": "CC-BY-NC", "attribution": "Tschandl et al. 2018",
          "license": "CC BY-NC 4.0", "version": "1"}
IMAGES_COLUMNS = ("image_id", "lesion_id", "candidate_id", "file", "sha256", "split_hint")


def stage_inputs(folder: Path, rows: list[dict], ham_data: Path, split_of: dict[str, str]) -> None:
    """metadata.csv, images.csv, splits.csv and standardised images for `rows` in `folder` (the stage's inputs)."""
    (folder / "std").mkdir(parents=True, exist_ok=True)
    for row in rows:
        shutil.copyfile(ham_data / "ham10000" / "images" / f"{row['image_id']}.jpg", folder / "std" / f"{row['image_id']}.jpg")
    write_csv(folder / "metadata.csv", sorted(rows, key=lambda r: (r["lesion_id"], r["image_id"])), METADATA_COLUMNS)
    write_csv(folder / "images.csv", ({"image_id": r["image_id"], "lesion_id": r["lesion_id"],
                                       "file": f"{r['image_id']}.jpg"} for r in rows), IMAGES_COLUMNS)
    write_csv(folder / "splits.csv", ({"lesion_id": l, "split": s} for l, s in sorted(split_of.items())),
              ("lesion_id", "split"))


@pytest.fixture(scope="module")
def repo(ham_data, tmp_path_factory):
    """A git + DVC repository whose `release` stage output is committed at tags v1, v2 and at a branch 'moved'."""
    root = tmp_path_factory.mktemp("diff") / "repo"
    root.mkdir()
    truth = read_csv(ham_data / "ham10000" / "metadata" / "HAM10000_metadata_with_dataset_DERIVED.csv")
    wanted = {r["image_id"] for r in read_csv(ham_data / "ham10000" / "images_manifest.csv")}
    rows = sorted((r for r in truth if r["image_id"] in wanted), key=lambda r: r["image_id"])[:60]
    lesions = sorted({r["lesion_id"] for r in rows})
    split_of = {l: ("test" if i % 4 == 0 else "train") for i, l in enumerate(lesions)}
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "remote", "add", "-d", "store", str(root.parent / "storage")], root)
    (root / "build.py").write_text(
        "import sys\nfrom pathlib import Path\nfrom pipeline.release import build_release\n"
        f"build_release(Path('in/metadata.csv'), Path('in/images.csv'), Path('in/splits.csv'), Path('in/std'), "
        f"{PARAMS!r}, Path('release'), Path('summary.json'))\n")
    (root / "dvc.yaml").write_text("stages:\n  release:\n    cmd: python build.py\n    deps: [in, build.py]\n"
                                   "    outs: [release]\n    metrics: [{summary.json: {cache: false}}]\n")

    def commit(tag: str, version_rows: list[dict], splits: dict) -> None:
        if (root / "in").exists():
            shutil.rmtree(root / "in")
        stage_inputs(root / "in", version_rows, ham_data, splits)
        run(["dvc", "repro", "-q"], root)
        run(["git", "add", "-A"], root)
        run(["git", "commit", "-q", "-m", tag], root)

    commit("v1", rows[:-1], split_of)
    run(["git", "tag", "v1"], root)
    changed = [dict(r) for r in rows[1:]]  # rows[0] removed, rows[-1] added
    relabelled, aged = changed[3], changed[7]
    relabelled["dx"], relabelled["dx_type"] = ("mel" if relabelled["dx"] != "mel" else "nv"), "histo"
    aged["age"] = "85.0" if aged["age"] != "85.0" else "80.0"
    commit("v2", changed, split_of)
    run(["git", "tag", "v2"], root)
    moved_lesion = next(l for l in lesions if split_of[l] == "test" and l in {r["lesion_id"] for r in changed})
    commit("moved", changed, {**split_of, moved_lesion: "train"})
    run(["git", "tag", "moved"], root)
    run(["dvc", "push", "-q", "--all-commits"], root)
    return {"root": root, "rows": rows, "relabelled": relabelled, "aged": aged, "moved": moved_lesion,
            "split_of": split_of}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_diff_between_tags(repo):
    root, rows = repo["root"], repo["rows"]
    result = invoke("diff", "v1", "v2", "--repo", str(root), "--json")
    assert result.exit_code == 0, result.output
    diff = json.loads(result.output)
    assert diff["added"] == [rows[-1]["image_id"]] and diff["removed"] == [rows[0]["image_id"]]
    (relabel,) = diff["relabelled"]
    original = next(r for r in rows if r["image_id"] == repo["relabelled"]["image_id"])
    assert relabel["image_id"] == original["image_id"]
    assert relabel["dx"] == [original["dx"], repo["relabelled"]["dx"]]
    if original["dx_type"] != "histo":
        assert relabel["dx_type"] == [original["dx_type"], "histo"]
    (meta,) = diff["metadata"]
    assert meta["image_id"] == repo["aged"]["image_id"] and meta["age"][1] == repo["aged"]["age"]
    assert diff["split_moves"] == [] and diff["content"] == []
    changes = {(c["split"], c["dx"]): c["change"] for c in diff["counts"]}
    assert sum(changes.values()) == 0  # one added, one removed
    assert diff["images"] == {"a": len(rows) - 1, "b": len(rows) - 1}

    text = invoke("diff", "v1", "v2", "--repo", str(root))
    assert "relabelled: 1" in text.output and f"dx {original['dx']} -> {repo['relabelled']['dx']}" in text.output
    assert "lesions that moved split: none" in text.output
    # CI: relabels fail the check when asked to, split moves do not happen here.
    assert invoke("diff", "v1", "v2", "--repo", str(root), "--fail-on", "split-move").exit_code == 0
    failed = invoke("diff", "v1", "v2", "--repo", str(root), "--fail-on", "split-move,relabel")
    assert failed.exit_code == 1 and "1 relabelled (--fail-on)" in failed.output


def test_split_move_is_reported_and_fails_ci(repo):
    result = invoke("diff", "v2", "moved", "--repo", str(repo["root"]), "--fail-on", "split-move")
    assert result.exit_code == 1
    assert f"{repo['moved']}  test -> train" in result.output and "lesions that moved split: 1" in result.output


def test_bad_revision_and_kind_are_one_line(repo):
    runner = CliRunner()
    result = runner.invoke(main, ["diff", "v1", "v9", "--repo", str(repo["root"])])
    assert result.exit_code == 1 and "v9: not a git revision or tag" in result.output
    result = runner.invoke(main, ["diff", "v1", "v2", "--repo", str(repo["root"]), "--fail-on", "typo"])
    assert result.exit_code == 1 and "unknown kind 'typo'" in result.output


def test_diff_reads_the_remote_when_the_cache_is_gone(repo, tmp_path):
    """A fresh clone has no DVC cache: the manifests and metadata come from the remote, images are not fetched."""
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo["root"]), str(clone)], tmp_path)
    result = invoke("diff", "v1", "v2", "--repo", str(clone), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["relabelled"][0]["image_id"] == repo["relabelled"]["image_id"]
    assert not (clone / "release").exists()  # nothing checked out
