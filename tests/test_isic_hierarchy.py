"""The ISIC diagnosis hierarchy in pipeline/vocabulary.py and pipeline/rules/diagnoses.yaml, checked against the
archive's own enumeration (the `isic-metadata` package, DiagnosisEnum): every node the class map or the rules can
produce is a valid value, each class's subtrees are real and disjoint, and the level columns round-trip."""
from collections import Counter

import pytest

from pipeline import vocabulary as v
from pipeline.unify import load_rules

hierarchy = pytest.importorskip("isic_metadata.diagnosis_hierarchical",
                                reason="isic-metadata is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def enumeration() -> set[str]:
    return {member.value for member in hierarchy.DiagnosisEnum}


def producible_nodes() -> dict[str, str]:
    """Every node the class map or the rules can give a report or an image (node -> where it is named)."""
    nodes = {node: f"ISIC_CLASS_NODE[{dx}]" for dx, node in v.ISIC_CLASS_NODE.items()}
    nodes.update({node: f"ISIC_NODE_FROM_FLAT[{flat!r}]" for flat, node in v.ISIC_NODE_FROM_FLAT.items()})
    nodes.update({root: f"ISIC_CLASS_SUBTREES[{dx}]" for dx, roots in v.ISIC_CLASS_SUBTREES.items() for root in roots})
    nodes.update({rule.isic: f"rule {rule.name}" for rule in load_rules() if rule.refines})
    return nodes


def test_every_node_the_rules_or_the_class_map_can_produce_is_in_the_enumeration(enumeration):
    nodes = producible_nodes()
    assert len(nodes) > 60
    assert {node: where for node, where in nodes.items() if node not in enumeration} == {}


def test_a_damaged_node_is_caught(enumeration):
    assert v.ISIC_CLASS_NODE["nv"] in enumeration
    assert v.ISIC_CLASS_NODE["nv"] + ", Junctional" not in enumeration  # the check above is not vacuous
    assert "Benign:Benign melanocytic proliferations:Nevus:Nevus, Junctional" not in enumeration


def test_each_class_node_lies_in_its_own_subtrees_and_the_subtrees_are_disjoint(enumeration):
    assert set(v.ISIC_CLASS_NODE) == set(v.ISIC_CLASS_SUBTREES) == set(v.CLASSES)
    for dx, node in v.ISIC_CLASS_NODE.items():
        assert v.isic_class_of(node) == dx and not v.isic_refines(dx, node)
    roots = [(dx, root) for dx, rs in v.ISIC_CLASS_SUBTREES.items() for root in rs]
    for dx, root in roots:
        others = [other for other_dx, other in roots if other_dx != dx]
        assert not any(v.isic_under(root, other) or v.isic_under(other, root) for other in others), root
    # How much of the enumeration each class covers; everything else belongs to no class.
    covered = Counter(v.isic_class_of(node) for node in enumeration)
    assert all(covered[dx] >= 1 for dx in v.CLASSES)
    assert covered["mel"] > 20 and covered["nv"] > 20 and covered[""] > sum(covered[dx] for dx in v.CLASSES)
    for outside in ("Malignant:Malignant epidermal proliferations:Squamous cell carcinoma, Invasive",
                    "Benign:Benign adnexal epithelial proliferations - Sebaceous:Nevus sebaceus",
                    "Indeterminate:Indeterminate melanocytic proliferations:Atypical Spitz tumor",
                    "Benign:Benign melanocytic proliferations:Lentigo simplex", "Benign"):
        assert outside in enumeration and v.isic_class_of(outside) == ""


def test_flat_diagnoses_read_as_their_class(enumeration):
    for flat, node in v.ISIC_NODE_FROM_FLAT.items():
        assert v.isic_class_of(node) == v.DIAGNOSIS_FROM_ISIC[flat]


def test_levels_match_the_package_and_round_trip(enumeration):
    for node in enumeration:
        levels = v.isic_levels(node)
        assert list(levels) == list(v.ISIC_LEVELS)
        assert levels == {k: value or "" for k, value in hierarchy.DiagnosisEnum.as_dict(node).items()}
        assert v.isic_node(levels) == node
    assert v.isic_node({"diagnosis_1": "Benign", "diagnosis_2": "", "diagnosis_3": " "}) == "Benign"
    with pytest.raises(ValueError, match="diagnosis_2 is empty"):
        v.isic_node({"diagnosis_1": "Benign", "diagnosis_3": "Nevus"})
    with pytest.raises(ValueError, match="more than 5 levels"):
        v.isic_levels("a:b:c:d:e:f")
