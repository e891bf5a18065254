"""Stage `metadata`: candidates that survived the filter -> HAM10000-format metadata, validated, with stable IDs.

Free-text pathology is unified to a class by the ordered rules; raw ages, sexes and sites are normalised to the
release's vocabulary (ages binned to 5 years, capped); each image and lesion gets its ID from the registries.
Each image also gets its node of the ISIC diagnosis hierarchy (`isic_diagnosis`, a column of images.csv, not of
metadata.csv, which keeps the study's columns): the node an `isic` source names (when it lies under the class), else
the one the rules find in the report (when they find the same class), else the class's own node (a source that
gives dx without a report, like the public release).
Every candidate ends up either in `metadata.csv` or in `excluded.csv` with the stage and the reason. Rows that
the schema or the cross-field rules reject are excluded with the validator's message, and the stage fails if
what remains is still invalid: `dvc repro` never writes an invalid release. A source whose images have no
`dataset` value (its name is none of the release's and it declares none) stops the stage, naming the source: a
configuration problem is not a reason to exclude every row of a source.
De-identified: the release columns carry no free text, file names, slide text or dates.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from .common import PipelineError, is_training_material, read_csv, write_csv
from .registry import Registry
from .unify import coverage, load_rules, unify
from .tables import ValidRows, validate_metadata_rows, values_agree
from .vocabulary import (CLASSES, DATASETS, DX_TYPE_OF, DX_TYPES, ISIC_CLASS_NODE, LOCALIZATION_OF, PUBLIC_KINDS,
                         RELEASE_COLUMNS, SEX_OF, SEXES, UNKNOWN_DATASET, isic_class_of, isic_refines, parse_age)

METADATA_COLUMNS = RELEASE_COLUMNS  # metadata.csv holds exactly the release's columns
IMAGES_COLUMNS = ("image_id", "lesion_id", "candidate_id", "file", "sha256", "split_hint", "isic_diagnosis")
VALID_ROWS = "valid_rows.json"  # beside the outputs, not one of them: rows the schema check passed before
EXCLUDED_COLUMNS = ("candidate_id", "source", "origin", "member", "stage", "reason")


OFFICIAL_LESION = re.compile(r"^HAM_\d{7}$")


class Excluded(Exception):
    pass


def bin_age(raw: str, cap: int) -> str:
    """'47' -> '45.0', '48' -> '50.0' (nearest 5, halves up), over the cap -> the cap; '' stays ''."""
    try:
        value = parse_age(raw)
    except ValueError as error:
        raise Excluded(str(error)) from None
    if value is None:
        return ""
    return f"{min(cap, 5 * math.floor(value / 5 + 0.5)):.1f}"


def normalise(candidate: dict, rules, params: dict) -> dict:
    """The release fields of one candidate (without IDs) and its `isic_diagnosis`; raises Excluded with the
    reason."""
    if candidate["dx"].strip():
        dx = candidate["dx"].strip().lower()
        if dx not in CLASSES:
            raise Excluded(f"dx {candidate['dx']!r} is not one of {', '.join(CLASSES)}")
        isic = isic_diagnosis_of(candidate, dx, rules)
    else:
        if not candidate["diagnosis"].strip():
            raise Excluded("no diagnosis given")
        outcome = unify(candidate["diagnosis"], rules)
        if outcome.dx not in CLASSES:
            raise Excluded(f"diagnosis {candidate['diagnosis']!r} -> {outcome.dx} (rule {outcome.rule})")
        dx, isic = outcome.dx, outcome.isic
    dx_type = DX_TYPE_OF.get(candidate["dx_type"].strip().lower())
    if dx_type is None:
        raise Excluded(f"dx_type {candidate['dx_type']!r} is not one of {', '.join(DX_TYPES)}")
    sex = SEX_OF.get(candidate["sex"].strip().lower())
    if sex is None:
        raise Excluded(f"sex {candidate['sex']!r} is not {', '.join(SEXES[:-1])} or {SEXES[-1]}")
    site = LOCALIZATION_OF.get(candidate["localization"].strip().lower())
    if site is None:
        raise Excluded(f"localization {candidate['localization']!r} is not in the release vocabulary")
    return {"dx": dx, "dx_type": dx_type, "age": bin_age(candidate["age"], params["age_cap"]), "sex": sex,
            "localization": site, "dataset": dataset_of(candidate),
            "isic_diagnosis": isic}


@lru_cache(maxsize=4096)
def _extra(text: str) -> dict:
    """A candidate's `extra` JSON, parsed once for the many rows that share one (read only: it is shared)."""
    return json.loads(text)


