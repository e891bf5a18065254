"""Fault trials: `dvc repro` killed with SIGKILL at seeded points of every stage and of DVC's lock update, then
recovered with a plain `dvc repro`; the release must come out byte-identical to an uninterrupted run.

    python -m benchmarks.fault_trials --trials 20 --seed 1 [--images 490] [--scale 2] [--workdir DIR]

Set-up (in a throw-away copy of the repository, under --workdir or a temporary folder): the synthetic sample plus
one more export source made of the real HAM10000 images in $HAM_DATA (default ../shared/data), upscaled
`--scale` times so that ingest, the filter and standardise each run for seconds (`filter.epochs` cut to
`--epochs`: training length is not under test); every source `dvc add`ed and
committed, as a maintainer would. A first, uninterrupted `dvc repro` gives the reference: the sha256 of every file
under release/, dvc.lock, registry/ and metrics/, and each stage's duration.

Each trial starts from the state before that run (interim outputs, models, release and DVC's run cache removed;
dvc.lock, registry/ and metrics/ as committed), starts `dvc repro` in its own process group and kills the group
with SIGKILL at the trial's point:
- `run` points of standardise and release are aimed by the stage's own progress: the kill is sent once the
  stage's output folder (data/interim/standardised/images, release/) holds a seeded share of the files it held
  at the end of the reference run, and only while the stage's `ham` command is running, so it lands inside the
  command and not in DVC's saving of its outputs after it;
- `run` points of the other stages land a seeded share of the way into the stage (its reference duration from
  DVC's 'Running stage' line to its 'Updating lock file' line);
- `lock` points a seeded 0-200 ms after DVC announces it is updating dvc.lock for that stage (outputs being
  committed to the cache and the lock file written).
Where each kill landed is read from the process group just before the signal: the `ham` command then running
(none: DVC's own work), with how far in (files in the output folder, or seconds) and the last line printed.
Then the user's action runs: `make repro`'s lock repair, `integrity.repair_dvc_locks` (the first step of `ham
repair`: DVC's `.dvc/tmp/rwlock` or `dvc.lock` left half-written by the kill is removed or restored from git) and
`dvc repro`; the trial passes when it succeeds, the fingerprint equals the reference, `dvc status` is clean and
every file under release/ matches the manifest (`ham verify`). dvc.lock is compared as data: a kill in DVC's rewrite of it can cut it at the
end of a stage's entry (still readable, so not repaired); DVC then writes the lost entries back at the end, the
same entries in another order, reported as `lock_reordered` with the stages the lock held after the kill.
The first 16 trials cover the 8 stages x {run, lock}; later ones aim inside standardise, release, ingest, filter,
train_filter, metadata, split, collect_annotated in turn (`--targets ingest:lock,...`: only those kinds).
Prints one line per trial and a summary; `--json FILE` writes the outcomes.
"""
from __future__ import annotations

import argparse
import csv
import difflib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.integrity import repair_dvc_locks  # noqa: E402
from pipeline.verify import verify  # noqa: E402
from tests.pipeline_repo import copy_repository, run  # noqa: E402

STAGES = ("ingest", "collect_annotated", "train_filter", "filter", "standardise", "metadata", "split", "release")
# Stages whose `run` kills are aimed by the files in their output folder (see the module docstring).
AIMED = {"standardise": "data/interim/standardised/images", "release": "release"}
EXTRA_RUNS = ("standardise", "release", "ingest", "filter", "train_filter", "metadata", "split", "collect_annotated")
HAM_COMMAND = re.compile(r"(?:^|[/ ])ham ([a-z][a-z-]*)")
SAMPLE_RAW = [f"data/raw/sample/{name}" for name in
              ("rosendahl", "vidir_modern", "vidir_molemax", "vienna_dias", "image_types.csv")]
REAL = "data/raw/real/vidir_modern_real"


def environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def build_repo(workdir: Path, data: Path, images: int, scale: int, epochs: int) -> Path:
    repo = copy_repository(workdir / "repo")
    run(["ham", "sample", "data/raw/sample"], repo)
    folder = repo / REAL
    (folder / "images").mkdir(parents=True)
    manifest = list(csv.DictReader(open(data / "ham10000" / "images_manifest.csv", newline="")))[:images]
    with open(folder / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "lesion", "dx", "dx_type"])
        for row in manifest:
            with Image.open(data / "ham10000" / "images" / f"{row['image_id']}.jpg") as image:
                image.resize((image.width * scale, image.height * scale), Image.BICUBIC).save(
                    folder / "images" / f"{row['image_id']}.jpg", quality=92)
            writer.writerow([f"images/{row['image_id']}.jpg", row["lesion_id"], row["dx"], row["dx_type"]])
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["filter"]["epochs"] = epochs  # the network's training is not what is under test; keep it short
    params["ingest"]["sources"].append({
        "name": "vidir_modern_real", "kind": "export", "path": REAL, "dataset": "vidir_modern",
        "options": {"columns": {"file": "file", "lesion_key": "lesion", "dx": "dx", "dx_type": "dx_type"}}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())
    stages["stages"]["ingest"]["deps"].insert(0, REAL)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    run(["dvc", "add", *SAMPLE_RAW, REAL], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "fault-trial sources"], repo)
    return repo


