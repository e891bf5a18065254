"""Tagged releases in a real git + DVC repository (built by `build_release` from real images, pushed to a folder
remote): v2 has one image added, one removed, one relabelled and one with other metadata changed; tag `moved`
moves a lesion to the other split.

`ham diff` reads them from git and the DVC cache, then from the remote once the cache is gone; the PyTorch
`ReleaseDataset` loads a release folder, one split, and a tag of the repository through dvc.api; the downstream
guide's five-line example runs."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.common import read_csv, sha256_file
from tests.doc_blocks import block
from tests.release_repo import commit_release, init_release_repo, sample_rows, sh

pytestmark = pytest.mark.real_data

@pytest.fixture(scope="module")
def repo(ham_data, tmp_path_factory):
    """A git + DVC repository whose `release` stage output is committed at tags v1, v2 and `moved`."""
    root = tmp_path_factory.mktemp("diff") / "repo"
    rows = sample_rows(ham_data)
    lesions = sorted({r["lesion_id"] for r in rows})
    split_of = {l: ("test" if i % 4 == 0 else "train") for i, l in enumerate(lesions)}
    init_release_repo(root)
    sh(["dvc", "remote", "add", "-d", "store", str(root.parent / "storage")], root)
    commit_release(root, rows[:-1], split_of, ham_data, "v1", tag="v1")
    changed = [dict(r) for r in rows[1:]]  # rows[0] removed, rows[-1] added
    relabelled, aged = changed[3], changed[7]
    relabelled["dx"], relabelled["dx_type"] = ("mel" if relabelled["dx"] != "mel" else "nv"), "histo"
    aged["age"] = "85.0" if aged["age"] != "85.0" else "80.0"
    commit_release(root, changed, split_of, ham_data, "v2", tag="v2")
    moved_lesion = next(l for l in lesions if split_of[l] == "test" and l in {r["lesion_id"] for r in changed})
    commit_release(root, changed, {**split_of, moved_lesion: "train"}, ham_data, "moved", tag="moved")
    sh(["dvc", "push", "-q", "--all-commits"], root)
    return {"root": root, "rows": rows, "relabelled": relabelled, "aged": aged, "moved": moved_lesion,
            "split_of": split_of}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_diff_between_tags(repo):
    root, rows = repo["root"], repo["rows"]
    result = invoke("diff", "v1", "v2", "--repo", str(root), "--json")
    assert result.exit_code == 0, result.output
    diff = json.loads(result.output)
    split_of = repo["split_of"]
    assert diff["added"] == [{"image_id": rows[-1]["image_id"], "split": split_of[rows[-1]["lesion_id"]],
                              "dx": rows[-1]["dx"], "source": rows[-1]["dataset"]}]
    # this repository has no metadata stage (no excluded.csv): the removed image's reason says what is known
    assert diff["removed"] == [{"image_id": rows[0]["image_id"], "split": split_of[rows[0]["lesion_id"]],
                                "dx": rows[0]["dx"], "source": rows[0]["dataset"],
                                "reason": "not among B's candidates (its source or file is gone)"}]
    (relabel,) = diff["relabelled"]
    original = next(r for r in rows if r["image_id"] == repo["relabelled"]["image_id"])
    assert relabel["image_id"] == original["image_id"]
    assert relabel["split"] == split_of[original["lesion_id"]] and relabel["source"] == original["dataset"]
    before, after = relabel["isic_diagnosis"]  # the ISIC hierarchy's node moves with the class
    assert before and after and before != after
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
    assert f"isic_diagnosis {before} -> {after}" in text.output
    assert f"{rows[0]['image_id']}  {split_of[rows[0]['lesion_id']]}  {rows[0]['dx']}" in text.output
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
    sh(["git", "clone", "-q", str(repo["root"]), str(clone)], tmp_path)
    result = invoke("diff", "v1", "v2", "--repo", str(clone), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["relabelled"][0]["image_id"] == repo["relabelled"]["image_id"]
    assert not (clone / "release").exists()  # nothing checked out


def test_diff_without_the_remote_hints_a_dvc_command_that_works(repo, tmp_path):
    """Off the maintainer's machine the remote may be out of reach: the one-line error's hint is a DVC 3 command
    (run here as printed, once the remote answers again), after which `ham diff` reads the cache."""
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo["root"]), str(clone)], tmp_path)
    sh(["dvc", "remote", "modify", "--local", "store", "url", str(tmp_path / "gone")], clone)
    result = CliRunner().invoke(main, ["diff", "v1", "v2", "--repo", str(clone)])
    assert result.exit_code == 1 and "v1: cannot read release/" in result.output, result.output
    assert "--rev" not in result.output  # DVC 3's fetch has none ("unrecognized arguments: --rev")
    hint = result.output.split("fetch that release into the cache where its remote is reachable: `")[1].split("`")[0]
    assert hint == "git checkout v1 && dvc fetch release && git checkout -"
    (clone / ".dvc" / "config.local").unlink()  # the remote answers again
    head = sh(["git", "rev-parse", "HEAD"], clone).stdout
    sh(hint, clone)
    assert sh(["git", "rev-parse", "HEAD"], clone).stdout == head  # back where it was
    sh(["dvc", "remote", "modify", "--local", "store", "url", str(tmp_path / "gone")], clone)  # out of reach again
    result = CliRunner().invoke(main, ["diff", "v1", "v1", "--repo", str(clone), "--json"])
    assert result.exit_code == 0, result.output  # v1 now comes from the cache alone
    assert json.loads(result.output)["images"] == {"a": len(repo["rows"]) - 1, "b": len(repo["rows"]) - 1}


def test_summary_of_a_split_folder_as_dvc_get_gives_it(repo, tmp_path):
    """`dvc get REPO release/test` gives one split folder (no release.json): `ham summary` counts it."""
    got = tmp_path / "ham10000-test"
    shutil.copytree(repo["root"] / "release" / "test", got)
    rows = read_csv(got / "metadata.csv")
    result = invoke("summary", str(got))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"release: {len(rows)} images of {len({r['lesion_id'] for r in rows})} lesions"
    classes = sorted({r["dx"] for r in rows})
    assert lines[1].split()[3:] == classes
    assert lines[2].split() == ["test", str(len(rows)), str(len({r["lesion_id"] for r in rows})),
                                *(str(sum(r["dx"] == c for r in rows)) for c in classes)]
    assert "or one split folder of a release" in CliRunner().invoke(main, ["summary", str(tmp_path / "no")]).output


def test_dataset_over_a_release_folder_and_one_split(repo):
    import torch
    from torch.utils.data import DataLoader

    from pipeline.loader import CLASSES, ReleaseDataset, to_tensor

    release = repo["root"] / "release"  # the workspace holds the last built release
    everything = ReleaseDataset(release)
    test = ReleaseDataset(release / "test")
    train = ReleaseDataset(release, split="train")
    listed = sum(bool(r["image_id"]) for r in read_csv(release / "manifest.csv"))
    assert len(everything) == len(train) + len(test) == listed
    image, label, row = test[0]
    expected = read_csv(release / "test" / "metadata.csv")[0]
    assert row == {**expected, "split": "test"} and label == CLASSES.index(expected["dx"])
    assert image.mode == "RGB" and image.size == (600, 450)
    assert {r["split"] for _, _, r in train} == {"train"}
    batch = next(iter(DataLoader(ReleaseDataset(release / "test", transform=to_tensor), batch_size=4)))
    images, labels, rows = batch
    assert images.shape == (4, 3, 450, 600) and images.dtype == torch.float32 and float(images.max()) <= 1.0
    assert labels.tolist() == [CLASSES.index(dx) for dx in rows["dx"]]
    with pytest.raises(FileNotFoundError, match="no split"):
        ReleaseDataset(repo["root"] / ".dvc")


def test_dataset_from_a_git_tag_fetches_only_what_it_reads(repo, tmp_path):
    from pipeline.loader import ReleaseDataset

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo["root"]), str(clone)], tmp_path)
    test = ReleaseDataset.from_git(str(clone), rev="v1", split="test")
    v1_test = [r for r in repo["rows"][:-1] if repo["split_of"][r["lesion_id"]] == "test"]
    assert sorted(r["image_id"] for r in test.rows) == sorted(r["image_id"] for r in v1_test)
    image, label, row = test[len(test) - 1]
    assert image.size == (600, 450) and row["split"] == "test"
    assert not (clone / "release").exists()


def test_readme_example_runs(repo, repo_root, tmp_path):
    code = block("loader-example", fences=("```python",))  # docs/downstream.md's example
    assert len(code.strip().splitlines()) <= 5
    shutil.copytree(repo["root"] / "release", tmp_path / "release")
    result = sh([sys.executable, "-c", code], tmp_path)
    assert "torch.Size([8, 3, 450, 600])" in result.stdout, result.stdout


def test_tag_checks_before_tagging(repo, tmp_path):
    """`ham tag` in a copy of the repository: refuses while something is uncommitted, the version differs from
    the built one or a file differs from the manifest; then tags with the manifest's sha256 in the message."""
    import os

    copy = tmp_path / "copy"
    shutil.copytree(repo["root"], copy, symlinks=True)
    (copy / "params.yaml").write_text("release:\n  version: '3'\n")
    cwd = os.getcwd()
    os.chdir(copy)
    try:
        runner = CliRunner()
        result = runner.invoke(main, ["tag"])
        assert result.exit_code == 1 and "built as version '1', params.yaml says '3'" in result.output
        (copy / "params.yaml").write_text("release:\n  version: '1'\n")
        result = runner.invoke(main, ["tag"])
        assert result.exit_code == 1 and "tag v1 exists already" in result.output
        sh(["git", "tag", "-d", "v1"], copy)
        result = runner.invoke(main, ["tag"])
        assert result.exit_code == 1 and "uncommitted changes" in result.output and "params.yaml" in result.output
        sh(["git", "add", "params.yaml"], copy)
        sh(["git", "commit", "-q", "-m", "version"], copy)
        assert "all checks pass" in runner.invoke(main, ["tag", "--dry-run"]).output
        result = runner.invoke(main, ["tag"])
        assert result.exit_code == 0 and result.output.startswith("tagged v1 at"), result.output
        message = sh(["git", "tag", "-l", "--format=%(contents)", "v1"], copy).stdout
        assert f"manifest.csv sha256 {sha256_file(copy / 'release' / 'manifest.csv')}" in message
        images = sorted((copy / "release" / "test" / "images").iterdir())
        images[0].write_bytes(b"altered")
        sh(["git", "tag", "-d", "v1"], copy)
        result = runner.invoke(main, ["tag"])
        assert result.exit_code == 1 and "differ from the manifest" in result.output
    finally:
        os.chdir(cwd)