def isic_diagnosis_of(candidate: dict, dx: str, rules) -> str:
    """The ISIC node of a candidate whose source gives its class: the node the source names (an `isic` export)
    if it lies under dx, else the node the rules find in its report if they find dx too, else dx's own node."""
    named = _extra(candidate.get("extra") or "{}").get("isic_diagnosis", "")
    if named and isic_class_of(named) == dx:
        return named
    if candidate["diagnosis"].strip():
        outcome = unify(candidate["diagnosis"], rules)
        if outcome.dx == dx:
            return outcome.isic
    return ISIC_CLASS_NODE[dx]


def dataset_of(candidate: dict) -> str | None:
    """The image's collection: as recorded for the image in `extra` (per image by the release's newer edition,
    or the source's declared `dataset`, which ingest writes there), else the source's name where it is one of
    the release's datasets. Images of a public-release kind (ham10000, isic) that record none are 'unknown'.
    None where nothing says: a configuration problem of the source (see `check_datasets`)."""
    recorded = _extra(candidate.get("extra") or "{}").get("dataset", "")
    if recorded:
        return recorded
    if candidate["source"] in DATASETS:
        return candidate["source"]
    if candidate.get("kind") in PUBLIC_KINDS:
        return UNKNOWN_DATASET
    return None


def check_datasets(candidates: list[dict], candidates_csv) -> None:
    """Fail, naming the source, where a source's images have no dataset value: every row of that source would
    otherwise be excluded for one configuration reason."""
    lacking: dict[str, int] = defaultdict(int)
    for candidate in candidates:
        if dataset_of(candidate) is None and not is_training_material(candidate):
            lacking[candidate["source"]] += 1  # training material is never released: it needs no dataset
    if lacking:
        source, count = sorted(lacking.items())[0]
        others = f" (also: {', '.join(sorted(lacking)[1:])})" if len(lacking) > 1 else ""
        raise PipelineError(f"{candidates_csv}: source {source} ({count} image{'s' * (count != 1)}) has no dataset "
                            f"value: its name is not one of {', '.join(DATASETS)}; declare `dataset:` for it under "
                            f"ingest.sources in params.yaml and run ingest again{others}")


def _harmonise_lesions(rows: list[dict], exclude) -> list[dict]:
    """A lesion's images must agree on dx, sex and site (as the validator sees it: 'trunk' covers back, chest and
    abdomen); the age is the youngest (first visit)."""
    by_lesion = defaultdict(list)
    for row in rows:
        by_lesion[row["lesion_id"]].append(row)
    kept = []
    for lesion_id, group in by_lesion.items():
        disagree = [f for f in ("dx", "sex", "localization")
                    if not all(values_agree(f, group[0][f], r[f]) for r in group)]
        if disagree:
            values = "; ".join(f"{f}: {', '.join(sorted({r[f] for r in group}))}" for f in disagree)
            for row in group:
                exclude(row["_candidate"], "metadata", f"lesion {lesion_id}: its images disagree ({values})")
            continue
        ages = [float(r["age"]) for r in group if r["age"]]
        for row in group:
            row["age"] = f"{min(ages):.1f}" if ages else ""
        kept.extend(group)
    return kept


