"""The per-image steps on a real Dask cluster, with their stores in a real S3 server: same bytes as the local build.

A `LocalCluster` of 2 worker processes (started and closed by the test, in this process, so the test can watch
its scheduler) and SeaweedFS's S3 gateway (`weed`, started on free ports
of 127.0.0.1 and stopped after, as in tests/test_remotes.py). Two routes of the demo's synthetic sample are built stage by stage with the
`ham` commands, as `dvc repro` runs them:
- locally (params `compute` absent: a process pool, local folders);
- on the cluster (`compute.executor: dask` at the cluster's address, ingest's objects and the standardised images
  in the bucket);
and the candidates, rejects, decisions, review queue, object index, standardised images and index, duplicates
and the whole release come out byte-identical. Then standardise runs again on the cluster into an empty prefix of
the bucket, and one worker process is killed (SIGKILL) while it holds standardise tasks: the scheduler reschedules
them, the nanny starts a new worker, and the result is still the same bytes.
Skipped with the reason where dask or `weed` is not installed (both are in the `test` extra).
"""
from __future__ import annotations

import filecmp
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.seaweed import BUCKET, CREDENTIALS, running

distributed = pytest.importorskip("distributed", reason="dask distributed not installed (the `distributed` extra)")
pytest.importorskip("s3fs", reason="s3fs not installed (the `distributed` extra)")

