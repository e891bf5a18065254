"""Step 3, unify: free-text pathology report -> diagnosis class by ordered regular-expression rules."""
import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import unify_command
from pipeline.unify import (
    NO_RULE,
    RulesError,
    OUTCOMES,
    Outcome,
    conflicts,
    coverage,
    load_rules,
    parse_rules,
    unify,
)
from pipeline.vocabulary import CLASSES, ISIC_CLASS_NODE, isic_class_of, isic_refines

EXAMPLES = Path("ham10000") / "metadata" / "unify_diagnoses_example.csv"

# The ISIC diagnosis hierarchy's nodes the table below uses.
NEVUS = "Benign:Benign melanocytic proliferations:Nevus"
MELANOMA = "Malignant:Malignant melanocytic proliferations (Melanoma)"
BCC = "Malignant:Malignant adnexal epithelial proliferations - Follicular:Basal cell carcinoma"
SCC_IN_SITU = "Malignant:Malignant epidermal proliferations:Squamous cell carcinoma in situ"
AK = "Indeterminate:Indeterminate epidermal proliferations:Solar or actinic keratosis"
EPIDERMAL = "Benign:Benign epidermal proliferations"
DF = "Benign:Benign soft tissue proliferations - Fibro-histiocytic:Dermatofibroma"
VASCULAR = "Benign:Benign soft tissue proliferations - Vascular"

# What a dermatologist makes of each of the authors' 42 example reports: the class, and the deepest node of the
# ISIC diagnosis hierarchy the report supports (None: excluded). A report that names no subtype stays at its class's
# node (vocabulary.ISIC_CLASS_NODE).
#   caseno, report (as in unify_diagnoses_example.csv), class, ISIC diagnosis
TABLE = [
    (1, "Bowen's disease", "akiec", f"{SCC_IN_SITU}:Squamous cell carcinoma in situ, Bowens disease"),
    (2, "Junctional melanocytic nevus", "nv", f"{NEVUS}:Nevus, NOS, Junctional"),
    (3, "Unclear melanocytic lesion, recommend complete excision with 0.5cm margins", "exclude", None),
    (4, "Dermatofibroma", "df", DF),
    (5, "Lentigo maligna melanoma, Clark level III, Breslow 0.7mm, <1 Mitosis/mm2, in toto", "mel",
     f"{MELANOMA}:Melanoma Invasive:Melanoma Invasive, On chronically sun-exposed skin or lentigo maligna melanoma"),
    (6, "Collision of seborrheic keratosis and basal cell carcinoma, in toto", "exclude", None),
    (7, "Seborrheic keratosis", "bkl", f"{EPIDERMAL}:Seborrheic keratosis"),
    (8, "Actinic Keratosis without signs of invasive alterations", "akiec", AK),
    (9, "Unclear melanocytic lesion, recommend complete excision with 0.5cm margins", "exclude", None),
    (10, "No signs of residual tumor", "exclude", None),
    (11, "Fibrosis and acanthosis, consistent with scar after previous biopsy", "exclude", None),
    (12, "Spindlecell-nevus Reed", "nv", f"{NEVUS}:Nevus, Reed"),
    (13, "Basal cell carcinoma (punch biopsy)", "bcc", BCC),
    (14, "Clark's nevus", "nv", f"{NEVUS}:Nevus, Atypical, Dysplastic, or Clark:Nevus, Clark"),
    (15, "Nodular melaoma, Breslow thickness 4mm, <1 Mitoses/mm2, lateral margins clear", "mel",  # typo: melaoma
     f"{MELANOMA}:Melanoma Invasive:Melanoma Invasive, Nodular"),
    (16, "Blue nevus", "nv", f"{NEVUS}:Blue nevus"),
    (17, "Superficial spreading melanoma, Breslow thickness 0.4mm, Clark III, <1 Mitoses/mm2", "mel",
     f"{MELANOMA}:Melanoma Invasive:Melanoma Invasive, Superficial spreading"),
    (18, "Seborrheic keratosis", "bkl", f"{EPIDERMAL}:Seborrheic keratosis"),
    (19, "Partial biopsy of lentigo maligna with all lateral margins involved", "exclude", None),
    # neither in situ nor invasion stated, so neither "associated with a nevus" node: the class's node
    (20, "SSM in association with a preexisting dermal nevus", "mel", MELANOMA),
    (21, "Seborrhoeic keratosis", "bkl", f"{EPIDERMAL}:Seborrheic keratosis"),
    (22, "nevus sebaceus", "exclude", None),  # not melanocytic
    (23, "Compound Nevus", "nv", f"{NEVUS}:Nevus, NOS, Compound"),
    (24, "Superficial spreading melanoma, in situ, in toto", "mel",
     f"{MELANOMA}:Melanoma in situ:Melanoma in situ, Superficial spreading"),
    (25, "Angiokeratoma (Punch biopsy)", "vasc", f"{VASCULAR}:Angiokeratoma"),
    (26, "Dermatofibroma", "df", DF),
    (27, "Seborrheic keratosis", "bkl", f"{EPIDERMAL}:Seborrheic keratosis"),
    (28, "Hemangioma", "vasc", f"{VASCULAR}:Hemangioma"),
    (29, "Irritated Clark's naevus", "nv", f"{NEVUS}:Nevus, Atypical, Dysplastic, or Clark:Nevus, Clark"),
    (30, "Junctional nevus", "nv", f"{NEVUS}:Nevus, NOS, Junctional"),
    (31, "Recurrent naevus", "nv", f"{NEVUS}:Nevus, Recurrent or persistent"),
    (32, "Eruptive capillary angioma", "vasc", f"{VASCULAR}:Hemangioma"),  # an angioma is a hemangioma
    (33, "Thrombosed angioma", "vasc", f"{VASCULAR}:Hemangioma"),
    (34, "Hemosiderotic Dermatofibroma", "df", f"{DF}:Dermatofibroma, Hemosiderotic"),
    (35, "Dermatofibroma", "df", DF),
    (36, "Intraepithelial Carcinoma, in toto", "akiec", SCC_IN_SITU),
    (37, "Verruca seborrhoica", "bkl", f"{EPIDERMAL}:Seborrheic keratosis"),
    (38, "Junctional nevus", "nv", f"{NEVUS}:Nevus, NOS, Junctional"),
    (39, "Seborrheic keratosis", "bkl", f"{EPIDERMAL}:Seborrheic keratosis"),
    (40, "Angioma (punch biopsy)", "vasc", f"{VASCULAR}:Hemangioma"),
    (41, "Pigmented nodular basal cell carcinoma (punch biopsy)", "bcc", f"{BCC}:Basal cell carcinoma, Nodular"),
    (42, "Morpheiform BCC, in toto", "bcc", f"{BCC}:Basal cell carcinoma, Sclerosing or morpheaform"),
]
EXPECTED = {caseno: dx for caseno, _, dx, _ in TABLE}
# Of the 35 reports that reach a class, those whose node says more than the class (checked against the table).
DEEPER_THAN_CLASS = 29


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
def test_the_examples_table_holds_the_authors_reports(ham_data):
    assert read_examples(ham_data) == {caseno: report for caseno, report, _, _ in TABLE}


