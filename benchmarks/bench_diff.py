"""Benchmark: `ham diff` between two tagged releases of full HAM10000 size (10015 train + 1512 test images).

Builds, in a temporary folder, a git + DVC repository whose `release` stage writes a release in the real layout
from the real metadata ($HAM_DATA, default ../shared/data), with small stand-in image files (the diff never reads
images), tags v1, then v2 with 100 images added, 20 removed, 50 relabelled and 30 with another age, and pushes
both to a folder remote. Measures `ham diff v1 v2 --json` with the DVC cache at hand, and in a fresh clone that
has only git (manifests and metadata read from the remote through dvc.api), and checks the counts it reports.

    python -m benchmarks.bench_diff
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HAM_DATA", REPO.parent / "shared" / "data"))

BUILD = '''
import csv, json, sys
from collections import defaultdict
from pathlib import Path
from pipeline.common import sha256_file, write_csv
from pipeline.release import MANIFEST_COLUMNS, fill_hashes
from pipeline.metadata import METADATA_COLUMNS
rows = list(csv.DictReader(open("rows.csv")))
out = Path("release")
by_split = defaultdict(list)
for row in rows:
    by_split[row.pop("split")].append(row)
top = []
for split, split_rows in sorted(by_split.items()):
    entries = []
    for row in split_rows:
        path = out / split / "images" / (row["image_id"] + ".jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(("stand-in " + row["image_id"]).encode())
        entries.append({"path": "images/" + row["image_id"] + ".jpg", "split": split, "image_id": row["image_id"],
                        "lesion_id": row["lesion_id"], "dx": row["dx"]})
    write_csv(out / split / "metadata.csv", split_rows, METADATA_COLUMNS)
    entries.append({"path": "metadata.csv", "split": split})
    fill_hashes(out / split, entries)
    write_csv(out / split / "manifest.csv", entries, MANIFEST_COLUMNS)
    top += [{**e, "path": split + "/" + e["path"]} for e in entries]
top = sorted(top, key=lambda e: e["path"])
write_csv(out / "manifest.csv", top, MANIFEST_COLUMNS)
'''


def sh(command: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.org", GIT_COMMITTER_NAME="bench",
               GIT_COMMITTER_EMAIL="bench@example.org")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)}: {result.stderr.strip()}")
    return result.stdout


def write_rows(path: Path, rows: list[dict]) -> None:
    from pipeline.common import write_csv
    from pipeline.metadata import METADATA_COLUMNS

    write_csv(path, rows, (*METADATA_COLUMNS, "split"))


def main() -> None:
    from pipeline.common import read_csv

    metadata = DATA / "ham10000" / "metadata"
    train = read_csv(metadata / "HAM10000_metadata_with_dataset_DERIVED.csv")
    truth = read_csv(metadata / "ISIC2018_Task3_Test_GroundTruth.csv")
    classes = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
    test = [{"lesion_id": f"HAM_9{n:06d}", "image_id": r["image"], "dx": next(c.lower() for c in classes
                                                                               if float(r[c]) == 1.0),
             "dx_type": "histo", "age": "", "sex": "unknown", "localization": "unknown", "dataset": "unknown"}
            for n, r in enumerate(truth)]
    v1 = [{**r, "split": "train"} for r in train[:-100]] + [{**r, "split": "test"} for r in test]
    v2 = [dict(r) for r in v1[20:]] + [{**r, "split": "train"} for r in train[-100:]]
    for row in v2[:50]:
        row["dx"] = "mel" if row["dx"] != "mel" else "nv"
    for row in v2[50:80]:
        row["age"] = "85.0" if row["age"] != "85.0" else "80.0"

    with tempfile.TemporaryDirectory(prefix="bench-diff-") as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        sh(["git", "init", "-q"], root)
        sh(["dvc", "init", "-q"], root)
        sh(["dvc", "remote", "add", "-d", "store", str(Path(tmp) / "storage")], root)
        (root / "build.py").write_text(BUILD)
        (root / "dvc.yaml").write_text("stages:\n  release:\n    cmd: python build.py\n    deps: [rows.csv, build.py]\n"
                                       "    outs: [release]\n")
        for tag, rows in (("v1", v1), ("v2", v2)):
            write_rows(root / "rows.csv", rows)
            started = time.perf_counter()
            sh(["dvc", "repro", "-q"], root)
            print(f"build + dvc repro {tag}: {len(rows)} images, {time.perf_counter() - started:.1f} s")
            sh(["git", "add", "-A"], root)
            sh(["git", "commit", "-q", "-m", tag], root)
            sh(["git", "tag", tag], root)
        sh(["dvc", "push", "-q", "--all-tags"], root)
        clone = Path(tmp) / "clone"
        sh(["git", "clone", "-q", str(root), str(clone)], Path(tmp))
        for label, where in (("with the DVC cache", root), ("fresh clone, from the remote", clone)):
            started = time.perf_counter()
            result = json.loads(sh(["ham", "diff", "v1", "v2", "--json"], where))
            seconds = time.perf_counter() - started
            counts = {k: len(result[k]) for k in ("added", "removed", "relabelled", "metadata", "split_moves")}
            assert counts == {"added": 100, "removed": 20, "relabelled": 50, "metadata": 30, "split_moves": 0}, counts
            print(f"ham diff v1 v2 ({label}): {seconds:.2f} s for {result['images']['a']} -> "
                  f"{result['images']['b']} images; {counts}")


if __name__ == "__main__":
    main()
