"""Step 3 of the study, "unify": free-text pathology report -> HAM10000 diagnosis class and ISIC diagnosis.

An ordered list of regular-expression rules (pipeline/rules/diagnoses.yaml) is tried top to bottom; the first class
rule whose pattern is found anywhere in the text (case-insensitive) decides the outcome: one of the seven classes,
or ``exclude`` for texts that are not a usable diagnosis. Texts that no rule matches are also excluded, but reported
separately as unmatched so that a person can extend the rules. ``conflicts`` lists texts that rules of two different
classes match, which is where the rule order decides and a person should look.

Besides the class, each report gets the deepest node of the ISIC diagnosis hierarchy its text supports
(``Outcome.isic``): once the class is decided, the refinement rules of that class (``refines: <class>``, each
naming an ``isic`` node) are tried in their order and the first that matches names the node; when none does, the
node is the class's own (pipeline/vocabulary.py ISIC_CLASS_NODE). A refinement never changes the class: it is only
tried for reports its class rule already decided, and its node must lie in the class's subtrees
(ISIC_CLASS_SUBTREES), which loading the rules checks. That each node is in the archive's enumeration is checked
against the `isic-metadata` package by tests/test_isic_hierarchy.py.

    rules = load_rules()
    unify("Nodular melaoma, Breslow 4mm", rules)
    # Outcome(dx='mel', rule='melanoma', matched=True,
    #         isic='Malignant:Malignant melanocytic proliferations (Melanoma):Melanoma Invasive:Melanoma Invasive, Nodular')
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

from pipeline.common import PipelineError, yaml_load
from pipeline.vocabulary import CLASSES, ISIC_CLASS_NODE, ISIC_CLASS_SUBTREES, isic_class_of, isic_refines

EXCLUDE = "exclude"
OUTCOMES = CLASSES + (EXCLUDE,)
NO_RULE = "no-rule-matched"
DEFAULT_RULES = Path(__file__).resolve().parent / "rules" / "diagnoses.yaml"

_REQUIRED_KEYS = ("name", "outcome", "pattern")
_ALLOWED_KEYS = set(_REQUIRED_KEYS) | {"note"}
_REFINEMENT_KEYS = ("name", "refines", "isic", "pattern")
_ALLOWED_REFINEMENT_KEYS = set(_REFINEMENT_KEYS) | {"note"}


class RulesError(PipelineError):
    """An invalid rules file; the message names the file, the rule (index and name) and the field."""


@dataclass
class Rule:
    name: str
    outcome: str  # the class it decides, or for a refinement the class it refines
    pattern: str
    note: str = ""
    isic: str = ""  # a refinement's ISIC node; "" for class rules
    refines: bool = False
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.regex = re.compile(self.pattern, re.IGNORECASE)

    def matches(self, text: str) -> bool:
        return self.regex.search(text) is not None


@dataclass(frozen=True)
class Outcome:
    dx: str  # one of CLASSES, or "exclude"
    rule: str  # name of the first matching class rule, or "no-rule-matched"
    matched: bool
    isic: str = ""  # the ISIC diagnosis hierarchy's node; "" when excluded


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
        data = yaml_load(text)
    except yaml.YAMLError as error:
        raise RulesError(f"{path}: not valid YAML: {error}") from error
    return parse_rules(data, source=str(path))


def parse_rules(data, source: str = "<rules>") -> list[Rule]:
    """Validate already-parsed YAML (a list of mappings) and build the rules, keeping their order.

    `define` items are not rules: they name a pattern that later patterns use as <NAME>."""
    if not isinstance(data, list) or not data:
        raise RulesError(f"{source}: expected a non-empty list of rules")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    defined: dict[str, str] = {}
    for index, item in enumerate(data, start=1):
        if isinstance(item, dict) and "define" in item:
            name, pattern = _parse_define(item, index, source, defined)
            defined[name] = pattern
            continue
        if isinstance(item, dict) and isinstance(item.get("pattern"), str):
            item = {**item, "pattern": _expand(item["pattern"], defined, f"{source}: rule {index}")}
        rules.append(_parse_rule(item, index, source))
        name = rules[-1].name
        if name in seen:
            raise RulesError(f"{source}: rule {index} ({name!r}): duplicate name, also rule {seen[name]}")
        seen[name] = index
    return rules


_DEFINE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_REFERENCE = re.compile(r"(?<!\?P)<([A-Z][A-Z0-9_]*)>")  # <NAME>, but not a named group (?P<NAME>...)


def _parse_define(item: dict, index: int, source: str, defined: dict) -> tuple[str, str]:
    where = f"{source}: rule {index}"
    name = item.get("define")
    if not isinstance(name, str) or not _DEFINE_NAME.match(name):
        raise RulesError(f"{where}: 'define' must be a name in capitals (A-Z, 0-9, _), not {name!r}")
    where += f" (define {name})"
    if name in defined:
        raise RulesError(f"{where}: defined twice")
    unknown = sorted(set(item) - {"define", "pattern", "note"})
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    if not isinstance(item.get("pattern"), str) or not item["pattern"].strip():
        raise RulesError(f"{where}: 'pattern' must be a non-empty string")
    pattern = _expand(item["pattern"], defined, where)
    try:
        re.compile(pattern)
    except re.error as error:
        raise RulesError(f"{where}: invalid regular expression in 'pattern': {error}") from error
    return name, pattern


def _expand(pattern: str, defined: dict, where: str) -> str:
    """The pattern with each <NAME> replaced by its definition, as a non-capturing group."""
    def insert(match: re.Match) -> str:
        if match.group(1) not in defined:
            raise RulesError(f"{where}: pattern uses <{match.group(1)}>, which no earlier 'define' names")
        return f"(?:{defined[match.group(1)]})"
    return _REFERENCE.sub(insert, pattern)


def _parse_rule(item, index: int, source: str) -> Rule:
    where = f"{source}: rule {index}"
    if not isinstance(item, dict):
        raise RulesError(f"{where}: expected a mapping with keys name, outcome, pattern")
    if isinstance(item.get("name"), str) and item["name"].strip():
        where += f" ({item['name']!r})"
    if "refines" in item:
        return _parse_refinement(item, where)
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


def _parse_refinement(item: dict, where: str) -> Rule:
    for key in _REFINEMENT_KEYS:
        if key not in item:
            raise RulesError(f"{where}: missing key '{key}'")
        if not isinstance(item[key], str) or not item[key].strip():
            raise RulesError(f"{where}: '{key}' must be a non-empty string")
    unknown = sorted(set(item) - _ALLOWED_REFINEMENT_KEYS)
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    dx, node = item["refines"], item["isic"]
    if dx not in CLASSES:
        raise RulesError(f"{where}: 'refines' must be a class ({', '.join(CLASSES)}), not {dx!r}")
    if isic_class_of(node) != dx:
        raise RulesError(f"{where}: isic {node!r} does not lie under class {dx} "
                         f"({'; '.join(ISIC_CLASS_SUBTREES[dx])})")
    note = item.get("note") or ""
    if not isinstance(note, str):
        raise RulesError(f"{where}: 'note' must be a string")
    try:
        return Rule(name=item["name"], outcome=dx, pattern=item["pattern"], note=note.strip(), isic=node,
                    refines=True)
    except re.error as error:
        raise RulesError(f"{where}: invalid regular expression in 'pattern': {error}") from error


# --- applying them -----------------------------------------------------------------------------------------------


def unify(text: str, rules: list[Rule]) -> Outcome:
    """The outcome of the first class rule that matches, with its ISIC node, or an unmatched exclude."""
    text = text or ""
    for rule in rules:
        if not rule.refines and rule.matches(text):
            isic = refine(text, rule.outcome, rules) if rule.outcome in CLASSES else ""
            return Outcome(dx=rule.outcome, rule=rule.name, matched=True, isic=isic)
    return Outcome(dx=EXCLUDE, rule=NO_RULE, matched=False)


def refine(text: str, dx: str, rules: list[Rule]) -> str:
    """The ISIC node of a report of class `dx`: that of the first refinement of `dx` that matches, else the
    class's node."""
    for rule in rules:
        if rule.refines and rule.outcome == dx and rule.matches(text or ""):
            return rule.isic
    return ISIC_CLASS_NODE[dx]