def test_every_example_gets_its_class_and_isic_diagnosis(rules):
    got = [(caseno, report, unify(report, rules).dx, unify(report, rules).isic or None)
           for caseno, report, _, _ in TABLE]
    wrong = [(mine, theirs) for mine, theirs in zip(got, TABLE) if mine != theirs]
    assert wrong == [], "(got, expected)"
    deeper = [caseno for caseno, _, dx, isic in got if dx in CLASSES and isic_refines(dx, isic)]
    assert len(deeper) == DEEPER_THAN_CLASS
    assert sum(dx in CLASSES for _, _, dx, _ in got) == 35


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
    assert unify(SSM_TEXT, parse_rules([MEL, NV])) == Outcome("mel", "melanoma", True, ISIC_CLASS_NODE["mel"])
    assert unify(SSM_TEXT, parse_rules([NV, MEL])) == Outcome("nv", "nevus", True, ISIC_CLASS_NODE["nv"])


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
        outcome = unify(text, rules)
        assert (outcome.dx, outcome.rule, outcome.matched) == ("vasc", "hemorrhage", True)
        assert outcome.isic.endswith(":Hemorrhage")


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


# --- the ISIC hierarchy ----------------------------------------------------------------------------------------------

MIS = f"{MELANOMA}:Melanoma in situ"
INVASIVE = f"{MELANOMA}:Melanoma Invasive"


