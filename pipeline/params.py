"""Validation of ``params.yaml`` against ``schemas/params.schema.json`` plus the rules across keys.

Every problem names the params file, the line of the offending key, the dotted key and the value, so that
``ham validate params.yaml`` and each stage (which checks its own section first, `load_section`) say the same:
``params.yaml:29: filter.epochs: expected an integer, got text``.

Rules beyond the schema: source names are unique; each source's options build its kind's typed options
(`sources.<kind>.<Kind>Options.from_options`: regexes compile, mappings are mappings); a source whose name is not
one of the release's dataset values declares ``dataset`` (the public-release kinds excepted); test and validation
fractions leave room for training. Where a ``dvc.yaml`` sits beside the params file (a repository root), every
source folder must exist (a folder only absent because it is not pulled yet is reported to stages, not to
``ham validate``) and be a dependency of stage ``ingest``.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .common import YAML_LOADER, PipelineError, load_params, yaml_load
from .schema_messages import Problem, closest, message, show, validator

SECTIONS = ("ingest", "filter", "standardise", "metadata", "split", "release")


def _dotted(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_of(node, path) -> int | None:
    """Line (1-based) of the YAML node at ``path`` or of its nearest existing parent."""
    if node is None:
        return None
    for part in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


def _duplicate_keys(node, file: str, path=()) -> list[Problem]:
    problems = []
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            if key.value in seen:
                problems.append(Problem(file, key.start_mark.line + 1, _dotted((*path, key.value)), key.value,
                                        "duplicate key; the later one silently wins"))
            seen.add(key.value)
            problems += _duplicate_keys(value, file, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, file, (*path, i))
    return problems


def _schema_problems(data, root, file: str) -> list[Problem]:
    problems, reported = [], set()
    for error in validator("params").iter_errors(data):
        path_ = list(error.absolute_path)
        if error.validator == "required":
            missing = [key for key in error.validator_value if key not in error.instance]
            found = [(key, "", f"missing required key {key!r}") for key in missing]
        elif error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            found = [(key, key, f"unexpected key {key!r}{closest(key, known)}") for key in error.instance
                     if key not in known]
        else:
            problems.append(Problem(file, _line_of(root, path_), _dotted(path_), show(error.instance),
                                    message(error)))
            continue
        for key, value, text in found:
            if (tuple(path_), key) not in reported:
                reported.add((tuple(path_), key))
                line = _line_of(root, [*path_, key] if value else path_)
                problems.append(Problem(file, line, _dotted([*path_, key]), value, text))
    return problems


def _schema_problems_once(text: str, data, root, file: str) -> list[Problem]:
    """`_schema_problems`, skipped for a params text this machine already found valid against this schema with
    this jsonschema: every stage checks params.yaml first, and importing jsonschema alone took 0.14 s a stage
    (about 1 s of a `dvc repro` after a 1 % change). What passed is noted by digest in the user's cache folder
    (``$XDG_CACHE_HOME/ham10000-repo/valid-params/``); only passes are noted, so every problem is still found
    and worded as before. A cache that cannot be read or written only means the check runs."""
    note = _valid_params_note(text)
    if note is not None and note.exists():
        return []
    problems = _schema_problems(data, root, file)
    if not problems and note is not None:
        try:
            note.parent.mkdir(parents=True, exist_ok=True)
            note.touch()
        except OSError:
            pass
    return problems


def _valid_params_note(text: str) -> Path | None:
    import hashlib
    import importlib.util
    import os

    from .schema_messages import schema_path

    try:
        spec = importlib.util.find_spec("jsonschema")  # finds the installed copy without importing it
        installed = Path(spec.origin).stat()
        schema = schema_path("params").read_bytes()
    except (AttributeError, TypeError, OSError, ImportError, ValueError):
        return None
    digest = hashlib.sha256(b"\0".join([text.encode(), schema, spec.origin.encode(),
                                          f"{installed.st_size}:{installed.st_mtime_ns}".encode()])).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ham10000-repo" / "valid-params" / digest


def _other_rules(data: dict, root, file: str) -> list[Problem]:
    problems = []
    metadata = data.get("metadata")
    if isinstance(metadata, dict) and "datasets" in metadata:
        problems.append(Problem(file, _line_of(root, ["metadata", "datasets"]), "metadata.datasets", "datasets",
                                "no longer read: declare `dataset:` on each source under ingest.sources"))
    split = data.get("split")
    if isinstance(split, dict):
        test, val = split.get("test_fraction"), split.get("val_fraction", 0.0)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (test, val))
        if numbers and test + val >= 1:
            problems.append(Problem(file, _line_of(root, ["split", "val_fraction"]), "split.val_fraction", show(val),
                                    f"test_fraction + val_fraction is {test + val:g}; it must be below 1"))
    return problems


def section_of(problem: Problem) -> str | None:
    """The params section a problem is about (None: the whole file)."""
    head = problem.field.split(".", 1)[0].split("[", 1)[0]
    return head or None


def params_problems(path: str | Path, section: str | None = None, stage: bool = False,
                    ingest_rules=None) -> list[Problem]:
    """Problems of a params YAML file (schema, rules across keys, the repository's sources), ordered by line.

    ``section``: only the problems of that section (and of the whole file), as a stage checks its own.
    ``stage``: as a stage sees the repository (a source folder not pulled yet is a problem too).
    ``ingest_rules``: the sources' rules (`source_rules.ingest_rules`), passed in by the callers that check the
    ingest section, so that the other stages' code does not include the readers."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        return [Problem(file, None, "", "", f"cannot read: {e.strerror}")]
    except UnicodeDecodeError:
        return [Problem(file, None, "", "", "not UTF-8")]
    if not text.strip():
        return [Problem(file, None, "", "", "file is empty")]
    try:
        root = yaml.compose(text, Loader=YAML_LOADER)
        data = yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        return [Problem(file, mark.line + 1 if mark else None, "", "", f"not valid YAML: {getattr(e, 'problem', e)}")]

    problems = _duplicate_keys(root, file) + _schema_problems_once(text, data, root, file)
    if isinstance(data, dict):
        problems += _other_rules(data, root, file)
        if section in (None, "ingest") and ingest_rules is not None:
            problems += ingest_rules(data, root, file, {p.field for p in problems}, Path(path).parent, stage)
    if section is not None:
        problems = [p for p in problems if section_of(p) in (None, section)]
    return sorted(problems, key=lambda p: p.row or 0)


def load_section(path: str | Path, section: str, ingest_rules=None) -> dict:
    """A stage's params section, checked first: PipelineError with the first problem's line (as `ham validate`
    words it) if the section has any problem."""
    problems = params_problems(path, section, stage=True, ingest_rules=ingest_rules)
    if problems:
        more = f" (and {len(problems) - 1} more; see `ham validate {path}`)" if len(problems) > 1 else ""
        raise PipelineError(problems[0].line() + more)
    return load_params(path, section)
