"""Benchmark: the whole pipeline at HAM10000 scale, each figure beside its baseline, into bench/results.json.

Builds the scale fixture (`benchmarks/fixture.py`: the real metadata of 10015 + 1512 images paired with distinct
derived images, as raw sources of every kind) into a copy of this repository in a temporary folder, adds it the
way a maintainer does (`dvc add` per source, params entries, `dvc.yaml` deps), and measures, through the `ham`
and `dvc` command lines (the standardise and filter speeds are timed inside their process, so start-up does not
blur them):

  full_build_s, full_build_peak_rss_mb  `dvc repro` from nothing; per-stage wall time and peak memory
  noop_repro_s                           `dvc repro` again, nothing changed
  incremental_fraction                   `dvc repro` after a new folder of 1 % more images, / the full build
  dvc_plain_incremental_fraction         the same 1 % through a plain DVC stage that standardises a whole folder
                                         (benchmarks/plain_standardise.py), / its own full run
  standardise_speedup_vs_mogrify         the authors' mogrify / the standardise recipe, on the same files (the
                                         largest kept objects: the multi-megapixel routes)
  filter_cpu_images_per_s                filter inference over the fixture's candidates, timed in the scoring
  filter_gpu_images_per_s                process; on CUDA where a GPU is present
  diff_10k_s                             `ham diff` of the releases before and after the increment (when the
                                         command exists)
  pull_vs_cp_ratio                       `dvc pull release` from the local remote in a fresh clone / `cp -r`
  peak_rss_1k_mb, peak_rss_10k_mb        peak memory of a full build at the 1k and 10k fixtures, and the ratio

Memory is the sum of the proportional set sizes (PSS) of the whole process tree (dvc, the shell, the `ham` stage
command and its worker processes), polled every 0.1 s with psutil: a page shared by several processes (the torch
and numpy pages a forked DataLoader worker shares with its parent) counts once in all, where a sum of resident set
sizes would count it once per process. Stage times are
taken from `dvc repro`'s "Running stage" lines (so they include DVC's hashing and caching of the stage's outputs),
and the `ham` command's own lifetime is recorded beside them.

    python -m benchmarks.bench_scale            # 1k and 10k fixtures (every figure)
    python -m benchmarks.bench_scale --quick    # 1k fixture only (`make bench QUICK=1`)
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

from benchmarks.fixture import DATA, build_fixture
from benchmarks.results import RESULTS, figure, machine, missing, record, table

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OFFICIAL_KEYS = ["ham10000", "vidir_modern", "vienna_dias", "increment"]  # sources whose lesion keys are HAM_ IDs
MOGRIFY = ["-strip", "-rotate", "90<", "-resize", "600x450^", "-gravity", "center", "-crop", "600x450+0+0",
           "-density", "72", "-units", "PixelsPerInch", "-format", "jpg", "-quality", "100"]
FIGURES = ["full_build_s", "full_build_peak_rss_mb", "noop_repro_s", "incremental_fraction",
           "dvc_plain_incremental_fraction", "standardise_speedup_vs_mogrify", "filter_cpu_images_per_s",
           "filter_gpu_images_per_s", "diff_10k_s", "pull_vs_cp_ratio", "peak_rss_1k_mb", "peak_rss_10k_mb",
           "peak_rss_growth_1k_to_10k"]


def environment(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GIT_AUTHOR_NAME", "bench")
    env.setdefault("GIT_AUTHOR_EMAIL", "bench@example.org")
    env.setdefault("GIT_COMMITTER_NAME", "bench")
    env.setdefault("GIT_COMMITTER_EMAIL", "bench@example.org")
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(extra or {})
    return env


def sh(command: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=environment(env), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(command)} (in {cwd}) exited {result.returncode}:\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def timed(command: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> tuple[float, object]:
    start = time.perf_counter()
    result = sh(command, cwd, check, env)
    return time.perf_counter() - start, result


def _memory(process: psutil.Process) -> int:
    """A process's proportional set size (PSS: each shared page split between the processes that map it, so the
    forked DataLoader and pool workers that share the parent's torch and numpy pages do not count them again);
    its RSS where PSS cannot be read."""
    try:
        return process.memory_full_info().pss
    except (psutil.AccessDenied, AttributeError):
        return process.memory_info().rss


class Run:
    """One command measured: wall time, peak RSS of its process tree, per-stage times and peaks."""

    def __init__(self, command: list[str], cwd: Path, env: dict | None = None):
        self.command = command
        self.peak = 0
        self.stage_starts: list[tuple[str, float]] = []
        self.commands: dict[str, dict] = {}  # ham subcommand -> its start, last seen, peak RSS of its process
        self.lines: list[str] = []
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=environment(env), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        done = threading.Event()
        poller = threading.Thread(target=self._poll, args=(process.pid, start, done), daemon=True)
        poller.start()
        for line in process.stdout:
            self.lines.append(line)
            found = re.match(r"Running stage '([^']+)'", line)
            if found:
                self.stage_starts.append((found.group(1), time.perf_counter() - start))
        self.returncode = process.wait()
        self.wall = time.perf_counter() - start
        done.set()
        poller.join()
        if self.returncode != 0:
            raise SystemExit(f"bench: {' '.join(command)} (in {cwd}) exited {self.returncode}:\n"
                             + "".join(self.lines[-40:]))

    def _poll(self, pid: int, start: float, done: threading.Event) -> None:
        try:
            root = psutil.Process(pid)
            # The processes' start times are read against this one's, started at `start` on our clock: psutil
            # dates them from the boot time, which Linux gives in whole seconds, so only their differences are exact.
            root_started = root.create_time()
        except psutil.NoSuchProcess:
            return
        names: dict[int, str | None] = {}
        while not done.is_set():
            total = 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            now = time.perf_counter() - start
            for process in tree:
                try:
                    rss = _memory(process)
                    if names.get(process.pid) is None:  # again while unnamed: `sh -c` execs the command
                        names[process.pid] = ham_command(process.cmdline())
                except psutil.Error:
                    continue
                total += rss
                name = names[process.pid]
                if name:
                    if name not in self.commands:
                        # its start from the kernel's record, not when a poll first saw it: the Python start-up
                        # before the first poll (0.1 s apart, longer while PSS is read) is the command's time
                        try:
                            began = max(0.0, min(now, process.create_time() - root_started))
                        except psutil.Error:
                            began = now
                        self.commands[name] = {"first": began, "last": now, "peak": 0}
                    seen = self.commands[name]
                    seen["last"] = now
                    seen["peak"] = max(seen["peak"], rss)
            self.peak = max(self.peak, total)
            done.wait(0.1)

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 1e6, 1)

    def stages(self) -> dict[str, dict]:
        """stage -> wall seconds (dvc's, from its "Running stage" line to the next), the ham command's seconds
        and peak RSS in MB."""
        out = {}
        bounds = [t for _, t in self.stage_starts[1:]] + [self.wall]
        for (name, begin), end in zip(self.stage_starts, bounds):
            seen = self.commands.get(name.replace("_", "-"), {})
            out[name] = {"wall_s": round(end - begin, 1),
                         "command_s": round(seen["last"] - seen["first"], 1) if seen else None,
                         "peak_rss_mb": round(seen["peak"] / 1e6, 1) if seen else None}
        return out


def ham_command(cmdline: list[str]) -> str | None:
    for index, part in enumerate(cmdline[:-1]):
        if part == "ham" or part.endswith("/ham"):
            return cmdline[index + 1]
    return None


def stage_summary(stages: dict[str, dict], key: str = "wall_s", top: int = 3) -> str:
    ranked = sorted(((v[key] or 0, k) for k, v in stages.items()), reverse=True)[:top]
    unit = "s" if key == "wall_s" else " MB"
    return ", ".join(f"{name} {value:g}{unit}" for value, name in ranked)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def make_repo(fixture, work: Path) -> tuple[Path, float]:
    """A copy of this repository with the fixture's sources added as a maintainer does; returns it and the time
    of the `dvc add` step."""
    repo = work / "repo"
    listed = sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO).stdout.split("\0")
    skip = re.compile(r"^(data/raw/|registry/.*\.csv$|metrics/.*\.json$|dvc\.lock$|bench/)")
    for name in filter(None, listed):
        if skip.match(name) or not (REPO / name).is_file():
            continue
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    raw = repo / "data/raw/bench"
    shutil.copytree(fixture.root, raw, copy_function=os.link,
                    ignore=lambda folder, names: [n for n in names if n in ("increment", "fixture.json")]
                    if Path(folder) == fixture.root else [])
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["sources"] = [{**s, "path": f"data/raw/bench/{s['path']}"} for s in fixture.sources]
    params["filter"]["annotations"] = "data/raw/bench/image_types.csv"
    params["metadata"]["official_lesion_ids_from"] = OFFICIAL_KEYS
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())
    deps = [d for d in stages["stages"]["ingest"]["deps"] if not str(d).startswith("data/raw/")]
    stages["stages"]["ingest"]["deps"] = [s["path"] for s in params["ingest"]["sources"]] + deps
    (repo / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    sh(["git", "init", "-q"], repo)
    sh(["dvc", "remote", "add", "-f", "-d", "bench", str(work / "remote")], repo)
    add_s, _ = timed(["dvc", "add", "-q", *[s["path"] for s in params["ingest"]["sources"]],
                      "data/raw/bench/image_types.csv"], repo)
    commit(repo, "fixture")
    return repo, add_s


def commit(repo: Path, message: str, tag: str | None = None) -> None:
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-q", "--allow-empty", "-m", message], repo)
    if tag:
        sh(["git", "tag", tag], repo)


def add_increment(fixture, repo: Path) -> float:
    """The maintainer's steps for a new folder source; returns the time of its `dvc add`."""
    path = "data/raw/bench/increment"
    shutil.copytree(fixture.root / "increment", repo / path, copy_function=os.link)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["sources"].append({**fixture.increment, "path": path})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())
    deps = stages["stages"]["ingest"]["deps"]
    deps.insert(len(params["ingest"]["sources"]) - 1, path)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    add_s, _ = timed(["dvc", "add", "-q", path], repo)
    return add_s