def test_compare_names_why_an_image_left_and_its_isic_change():
    from pipeline.diff import compare, format_diff

    a = {"ISIC_1": {"split": "train", "dx": "nv", "dx_type": "follow_up", "dataset": "vidir_molemax",
                    "lesion_id": "HAM_1", "sha256": "x"},
         "ISIC_2": {"split": "test", "dx": "bkl", "dx_type": "histo", "dataset": "rosendahl", "lesion_id": "HAM_2",
                    "sha256": "y"}}
    b = {"ISIC_2": {**a["ISIC_2"], "dx": "mel"}}
    result = compare(a, b, {"ISIC_1": "metadata: diagnosis 'no signs of residual tumor' -> exclude"},
                     ({"ISIC_2": "Benign:Benign epidermal proliferations"}, {"ISIC_2": "Malignant:Melanoma"}))
    assert result["removed"] == [{"image_id": "ISIC_1", "split": "train", "dx": "nv", "source": "vidir_molemax",
                                  "reason": "metadata: diagnosis 'no signs of residual tumor' -> exclude"}]
    assert result["relabelled"] == [{"image_id": "ISIC_2", "split": "test", "source": "rosendahl", "dx": ["bkl", "mel"],
                                     "isic_diagnosis": ["Benign:Benign epidermal proliferations",
                                                        "Malignant:Melanoma"]}]
    text = format_diff({**result, "a": {"rev": "v1", "commit": "1" * 40}, "b": {"rev": "v2", "commit": "2" * 40}})
    assert "ISIC_1  train  nv  vidir_molemax  (metadata: diagnosis 'no signs of residual tumor' -> exclude)" in text
    assert "isic_diagnosis Benign:Benign epidermal proliferations -> Malignant:Melanoma" in text