def fingerprint(repo: Path) -> dict[str, str]:
    files = [p for folder in ("release", "registry", "metrics") for p in sorted((repo / folder).rglob("*"))
             if p.is_file()] + [repo / "dvc.lock"]
    return {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def lock_stages(repo: Path) -> list[str] | str:
    """The stage entries of dvc.lock in file order ('unreadable' when DVC could not read it)."""
    try:
        return list((yaml.safe_load((repo / "dvc.lock").read_text()) or {}).get("stages", {}))
    except (OSError, yaml.YAMLError, AttributeError):
        return "unreadable"


def same_lock(expected: str, repo: Path) -> bool:
    """dvc.lock equal as data: the same entry for every stage, whatever their order in the file."""
    try:
        return yaml.safe_load(expected) == yaml.safe_load((repo / "dvc.lock").read_text())
    except (OSError, yaml.YAMLError):
        return False


def reset(repo: Path) -> None:
    for folder in ("data/interim", "models", "release", ".dvc/cache/runs"):
        shutil.rmtree(repo / folder, ignore_errors=True)
    # HEAD, not the index: DVC autostages dvc.lock (core.autostage)
    run(["git", "checkout", "-q", "HEAD", "--", "dvc.lock", "registry", "metrics"], repo)


def running_commands(pgid: int) -> list[str]:
    """The `ham` subcommands running in process group `pgid` (read from /proc; [] where there is none)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                if int(handle.read().rsplit(")", 1)[1].split()[2]) != pgid:
                    continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        match = HAM_COMMAND.search(cmdline)
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def watched_repro(repo: Path, kill_at=None, aim=None) -> dict:
    """Run `dvc repro`, timestamping DVC's 'Running stage' and 'Updating lock file' lines. `kill_at(event,
    stage)` returns a delay in seconds after which the process group gets SIGKILL (None: not at this event).
    `aim=(stage, folder, files)`: SIGKILL once `folder` holds `files` files while the stage's `ham` command runs.
    `killed` records where the kill landed: the `ham` commands running just before it and how far in."""
    started = time.monotonic()
    process = subprocess.Popen(["dvc", "repro"], cwd=repo, env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    events, lines, killed, timer = [], [], {}, None
    stage = None
    stage_started = {}
    lock = threading.Lock()

    def kill(where, progress=None):
        with lock:
            if process.poll() is not None or killed:
                return
            inside = running_commands(process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            at = time.monotonic() - started
            killed.update(where)
            killed["at"] = round(at, 3)
            killed["inside"] = inside
            killed["stage_at"] = stage
            killed["into_stage_s"] = round(at - stage_started.get(stage, at), 3)
            killed["progress"] = progress
            killed["last_line"] = lines[-1].strip() if lines else ""

    def watch(target_stage, folder, files):
        command = target_stage.replace("_", "-")
        while process.poll() is None and not killed:
            if stage == target_stage:
                count = count_files(folder)
                if count >= files and command in running_commands(process.pid):
                    kill({"event": "run", "stage": target_stage}, f"{count_files(folder)}/{aim_total} files")
                    return
            time.sleep(0.003)

    watcher = None
    if aim:
        aim_stage, aim_folder, aim_files, aim_total = aim
        watcher = threading.Thread(target=watch, args=(aim_stage, repo / aim_folder, aim_files), daemon=True)
        watcher.start()
    for line in process.stdout:
        lines.append(line)
        now = time.monotonic() - started
        event = None
        if line.startswith("Running stage '"):
            stage, event = line.split("'")[1], "run"
            stage_started[stage] = now
        elif line.startswith("Updating lock file"):
            event = "lock"
        if event:
            events.append((event, stage, now))
            delay = kill_at(event, stage) if kill_at and timer is None else None
            if delay is not None:
                timer = threading.Timer(delay, kill, [{"event": event, "stage": stage, "delay": round(delay, 3)}])
                timer.start()
    code = process.wait()
    if timer:
        timer.cancel()
    if watcher:
        watcher.join()
    return {"code": code, "events": events, "killed": killed, "seconds": time.monotonic() - started,
            "output": "".join(lines)}


def landing(killed: dict) -> str:
    """Where a kill landed, in words: inside a `ham` command (and how far in), or in DVC's own work."""
    if not killed:
        return "not killed (the run had finished)"
    where = (f"inside `ham {' '.join(killed['inside'])}`" if killed["inside"]
             else "in DVC, no `ham` command running")
    far = killed["progress"] or f"{killed['into_stage_s']:.2f} s after 'Running stage'"
    return f"{where}; stage {killed['stage_at']}, {far}; last line: {killed['last_line'][:80]!r}"


def durations(events: list, total: float) -> dict[str, float]:
    """Seconds from each stage's 'Running stage' to its 'Updating lock file' line."""
    out, start = {}, {}
    for event, stage, at in events:
        if event == "run":
            start[stage] = at
        elif stage in start and stage not in out:
            out[stage] = at - start[stage]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--images", type=int, default=490, help="real images in the extra source")
    parser.add_argument("--scale", type=int, default=2, help="upscale factor of the real images")
    parser.add_argument("--epochs", type=int, default=3, help="filter.epochs in the trial repository")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--targets", default=None, help="comma-separated kinds (e.g. ingest:lock) to cycle over "
                        "instead of all of them")
    args = parser.parse_args()
    data = Path(os.environ.get("HAM_DATA", REPO.parent / "shared" / "data"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fault-trials-"))
    workdir.mkdir(parents=True, exist_ok=True)

    repo = build_repo(workdir, data, args.images, args.scale, args.epochs)
    reference = watched_repro(repo)
    if reference["code"]:
        print(reference["output"])
        return 1
    expected = fingerprint(repo)
    expected_lock = (repo / "dvc.lock").read_text()
    seconds = durations(reference["events"], reference["seconds"])
    print(f"reference run: {reference['seconds']:.1f} s; " +
          ", ".join(f"{s} {seconds.get(s, 0):.1f} s" for s in STAGES), flush=True)

    # Files each aimed stage's output folder holds at the end of the reference run.
    totals = {stage: count_files(repo / folder) for stage, folder in AIMED.items()}
    kinds = [(stage, phase) for phase in ("run", "lock") for stage in STAGES]
    kinds += [(stage, "run") for stage in EXTRA_RUNS]
    if args.targets:
        kinds = [tuple(target.split(":")) for target in args.targets.split(",")]
    outcomes = []
    for trial in range(args.trials):
        rng = random.Random(args.seed * 1000 + trial)
        stage, phase = kinds[trial % len(kinds)]
        share = rng.uniform(0.05, 0.95)
        delay = share * seconds.get(stage, 0.1) if phase == "run" else rng.uniform(0.0, 0.2)
        aim = None
        if phase == "run" and stage in AIMED:
            aim = (stage, AIMED[stage], max(1, round(share * totals[stage])), totals[stage])
        reset(repo)

        def kill_at(event, at_stage, stage=stage, phase=phase, delay=delay):
            return delay if (event, at_stage) == (phase, stage) and not aim else None

        attempt = watched_repro(repo, kill_at, aim)
        after_kill = lock_stages(repo)
        repaired = repair_dvc_locks(repo)  # what `make repro` (`ham repair`) does first
        recovery = watched_repro(repo)
        status = run(["dvc", "status"], repo, check=False)
        got = fingerprint(repo) if recovery["code"] == 0 else {}
        differing = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        # dvc.lock with the same entries in another order (DVC re-added entries a kill had cut off at the end)
        reordered = "dvc.lock" in differing and same_lock(expected_lock, repo)
        if reordered:
            differing.remove("dvc.lock")
        problems = ([str(p) for p in verify(repo / "release").problems] if recovery["code"] == 0
                    else ["recovery failed"])
        outcome = {
            "trial": trial, "target": f"{stage}:{phase}",
            "aim": f"{aim[2]}/{aim[3]} files in {aim[1]}" if aim else f"{delay:.3f} s",
            "killed": bool(attempt["killed"]), "killed_at_s": attempt["killed"].get("at"),
            "inside": attempt["killed"].get("inside"), "landed": landing(attempt["killed"]),
            "attempt_exit": attempt["code"],
            "repaired": repaired, "recovery_exit": recovery["code"],
            "recovered_stages": [s for e, s, _ in recovery["events"] if e == "run"],
            "identical": recovery["code"] == 0 and not differing, "differing": differing[:5],
            "status_clean": "up to date" in status.stdout, "manifest_ok": not problems,
            "lock_stages_after_kill": after_kill, "lock_reordered": reordered,
        }
        if recovery["code"]:
            outcome["recovery_tail"] = recovery["output"][-600:]
        if "dvc.lock" in differing or reordered:
            outcome["dvc_lock_diff"] = "".join(difflib.unified_diff(
                expected_lock.splitlines(True), (repo / "dvc.lock").read_text().splitlines(True), n=1))[:3000]
        outcome["passed"] = outcome["identical"] and outcome["status_clean"] and outcome["manifest_ok"]
        if reordered:
            outcome["dvc_lock_diff"] = outcome["dvc_lock_diff"][:200]
        outcomes.append(outcome)
        print(json.dumps(outcome), flush=True)

    passed = sum(o["passed"] for o in outcomes)
    reordered = sum(o["lock_reordered"] for o in outcomes)
    killed = sum(o["killed"] for o in outcomes)
    inside = {}
    for o in outcomes:
        for command in o["inside"] or ["(DVC)"] if o["killed"] else []:
            inside[command] = inside.get(command, 0) + 1
    print(f"{passed}/{len(outcomes)} trials recovered to a byte-identical release ({killed} killed mid-run; "
          f"targets: {', '.join(sorted({o['target'] for o in outcomes}))}); kills landed inside: "
          + ", ".join(f"{c} {n}" for c, n in sorted(inside.items())) + f"; {reordered} with dvc.lock's stages in "
          "another order (same entries)")
    if args.json:
        args.json.write_text(json.dumps({"reference_seconds": seconds, "reference_files": totals,
                                         "outcomes": outcomes}, indent=2))
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