@pytest.mark.parametrize("text, dx, isic", [
    ("Lentigo maligna", "mel", f"{MIS}:Melanoma in situ, Lentigo maligna type"),
    ("Lentigo maligna melanoma in situ", "mel", f"{MIS}:Melanoma in situ, Lentigo maligna type"),
    ("LMM, Clark level II", "mel",
     f"{INVASIVE}:Melanoma Invasive, On chronically sun-exposed skin or lentigo maligna melanoma"),
    ("Malignant melanom, pT1a", "mel", INVASIVE),
    ("Melanoma in situ", "mel", MIS),
    ("Melanoma in situ, no invasive component", "mel", MIS),
    ("Non-invasive melanoma", "mel", MIS),
    ("Melanoma, Clark level I", "mel", MELANOMA),  # level I is intraepidermal, but the report does not say in situ
    ("SSM, Clark level II, Breslow 0.3mm, arising in a dysplastic nevus", "mel",
     f"{INVASIVE}:Melanoma Invasive, Associated with a nevus"),
    ("Melanoma in situ arising in a compound nevus", "mel", f"{MIS}:Melanoma in situ, associated with a nevus"),
    ("Acral lentiginous melanoma in situ", "mel", f"{MIS}:Melanoma in situ, Acral or acral-lentiginous"),
    ("Nodular melanoma", "mel", f"{INVASIVE}:Melanoma Invasive, Nodular"),
    ("Melanoma metastasis, subcutaneous", "mel", f"{MELANOMA}:Melanoma metastasis"),
    ("Basalioma, solid type", "bcc", f"{BCC}:Basal cell carcinoma, Nodular"),
    ("Superficial BCC", "bcc", f"{BCC}:Basal cell carcinoma, Superficial"),
    ("Basal cell carcinoma, nodular and infiltrative", "bcc", f"{BCC}:Basal cell carcinoma, Combined subtypes"),
    ("Micronodular basal cell carcinoma", "bcc", f"{BCC}:Basal cell carcinoma, Micronodular"),
    ("Fibroepithelioma of Pinkus", "exclude", None),  # no class rule names it: unmatched, as before
    ("Squamous cell carcinoma in situ", "akiec", SCC_IN_SITU),
    ("SCC (in situ), Bowen type", "akiec", f"{SCC_IN_SITU}:Squamous cell carcinoma in situ, Bowens disease"),
    ("Bowenoid actinic keratosis", "akiec", f"{AK}:Actinic keratosis, Bowenoid"),
    ("Solar keratosis, hypertrophic type", "akiec", f"{AK}:Actinic keratosis, Hypertrophic"),
    ("Solar lentigo", "bkl", f"{EPIDERMAL}:Solar lentigo"),
    ("Lichen planus-like keratosis", "bkl", f"{EPIDERMAL}:Lichen planus like keratosis"),
    ("Pigmented benign keratosis", "bkl", f"{EPIDERMAL}:Pigmented benign keratosis"),
    ("Clonal seborrheic keratosis", "bkl", f"{EPIDERMAL}:Seborrheic keratosis:Seborrheic keratosis, Clonal"),
    ("Aneurysmal fibrous histiocytoma", "df", f"{DF}:Dermatofibroma, Aneurysmal"),
    ("Pyogenic granuloma", "vasc", f"{VASCULAR}:Pyogenic granuloma"),
    ("Cherry angioma", "vasc", f"{VASCULAR}:Hemangioma:Hemangioma, Cherry"),
    ("Hemorrhage", "vasc", "Benign:Hemorrhagic lesions:Hemorrhage"),
    ("Dysplastic naevus, junctional type", "nv", f"{NEVUS}:Nevus, Atypical, Dysplastic, or Clark:Nevus, Dysplastic"),
    ("Cellular blue nevus", "nv", f"{NEVUS}:Blue nevus:Blue nevus, Cellular"),
    ("Spitz nevus", "nv", f"{NEVUS}:Nevus, Spitz"),
    ("Atypical Spitz tumor", "nv", NEVUS),  # indeterminate in the hierarchy, outside nv's subtree
    ("Congenital nevus, compound type", "nv", f"{NEVUS}:Nevus, Congenital"),
    ("Intradermal nevus", "nv", f"{NEVUS}:Nevus, NOS, Dermal"),
])
def test_single_texts_reach_their_node(rules, text, dx, isic):
    outcome = unify(text, rules)
    assert (outcome.dx, outcome.isic or None) == (dx, isic)