def bench_filter(repo: Path, work: Path, count: int) -> dict:
    """Filter inference over the fixture's candidates (every route's sizes: 600x450 exports to 4.3-megapixel
    series), timed inside the scoring process as `benchmarks.bench_filter` does: the CPU always, CUDA where torch
    sees a GPU."""
    from benchmarks.bench_filter import speed

    folder = work / "filter"
    folder.mkdir()
    objects = repo / "data/interim/ingest/objects"
    paths = [objects / row["object"] for row in read_rows(repo / "data/interim/ingest/candidates.csv")]
    params = yaml.safe_load((repo / "params.yaml").read_text())["filter"]
    gpu = sh([str(BIN / "python"), "-c", "import torch; print(torch.cuda.get_device_name(0) "
              "if torch.cuda.is_available() else '')"], repo, check=False).stdout.strip()
    figures = {}
    for device in ["cpu", *(["cuda"] if gpu else [])]:
        env = {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}
        result = speed(repo / "models/filter.pt", paths, {**params, "device": device}, count, folder, env)
        label = "CPU" if device == "cpu" else f"GPU ({gpu})"
        note = (f"{result['images']} candidates (the fixture's {len(paths)} objects in turn) in "
                f"{result['seconds']} s on the {label}, workers {result['workers']}, inference batch "
                f"{params.get('inference_batch_size')}; peak RSS {result['peak_rss_mb']} MB (largest decoding "
                f"worker {result['peak_rss_worker_mb']} MB)")
        key = "filter_cpu_images_per_s" if device == "cpu" else "filter_gpu_images_per_s"
        figures[key] = figure(result["images_per_s"], "images/s",
                              "benchmarks.bench_filter.speed: pipeline.filter.score, timed in its process",
                              note=note, **({"device": gpu} if device == "cuda" else {}))
    return figures


