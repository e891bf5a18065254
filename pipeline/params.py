"""Validation of ``params.yaml`` against ``schemas/params.schema.json`` plus the rules across keys.

Every problem names the params file, the line of the offending key, the dotted key and the value, so that
``ham validate params.yaml`` and each stage (which checks the whole file first, `load_section`) say the same:
``params.yaml:29: filter.epochs: expected an integer, got text``.

Every section is closed: an unknown key (``filter.epoch``, ``standardise.qualty``, a section ``standardize``) is
a problem with the closest known name ("did you mean"). Rules beyond the schema: values that make a step
meaningless together (``filter.min_confidence`` above ``review_below``, ``standardise.dedupe.review_distance``
below ``max_distance``, a holdout of every image, no type kept, limits that reject every image); source names are
unique; each source's options build its kind's typed options
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
RETIRED = {  # keys once read, and what to write instead (an unknown key that is not here gets "did you mean")
    "metadata.datasets": "no longer read: declare `dataset:` on each source under ingest.sources",
}


def _dotted(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_of(node, path) -> int | None:
    """Line (1-based) of the key at ``path`` (of a list item: its first line), or of its nearest existing parent."""
    if node is None:
        return None
    mark = node.start_mark
    for part in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            key, child = next(((k, v) for k, v in node.value if k.value == part), (None, None))
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            key, child = None, node.value[part]
        if child is None:
            break
        node, mark = child, (key or child).start_mark  # a key's own line, not its block's first line
    return mark.line + 1


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
            found = [(key, key, RETIRED.get(_dotted([*path_, key]))
                      or f"unexpected key {key!r}{closest(key, known)}") for key in error.instance if key not in known]
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
    this jsonschema: every stage checks params.yaml first, and the check's cost (importing jsonschema and
    validating) would otherwise be paid by each of the stages a `dvc repro` runs. What passed is noted by digest in the user's cache folder
    (``$XDG_CACHE_HOME/ham10000-repo/valid-params/``); only passes are noted, so every problem is still found
    and worded as before. A cache that cannot be read or written only means the check runs. Only the schema's
    verdict is noted, and its key holds all it depends on (the params text, the schema's bytes, with every
    section's `additionalProperties: false`, and the jsonschema installed); the rules across keys
    (`_other_rules`) and the sources' rules are plain Python and run every time."""
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


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _section(data: dict, *path: str) -> dict:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def _meaningless_values(data: dict, root, file: str, reported: set[str]) -> list[Problem]:
    """Values each valid alone that make a step meaningless (together, or lose images without a word); a rule
    is skipped where the schema already found one of its values wrong (`reported`: the fields named)."""
    problems = []

    def problem(path: list, message: str, *others: str) -> None:
        if {_dotted(path), *others} & reported:
            return
        value = _section(data, *path[:-1]).get(path[-1])
        problems.append(Problem(file, _line_of(root, path), _dotted(path), show(value), message))

    ingest = _section(data, "ingest")
    pixels, side, aspect = ingest.get("max_pixels"), ingest.get("min_side"), ingest.get("max_aspect")
    if _number(pixels) and _number(side) and 0 < pixels < side * side:
        problem(["ingest", "max_pixels"], f"below min_side squared ({side}x{side} = {side * side}): every image "
                                          f"would be rejected", "ingest.min_side")
    if _number(aspect) and 0 < aspect < 1:
        problem(["ingest", "max_aspect"], "below 1: the long side over the short one is never under 1, so every "
                                          "image would be rejected (0: no limit)")
    filter_ = _section(data, "filter")
    low, review = filter_.get("min_confidence"), filter_.get("review_below")
    if _number(low) and _number(review) and low > review:
        problem(["filter", "min_confidence"], f"above review_below ({review:g}): an image the model scores between "
                                              f"them would be dropped without going to review", "filter.review_below")
    holdout = filter_.get("holdout_fraction")
    if _number(holdout) and holdout >= 1:
        problem(["filter", "holdout_fraction"], "holds out every annotated image: nothing is left to train on")
    if filter_.get("keep_types") == []:
        problem(["filter", "keep_types"], "keeps no image type: the release would hold no image")
    dedupe = _section(data, "standardise", "dedupe")
    near, far = dedupe.get("max_distance"), dedupe.get("review_distance")
    if _number(near) and _number(far) and far < near:
        problem(["standardise", "dedupe", "review_distance"], f"below max_distance ({near}): no pair could ever be "
                "listed for review", "standardise.dedupe.max_distance")
    return problems


def _other_rules(data: dict, root, file: str, reported: set[str] = frozenset()) -> list[Problem]:
    problems = _meaningless_values(data, root, file, reported)
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
        problems += _other_rules(data, root, file, {p.field for p in problems})
        if section in (None, "ingest") and ingest_rules is not None:
            problems += ingest_rules(data, root, file, {p.field for p in problems}, Path(path).parent, stage)
    if section is not None:
        problems = [p for p in problems if section_of(p) in (None, section)]
    return sorted(problems, key=lambda p: p.row or 0)


def load_section(path: str | Path, section: str, ingest_rules=None) -> dict:
    """A stage's params section, after the whole file is checked: PipelineError with the first problem's line (as
    `ham validate` words it) if the file has any problem, in any section, before the stage does any work. A stage
    reads only its own section, so DVC re-runs exactly what changed; but a file `ham validate` rejects (a misspelt
    section, an unknown key anywhere, `epochs: 0`) stops every stage, not only the one whose section is wrong.
    The sources' rules (`ingest_rules`: readers' typed options, source folders) are passed by `ham ingest` only,
    so that the other stages' code does not include the readers: they depend on the ingest section and the
    sources alone, which are ingest's dependencies, and ingest runs before every other stage."""
    check_params(path, ingest_rules)
    return load_params(path, section)


def check_params(path: str | Path, ingest_rules=None) -> None:
    """PipelineError with the first problem's line (and how many more) where the params file has any problem."""
    problems = params_problems(path, None, stage=True, ingest_rules=ingest_rules)
    if problems:
        more = f" (and {len(problems) - 1} more; see `ham validate {path}`)" if len(problems) > 1 else ""
        raise PipelineError(problems[0].line() + more)
