"""The params rules about raw sources (the ingest section): unique names, a declared dataset, each source's typed
options as its reader declares them, and what the repository says about each source folder (it exists; dvc.yaml
lists it as a dependency of stage ingest).

Kept apart from `params.py` because they import the readers: only `ham ingest` and `ham validate` run them, so the
other stages' code (and their dvc.yaml dependencies) does not include every reader.
"""
from __future__ import annotations

from pathlib import Path

from . import sources as readers
from .dvcfile import ingest_dependency_problems, missing_source_folders
from .params import _dotted, _line_of
from .schema_messages import Problem, show
from .vocabulary import DATASETS, PUBLIC_KINDS


def ingest_rules(data: dict, root, file: str, flagged: set[str], repo: Path, stage: bool) -> list[Problem]:
    """Problems of the sources in params ``data`` (``root``: its YAML node tree, for line numbers); ``flagged``:
    the dotted keys the schema already reported; ``repo``: the folder of params.yaml; ``stage``: as a stage sees
    the repository (a source folder only absent because it is not pulled yet is a problem too)."""
    return _source_rules(data, root, file, flagged) + _repository_rules(data, root, file, repo, stage)


def _sources(data: dict) -> list:
    ingest = data.get("ingest")
    sources = ingest.get("sources") if isinstance(ingest, dict) else None
    return sources if isinstance(sources, list) else []


def _source_rules(data: dict, root, file: str, flagged: set[str]) -> list[Problem]:
    """Unique names, a dataset where the name is none, and each source's typed options (where the schema found
    nothing wrong with them already: ``flagged`` holds the dotted keys it reported)."""
    problems, first = [], {}
    for i, source in enumerate(_sources(data)):
        if not isinstance(source, dict):
            continue
        name, kind = source.get("name"), source.get("kind")
        where = ["ingest", "sources", i]
        if isinstance(name, str):
            if name in first:
                problems.append(Problem(file, _line_of(root, [*where, "name"]), _dotted([*where, "name"]), name,
                                        f"duplicate source name (also ingest.sources[{first[name]}])"))
            first.setdefault(name, i)
            if kind not in PUBLIC_KINDS and name not in DATASETS and "dataset" not in source:
                problems.append(Problem(
                    file, _line_of(root, [*where, "name"]), _dotted([*where, "dataset"]), name,
                    f"source {name} needs `dataset:` (one of {', '.join(DATASETS)}, unknown), the dataset value its "
                    f"images get in the release, because its name is not one of them"))
        options_key = _dotted([*where, "options"])
        if kind in readers.KINDS and not any(key == options_key or key.startswith(options_key + ".")
                                             for key in flagged):
            try:
                readers.options_for(kind).from_options(name if isinstance(name, str) else f"ingest.sources[{i}]",
                                                       source.get("options"))
            except readers.OptionError as error:
                value = (source.get("options") or {}).get(error.key, "") if isinstance(source.get("options"),
                                                                                       dict) else ""
                problems.append(Problem(file, _line_of(root, [*where, "options", error.key]),
                                        f"{options_key}.{error.key}", show(value),
                                        f"source {error.source}: {error.message}"))
    return problems


def _repository_rules(data: dict, root, file: str, repo: Path, stage: bool) -> list[Problem]:
    """Source folders that do not exist, then sources that are no dependency of stage ingest (where a dvc.yaml
    sits in ``repo``). ``stage``: also a folder only absent because it is not pulled yet."""
    if not (repo / "dvc.yaml").is_file():
        return []
    problems = []
    names = {i: s.get("name") for i, s in enumerate(_sources(data)) if isinstance(s, dict)}
    for index, path, text in missing_source_folders(data, repo, tracked_too=stage):
        problems.append(Problem(file, _line_of(root, ["ingest", "sources", index, "path"]),
                                f"ingest.sources[{index}].path", path, f"source {names.get(index)}: {text}"))
    for index, path, text in ingest_dependency_problems(data, repo):
        problems.append(Problem(file, _line_of(root, ["ingest", "sources", index, "path"]),
                                f"ingest.sources[{index}].path", path, text))
    return problems
