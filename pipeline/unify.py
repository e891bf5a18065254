"""Step 3 of the study, "unify": free-text pathology report -> HAM10000 diagnosis class.

An ordered list of regular-expression rules (pipeline/rules/diagnoses.yaml) is tried top to bottom; the first rule
whose pattern is found anywhere in the text (case-insensitive) decides the outcome: one of the seven classes, or
``exclude`` for texts that are not a usable diagnosis. Texts that no rule matches are also excluded, but reported
separately as unmatched so that a person can extend the rules. ``conflicts`` lists texts that rules of two different
classes match, which is where the rule order decides and a person should look.

    rules = load_rules()
    unify("Nodular melaoma, Breslow 4mm", rules)   # Outcome(dx='mel', rule='melanoma', matched=True)
"""
from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import yaml

from pipeline.common import PipelineError
from pipeline.vocabulary import CLASSES

EXCLUDE = "exclude"
OUTCOMES = CLASSES + (EXCLUDE,)
NO_RULE = "no-rule-matched"
DEFAULT_RULES = Path(__file__).resolve().parent / "rules" / "diagnoses.yaml"

_REQUIRED_KEYS = ("name", "outcome", "pattern")
_ALLOWED_KEYS = set(_REQUIRED_KEYS) | {"note"}


class RulesError(PipelineError):
    """An invalid rules file; the message names the file, the rule (index and name) and the field."""


@dataclass
class Rule:
    name: str
    outcome: str
    pattern: str
    note: str = ""
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.regex = re.compile(self.pattern, re.IGNORECASE)

    def matches(self, text: str) -> bool:
        return self.regex.search(text) is not None


@dataclass(frozen=True)
class Outcome:
    dx: str  # one of CLASSES, or "exclude"
    rule: str  # name of the first matching rule, or "no-rule-matched"
    matched: bool


@dataclass(frozen=True)
class Conflict:
    text: str
    outcomes: tuple[str, ...]  # the distinct classes that match, in rule order
    rules: tuple[str, ...]  # the names of all class rules that match, in rule order
    dx: str  # what the rule order decides (may be "exclude" when an exclude rule comes first)


# --- rules -------------------------------------------------------------------------------------------------------


def load_rules(path: Optional[Path | str] = None) -> list[Rule]:
    """Read and validate an ordered rules file (default: the packaged diagnoses.yaml)."""
    path = Path(path) if path is not None else DEFAULT_RULES
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RulesError(f"{path}: cannot read rules file ({error.strerror or error})") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RulesError(f"{path}: not valid YAML: {error}") from error
    return parse_rules(data, source=str(path))


def parse_rules(data, source: str = "<rules>") -> list[Rule]:
    """Validate already-parsed YAML (a list of mappings) and build the rules, keeping their order."""
    if not isinstance(data, list) or not data:
        raise RulesError(f"{source}: expected a non-empty list of rules")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(data, start=1):
        rules.append(_parse_rule(item, index, source))
        name = rules[-1].name
        if name in seen:
            raise RulesError(f"{source}: rule {index} ({name!r}): duplicate name, also rule {seen[name]}")
        seen[name] = index
    return rules


def _parse_rule(item, index: int, source: str) -> Rule:
    where = f"{source}: rule {index}"
    if not isinstance(item, dict):
        raise RulesError(f"{where}: expected a mapping with keys name, outcome, pattern")
    if isinstance(item.get("name"), str) and item["name"].strip():
        where += f" ({item['name']!r})"
    for key in _REQUIRED_KEYS:
        if key not in item:
            raise RulesError(f"{where}: missing key '{key}'")
        if not isinstance(item[key], str) or not item[key].strip():
            raise RulesError(f"{where}: '{key}' must be a non-empty string")
    unknown = sorted(set(item) - _ALLOWED_KEYS)
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    if item["outcome"] not in OUTCOMES:
        raise RulesError(f"{where}: unknown outcome {item['outcome']!r} (expected one of {', '.join(OUTCOMES)})")
    note = item.get("note") or ""
    if not isinstance(note, str):
        raise RulesError(f"{where}: 'note' must be a string")
    try:
        return Rule(name=item["name"], outcome=item["outcome"], pattern=item["pattern"], note=note.strip())
    except re.error as error:
        raise RulesError(f"{where}: invalid regular expression in 'pattern': {error}") from error


# --- applying them -----------------------------------------------------------------------------------------------


