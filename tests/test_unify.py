"""Step 3, unify: free-text pathology report -> diagnosis class by ordered regular-expression rules."""
import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import unify_command
from pipeline.unify import (
    NO_RULE,
    OUTCOMES,
    Outcome,
    RulesError,
    conflicts,
    coverage,
    load_rules,
    parse_rules,
    unify,
)

EXAMPLES = Path("ham10000") / "metadata" / "unify_diagnoses_example.csv"

# What a dermatologist makes of each of the authors' 42 example reports (caseno -> outcome).
EXPECTED = {
    1: "akiec",     # Bowen's disease
    2: "nv",        # Junctional melanocytic nevus
    3: "exclude",   # Unclear melanocytic lesion, recommend complete excision
    4: "df",        # Dermatofibroma
    5: "mel",       # Lentigo maligna melanoma, Clark level III, Breslow 0.7mm
    6: "exclude",   # Collision of seborrheic keratosis and basal cell carcinoma
    7: "bkl",       # Seborrheic keratosis
    8: "akiec",     # Actinic Keratosis without signs of invasive alterations
    9: "exclude",   # Unclear melanocytic lesion, recommend complete excision
    10: "exclude",  # No signs of residual tumor
    11: "exclude",  # Fibrosis and acanthosis, consistent with scar after previous biopsy
    12: "nv",       # Spindlecell-nevus Reed
    13: "bcc",      # Basal cell carcinoma (punch biopsy)
    14: "nv",       # Clark's nevus
    15: "mel",      # Nodular melaoma (typo)
    16: "nv",       # Blue nevus
    17: "mel",      # Superficial spreading melanoma
    18: "bkl",      # Seborrheic keratosis
    19: "exclude",  # Partial biopsy of lentigo maligna with all lateral margins involved
    20: "mel",      # SSM in association with a preexisting dermal nevus
    21: "bkl",      # Seborrhoeic keratosis
    22: "exclude",  # nevus sebaceus (not melanocytic)
    23: "nv",       # Compound Nevus
    24: "mel",      # Superficial spreading melanoma, in situ
    25: "vasc",     # Angiokeratoma
    26: "df",       # Dermatofibroma
    27: "bkl",      # Seborrheic keratosis
    28: "vasc",     # Hemangioma
    29: "nv",       # Irritated Clark's naevus
    30: "nv",       # Junctional nevus
    31: "nv",       # Recurrent naevus
    32: "vasc",     # Eruptive capillary angioma
    33: "vasc",     # Thrombosed angioma
    34: "df",       # Hemosiderotic Dermatofibroma
    35: "df",       # Dermatofibroma
    36: "akiec",    # Intraepithelial Carcinoma
    37: "bkl",      # Verruca seborrhoica
    38: "nv",       # Junctional nevus
    39: "bkl",      # Seborrheic keratosis
    40: "vasc",     # Angioma (punch biopsy)
    41: "bcc",      # Pigmented nodular basal cell carcinoma
    42: "bcc",      # Morpheiform BCC
}


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def read_examples(ham_data: Path) -> dict[int, str]:
    with open(ham_data / EXAMPLES, newline="", encoding="utf-8") as handle:
        return {int(row["caseno"]): row["diagnosis"] for row in csv.DictReader(handle, delimiter=";")}


# --- the authors' examples ---------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_every_example_gets_the_dermatologists_outcome(ham_data, rules):
    examples = read_examples(ham_data)
    assert sorted(examples) == sorted(EXPECTED)
    wrong = {
        caseno: (text, unify(text, rules).dx, EXPECTED[caseno])
        for caseno, text in examples.items()
        if unify(text, rules).dx != EXPECTED[caseno]
    }
    assert wrong == {}, "caseno: (text, got, expected)"