def build_metadata(candidates_csv: Path, decisions_csv: Path, standardised_csv: Path, params: dict,
                   registry_dir: Path, out_dir: Path, rules_path: Path | None = None) -> dict:
    candidates = read_csv(candidates_csv, ("candidate_id", "source", "origin", "member", "lesion_key"))
    decisions = {d["candidate_id"]: d for d in read_csv(decisions_csv, ("candidate_id", "keep", "image_type"))}
    standardised = {s["candidate_id"]: s for s in read_csv(standardised_csv, ("candidate_id", "file", "sha256"))}
    check_datasets(candidates, candidates_csv)
    rules = load_rules(rules_path)
    ids = params["ids"]

    def registries() -> tuple[Registry, Registry]:
        return (Registry(Path(registry_dir) / "images.csv", ids["image_prefix"], ids["image_start"]),
                Registry(Path(registry_dir) / "lesions.csv", ids["lesion_prefix"], ids["lesion_start"]))

    official_lesions = set(params.get("official_lesion_ids_from") or [])

    excluded: list[dict] = []

    def exclude(candidate, stage, reason):
        excluded.append({**{k: candidate[k] for k in ("candidate_id", "source", "origin", "member")},
                         "stage": stage, "reason": reason})

    accepted = []
    for candidate in candidates:
        decision = decisions.get(candidate["candidate_id"])
        if decision is None or decision["keep"] != "true":
            why = ("training material for the image-type filter (source role: training)"
                   if decision and decision.get("decided_by") == "training" else
                   f"image type {decision['image_type']} ({decision['decided_by']}, confidence "
                   f"{decision['confidence']})" if decision else "no filter decision")
            exclude(candidate, "filter", why)
            continue
        std = standardised[candidate["candidate_id"]]
        if std["duplicate_of"]:
            exclude(candidate, "standardise", std.get("duplicate_reason") or
                    f"standardised image identical to candidate {std['duplicate_of'][:12]}")
            continue
        if not candidate["lesion_key"].strip():
            exclude(candidate, "metadata", "no lesion key")
            continue
        try:
            fields = normalise(candidate, rules, params)
        except Excluded as reason:
            exclude(candidate, "metadata", str(reason))
            continue
        accepted.append((candidate, fields))

    def lesion_key(candidate):
        # Official lesion IDs are global (one lesion may appear in two sources); other keys are per source.
        if candidate["source"] in official_lesions and OFFICIAL_LESION.match(candidate["lesion_key"]):
            return candidate["lesion_key"]
        return f"{candidate['source']}/{candidate['lesion_key']}"

    def identify(rows: list[dict], images: Registry, lesions: Registry) -> list[dict]:
        """Each row's image and lesion ID from the registries (official IDs recorded, new keys numbered)."""
        for row in rows:
            candidate = row["_candidate"]
            if candidate["image_id"]:
                images.record_official(candidate["candidate_id"], candidate["image_id"])
            if candidate["source"] in official_lesions and OFFICIAL_LESION.match(candidate["lesion_key"]):
                lesions.record_official(lesion_key(candidate), candidate["lesion_key"])
        images.assign(row["_candidate"]["candidate_id"] for row in rows)
        lesions.assign(lesion_key(row["_candidate"]) for row in rows)
        for row in rows:
            row["lesion_id"] = lesions.ids[lesion_key(row["_candidate"])]
            row["image_id"] = images.ids[row["_candidate"]["candidate_id"]]
        return sorted(rows, key=lambda r: (r["lesion_id"], r["image_id"]))

    # Harmonising and validating need IDs, so they run on draft IDs first (registries not saved): an image or
    # lesion they exclude never takes a number, and the released IDs have no gaps.
    rows = identify([{**fields, "_candidate": c} for c, fields in accepted], *registries())
    rows = _harmonise_lesions(rows, exclude)
    valid = ValidRows(Path(out_dir) / VALID_ROWS)
    problems = validate_metadata_rows([{k: r[k] for k in METADATA_COLUMNS} for r in rows], "metadata.csv", valid)
    bad_rows = {p.row for p in problems if p.row}
    for index, row in enumerate(rows, start=1):
        if index in bad_rows:
            reasons = "; ".join(f"{p.field}={p.value!r}: {p.message}" for p in problems if p.row == index)
            exclude(row["_candidate"], "validate", reasons)
    images, lesions = registries()
    rows = identify([row for index, row in enumerate(rows, start=1) if index not in bad_rows], images, lesions)
    # Without the excluded rows the IDs are drawn again: checked again (the rows found valid above are known).
    remaining = validate_metadata_rows([{k: r[k] for k in METADATA_COLUMNS} for r in rows], "metadata.csv", valid)
    if remaining:
        first = remaining[0]
        raise PipelineError(f"metadata.csv row {first.row}: {first.field}={first.value!r}: {first.message} "
                            f"({len(remaining)} problem(s) left after excluding invalid rows)")

    images.save()
    lesions.save()
    out_dir = Path(out_dir)
    write_csv(out_dir / "metadata.csv", rows, METADATA_COLUMNS)
    write_csv(out_dir / "images.csv", (
        {"image_id": r["image_id"], "lesion_id": r["lesion_id"], "candidate_id": r["_candidate"]["candidate_id"],
         "file": standardised[r["_candidate"]["candidate_id"]]["file"],
         "sha256": standardised[r["_candidate"]["candidate_id"]]["sha256"],
         "split_hint": r["_candidate"].get("split_hint", ""), "isic_diagnosis": r["isic_diagnosis"]}
        for r in rows), IMAGES_COLUMNS)
    excluded.sort(key=lambda e: (e["source"], e["origin"], e["member"], e["candidate_id"]))
    write_csv(out_dir / "excluded.csv", excluded, EXCLUDED_COLUMNS)
    valid.save()
    texts_by_source = defaultdict(list)
    for candidate in candidates:
        if candidate["diagnosis"].strip() and not candidate["dx"].strip():
            texts_by_source[candidate["source"]].append(candidate["diagnosis"])
    return {"candidates": len(candidates), "rows": len(rows), "excluded": len(excluded),
            "new_image_ids": len(images.added), "new_lesion_ids": len(lesions.added),
            "isic_deeper": sum(isic_refines(r["dx"], r["isic_diagnosis"]) for r in rows),  # nodes below the class
            "unify_coverage": {source: coverage(texts, rules) for source, texts in sorted(texts_by_source.items())}}