REPO_ROOT = Path(__file__).resolve().parent.parent
# Two of the sample's four routes keep the test quick: the database export (RGBA PNG, CMYK and EXIF-rotated JPEGs,
# bad files) and the slide scans (TIFF and JPEG, cropped out of their mounts).
ROUTES = ("vidir_modern", "vienna_dias")
HAM = str(Path(sys.executable).parent / "ham")
TABLES = ["data/interim/ingest/candidates.csv", "data/interim/ingest/rejects.csv",
          "data/interim/ingest/provenance.csv", "data/interim/ingest/objects/index.csv",
          "data/interim/filter/decisions.csv", "data/interim/filter/review_queue.csv",
          "data/interim/standardised/index.csv", "data/interim/standardised/duplicates.csv",
          "data/interim/standardised/duplicate_review.csv", "data/interim/standardised/images/SHA256SUMS",
          "data/interim/metadata/metadata.csv", "data/interim/metadata/images.csv", "registry/splits.csv",
          "metrics/release.json"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real SeaweedFS S3 server on free ports of 127.0.0.1 with a bucket; stopped after the module."""
    with running(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield {"url": f"s3://{BUCKET}", "endpoint": server.endpoint}


@pytest.fixture(scope="module")
def credentials():
    """The S3 credentials in this process's environment, so the cluster's worker processes inherit them."""
    saved = {key: os.environ.get(key) for key in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def cluster(credentials):
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as local, \
            Client(local) as client:
        yield local, client


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small untrained network (fixed seed): the filter scores the sample's unannotated images with it."""
    import torch

    from pipeline.filter_model import ImageTypeNet, save_model

    torch.manual_seed(14)
    path = tmp_path_factory.mktemp("model") / "filter.pt"
    save_model(ImageTypeNet(8).eval(), path, {"width": 8, "blocks": 1, "image_size": 32,
                                              "types": ["dsc", "macro", "clinic"]})
    return path


def ham(args: list[str], cwd: Path, env: dict | None = None, wait: bool = True):
    full_env = {**os.environ, **(env or {}), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen([HAM, *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    if not wait:
        return process
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, f"ham {' '.join(args)} exited {process.returncode}\n{out}\n{err}"
    return out + err


def workspace(folder: Path, sample_raw, model: Path, compute: dict | None) -> Path:
    """A folder with params.yaml (the repository's, sources pointing at the sample, `compute` as given)."""
    from pipeline.sample import ANNOTATIONS, SOURCES

    root, _ = sample_raw
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["ingest"]["sources"] = [{**source, "path": str(root / source["path"])} for source in SOURCES
                                   if source["name"] in ROUTES]
    params["filter"].update(annotations=str(root / ANNOTATIONS), device="cpu", workers=1)
    params["standardise"]["workers"] = 2
    params.pop("compute", None)
    if compute is not None:
        params["compute"] = compute
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "models").mkdir()
    shutil.copy(model, folder / "models" / "filter.pt")
    return folder


def build(folder: Path, stages=("ingest", "filter", "standardise", "metadata", "split", "release")) -> dict:
    outputs = {}
    for stage in stages:
        args = {"metadata": ["--registry", "registry"], "split": ["--registry", "registry/splits.csv"]}.get(stage, [])
        outputs[stage] = ham([stage, "--params", "params.yaml", *args], folder)
    return outputs


def bucket_files(s3, prefix: str) -> dict[str, bytes]:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3["endpoint"], key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                           secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    root = s3["url"].split("://", 1)[1] + "/" + prefix
    fs.invalidate_cache()
    return {path.rsplit("/", 1)[1]: fs.cat_file(path) for path in fs.ls(root, detail=False)}


def local_files(folder: Path, skip=("SHA256SUMS", "index.csv")) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name not in skip}


def assert_same_tree(a: Path, b: Path) -> int:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    differ = [str(p) for p in files_a if not filecmp.cmp(a / p, b / p, shallow=False)]
    assert differ == []
    return len(files_a)


def dask_compute(cluster, s3, prefix: str) -> dict:
    return {"executor": "dask", "address": cluster[0].scheduler_address,
            "objects_store": f"{s3['url']}/{prefix}/objects",
            "standardised_store": f"{s3['url']}/{prefix}/standardised",
            "predictions_store": f"{s3['url']}/{prefix}/predictions", "s3_endpoint": s3["endpoint"]}


@pytest.fixture(scope="module")
def builds(tmp_path_factory, sample_raw, model, cluster, s3):
    base = tmp_path_factory.mktemp("distributed")
    local = workspace(base / "local", sample_raw, model, None)
    build(local)
    remote = workspace(base / "dask", sample_raw, model, dask_compute(cluster, s3, "run1"))
    log = build(remote)
    return {"local": local, "dask": remote, "log": log, "base": base}


def test_local_and_dask_with_s3_stores_give_the_same_bytes(builds, s3):
    local, remote = builds["local"], builds["dask"]
    assert "vet (dask):" in builds["log"]["ingest"]  # the cluster vetted the images
    assert "standardise (dask):" in builds["log"]["standardise"]  # and standardised them
    assert "near-duplicates (dask):" in builds["log"]["standardise"]  # and hashed them for the near-duplicates
    assert "filter (dask):" in builds["log"]["filter"]  # and scored the unannotated images, batch by batch
    for table in TABLES:
        assert (local / table).read_bytes() == (remote / table).read_bytes(), table
    # The objects and the standardised images are in the bucket, not in the dask build's folders, and are the
    # local build's bytes; only the index files (DVC-tracked) stay local.
    objects = local_files(local / "data/interim/ingest/objects")
    assert objects and bucket_files(s3, "run1/objects") == objects
    assert sorted(p.name for p in (remote / "data/interim/ingest/objects").iterdir()) == ["index.csv"]
    images = local_files(local / "data/interim/standardised/images")
    assert len(images) >= 10 and bucket_files(s3, "run1/standardised") == images
    # The scored batches are in the bucket too (one object per batch), and hold the local cache's predictions.
    [model_key] = [p.stem for p in (local / "data/interim/filter/predictions").glob("*.csv")]
    batches = bucket_files(s3, f"run1/predictions/{model_key}")
    local_cache = (local / "data/interim/filter/predictions" / f"{model_key}.csv").read_text().splitlines()[1:]
    assert batches and sorted(b"".join(batches.values()).decode().splitlines()) == sorted(local_cache)
    released = assert_same_tree(local / "release", remote / "release")
    assert released > len(images) // 2  # every split's images, metadata, manifest and card


def test_stores_in_the_bucket_are_reused_by_the_next_run(builds, s3):
    """A re-run on the cluster finds every object, scored batch and image in the bucket (nothing decoded, scored or
    made again, even with the local prediction cache gone), and its outputs are unchanged."""
    remote = builds["dask"]
    before = {table: (remote / table).read_bytes() for table in TABLES[:10]}
    shutil.rmtree(remote / "data/interim/filter/predictions")  # the batches in the bucket are the cache now
    again = build(remote, ("ingest", "filter", "standardise"))
    assert "0 images decoded" in again["ingest"]
    assert "0 scored" in again["filter"]
    assert "(0 processed, " in again["standardise"]
    assert {table: (remote / table).read_bytes() for table in TABLES[:10]} == before


def test_a_worker_killed_mid_run_is_retried_and_the_result_is_the_same(builds, cluster, s3):
    from distributed.diagnostics.plugin import SchedulerPlugin

    local_cluster, client = cluster
    folder = builds["base"] / "killed"
    shutil.copytree(builds["dask"], folder)
    for name in ("data/interim/standardised", "data/interim/metadata", "registry", "release", "metrics"):
        shutil.rmtree(folder / name, ignore_errors=True)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["compute"]["standardised_store"] = f"{s3['url']}/run2/standardised"
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    class Rescheduled(SchedulerPlugin):
        """Standardise tasks that left `processing` other than by finishing (their worker was lost)."""

        def __init__(self):
            self.keys = set()

        def transition(self, key, start, finish, *args, **kwargs):
            if str(key).startswith("standardise-") and start == "processing" and finish not in ("memory", "erred"):
                self.keys.add(str(key))

    plugin = Rescheduled()
    local_cluster.scheduler.add_plugin(plugin, name="rescheduled")
    pids = client.run(os.getpid)  # worker address -> process id
    scheduler = local_cluster.scheduler
    killed = {}

    def kill_when_busy():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            done = sum(1 for key, task in list(scheduler.tasks.items())
                       if str(key).startswith("standardise-") and task.state == "memory")
            for address, worker in list(scheduler.workers.items()):
                if done >= 2 and worker.processing and address in pids:
                    os.kill(pids[address], signal.SIGKILL)
                    killed.update(address=address, done=done, total=len(scheduler.tasks))
                    return
            time.sleep(0.002)

    watcher = threading.Thread(target=kill_when_busy)
    watcher.start()
    try:
        build(folder, ("standardise",))
    finally:
        killed.setdefault("address", None)
        watcher.join()
    assert killed["address"] is not None, "no worker was busy with standardise tasks to kill"
    assert plugin.keys, "the killed worker's tasks were not rescheduled"
    build(folder, ("metadata", "split", "release"))
    local = builds["local"]
    for table in TABLES:
        assert (local / table).read_bytes() == (folder / table).read_bytes(), table
    assert bucket_files(s3, "run2/standardised") == local_files(local / "data/interim/standardised/images")
    assert_same_tree(local / "release", folder / "release")
    # The nanny replaced the killed worker: the cluster has its two workers again.
    deadline = time.monotonic() + 30
    while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(client.scheduler_info()["workers"]) == 2
    assert killed["address"] not in client.scheduler_info()["workers"]


def test_compute_params_errors_are_one_line(tmp_path, sample_raw, model):
    folder = workspace(tmp_path / "bad", sample_raw, model, {"executor": "spark"})
    result = subprocess.run([HAM, "ingest", "--params", "params.yaml"], cwd=folder, capture_output=True, text=True)
    assert result.returncode == 1
    assert "compute.executor" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["compute"] = {"executor": "local", "objects_store": "/tmp/objects"}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = subprocess.run([HAM, "ingest", "--params", "params.yaml"], cwd=folder, capture_output=True, text=True)
    assert result.returncode == 1 and "compute.objects_store" in result.stderr and "s3://" in result.stderr


def test_local_executor_needs_no_cluster_and_never_imports_dask(tmp_path):
    code = ("import sys\n"
            "from pipeline.executors import Compute, run_map\n"
            "from pipeline.standardise import standardise\n"
            "assert run_map(abs, [-3, 2, -1], Compute.of(None), 'abs', workers=2) == [3, 2, 1]\n"
            "assert run_map(divmod, [7, 9], Compute.of({'executor': 'local'}), 'divmod', shared=4) == [(1, 3), (2, 1)]\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 's3fs')))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_dask_without_the_extra_is_one_clear_error(monkeypatch):
    from pipeline.common import PipelineError
    from pipeline.executors import Compute, run_map

    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # as if the extra were not installed
    with pytest.raises(PipelineError, match=r"compute.executor is dask.*`distributed` extra"):
        run_map(abs, [1, 2], Compute.of({"executor": "dask"}), "abs")
    monkeypatch.setitem(sys.modules, "s3fs", None)
    from pipeline.stores import open_store

    with pytest.raises(PipelineError, match=r"s3://no-such-bucket/x: .*needs s3fs.*`distributed` extra"):
        open_store("s3://no-such-bucket/x")