@pytest.mark.real_data
def test_every_example_is_decided_by_a_rule(ham_data, rules):
    examples = read_examples(ham_data)
    assert all(unify(text, rules).matched for text in examples.values())
    assert coverage(examples.values(), rules) == {
        "akiec": 3, "bcc": 3, "bkl": 6, "df": 4, "mel": 5, "nv": 9, "vasc": 5,
        "exclude": 7, "unmatched": 0, "total": 42,
    }


@pytest.mark.real_data
def test_conflicts_in_the_examples(ham_data, rules):
    found = {c.text: c for c in conflicts(read_examples(ham_data).values(), rules)}
    ssm = found["SSM in association with a preexisting dermal nevus"]
    assert ssm.outcomes == ("mel", "nv") and ssm.dx == "mel"
    collision = found["Collision of seborrheic keratosis and basal cell carcinoma, in toto"]
    assert set(collision.outcomes) == {"bcc", "bkl"} and collision.dx == "exclude"
    assert len(found) == 2


# --- single texts -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, dx", [
    ("Malignant melanom, pT1a", "mel"),
    ("LMM, Clark level II", "mel"),
    ("Lentigo maligna", "mel"),
    ("Melanoma with regression and fibrosis", "mel"),
    ("Melanoma arising in a compound nevus", "mel"),
    ("Basalioma, solid type", "bcc"),
    ("Squamous cell carcinoma in situ", "akiec"),
    ("SCC (in situ), Bowen type", "akiec"),
    ("Invasive squamous cell carcinoma, well differentiated", "exclude"),
    ("Solar keratosis", "akiec"),
    ("Solar lentigo", "bkl"),
    ("Lichen planus-like keratosis", "bkl"),
    ("Pyogenic granuloma", "vasc"),
    ("Dysplastic naevus, junctional type", "nv"),
    ("Spitz nevus", "nv"),
    ("Sebaceous naevus", "exclude"),
    ("Nevus flammeus", "exclude"),
    ("Melanoma cannot be excluded, please re-excise", "exclude"),
])
def test_single_texts(rules, text, dx):
    assert unify(text, rules).dx == dx


def test_unmatched_text_is_excluded_but_flagged(rules):
    assert unify("Psoriasiform dermatitis", rules) == Outcome(dx="exclude", rule=NO_RULE, matched=False)
    assert unify("", rules).rule == NO_RULE


def test_explicit_exclude_is_matched(rules):
    outcome = unify("No signs of residual tumor", rules)
    assert outcome.dx == "exclude" and outcome.matched and outcome.rule != NO_RULE


def test_matching_is_case_insensitive(rules):
    assert unify("BASAL CELL CARCINOMA", rules).dx == unify("basal cell carcinoma", rules).dx == "bcc"


# --- rule order ----------------------------------------------------------------------------------------------------

MEL = {"name": "melanoma", "outcome": "mel", "pattern": r"melanoma|\bSSM\b"}
NV = {"name": "nevus", "outcome": "nv", "pattern": r"\bnevus\b"}
SSM_TEXT = "SSM in association with a preexisting dermal nevus"


def test_rule_order_decides():
    assert unify(SSM_TEXT, parse_rules([MEL, NV])) == Outcome("mel", "melanoma", True)
    assert unify(SSM_TEXT, parse_rules([NV, MEL])) == Outcome("nv", "nevus", True)


def test_conflicts_report_both_classes_whatever_the_order():
    for order in ([MEL, NV], [NV, MEL]):
        [conflict] = conflicts([SSM_TEXT, "Blue nevus", SSM_TEXT], parse_rules(order))
        assert conflict.text == SSM_TEXT
        assert set(conflict.outcomes) == {"mel", "nv"}
        assert set(conflict.rules) == {"melanoma", "nevus"}


def test_two_rules_of_the_same_class_are_no_conflict():
    rules = parse_rules([MEL, {"name": "ssm", "outcome": "mel", "pattern": "superficial spreading"}])
    assert conflicts(["Superficial spreading melanoma"], rules) == []


