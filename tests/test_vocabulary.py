"""One vocabulary (pipeline/vocabulary.py): the JSON Schemas' enums equal it, the ISIC maps are complete and their
reverses consistent, no other module of pipeline/ defines a copy, and the one age parser reads ages as both its
users need."""
import ast
import json
from pathlib import Path

import pytest

from pipeline import vocabulary as v

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = sorted((ROOT / "schemas").glob("*.schema.json"))

# Each value set the schemas may enumerate, with the forms an enum of it may take ("" allowed in front besides).
FAMILIES = {
    "CLASSES": [v.CLASSES],
    "DX_TYPES": [tuple(v.DX_TYPES)],
    "SEXES": [v.SEXES],
    "LOCALIZATIONS": [v.LOCALIZATIONS],
    "DATASETS": [v.DATASET_VALUES, v.DATASETS],
    "SPLITS": [v.SPLITS],
    "IMAGE_TYPES": [v.IMAGE_TYPES],
}
# 'unknown' is a value of three of them, so it tells nothing about which one an enum is meant to be.
SHARED_VALUES = {"", v.UNKNOWN_DATASET}

# The enums each schema must hold (wherever in the schema they sit): family -> how many.
EXPECTED = {
    "metadata-row": {"CLASSES": 1, "DX_TYPES": 1, "SEXES": 1, "LOCALIZATIONS": 1, "DATASETS": 1},
    "manifest-row": {"CLASSES": 1, "SPLITS": 1},
    "candidates-row": {"CLASSES": 1, "DX_TYPES": 1, "IMAGE_TYPES": 1, "SPLITS": 1},
    "decisions-row": {"IMAGE_TYPES": 1},
    "split-registry-row": {"SPLITS": 1},
}