def conflicts(texts: Iterable[str], rules: list[Rule]) -> list[Conflict]:
    """Texts (each once, first-seen order) that rules of two or more different classes match."""
    found = []
    for text in dict.fromkeys(t or "" for t in texts):
        hits = [rule for rule in rules if not rule.refines and rule.outcome != EXCLUDE and rule.matches(text)]
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
        writer.writerow(["text", "dx", "rule", "isic"])
        for text, outcome in zip(texts, outcomes):
            writer.writerow([text, outcome.dx, outcome.rule, outcome.isic])


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
    """What `ham unify` prints for CSVFILE: each text -> class (rule) and its ISIC node, coverage, how many reach a
    node deeper than their class's, conflicts; writes `output` (text,dx,rule,isic) too."""
    rules = load_rules(rules_path)
    if not csvfile.exists():
        raise PipelineError(f"{csvfile}: file not found")
    texts = _read_texts(csvfile, column, sep)
    outcomes = [unify(text, rules) for text in texts]

    lines = []
    for text, outcome in zip(texts, outcomes):
        lines.append(f"{text} -> {outcome.dx} ({outcome.rule})")
        if outcome.isic:
            lines.append(f"    isic: {outcome.isic}")
    lines.append("")
    lines += _format_coverage(coverage(texts, rules))
    decided = [o for o in outcomes if o.dx in CLASSES]
    deeper = sum(isic_refines(o.dx, o.isic) for o in decided)
    lines.append(f"isic: {deeper} of {len(decided)} classified texts reach a node deeper than their class's")
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