def test_every_node_lies_under_its_class(rules):
    texts = [report for _, report, _, _ in TABLE] + [rule.name.replace("-", " ") for rule in rules]
    for text in texts:
        outcome = unify(text, rules)
        assert outcome.dx not in CLASSES or isic_class_of(outcome.isic) == outcome.dx, text
    assert all(isic_class_of(rule.isic) == rule.outcome for rule in rules if rule.refines)


def test_refinements_never_change_the_class(rules):
    class_rules = [rule for rule in rules if not rule.refines]
    assert len(class_rules) < len(rules)
    texts = [report for _, report, _, _ in TABLE] + [
        "Nodular melanoma arising in a compound nevus", "Bowenoid papulosis", "Superficial spreading BCC",
        "Melanoma in situ and seborrheic keratosis", "Hemangioma with hemorrhage", "Dermal nevus, Clark type",
    ]
    for text in texts:
        with_refinements, without = unify(text, rules), unify(text, class_rules)
        assert (with_refinements.dx, with_refinements.rule) == (without.dx, without.rule), text
        assert without.isic in ("", ISIC_CLASS_NODE.get(without.dx))


def test_refinements_and_definitions_in_a_rules_file():
    rules = parse_rules([
        {"define": "NEVUS", "pattern": r"na?ev(?:us|i)"},
        {"name": "nevus", "outcome": "nv", "pattern": r"\b<NEVUS>\b"},
        {"name": "isic-junctional", "refines": "nv", "isic": f"{NEVUS}:Nevus, NOS, Junctional",
         "pattern": r"junctional\s+<NEVUS>"},
    ])
    assert [rule.name for rule in rules] == ["nevus", "isic-junctional"]
    assert rules[0].pattern == r"\b(?:na?ev(?:us|i))\b"
    assert unify("Junctional naevus", rules) == Outcome("nv", "nevus", True, f"{NEVUS}:Nevus, NOS, Junctional")
    assert unify("Junctional activity; compound nevus", rules).isic == NEVUS
    assert conflicts(["Junctional nevus"], rules) == []


@pytest.mark.parametrize("body, message", [
    ("- {name: a, refines: nv, isic: 'Benign:Benign epidermal proliferations:Solar lentigo', pattern: x}\n",
     "rule 1 ('a'): isic 'Benign:Benign epidermal proliferations:Solar lentigo' does not lie under class nv"),
    ("- {name: a, refines: nevus, isic: x, pattern: x}\n", "rule 1 ('a'): 'refines' must be a class"),
    ("- {name: a, refines: nv, pattern: x}\n", "rule 1 ('a'): missing key 'isic'"),
    ("- {name: a, refines: nv, isic: 'Benign:Benign melanocytic proliferations:Nevus', pattern: x, outcome: nv}\n",
     "rule 1 ('a'): unknown key(s) 'outcome'"),
    ("- {name: a, outcome: nv, pattern: '<NEVUS>'}\n", "rule 1: pattern uses <NEVUS>, which no earlier 'define' names"),
    ("- {define: nevus, pattern: x}\n", "rule 1: 'define' must be a name in capitals"),
    ("- {define: A, pattern: x}\n- {define: A, pattern: y}\n", "rule 2 (define A): defined twice"),
    ("- {define: A, pattern: '('}\n", "rule 1 (define A): invalid regular expression"),
])
def test_invalid_refinements_and_definitions(tmp_path, body, message):
    path = write_rules(tmp_path, body)
    with pytest.raises(RulesError) as error:
        load_rules(path)
    assert message in str(error.value)


def test_cli_prints_each_node_and_how_many_are_deeper(tmp_path):
    source = write_csv(tmp_path, "caseno;diagnosis\n1;Junctional nevus\n2;Dermatofibroma\n3;Psoriasis\n")
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(unify_command, [str(source), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert f"Junctional nevus -> nv (melanocytic-nevus)\n    isic: {NEVUS}:Nevus, NOS, Junctional\n" in result.output
    assert "isic: 1 of 2 classified texts reach a node deeper than their class's" in result.output
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["isic"] for row in rows] == [f"{NEVUS}:Nevus, NOS, Junctional", DF, ""]