def test_exclude_rules_do_not_count_as_conflicts():
    rules = parse_rules([{"name": "collision", "outcome": "exclude", "pattern": "collision"}, NV])
    assert conflicts(["Collision with a nevus"], rules) == []


# --- coverage -------------------------------------------------------------------------------------------------------


def test_coverage_adds_up_to_total(rules):
    texts = ["Blue nevus", "Blue nevus", "Dermatofibroma", "No signs of residual tumor", "Psoriasis", ""]
    counts = coverage(texts, rules)
    assert counts["total"] == len(texts)
    assert sum(counts[name] for name in OUTCOMES) + counts["unmatched"] == counts["total"]
    assert (counts["nv"], counts["df"], counts["exclude"], counts["unmatched"]) == (2, 1, 1, 2)
    assert set(counts) == set(OUTCOMES) | {"unmatched", "total"}


def test_coverage_of_nothing():
    assert coverage([], parse_rules([NV]))["total"] == 0


# --- validating the rules file -------------------------------------------------------------------------------------


# Texts that rules of two or more outcomes match, so that only the packaged rules' order gives the right class: a
# weak catch-all (hemorrhage -> vasc) or a benign rule moved above a more specific one changes them.
ORDER_SENSITIVE = [
    ("Melanoma with hemorrhage", "mel"),
    ("Superficial spreading melanoma with haemorrhage", "mel"),
    ("Basal cell carcinoma, ulcerated, with hemorrhage", "bcc"),
    ("Bowen's disease with haemorrhage", "akiec"),
    ("Actinic keratosis with hemorrhage", "akiec"),
    ("Seborrheic keratosis with hemorrhage", "bkl"),
    ("Dermatofibroma with hemorrhage", "df"),
    ("Compound nevus with hemorrhage", "nv"),
    ("Melanoma arising in a compound nevus", "mel"),
    ("Lentigo maligna melanoma, solar lentigo at the margin", "mel"),
    ("Basal cell carcinoma next to a seborrheic keratosis", "bcc"),
    ("Squamous cell carcinoma in situ over a seborrheic keratosis", "akiec"),
    ("Invasive squamous cell carcinoma arising in actinic keratosis", "exclude"),
    ("Collision of a melanoma and a seborrheic keratosis", "exclude"),
    ("Nevus sebaceus with hemorrhage", "exclude"),
]


@pytest.mark.parametrize("text, dx", ORDER_SENSITIVE)
def test_packaged_rules_order_decides_texts_two_outcomes_match(rules, text, dx):
    matching = {rule.outcome for rule in rules if rule.matches(text)}
    assert len(matching) >= 2 and dx in matching, f"{text!r} is matched by {matching}: not order-sensitive"
    assert unify(text, rules).dx == dx


def test_hemorrhage_alone_is_vascular(rules):
    for text in ("Hemorrhage", "Haemorrhage into the dermis"):
        assert unify(text, rules) == Outcome("vasc", "hemorrhage", True)


def test_packaged_rules_load_with_exclude_rules_first(rules):
    assert len({rule.name for rule in rules}) == len(rules)
    outcomes = [rule.outcome for rule in rules]
    last_exclude = max(i for i, outcome in enumerate(outcomes) if outcome == "exclude")
    first_class = min(i for i, outcome in enumerate(outcomes) if outcome != "exclude")
    assert last_exclude < first_class
    # malignant before benign
    assert max(outcomes.index(c) for c in ("mel", "bcc", "akiec")) < min(outcomes.index(c) for c in ("nv", "bkl"))


