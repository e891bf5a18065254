"""Stage `metadata`: age binning, normalisation of raw fields, and `build_metadata` (every candidate accounted
for, lesions that disagree excluded, stable IDs from the append-only registries, de-identified output).
Candidate hashes and official IDs come from the real HAM10000 manifest where $HAM_DATA has it, else from the
`some_images` fixture's made-up manifest (the test of official lesion IDs shared across sources makes its own)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from pipeline.common import read_csv, write_csv
from pipeline.ingest import CANDIDATE_COLUMNS
from pipeline.metadata import Excluded, bin_age, build_metadata, normalise
from pipeline.unify import load_rules
from pipeline.vocabulary import ISIC_CLASS_NODE

PARAMS = {"age_cap": 85, "ids": {"image_prefix": "ISIC_", "image_start": 9000000, "lesion_prefix": "HAM_",
                                 "lesion_start": 9000000},
          "official_lesion_ids_from": []}


@pytest.fixture(scope="module")
def rules():
    return load_rules(None)


# ------------------------------------------------------------------------------------------------- bin_age

@pytest.mark.parametrize("raw, expected", [
    ("47", "45.0"), ("48", "50.0"), ("47.5", "50.0"), ("45", "45.0"), ("2", "0.0"), ("3", "5.0"), ("0", "0.0"),
    ("84", "85.0"), ("85", "85.0"), ("90", "85.0"), ("101", "85.0"), (" 62 ", "60.0"), ("", ""), ("  ", ""),
])
def test_bin_age(raw, expected):
    assert bin_age(raw, 85) == expected


@pytest.mark.parametrize("raw", ["abc", "-3", "nan", "inf", "200", "4O"])
def test_bin_age_excludes_non_ages(raw):
    with pytest.raises(Excluded, match=re.escape(repr(raw.strip()))):
        bin_age(raw, 85)


# ------------------------------------------------------------------------------------------------- normalise

def raw(**fields) -> dict:
    base = {"dx": "nv", "diagnosis": "", "dx_type": "histo", "age": "47", "sex": "male", "localization": "back",
            "source": "vidir_modern"}
    return {**base, **fields}


@pytest.mark.parametrize("given, expected", [
    ("male", "male"), ("M", "male"), ("m", "male"), ("Female", "female"), ("f", "female"), ("w", "female"),
    ("", "unknown"), ("unknown", "unknown"), ("U", "unknown"), (" F ", "female")])
def test_normalise_sex(rules, given, expected):
    assert normalise(raw(sex=given), rules, PARAMS)["sex"] == expected


@pytest.mark.parametrize("given, expected", [
    ("back", "back"), ("Leg", "lower extremity"), ("lower limb", "lower extremity"), ("arm", "upper extremity"),
    ("Upper Limb", "upper extremity"), ("genitalia", "genital"), ("", "unknown"), ("Face", "face"),
    ("lower extremity", "lower extremity")])
def test_normalise_site(rules, given, expected):
    assert normalise(raw(localization=given), rules, PARAMS)["localization"] == expected


def test_normalise_fields(rules):
    assert normalise(raw(dx="MEL", dx_type="Histopathology", age="48"), rules, PARAMS) == {
        "dx": "mel", "dx_type": "histo", "age": "50.0", "sex": "male", "localization": "back",
        "dataset": "vidir_modern", "isic_diagnosis": ISIC_CLASS_NODE["mel"]}
    assert normalise(raw(dx_type="follow-up"), rules, PARAMS)["dx_type"] == "follow_up"
    unified = normalise(raw(dx="", diagnosis="Nodular melanoma, Breslow 1.2 mm"), rules, PARAMS)
    assert unified["dx"] == "mel"
    declared = normalise(raw(source="vienna", extra='{"dataset": "vienna_dias"}'), rules, PARAMS)
    assert declared["dataset"] == "vienna_dias"
    assert unified["isic_diagnosis"] == f"{ISIC_CLASS_NODE['mel']}:Melanoma Invasive:Melanoma Invasive, Nodular"


JUNCTIONAL = f"{ISIC_CLASS_NODE['nv']}:Nevus, NOS, Junctional"


@pytest.mark.parametrize("fields, expected", [
    ({"dx": "nv"}, ISIC_CLASS_NODE["nv"]),  # a class and no report (the public release): the class's node
    ({"dx": "nv", "diagnosis": "Junctional nevus"}, JUNCTIONAL),  # the report refines the class
    ({"dx": "nv", "diagnosis": "Seborrheic keratosis"}, ISIC_CLASS_NODE["nv"]),  # a report of another class: ignored
    ({"dx": "", "diagnosis": "Junctional nevus"}, JUNCTIONAL),
    ({"dx": "nv", "extra": '{"isic_diagnosis": "%s"}' % JUNCTIONAL}, JUNCTIONAL),  # an isic source names the node
    ({"dx": "nv", "diagnosis": "Compound nevus", "extra": '{"isic_diagnosis": "%s"}' % JUNCTIONAL}, JUNCTIONAL),
    ({"dx": "bkl", "extra": '{"isic_diagnosis": "%s"}' % JUNCTIONAL}, ISIC_CLASS_NODE["bkl"]),  # not under bkl
])
def test_normalise_isic_diagnosis(rules, fields, expected):
    assert normalise(raw(**fields), rules, PARAMS)["isic_diagnosis"] == expected


@pytest.mark.parametrize("fields, reason", [
    ({"dx": "melanoma?"}, "dx 'melanoma?' is not one of"),
    ({"dx": "scc"}, "dx 'scc' is not one of"),
    ({"dx": "", "diagnosis": ""}, "no diagnosis given"),
    ({"dx": "", "diagnosis": "no signs of residual tumor"}, "-> exclude"),
    ({"dx": "", "diagnosis": "blah blah"}, "no-rule-matched"),
    ({"dx_type": "biopsy"}, "dx_type 'biopsy'"),
    ({"sex": "x"}, "sex 'x'"),
    ({"localization": "elbow"}, "localization 'elbow'"),
    ({"age": "abc"}, "age 'abc' is not a number"),
])
def test_normalise_excludes_with_reason(rules, fields, reason):
    with pytest.raises(Excluded, match=re.escape(reason)):
        normalise(raw(**fields), rules, PARAMS)


# ------------------------------------------------------------------------------------------------- build_metadata

@pytest.fixture(scope="module")
def manifest(some_images) -> list[dict]:
    return some_images.manifest  # the real HAM10000 manifest where $HAM_DATA has it, else made-up rows


def candidate(entry: dict, number: int, **fields) -> dict:
    """A candidate row for one real image, with raw (identifying) provenance that must not reach the release."""
    row = {column: "" for column in CANDIDATE_COLUMNS}
    row.update({"candidate_id": entry["sha256"], "source": entry["dataset"], "kind": "export",
                "origin": f"Patient_Huber_{number:03d}_2003-04-{number % 28 + 1:02d}.jpg", "member": f"row {number}",
                "object": f"{entry['sha256']}.jpg", "width": "600", "height": "450", "format": "JPEG",
                "lesion_key": f"L-{entry['lesion_id']}", "dx": entry["dx"], "dx_type": entry["dx_type"],
                "age": str(20 + number % 60), "sex": "female" if number % 2 else "male", "localization": "back",
                "visit_date": f"2003-04-{number % 28 + 1:02d}"})
    row.update(fields)
    return row


def write_inputs(folder: Path, candidates: list[dict], drop: set[str] = frozenset(),
                 duplicates: dict[str, str] | None = None) -> tuple[Path, Path, Path]:
    duplicates = duplicates or {}
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "candidates.csv", candidates, CANDIDATE_COLUMNS)
    write_csv(folder / "decisions.csv", ({
        "candidate_id": c["candidate_id"], "image_type": "clinic" if c["candidate_id"] in drop else "dsc",
        "confidence": "0.9712", "decided_by": "model", "keep": "false" if c["candidate_id"] in drop else "true"}
        for c in candidates), ("candidate_id", "image_type", "confidence", "decided_by", "keep"))
    write_csv(folder / "standardised.csv", ({
        "candidate_id": c["candidate_id"], "file": f"{c['candidate_id']}-abc.jpg", "sha256": "0" * 64,
        "bytes": "1000", "duplicate_of": duplicates.get(c["candidate_id"], "")}
        for c in candidates if c["candidate_id"] not in drop), ("candidate_id", "file", "sha256", "bytes",
                                                                 "duplicate_of"))
    return folder / "candidates.csv", folder / "decisions.csv", folder / "standardised.csv"


def by_lesion(manifest: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for entry in manifest:
        groups.setdefault(entry["lesion_id"], []).append(entry)
    return groups


@pytest.fixture()
def scenario(manifest):
    """Real images: single-image lesions, a two-image lesion, and the awkward cases, all from vidir_modern."""
    modern = [e for e in manifest if e["dataset"] == "vidir_modern" and e["dx_type"] == "histo"]
    groups = by_lesion(modern)
    pairs = [g for g in groups.values() if len(g) == 2]
    singles = [g[0] for g in groups.values() if len(g) == 1]
    assert len(pairs) >= 2 and len(singles) >= 10
    rows, number = [], 0

    def add(entry, **fields):
        nonlocal number
        number += 1
        rows.append(candidate(entry, number, **fields))
        return rows[-1]

    ok = [add(e, sex="female", diagnosis="Compound naevus, excised 2003-04-01 by Dr Huber") for e in singles[:5]]
    agree = [add(e, sex="male", age=age) for e, age in zip(pairs[0], ("47", "52"))]  # youngest wins: 45.0
    disagree = [add(e, sex=sex) for e, sex in zip(pairs[1], ("male", "female"))]
    official = add(singles[5], image_id=singles[5]["image_id"], sex="male")
    unified = add(singles[6], dx="", diagnosis="Nodular melanoma, Breslow 1.2 mm, seen 2004-05-06", sex="male")
    bad_dx = add(singles[7], dx="xyz")
    bad_age = add(singles[8], age="abc")
    no_key = add(singles[9], lesion_key="")
    filtered = add(singles[10])
    duplicate = add(singles[11])
    rosendahl_consensus = add(singles[12], source="rosendahl", dx_type="consensus")
    return {"rows": rows, "ok": ok, "agree": agree, "disagree": disagree, "official": official,
            "unified": unified, "bad_dx": bad_dx, "bad_age": bad_age, "no_key": no_key, "filtered": filtered,
            "duplicate": duplicate, "rosendahl_consensus": rosendahl_consensus, "spare": singles[13:20]}


def run(tmp_path: Path, name: str, scenario: dict, rows: list[dict]) -> dict:
    files = write_inputs(tmp_path / name, rows, drop={scenario["filtered"]["candidate_id"]},
                         duplicates={scenario["duplicate"]["candidate_id"]: scenario["ok"][0]["candidate_id"]})
    out = tmp_path / name / "out"
    counts = build_metadata(*files, PARAMS, tmp_path / "registry", out)
    return {"counts": counts, "metadata": read_csv(out / "metadata.csv"), "images": read_csv(out / "images.csv"),
            "excluded": read_csv(out / "excluded.csv"), "out": out}


def test_build_metadata_accounts_for_every_candidate(tmp_path, scenario):
    result = run(tmp_path, "v1", scenario, scenario["rows"])
    metadata, images, excluded = result["metadata"], result["images"], result["excluded"]
    in_metadata = {i["candidate_id"] for i in images}
    in_excluded = {e["candidate_id"] for e in excluded}
    every = {c["candidate_id"] for c in scenario["rows"]}
    assert in_metadata | in_excluded == every and not in_metadata & in_excluded
    assert len(metadata) + len(excluded) == len(scenario["rows"]) == result["counts"]["candidates"]
    assert result["counts"]["rows"] == len(metadata) == len(images)
    assert list(metadata[0]) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]

    reason = {e["candidate_id"]: (e["stage"], e["reason"]) for e in excluded}
    assert reason[scenario["filtered"]["candidate_id"]][0] == "filter"
    assert "image type clinic" in reason[scenario["filtered"]["candidate_id"]][1]
    assert reason[scenario["duplicate"]["candidate_id"]][0] == "standardise"
    assert reason[scenario["no_key"]["candidate_id"]] == ("metadata", "no lesion key")
    assert reason[scenario["bad_dx"]["candidate_id"]][0] == "metadata"
    assert "dx 'xyz'" in reason[scenario["bad_dx"]["candidate_id"]][1]
    assert "age 'abc'" in reason[scenario["bad_age"]["candidate_id"]][1]
    for row in scenario["disagree"]:
        stage, why = reason[row["candidate_id"]]
        assert stage == "metadata" and "disagree" in why and "sex: female, male" in why
    stage, why = reason[scenario["rosendahl_consensus"]["candidate_id"]]
    assert stage == "validate" and "histo" in why

    row_of = {i["candidate_id"]: m for i, m in zip(images, metadata)}
    assert all(i["image_id"] == m["image_id"] and i["lesion_id"] == m["lesion_id"] for i, m in zip(images, metadata))
    assert row_of[scenario["official"]["candidate_id"]]["image_id"] == scenario["official"]["image_id"]
    assert row_of[scenario["unified"]["candidate_id"]]["dx"] == "mel"
    # The ISIC node travels in images.csv (metadata.csv keeps the study's columns): the report's, or the class's.
    isic_of = {i["candidate_id"]: i["isic_diagnosis"] for i in images}
    assert result["counts"]["isic_deeper"] == sum(node != ISIC_CLASS_NODE[m["dx"]] for node, m in
                                                  zip((i["isic_diagnosis"] for i in images), metadata)) > 0
    assert isic_of[scenario["unified"]["candidate_id"]].endswith(":Melanoma Invasive, Nodular")
    for row in scenario["ok"]:
        dx = row_of[row["candidate_id"]]["dx"]
        assert isic_of[row["candidate_id"]] == (f"{ISIC_CLASS_NODE['nv']}:Nevus, NOS, Compound" if dx == "nv"
                                                else ISIC_CLASS_NODE[dx])
    agree = [row_of[r["candidate_id"]] for r in scenario["agree"]]
    assert agree[0]["lesion_id"] == agree[1]["lesion_id"]
    assert [a["age"] for a in agree] == ["45.0", "45.0"]
    ours = [m for m in metadata if m["image_id"] != scenario["official"]["image_id"]]
    assert all(re.fullmatch(r"ISIC_9\d{6}", m["image_id"]) for m in ours)
    assert all(re.fullmatch(r"HAM_9\d{6}", m["lesion_id"]) for m in metadata)
    assert len({m["image_id"] for m in metadata}) == len(metadata)
    assert len({m["lesion_id"] for m in metadata}) == len(metadata) - 1  # one lesion has two images

    # Only released images and lesions take a number: those harmonising or validation excluded do not, so the
    # new IDs run without gaps from the configured start.
    registered = {r["key"]: r["id"] for r in read_csv(tmp_path / "registry" / "images.csv")}
    assert set(registered) == in_metadata
    assert scenario["rosendahl_consensus"]["candidate_id"] not in registered
    assert not {r["candidate_id"] for r in scenario["disagree"]} & set(registered)
    assert sorted(m["image_id"] for m in ours) == [f"ISIC_{9000000 + n}" for n in range(len(ours))]
    lesion_ids = sorted({m["lesion_id"] for m in metadata})
    assert lesion_ids == [f"HAM_{9000000 + n}" for n in range(len(lesion_ids))]
    assert len(read_csv(tmp_path / "registry" / "lesions.csv")) == len(lesion_ids)


def test_metadata_is_de_identified(tmp_path, scenario):
    result = run(tmp_path, "v1", scenario, scenario["rows"])
    text = (result["out"] / "metadata.csv").read_text()
    for row in scenario["rows"]:
        assert row["origin"] not in text
        assert "Patient_Huber" not in text and "Huber" not in text
        if row["diagnosis"]:
            assert row["diagnosis"] not in text
        assert row["visit_date"] not in text
        if row["lesion_key"]:
            assert row["lesion_key"] not in text
    assert not re.search(r"\d{4}-\d{2}-\d{2}", text), "a date reached metadata.csv"
    assert "naevus" not in text.lower() and "breslow" not in text.lower()


def test_rebuild_keeps_ids_and_appends(tmp_path, scenario):
    first = run(tmp_path, "v1", scenario, scenario["rows"])
    registry = tmp_path / "registry"
    images_v1, lesions_v1 = read_csv(registry / "images.csv"), read_csv(registry / "lesions.csv")

    newcomer = candidate(scenario["spare"][0], 99, sex="male")
    # The new candidate is listed first: row order must not matter for the IDs.
    second = run(tmp_path, "v2", scenario, [newcomer, *scenario["rows"]])
    images_v2, lesions_v2 = read_csv(registry / "images.csv"), read_csv(registry / "lesions.csv")
    assert images_v2[:len(images_v1)] == images_v1 and len(images_v2) == len(images_v1) + 1
    assert lesions_v2[:len(lesions_v1)] == lesions_v1 and len(lesions_v2) == len(lesions_v1) + 1

    id_v1 = {i["candidate_id"]: (i["image_id"], i["lesion_id"]) for i in first["images"]}
    id_v2 = {i["candidate_id"]: (i["image_id"], i["lesion_id"]) for i in second["images"]}
    assert {c: id_v2[c] for c in id_v1} == id_v1
    ours = [int(i[0][5:]) for i in id_v1.values() if i[0] != scenario["official"]["image_id"]]
    lesions = [int(i[1][4:]) for i in id_v1.values()]
    assert id_v2[newcomer["candidate_id"]] == (f"ISIC_{max(ours) + 1:07d}", f"HAM_{max(lesions) + 1:07d}")
    assert second["counts"]["new_image_ids"] == 1 and second["counts"]["new_lesion_ids"] == 1

    # The same inputs again: nothing new, the registries and metadata unchanged byte for byte.
    registry_bytes = (registry / "images.csv").read_bytes()
    third = run(tmp_path, "v3", scenario, [newcomer, *scenario["rows"]])
    assert third["counts"]["new_image_ids"] == 0 and (registry / "images.csv").read_bytes() == registry_bytes
    assert (third["out"] / "metadata.csv").read_bytes() == (second["out"] / "metadata.csv").read_bytes()

    # An image dropped from the sources keeps its registry entry; when it comes back it gets the same ID.
    gone = scenario["ok"][1]
    run(tmp_path, "v4", scenario, [r for r in [newcomer, *scenario["rows"]] if r is not gone])
    assert read_csv(registry / "images.csv") == images_v2
    back = run(tmp_path, "v5", scenario, [newcomer, *scenario["rows"]])
    assert {i["candidate_id"]: i["image_id"] for i in back["images"]}[gone["candidate_id"]] == \
        id_v1[gone["candidate_id"]][0]


def test_official_image_id_conflict_is_an_error(tmp_path, scenario):
    run(tmp_path, "v1", scenario, scenario["rows"])
    official = scenario["official"]
    # Another image now claims the official ID the registry already gave to a different image.
    thief = candidate(scenario["spare"][1], 98, image_id=official["image_id"], sex="male")
    from pipeline.common import PipelineError
    with pytest.raises(PipelineError, match=official["image_id"]):
        run(tmp_path, "v2", scenario, [*scenario["rows"], thief])


def test_official_lesion_ids_are_global_across_sources(tmp_path):
    """Two sources that give official HAM_ lesion IDs share one: its images from both sources are one lesion, with
    that ID. Keys of other sources, and keys that are not HAM_ IDs, stay per source."""
    def entry(number: int, dataset: str, lesion_key: str, image_id: str = "") -> dict:
        return {"sha256": hashlib.sha256(f"image {number}".encode()).hexdigest(), "dataset": dataset,
                "lesion_id": "", "dx": "nv", "dx_type": "histo", "image_id": image_id}

    def add(number, dataset, lesion_key, image_id=""):
        return candidate(entry(number, dataset, lesion_key, image_id), number, lesion_key=lesion_key,
                         image_id=image_id, sex="male", age="47")

    rows = [add(1, "vidir_modern", "HAM_0000118", "ISIC_0027419"), add(2, "vidir_molemax", "HAM_0000118"),
            add(3, "vidir_modern", "HAM_0002730", "ISIC_0025030"),
            add(4, "rosendahl", "HAM_0000500"), add(5, "vienna_dias", "HAM_0000500"),  # not official sources
            add(6, "vidir_modern", "L-7"), add(7, "vidir_molemax", "L-7")]  # not HAM_ IDs
    params = {**PARAMS, "official_lesion_ids_from": ["vidir_modern", "vidir_molemax"]}
    out = tmp_path / "out"
    counts = build_metadata(*write_inputs(tmp_path, rows), params, tmp_path / "registry", out)
    assert counts["rows"] == 7 and read_csv(out / "excluded.csv") == []
    lesion_of = {i["candidate_id"]: i["lesion_id"] for i in read_csv(out / "images.csv")}
    assert [lesion_of[r["candidate_id"]] for r in rows] == [
        "HAM_0000118", "HAM_0000118", "HAM_0002730", "HAM_9000000", "HAM_9000003", "HAM_9000001", "HAM_9000002"]
    assert read_csv(tmp_path / "registry" / "lesions.csv") == [
        {"key": "HAM_0000118", "id": "HAM_0000118"}, {"key": "HAM_0002730", "id": "HAM_0002730"},
        {"key": "rosendahl/HAM_0000500", "id": "HAM_9000000"}, {"key": "vidir_modern/L-7", "id": "HAM_9000001"},
        {"key": "vidir_molemax/L-7", "id": "HAM_9000002"}, {"key": "vienna_dias/HAM_0000500", "id": "HAM_9000003"}]
    assert counts["new_lesion_ids"] == 6


@pytest.mark.parametrize("candidate, expected", [
    ({"source": "public", "kind": "ham10000", "extra": '{"dataset": "vidir_molemax"}'}, "vidir_molemax"),
    # a source's declared dataset reaches the candidate's extra the same way (ingest writes it there)
    ({"source": "queensland", "kind": "pptx", "extra": '{"dataset": "rosendahl"}'}, "rosendahl"),
    ({"source": "rosendahl", "kind": "export", "extra": ""}, "rosendahl"),
    ({"source": "public", "kind": "ham10000", "extra": ""}, "unknown"),  # an ISIC 2018 test image
    ({"source": "archive", "kind": "isic", "extra": ""}, "unknown"),
    ({"source": "queensland", "kind": "export", "extra": ""}, None),  # nothing says: the stage fails
])
def test_dataset_of(candidate, expected):
    from pipeline.metadata import dataset_of

    assert dataset_of(candidate) == expected


def test_a_source_without_dataset_fails_the_stage_naming_it(tmp_path):
    """A configuration problem stops the stage with one line, instead of excluding every row of the source."""
    from click.testing import CliRunner

    from pipeline.cli import main

    def row(number: int, source: str, **fields) -> dict:
        base = {column: "" for column in CANDIDATE_COLUMNS}
        return {**base, "candidate_id": f"{number:064x}", "source": source, "kind": "export", "origin": f"{number}.jpg",
                "lesion_key": f"L{number}", "dx": "nv", "dx_type": "histo", **fields}

    candidates = [row(1, "rosendahl"), row(2, "batch2"), row(3, "batch2"), row(4, "batch3", extra='{"dataset": '
                                                                                                  '"vidir_modern"}')]
    paths = write_inputs(tmp_path / "in", candidates)
    params = tmp_path / "params.yaml"
    params.write_text(Path(__file__).resolve().parent.parent.joinpath("params.yaml").read_text())
    result = CliRunner().invoke(main, ["metadata", "--params", str(params), "--candidates", str(paths[0]),
                                       "--decisions", str(paths[1]), "--standardised", str(paths[2]),
                                       "--registry", str(tmp_path / "registry"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output == (f"Error: {paths[0]}: source batch2 (2 images) has no dataset value: its name is not one "
                             "of rosendahl, vidir_modern, vidir_molemax, vienna_dias; declare `dataset:` for it under "
                             "ingest.sources in params.yaml and run ingest again\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "registry").exists()