def unify(text: str, rules: list[Rule]) -> Outcome:
    """The outcome of the first rule that matches, or an unmatched exclude."""
    text = text or ""
    for rule in rules:
        if rule.matches(text):
            return Outcome(dx=rule.outcome, rule=rule.name, matched=True)
    return Outcome(dx=EXCLUDE, rule=NO_RULE, matched=False)


def conflicts(texts: Iterable[str], rules: list[Rule]) -> list[Conflict]:
    """Texts (each once, first-seen order) that rules of two or more different classes match."""
    found = []
    for text in dict.fromkeys(t or "" for t in texts):
        hits = [rule for rule in rules if rule.outcome != EXCLUDE and rule.matches(text)]
        outcomes = tuple(dict.fromkeys(rule.outcome for rule in hits))
        if len(outcomes) >= 2:
            found.append(Conflict(text, outcomes, tuple(rule.name for rule in hits), unify(text, rules).dx))
    return found


def coverage(texts: Iterable[str], rules: list[Rule]) -> dict[str, int]:
    """Counts per outcome ("exclude" = explicit exclude rules only), plus "unmatched" and "total".

    The outcome counts and "unmatched" add up to "total".
    """
    counts = Counter()
    for text in texts:
        outcome = unify(text, rules)
        counts[outcome.dx if outcome.matched else "unmatched"] += 1
    result = {name: counts[name] for name in OUTCOMES}
    result["unmatched"] = counts["unmatched"]
    result["total"] = sum(counts.values())
    return result


# --- command line ------------------------------------------------------------------------------------------------

SEPARATORS = {"auto": None, ",": ",", ";": ";", "tab": "\t"}


def _read_texts(path: Path, column: str, sep: str) -> list[str]:
    try:
        content = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: cannot read ({error})")
    if not content.strip():
        raise PipelineError(f"{path}: empty file")
    delimiter = SEPARATORS[sep] or _detect_delimiter(content.splitlines()[0])
    reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=delimiter)
    if column not in (reader.fieldnames or []):
        shown = "sep=tab" if delimiter == "\t" else f"sep={delimiter!r}"
        raise PipelineError(
            f"{path}: no column {column!r} ({shown}; columns: {', '.join(reader.fieldnames or [])})"
        )
    return [(row.get(column) or "").strip() for row in reader]


def _detect_delimiter(header: str) -> str:
    """';' when the header has more semicolons than commas (the authors' example file), else ','."""
    return ";" if header.count(";") > header.count(",") else ","


def _write_outcomes(path: Path, texts: list[str], outcomes: list[Outcome]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["text", "dx", "rule"])
        for text, outcome in zip(texts, outcomes):
            writer.writerow([text, outcome.dx, outcome.rule])


def _format_coverage(counts: dict[str, int]) -> list[str]:
    total = counts["total"]
    decided = total - counts["exclude"] - counts["unmatched"]

    def share(n: int) -> str:
        return f"{n} ({100.0 * n / total:.1f} %)" if total else str(n)

    lines = [f"coverage: {total} texts, {share(decided)} to a class, {share(counts['exclude'])} excluded by a rule, "
             f"{share(counts['unmatched'])} unmatched"]
    lines.append("  " + "  ".join(f"{name} {counts[name]}" for name in OUTCOMES) + f"  unmatched {counts['unmatched']}")
    return lines


def report(csvfile: Path, rules_path: Optional[Path], column: str, sep: str, output: Optional[Path]) -> list[str]:
    """What `ham unify` prints for CSVFILE: each text -> class (rule), coverage, conflicts; writes `output` too."""
    rules = load_rules(rules_path)
    if not csvfile.exists():
        raise PipelineError(f"{csvfile}: file not found")
    texts = _read_texts(csvfile, column, sep)
    outcomes = [unify(text, rules) for text in texts]

    lines = [f"{text} -> {outcome.dx} ({outcome.rule})" for text, outcome in zip(texts, outcomes)]
    lines.append("")
    lines += _format_coverage(coverage(texts, rules))
    found = conflicts(texts, rules)
    lines.append(f"conflicts: {len(found)} text(s) matched by rules of different classes")
    lines += [f"  {conflict.text}: {', '.join(conflict.outcomes)} (rules {', '.join(conflict.rules)}) -> {conflict.dx}"
              for conflict in found]
    if output is not None:
        try:
            _write_outcomes(output, texts, outcomes)
        except OSError as error:
            raise PipelineError(f"{output}: cannot write ({error.strerror or error})")
        lines.append(f"wrote {len(texts)} rows to {output}")
    return lines