STANDARDISE_CHILD = r"""
import json, sys, time
from pathlib import Path
from pipeline.standardise import standardise
args = json.loads(sys.argv[1])
start = time.perf_counter()
standardise(Path(args["candidates"]), Path(args["decisions"]), Path(args["objects"]), args["params"],
            Path(args["out"]), Path(args["index"]))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def bench_standardise(repo: Path, work: Path, count: int) -> dict:
    """The standardise recipe (`pipeline.standardise.standardise`, every core, timed in its process) against the
    authors' mogrify (one invocation, as they ran it) on the same files: the `count` largest kept objects of the
    fixture (the multi-megapixel series and slide scans first)."""
    command_text = (f"mogrify -path OUT {' '.join(MOGRIFY)} FILES  vs  pipeline.standardise.standardise "
                    f"(same {count} images)")
    mogrify = shutil.which("mogrify")
    if not mogrify:
        return {"standardise_speedup_vs_mogrify": missing(
            "x", command_text, "ImageMagick's mogrify is not installed (apt-get install -y --no-install-recommends "
            "imagemagick)")}
    folder = work / "standardise"
    (folder / "mogrify").mkdir(parents=True)
    candidates = {r["candidate_id"]: r for r in read_rows(repo / "data/interim/ingest/candidates.csv")}
    kept = [d for d in read_rows(repo / "data/interim/filter/decisions.csv") if d["keep"] == "true"]
    kept.sort(key=lambda d: (-int(candidates[d["candidate_id"]]["width"]) * int(candidates[d["candidate_id"]]["height"]),
                             d["candidate_id"]))
    chosen = kept[:count]
    write_rows(folder / "candidates.csv", [candidates[d["candidate_id"]] for d in chosen],
               list(next(iter(candidates.values()))))
    write_rows(folder / "decisions.csv", chosen, list(chosen[0]))
    objects = repo / "data/interim/ingest/objects"
    params = yaml.safe_load((repo / "params.yaml").read_text())["standardise"]
    job = {"candidates": str(folder / "candidates.csv"), "decisions": str(folder / "decisions.csv"),
           "objects": str(objects), "params": params, "out": str(folder / "ham"), "index": str(folder / "index.csv")}
    result = sh([str(BIN / "python"), "-c", STANDARDISE_CHILD, json.dumps(job)], REPO,
                env={"PYTHONPATH": str(REPO)})
    ham_s = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
    files = [str(objects / candidates[d["candidate_id"]]["object"]) for d in chosen]
    mogrify_s, _ = timed([mogrify, "-path", str(folder / "mogrify"), *MOGRIFY, *files], repo)
    megapixels = sum(int(candidates[d["candidate_id"]]["width"]) * int(candidates[d["candidate_id"]]["height"])
                     for d in chosen) / 1e6
    note = (f"the {len(chosen)} largest kept images ({megapixels / len(chosen):.2f} megapixels on average): "
            f"mogrify {mogrify_s:.1f} s, standardise {ham_s:.1f} s on {os.cpu_count()} cores (near-duplicate "
            f"hashing, which `ham standardise` adds, not included)")
    return {"standardise_speedup_vs_mogrify": figure(round(mogrify_s / ham_s, 2), "x", command_text, note=note)}


def bench_pull(repo: Path, work: Path) -> dict:
    """`dvc pull release` from the local remote into a fresh clone against `cp -r` of the same folder."""
    push_s, _ = timed(["dvc", "push", "-q", "release"], repo)
    clone = work / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], work)
    pull_s, _ = timed(["dvc", "pull", "-q", "release"], clone)
    files = sum(1 for p in (clone / "release").rglob("*") if p.is_file())
    cp_s, _ = timed(["cp", "-r", str(repo / "release"), str(work / "release-copy")], work)
    shutil.rmtree(clone)
    shutil.rmtree(work / "release-copy")
    return {"pull_vs_cp_ratio": figure(
        round(pull_s / cp_s, 2), "x", "dvc pull release (fresh clone, local remote)  vs  cp -r release",
        note=f"{files} files: dvc pull {pull_s:.1f} s, cp -r {cp_s:.1f} s (dvc push of the release took "
             f"{push_s:.1f} s)")}


def bench_diff(repo: Path, before: Path, images: int) -> dict:
    command = ["ham", "diff", str(before), "release"]
    listed = sh(["ham", "--help"], repo).stdout
    if not re.search(r"^\s+diff\b", listed, re.M):
        return {"diff_10k_s": missing("s", " ".join(command), "`ham diff` does not exist yet in this branch")}
    attempts = [command, ["ham", "diff", "v1", "v2"]]
    errors = []
    for attempt in attempts:
        seconds, result = timed(attempt, repo, check=False)
        # a diff tool may exit 1 when the releases differ (as diff(1) does); a usage error is 2
        if result.returncode in (0, 1) and "Usage:" not in result.stderr and "Error" not in result.stderr:
            return {"diff_10k_s": figure(round(seconds, 2), "s", " ".join(attempt),
                                         note=f"two releases of about {images} images (before and after the "
                                              f"increment), start-up included")}
        errors.append(f"{' '.join(attempt)}: exit {result.returncode}: "
                      f"{(result.stderr.strip().splitlines() or [''])[-1]}")
    return {"diff_10k_s": missing("s", " ".join(command), "; ".join(errors))}


def bench_plain(fixture, work: Path, count: int) -> dict:
    """A plain DVC stage over a folder of `count` images, then 1 % more images in that folder."""
    repo = work / "plain"
    (repo / "data/images").mkdir(parents=True)
    images = sorted((fixture.root.parent / "images" / "ham10000").glob("*.jpg"),
                    key=lambda p: int(p.stem))
    more = sorted((fixture.root / "increment" / "images").glob("*.jpg"))
    extra = max(1, round(count / 100))
    if len(images) < count or len(more) < extra:
        count = min(count, len(images))
        extra = min(extra, len(more))
    for path in images[:count]:
        os.link(path, repo / "data/images" / path.name)
    shutil.copy2(REPO / "benchmarks/plain_standardise.py", repo / "plain_standardise.py")
    stage = {"stages": {"standardise": {
        "cmd": f"{sys.executable} plain_standardise.py data/images data/standardised",
        "deps": ["data/images", "plain_standardise.py"], "outs": ["data/standardised"]}}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(stage, sort_keys=False))
    sh(["git", "init", "-q"], repo)
    sh(["dvc", "init", "-q"], repo)
    sh(["dvc", "add", "-q", "data/images"], repo)
    commit(repo, "plain")
    full = Run(["dvc", "repro"], repo)
    commit(repo, "built")
    for path in more[:extra]:
        os.link(path, repo / "data/images" / f"new-{path.name}")
    sh(["dvc", "add", "-q", "data/images"], repo)
    grown = Run(["dvc", "repro"], repo)
    shutil.rmtree(repo)
    return {"dvc_plain_incremental_fraction": figure(
        round(grown.wall / full.wall, 3), "fraction",
        "dvc repro of a one-stage repo (benchmarks/plain_standardise.py over data/images) after 1 % more images",
        note=f"{count} images: full {full.wall:.1f} s, +{extra} images {grown.wall:.1f} s (the stage redoes the "
             f"whole folder, treeverse/dvc#4228)")}


def count_rows(path: Path) -> int:
    return len(read_rows(path)) if path.exists() else 0


def full_build(fixture, work: Path) -> tuple[Path, Run, float]:
    repo, add_s = make_repo(fixture, work)
    print(f"bench: {fixture.scale} fixture added ({fixture.images} raw images; dvc add {add_s:.1f} s); "
          f"dvc repro ...", flush=True)
    return repo, Run(["dvc", "repro"], repo), add_s


def scale_figures(fixture, work: Path, quick: bool, save) -> None:
    """Every figure on one fixture, each handed to `save` as soon as it is measured (so a run cut short keeps
    what it measured): the build figures first, then the comparisons."""
    repo, full, add_s = full_build(fixture, work)
    candidates = count_rows(repo / "data/interim/ingest/candidates.csv")
    released = sum(count_rows(p) for p in (repo / "release").glob("*/metadata.csv"))
    stages = full.stages()
    print(f"bench: full build {full.wall:.1f} s, {full.peak_mb:.0f} MB; stages {json.dumps(stages)}", flush=True)
    scale = f"{fixture.scale} fixture: {candidates} candidates, {released} released"
    save({"full_build_s": figure(round(full.wall, 1), "s", "dvc repro (from nothing)", scale=scale, stages=stages,
                                 note=f"{scale}; slowest stages: {stage_summary(stages)}"),
          "full_build_peak_rss_mb": figure(
              full.peak_mb, "MB", "dvc repro (from nothing)", scale=scale,
              note=f"sum of PSS over the process tree, polled every 0.1 s; largest stage peaks: "
                   f"{stage_summary(stages, 'peak_rss_mb')}"),
          f"peak_rss_{fixture.scale}_mb": figure(full.peak_mb, "MB", "dvc repro (from nothing)", scale=scale,
                                                 note=f"largest stage peaks: "
                                                      f"{stage_summary(stages, 'peak_rss_mb')}")})
    commit(repo, "v1", "v1")
    # Three runs, the median recorded: one run of a 3-second command on a shared 2-core machine is mostly noise,
    # and the first after a build also pays DVC's one-time index updates.
    noops = sorted(Run(["dvc", "repro"], repo).wall for _ in range(3))
    save({"noop_repro_s": figure(round(noops[1], 2), "s", "dvc repro (nothing changed), median of 3 runs",
                                 scale=scale, note=f"3 runs: {', '.join(f'{w:.2f}' for w in noops)} s")})
    print(f"bench: no-op {noops[1]:.2f} s (runs {', '.join(f'{w:.2f}' for w in noops)})", flush=True)

    before = work / "release-v1"
    sh(["cp", "-al", str(repo / "release"), str(before)], work)  # hard links: the files as they were
    increment_add_s = add_increment(fixture, repo)
    grown = Run(["dvc", "repro"], repo)
    commit(repo, "v2", "v2")
    grown_stages = grown.stages()
    new = fixture.counts["increment"]
    # What DVC itself takes: the run's wall time less the stage commands' lifetimes (its start-up, the stage and
    # dependency checks, the lock file rewritten after each stage, the outputs hashed and linked to its cache).
    commands = sum(stage["command_s"] or 0 for stage in grown_stages.values())
    save({"incremental_fraction": figure(
        round(grown.wall / full.wall, 3), "fraction", "dvc repro after a new folder source of 1 % more images",
        scale=scale, stages=grown_stages, dvc_own_s=round(grown.wall - commands, 1),
        note=f"+{new} images ({new / candidates:.1%}): {grown.wall:.1f} s of the full build's {full.wall:.1f} s "
             f"(dvc add {increment_add_s:.1f} s before it); {len(grown_stages)} stages re-ran, their commands "
             f"{commands:.1f} s, DVC outside them {grown.wall - commands:.1f} s "
             f"({(grown.wall - commands) / full.wall:.1%} of the full build); slowest stages: "
             f"{stage_summary(grown_stages)}")})
    print(f"bench: +1 % {grown.wall:.1f} s; stages {json.dumps(grown_stages)}", flush=True)
    save(bench_diff(repo, before, released))
    shutil.rmtree(before, ignore_errors=True)

    save(bench_standardise(repo, work, 120 if quick else 400))
    save(bench_filter(repo, work, 1000 if quick else 5000))
    save(bench_pull(repo, work))
    shutil.rmtree(repo, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 1k fixture only (make bench QUICK=1)")
    parser.add_argument("--plain-images", type=int, default=2000,
                        help="images of the plain DVC baseline's folder at the 10k scale (its fraction does not "
                             "depend on the count: the stage redoes every image)")
    args = parser.parse_args()
    if not (DATA / "ham10000/metadata/HAM10000_metadata.csv").exists():
        raise SystemExit(f"bench: the real data is not at {DATA} (set HAM_DATA)")
    start = time.perf_counter()
    where = machine()
    measured: list[str] = []

    def save(figures: dict) -> None:
        for entry in figures.values():
            entry.setdefault("machine", machine())
        record(figures)
        measured.extend(figures)
        for name, entry in figures.items():
            print(f"bench: {name} = {entry['value']} {entry['unit']}  {entry.get('missing') or entry.get('note', '')}",
                  flush=True)

    with tempfile.TemporaryDirectory(prefix="ham-bench-") as tmp:
        tmp = Path(tmp)
        small = build_fixture("1k")
        if args.quick:
            scale_figures(small, tmp / "1k", True, save)
            save({"peak_rss_10k_mb": missing("MB", "dvc repro (from nothing)", "QUICK=1: the 10k fixture was not "
                                             "built")})
            save(bench_plain(small, tmp / "plain", small.counts["ham10000"]))
        else:
            big = build_fixture("10k")
            print(f"bench: fixtures ready ({time.perf_counter() - start:.0f} s)", flush=True)
            (tmp / "10k").mkdir()
            scale_figures(big, tmp / "10k", False, save)
            save(bench_plain(big, tmp / "plain", args.plain_images))
            (tmp / "1k").mkdir()
            repo, run, _ = full_build(small, tmp / "1k")
            candidates = count_rows(repo / "data/interim/ingest/candidates.csv")
            save({"peak_rss_1k_mb": figure(
                run.peak_mb, "MB", "dvc repro (from nothing)", scale=f"1k fixture: {candidates} candidates",
                note=f"build {run.wall:.1f} s; largest stage peaks: {stage_summary(run.stages(), 'peak_rss_mb')}")})
            shutil.rmtree(tmp / "1k")
            results = json.loads(RESULTS.read_text())
            ratio = results["peak_rss_10k_mb"]["value"] / results["peak_rss_1k_mb"]["value"]
            save({"peak_rss_growth_1k_to_10k": figure(round(ratio, 2), "x", "peak_rss_10k_mb / peak_rss_1k_mb")})
    total = time.perf_counter() - start
    results = json.loads(RESULTS.read_text())
    print(f"\nbench: {'QUICK=1, 1k fixture' if args.quick else '10k and 1k fixtures'}, {total:.0f} s in all, "
          f"on {where} (at the start; {machine().rsplit(', ', 1)[-1]} at the end)\n")
    names = FIGURES + sorted(set(results) - set(FIGURES))
    print(table(results, names))


if __name__ == "__main__":
    main()
