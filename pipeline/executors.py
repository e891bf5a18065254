"""One way to run a per-image step: `run_map(fn, items, compute, label, workers)` -> `[fn(item) ...]` in input order.

`compute` is params `compute` (`Compute.of`): where the per-image work runs and where its stores live.
- `executor: local` (the default): the process pool of `parallel.pool_map` on this machine, `workers` processes
  (the stage's own `workers` param). No cluster, and dask is never imported.
- `executor: dask`: Dask distributed. With `address` (`tcp://host:8786`), the tasks go to that running scheduler
  and its workers, on any number of machines; without it, a `LocalCluster` of `compute.workers` processes
  (0: every core) is started for the stage and closed after it. dask is the optional extra `distributed`; asking
  for it without the extra is one clear error naming it.
Dask rather than Ray: every step here is a plain map of a pure function over independent items (the filter's
scoring is a map over batches of images, each task loading the model once), with no GPU stage that must stream
into a CPU stage, so Dask's task graph is all we need, and it is light on a 2-core machine.

Each item is one task keyed by its content (`<label>-<sha256 of the item>`; an item names its input's hash and its
recipe, e.g. a standardise task the candidate's hash and the recipe key), so the same work sent twice is one task.
Results come back in the items' order whatever the executor, so a stage's outputs never depend on it. The tasks
are pure and idempotent (they write content-addressed objects atomically, `stores`), so the engine may run one
again: Dask reschedules the tasks of a worker that dies (up to `distributed.scheduler.allowed-failures` times) and
its nanny starts a new worker; a task that raises is retried `retries` times (params `compute.retries`).
"""
from __future__ import annotations

import pickle
from functools import partial
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

from .common import PipelineError, progress, stable_hash
from .parallel import pool_map, resolve_workers
from .stores import s3_options

T = TypeVar("T")
R = TypeVar("R")
EXECUTORS = ("local", "dask")
EXTRA = 'pip install -e ".[distributed]"'


@dataclass(frozen=True)
class Compute:
    """Params `compute`, with its defaults: local executor, local stores."""

    executor: str = "local"
    address: str | None = None
    workers: int = 0
    retries: int = 1
    objects_store: str | None = None  # None: the stage's local objects folder
    standardised_store: str | None = None  # None: the stage's local images folder
    predictions_store: str | None = None  # None: the filter's local predictions folder
    s3_endpoint: str | None = None
    options: dict = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, params: dict | None) -> "Compute":
        params = {key: value for key, value in (params or {}).items() if value is not None}
        unknown = set(params) - (set(cls.__dataclass_fields__) - {"options"})
        if unknown:
            raise PipelineError(f"params.yaml: compute: unknown key(s) {', '.join(sorted(unknown))}")
        if params.get("executor", "local") not in EXECUTORS:
            raise PipelineError(f"params.yaml: compute.executor: {params['executor']!r} is not one of "
                                f"{', '.join(EXECUTORS)}")
        compute = cls(**params)
        object.__setattr__(compute, "options", s3_options(compute.s3_endpoint))
        return compute

    def store(self, kind: str, default) -> str:
        """Where the store `kind` (objects, standardised, predictions) lives: its URL, or the local default."""
        return getattr(self, f"{kind}_store") or str(default)


LOCAL = Compute()


def _dask_client(compute: Compute):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise PipelineError(f"params.yaml: compute.executor is dask, but dask is not installed: install the "
                            f"`distributed` extra ({EXTRA})") from None
    if compute.address:
        try:
            return Client(compute.address, timeout="30s"), None
        except OSError as error:
            raise PipelineError(f"params.yaml: compute.address: no dask scheduler answers at {compute.address} "
                                f"({error})") from None
    cluster = LocalCluster(n_workers=resolve_workers(compute.workers), threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    return Client(cluster), cluster


def _with_shared(fn, item, shared):
    return fn(item, shared)


def task_key(label: str, item) -> str:
    try:
        digest = stable_hash(item)
    except TypeError:  # not JSON: hash its pickle (same item, same bytes, within one run)
        from hashlib import sha256

        digest = sha256(pickle.dumps(item)).hexdigest()
    return f"{label.replace(' ', '_')}-{digest[:32]}"


def run_map(fn: Callable[..., R], items: Iterable[T], compute: Compute | None, label: str,
            workers: int | None = None, shared=None) -> list[R]:
    """`[fn(item) for item in items]` (`fn(item, shared)` where `shared` is given: e.g. a model's bytes, sent to
    each worker once, not with every item), run by the executor of `compute`; `workers` sizes the local pool."""
    items = list(items)
    compute = compute or LOCAL
    if compute.executor == "local" or not items:
        return list(pool_map(fn if shared is None else partial(_with_shared, fn, shared=shared), items, workers,
                             label))
    client, cluster = _dask_client(compute)
    from dask.distributed import as_completed

    try:
        extra, prefix = {}, label
        if shared is not None:  # the keys name what is shared too: another model, other tasks
            [extra["shared"]] = client.scatter([shared], broadcast=True, hash=True)
            prefix = f"{label}-{task_key('shared', shared).rsplit('-', 1)[1][:12]}"
        keys = [task_key(prefix, item) for item in items]
        if shared is None:
            futures = client.map(fn, items, key=keys, pure=True, retries=compute.retries)
        else:
            futures = client.map(partial(_with_shared, fn), items, key=keys, pure=True, retries=compute.retries,
                                 **extra)
        for _ in progress(as_completed(futures), f"{label} (dask)", total=len(futures)):
            pass
        return client.gather(futures)  # in the items' order, whatever order they finished in
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