def write_rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("body, message", [
    ("- {name: a, outcome: mel, pattern: melanoma}\n- {name: b, outcome: nv}\n",
     "rule 2 ('b'): missing key 'pattern'"),
    ("- {name: a, outcome: melanoma, pattern: x}\n",
     "rule 1 ('a'): unknown outcome 'melanoma'"),
    ("- {name: a, outcome: mel, pattern: x}\n- {name: broken, outcome: nv, pattern: 'nevus(' }\n",
     "rule 2 ('broken'): invalid regular expression in 'pattern'"),
    ("- {outcome: mel, pattern: x}\n", "rule 1: missing key 'name'"),
    ("- {name: a, outcome: mel, pattern: x, notes: typo}\n", "rule 1 ('a'): unknown key(s) 'notes'"),
    ("- {name: a, outcome: mel, pattern: x}\n- {name: a, outcome: nv, pattern: y}\n",
     "rule 2 ('a'): duplicate name, also rule 1"),
    ("name: a\n", "expected a non-empty list of rules"),
    ("", "expected a non-empty list of rules"),
    ("- [unclosed\n", "not valid YAML"),
])
def test_invalid_rules_file_names_file_rule_and_field(tmp_path, body, message):
    path = write_rules(tmp_path, body)
    with pytest.raises(RulesError) as error:
        load_rules(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_missing_rules_file(tmp_path):
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "nope.yaml")


# --- command line -------------------------------------------------------------------------------------------------


def write_csv(tmp_path: Path, text: str, name="reports.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_cli_help():
    result = CliRunner().invoke(unify_command, ["--help"])
    assert result.exit_code == 0
    assert "pathology reports" in result.output and "--rules" in result.output and "--output" in result.output


def test_cli_comma_separated_with_output(tmp_path):
    source = write_csv(tmp_path, 'id,diagnosis\n1,Blue nevus\n2,"Melanoma, in situ"\n3,Psoriasis\n')
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(unify_command, [str(source), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "Blue nevus -> nv (melanocytic-nevus)" in result.output
    assert "Psoriasis -> exclude (no-rule-matched)" in result.output
    assert "unmatched 1" in result.output
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["text"], r["dx"], r["rule"]) for r in rows] == [
        ("Blue nevus", "nv", "melanocytic-nevus"),
        ("Melanoma, in situ", "mel", "melanoma"),
        ("Psoriasis", "exclude", "no-rule-matched"),
    ]


def test_cli_semicolons_custom_column_and_rules(tmp_path):
    source = write_csv(tmp_path, "caseno;report\n1;SSM in association with a preexisting dermal nevus\n")
    rules = write_rules(tmp_path, "- {name: nevus, outcome: nv, pattern: nevus}\n"
                                  "- {name: mel, outcome: mel, pattern: SSM}\n")
    result = CliRunner().invoke(unify_command, [str(source), "--column", "report", "--rules", str(rules)])
    assert result.exit_code == 0, result.output
    assert "-> nv (nevus)" in result.output
    assert "conflicts: 1" in result.output and "nv, mel" in result.output


@pytest.mark.real_data
def test_cli_on_the_authors_examples(ham_data):
    result = CliRunner().invoke(unify_command, [str(ham_data / EXAMPLES)])
    assert result.exit_code == 0, result.output
    assert "Nodular melaoma, Breslow thickness 4mm, <1 Mitoses/mm2, lateral margins clear -> mel" in result.output
    assert "coverage: 42 texts" in result.output
    assert "conflicts: 2" in result.output


@pytest.mark.parametrize("args, message", [
    (["--column", "report"], "no column 'report'"),
    (["--rules", "{missing_rules}"], "cannot read rules file"),
    (["--sep", ","], "no column 'diagnosis'"),  # a semicolon file read with commas
])
def test_cli_errors_exit_nonzero_with_one_line(tmp_path, args, message):
    source = write_csv(tmp_path, "caseno;diagnosis\n1;Blue nevus\n")
    args = [a.format(missing_rules=tmp_path / "none.yaml") for a in args]
    result = CliRunner().invoke(unify_command, [str(source), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1


def test_cli_missing_input_file(tmp_path):
    result = CliRunner().invoke(unify_command, [str(tmp_path / "none.csv")])
    assert result.exit_code != 0 and "file not found" in result.output