def enums(node, path=()):
    """(JSON path, enum values) of every enum in a schema."""
    if isinstance(node, dict):
        if isinstance(node.get("enum"), list):
            yield "/".join(map(str, path)), node["enum"]
        for key, child in node.items():
            yield from enums(child, (*path, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from enums(child, (*path, index))


def family_of(values) -> str | None:
    """The vocabulary an enum draws on: the family sharing a telling value with it."""
    telling = set(map(str, values)) - SHARED_VALUES
    found = [name for name, forms in FAMILIES.items() if telling & {value for form in forms for value in form}]
    assert len(found) <= 1, f"enum {values} mixes the vocabularies {found}"
    return found[0] if found else None


def vocabulary_enums(schema_file: Path):
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    for path, values in enums(schema):
        name = family_of(values)
        if name:
            yield path, values, name


@pytest.mark.parametrize("schema_file", SCHEMAS, ids=lambda p: p.name)
def test_schema_enums_equal_the_vocabulary(schema_file):
    """Every enum that uses a vocabulary's values lists exactly that vocabulary, in its order ('' may come first)."""
    for path, values, name in vocabulary_enums(schema_file):
        values = [v for v in values if v is not None]  # null: an optional params key left unset
        listed = tuple(values[1:] if values[:1] == [""] else values)
        assert listed in FAMILIES[name], (f"{schema_file.name} {path}: enum {listed} differs from "
                                          f"vocabulary.{name} {FAMILIES[name][0]}")


@pytest.mark.parametrize("schema_name", sorted(EXPECTED))
def test_schemas_enumerate_the_vocabulary_where_expected(schema_name):
    found = {}
    for _, _, name in vocabulary_enums(ROOT / "schemas" / f"{schema_name}.schema.json"):
        found[name] = found.get(name, 0) + 1
    assert found == EXPECTED[schema_name]


def test_params_schema_uses_the_image_types_and_dataset_values():
    names = {name for _, _, name in vocabulary_enums(ROOT / "schemas" / "params.schema.json")}
    assert {"IMAGE_TYPES", "DATASETS"} <= names


def test_metadata_row_schema_columns_are_the_release_columns():
    schema = json.loads((ROOT / "schemas" / "metadata-row.schema.json").read_text(encoding="utf-8"))
    assert tuple(schema["required"]) == v.HAM_COLUMNS
    assert tuple(schema["properties"]) == v.RELEASE_COLUMNS


def test_metadata_row_schema_describes_each_class_and_dx_type_by_its_name():
    schema = json.loads((ROOT / "schemas" / "metadata-row.schema.json").read_text(encoding="utf-8"))
    for field, names in (("dx", v.CLASS_NAMES), ("dx_type", v.DX_TYPES)):
        description = schema["properties"][field]["description"]
        assert [code for code, name in names.items() if f"{name} ({code})" not in description] == []


def test_a_drifted_schema_is_caught(tmp_path):
    """The check above fails on a schema that lists one class too many or misses a site."""
    schema = json.loads((ROOT / "schemas" / "metadata-row.schema.json").read_text(encoding="utf-8"))
    schema["properties"]["dx"]["enum"].append("scc")
    schema["properties"]["localization"]["enum"].remove("acral")
    damaged = tmp_path / "metadata-row.schema.json"
    damaged.write_text(json.dumps(schema), encoding="utf-8")
    wrong = []
    for path, values, name in vocabulary_enums(damaged):
        if tuple(values) not in FAMILIES[name]:
            wrong.append(path)
    assert wrong == ["properties/dx", "properties/localization"]


# ------------------------------------------------------------------------------------------------ within the module

def test_spellings_lead_to_values():
    assert set(v.DX_TYPE_OF.values()) == set(v.DX_TYPES)
    assert set(v.SEX_OF.values()) == set(v.SEXES)
    assert set(v.LOCALIZATION_OF.values()) == set(v.LOCALIZATIONS)
    for table in (v.DX_TYPE_OF, v.SEX_OF, v.LOCALIZATION_OF):
        assert all(key == key.strip().lower() for key in table), "spellings are compared lower-cased and stripped"


def test_subsets_and_codes():
    assert v.TRUNK_PARTS < set(v.LOCALIZATIONS) and "trunk" in v.LOCALIZATIONS
    assert set(v.HISTO_ONLY_DATASETS) < set(v.DATASETS)
    assert v.UNKNOWN_DATASET not in v.DATASETS
    assert sorted(column.lower() for column in v.GROUND_TRUTH_COLUMNS) == sorted(v.CLASSES)
    assert tuple(v.ANNOTATION_KEYS.values()) == v.IMAGE_TYPES
    assert v.RELEASE_COLUMNS[:len(v.HAM_COLUMNS)] == v.HAM_COLUMNS


def test_isic_maps_cover_every_release_value():
    assert tuple(v.ISIC_DIAGNOSIS) == v.CLASSES
    assert tuple(v.ISIC_CONFIRM_TYPE) == tuple(v.DX_TYPES)
    assert set(v.ISIC_SITE) == set(v.LOCALIZATIONS)
    assert tuple(v.ISIC_SEX) == v.SEXES
    assert tuple(v.ISIC_IMAGE_TYPE) == v.IMAGE_TYPES


def test_reverse_maps_undo_the_forward_ones():
    names = {dx: diagnosis for dx, (diagnosis, _, _) in v.ISIC_DIAGNOSIS.items()}
    confirm = {dx_type: confirm for dx_type, (confirm, _) in v.ISIC_CONFIRM_TYPE.items()}
    for reverse, forward in ((v.DX_TYPE_FROM_ISIC, confirm), (v.IMAGE_TYPE_FROM_ISIC, v.ISIC_IMAGE_TYPE)):
        assert {forward[ours]: ours for ours in forward} == reverse  # one to one and complete
    # The one deliberate exception: the archive's "squamous cell carcinoma" (Bowen's disease) is akiec too.
    assert {isic: dx for isic, dx in v.DIAGNOSIS_FROM_ISIC.items() if names[dx] != isic} == \
        {"squamous cell carcinoma": "akiec"}
    assert all(v.DIAGNOSIS_FROM_ISIC[name] == dx for dx, name in names.items())
    # Sites: every reading goes back to the site it came from, and only the unambiguous ones are read.
    assert all(v.ISIC_SITE[ours] == isic for isic, ours in v.SITE_FROM_ISIC.items())
    assert v.SITE_FROM_ISIC == {"posterior torso": "back", "palms/soles": "acral",
                                "upper extremity": "upper extremity", "lower extremity": "lower extremity"}
    assert all(key == key.lower() for table in (v.DIAGNOSIS_FROM_ISIC, v.DX_TYPE_FROM_ISIC, v.SITE_FROM_ISIC,
                                                v.IMAGE_TYPE_FROM_ISIC) for key in table)


def test_one_to_one_inverse_drops_shared_and_empty_values():
    assert v.one_to_one_inverse({"a": "x", "b": "x", "c": "y", "d": ""}) == {"y": "c"}


# ------------------------------------------------------------------------------------------------ age

@pytest.mark.parametrize("raw, expected", [("47", 47.0), (" 80.0 ", 80.0), ("0", 0.0), ("130", 130.0), ("", None),
                                           ("  ", None)])
def test_parse_age(raw, expected):
    assert v.parse_age(raw) == expected


@pytest.mark.parametrize("raw, message", [("abc", "age 'abc' is not a number"), ("-3", "age '-3' is out of range"),
                                          ("nan", "age 'nan' is out of range"), ("inf", "age 'inf' is out of range"),
                                          ("131", "age '131' is out of range")])
def test_parse_age_rejects_non_ages(raw, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        v.parse_age(raw)


def test_isic_export_reads_ages_with_the_same_parser():
    """'nan' and 'inf' used to escape the export's own parser as a traceback (int(nan)); now they are named."""
    from pipeline.common import PipelineError
    from pipeline.isic_export import to_isic_rows
    row = {"lesion_id": "HAM_0000001", "image_id": "ISIC_0000001", "dx": "nv", "dx_type": "histo", "age": "nan",
           "sex": "male", "localization": "back"}
    with pytest.raises(PipelineError, match=r"^row 1 \(ISIC_0000001\): age 'nan' is out of range$"):
        to_isic_rows([row], "a", "b")


# ------------------------------------------------------------------------------------------------ one definition

# Modules that still hold a copy, until they import from vocabulary.py. validate.py is being split by another
# branch of issue 8 (its DATASETS, HISTO_ONLY_DATASETS and TRUNK_PARTS move here when that is merged).
NOT_YET: set[str] = set()


def vocabulary_literals():
    """Every tuple, set and dict of strings the vocabulary defines (a dict also by its keys, in order)."""
    found = {}
    for name, value in vars(v).items():
        if name.startswith("_") or not isinstance(value, (tuple, frozenset, dict)) or len(value) < 2:
            continue
        if isinstance(value, dict):
            found[("dict", tuple(value.items()))] = name
            found[("keys", tuple(value))] = name
        elif all(isinstance(item, str) for item in value):
            found[("set", frozenset(value))] = name
            if isinstance(value, tuple):
                found[("tuple", value)] = name
    return found


def literal_shapes(node):
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return []
    if isinstance(value, dict):
        shapes = [("keys", tuple(value))]
        if all(isinstance(item, (str, tuple)) for item in value.values()):
            shapes.append(("dict", tuple(value.items())))
        return shapes
    if isinstance(value, (tuple, list)) and all(isinstance(item, str) for item in value):
        return [("tuple", tuple(value))]
    if isinstance(value, set) and all(isinstance(item, str) for item in value):
        return [("set", frozenset(value))]
    return []


def test_no_module_keeps_a_copy_of_the_vocabulary():
    known = vocabulary_literals()
    copies = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        relative = path.relative_to(ROOT / "pipeline").as_posix()
        if relative == "vocabulary.py" or relative in NOT_YET:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                for shape in literal_shapes(node):
                    if shape in known:
                        copies.append(f"pipeline/{relative}:{node.lineno} repeats vocabulary.{known[shape]}")
    assert copies == []
