"""What the repository's ``dvc.yaml`` and ``.dvc`` files say about the raw sources of params ``ingest.sources``.

A raw source must be a dependency of the ``ingest`` stage (or lie inside one), or ``dvc repro`` would not see it
change; and it should be tracked by a ``.dvc`` file of its own, so it is versioned and can be pushed and pulled.
Paths are relative to the repository root, the folder holding ``dvc.yaml`` (and ``params.yaml``).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import yaml

from .common import yaml_load


def dvc_stages(repo: Path) -> dict:
    """The ``stages`` mapping of ``repo/dvc.yaml``; empty where there is none or it cannot be read."""
    try:
        stages = yaml_load((Path(repo) / "dvc.yaml").read_text(encoding="utf-8")).get("stages")
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    return stages if isinstance(stages, dict) else {}


def covers(parent: str, path: str) -> bool:
    parent, path = PurePosixPath(parent), PurePosixPath(path)
    return parent == path or parent in path.parents


def _source_paths(params: dict) -> list[tuple[int, str]]:
    sources = (params.get("ingest") or {}).get("sources") if isinstance(params.get("ingest"), dict) else None
    return [(index, source["path"]) for index, source in enumerate(sources if isinstance(sources, list) else [])
            if isinstance(source, dict) and isinstance(source.get("path"), str) and source["path"]]


def ingest_dependency_problems(params: dict, repo: Path) -> list[tuple[int, str, str]]:
    """(source index, path, message) for each raw source that DVC would not see change.

    Where a dvc.yaml sits in ``repo``, every `ingest.sources[].path` must be a dependency of its `ingest` stage
    (or lie inside one); otherwise `dvc repro` would skip ingest after that source changed."""
    stages = dvc_stages(repo)
    if not isinstance(stages.get("ingest"), dict):
        return []
    deps = [str(dep) for dep in stages["ingest"].get("deps") or [] if isinstance(dep, str)]
    return [(index, path, f"not a dependency of stage ingest in dvc.yaml, so `dvc repro` would not see it change: "
                          f"add `- {path}` under stages.ingest.deps")
            for index, path in _source_paths(params) if not any(covers(dep, path) for dep in deps)]


def tracking_file(path: str, repo: Path) -> str | None:
    """The ``.dvc`` file that tracks ``path`` (``<path>.dvc`` or one for a folder above it), or None."""
    path_ = PurePosixPath(path)
    if path_.is_absolute():
        return None
    for candidate in (path_, *path_.parents):
        if str(candidate) != "." and (Path(repo) / f"{candidate}.dvc").is_file():
            return f"{candidate}.dvc"
    return None


def missing_source_folders(params: dict, repo: Path, tracked_too: bool = False) -> list[tuple[int, str, str]]:
    """(source index, path, message) for each raw source whose folder does not exist.

    A folder that a ``.dvc`` file tracks is only absent from this checkout (a fresh clone, before `dvc pull`): it
    is reported only with ``tracked_too``, and the message says how to fetch it."""
    found = []
    for index, path in _source_paths(params):
        if (Path(repo) / path).is_dir():
            continue
        tracker = tracking_file(path, repo)
        if tracker is None:
            what = "is not a folder" if (Path(repo) / path).exists() else "does not exist"
            found.append((index, path, f"folder {path} {what}"))
        elif tracked_too:
            found.append((index, path, f"folder {path} does not exist in this checkout; it is tracked by "
                                       f"{tracker}: run `dvc pull {tracker}` (or `dvc checkout {tracker}`)"))
    return found


def untracked_sources(params: dict, repo: Path) -> list[str]:
    """Raw source paths that no .dvc file tracks (`<path>.dvc` or one for a folder above it), nor a stage output:
    such a source is not versioned, cannot be pushed or pulled, and a release built from it cannot be rebuilt."""
    outs = []
    for stage in dvc_stages(repo).values():
        for out in (stage.get("outs") or []) if isinstance(stage, dict) else []:
            outs.append(next(iter(out)) if isinstance(out, dict) else str(out))
    return [path for _, path in _source_paths(params)
            if not PurePosixPath(path).is_absolute() and tracking_file(path, repo) is None
            and not any(covers(out, path) for out in outs)]
