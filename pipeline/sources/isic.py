"""`isic` sources: an ISIC Archive export as `isic-cli image download` writes it.

Layout of the source root:
  ISIC_0024306.jpg ...   one image per archive image, named by its isic_id (in the root or in subfolders)
  metadata.csv           one row per image, ISIC field names: isic_id, attribution, copyright_license,
                         age_approx, anatom_site_general, diagnosis_confirm_type, image_type, lesion_id, sex, and
                         the diagnosis: today one column per level of the archive's diagnosis hierarchy,
                         diagnosis_1 .. diagnosis_5 (trailing levels may be missing or empty), in older exports a
                         flat `diagnosis` (further columns such as benign_malignant are ignored)
  attribution.txt, licenses/
                         written by isic-cli beside the images; skipped

Options:
  metadata:         the metadata CSV, relative to the source root (default `metadata.csv`)
  images:           folder holding the images, relative to the source root (default: the source root)
  localization_map: extra or overriding entries for the anatom_site_general -> localization mapping below
  image_type:       dsc / macro / clinic for every image, overriding the archive's image_type (every kind takes it)

Mapping to our fields (ISIC vocabulary as in the archive's HAM10000 collection, 11720 images; the maps are the
reverse of the ISIC export's, in pipeline/vocabulary.py):
  image_id        isic_id
  lesion_key      lesion_id (the archive's IL_... IDs, one to one with the release's HAM_... IDs)
  diagnosis       the archive's diagnosis: the levels joined by ':' (a node of the hierarchy, "Benign:Benign
                  melanocytic proliferations:Nevus:Nevus, NOS, Junctional"), or the older flat value unchanged
  isic_diagnosis  (extra field) the node: the joined levels; for an older flat diagnosis its node in
                  vocabulary.ISIC_NODE_FROM_FLAT (each class name is its class's node, squamous cell carcinoma is
                  squamous cell carcinoma in situ); empty when neither applies. The metadata stage keeps it as the
                  image's ISIC diagnosis.
  dx              the class whose subtrees hold the node (vocabulary.ISIC_CLASS_SUBTREES: Nevus and below nv,
                  Basal cell carcinoma and below bcc, ...); for an older flat diagnosis: nevus nv, melanoma mel,
                  basal cell carcinoma bcc, actinic keratosis akiec, squamous cell carcinoma akiec (the release's
                  akiec includes intraepithelial carcinoma), pigmented benign keratosis bkl, dermatofibroma df,
                  vascular lesion vasc. Any other diagnosis leaves dx empty, so the metadata stage unifies
                  `diagnosis` (the rules read the hierarchy's words too) or excludes the image with a reason
  dx_type         diagnosis_confirm_type: histopathology histo, serial imaging showing no change follow_up,
                  single image expert consensus consensus, confocal microscopy with consensus dermoscopy
                  confocal; anything else is passed on unchanged (and excluded later with a reason)
  age             age_approx as written ("45")
  sex             sex as written (male / female / empty)
  localization    anatom_site_general is coarser than the release's localization. Only what maps one to one
                  (checked against the release for all 10015 images) is translated: posterior torso back,
                  palms/soles acral; lower extremity and upper extremity are release values already. head/neck
                  (release: scalp, face, ear, neck) and anterior torso (chest, abdomen) stay as they are, and an
                  empty site stays empty (release: trunk, genital or unknown). Option localization_map changes this.
  image_type_hint image_type: dermoscopic dsc, clinical: close-up macro, clinical: overview clinic, else empty
  extra fields    attribution, license (copyright_license), image_type (raw)

Every image file ends up as an item or a reject: files no metadata row names and second copies of an image are
rejected; so are metadata rows without an image, rows with an empty or repeated isic_id, and (the whole file) a
metadata file with a missing column (or neither diagnosis_1 nor diagnosis), which is named.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Union

from ..vocabulary import (DIAGNOSIS_FROM_ISIC, DX_TYPE_FROM_ISIC, IMAGE_TYPE_FROM_ISIC, ISIC_LEVELS,
                          ISIC_NODE_FROM_FLAT, isic_class_of, isic_node)
from ..vocabulary import SITE_FROM_ISIC as SITES  # the default of option localization_map
from . import BadTable, RawItem, Reject, SourceOptions, Unit, file_unit, mapping, option, read_table, text

REQUIRED_COLUMNS = ("isic_id", "attribution", "copyright_license", "age_approx", "anatom_site_general",
                    "diagnosis_confirm_type", "image_type", "lesion_id", "sex")
FLAT_DIAGNOSIS = "diagnosis"  # older exports; today's have ISIC_LEVELS
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
SKIPPED_FILES = {"attribution.txt"}  # isic-cli's companions of the images (and the licenses/ folder)


def diagnosis_of(row: dict) -> tuple[str, str, str]:
    """(diagnosis text, ISIC node or '', dx or '') of a metadata row, today's or an older export's."""
    if any(column in row for column in ISIC_LEVELS):
        try:
            node = isic_node(row)
        except ValueError:  # a gap between levels: not a node; the text goes to the rules as it is
            return ":".join(row.get(column) or "" for column in ISIC_LEVELS).strip(":"), "", ""
        return node, node, isic_class_of(node)
    flat = row.get(FLAT_DIAGNOSIS, "")
    return flat, ISIC_NODE_FROM_FLAT.get(flat.lower(), ""), DIAGNOSIS_FROM_ISIC.get(flat.lower(), "")


@dataclass(frozen=True)
class IsicOptions(SourceOptions):
    KIND = "isic"
    metadata: str = option("metadata.csv", text())
    images: str = option(".", text())
    localization_map: dict = option(check=mapping(), factory=dict)


def map_row(row: dict, sites: dict) -> dict:
    """Our fields from one row of ISIC metadata (values already stripped)."""
    diagnosis, node, dx = diagnosis_of(row)
    confirm = row["diagnosis_confirm_type"]
    site = row["anatom_site_general"]
    return {
        "image_id": row["isic_id"],
        "lesion_key": row["lesion_id"],
        "diagnosis": diagnosis,
        "dx": dx,
        "dx_type": DX_TYPE_FROM_ISIC.get(confirm.lower(), confirm),
        "age": row["age_approx"],
        "sex": row["sex"],
        "localization": sites.get(site.lower(), site),
        "visit_date": "",
        "image_type_hint": IMAGE_TYPE_FROM_ISIC.get(row["image_type"].lower(), ""),
        "split_hint": "",
        "image_type": row["image_type"],
        "attribution": row["attribution"],
        "license": row["copyright_license"],
        "isic_diagnosis": node,
    }


def read_metadata(root: Path, name: str, sites: dict) -> tuple[dict[str, tuple[int, dict]], list[Reject], str]:
    """isic_id -> (row number, fields), the rejected rows, and why the whole file is unusable ('' if usable)."""
    try:
        header, rows = read_table(root, name, REQUIRED_COLUMNS)
        if ISIC_LEVELS[0] not in header and FLAT_DIAGNOSIS not in header:
            raise BadTable(f"{name}: missing column '{ISIC_LEVELS[0]}' (or the older '{FLAT_DIAGNOSIS}'; "
                           f"found: {', '.join(header)})")
    except BadTable as error:
        return {}, [Reject(name, "", str(error))], str(error)

    entries: dict[str, tuple[int, dict]] = {}
    rejects = []
    for number, row in rows:
        member, isic_id = f"row {number}", row["isic_id"]
        if not isic_id:
            rejects.append(Reject(name, member, f"{name} {member}: empty isic_id"))
        elif isic_id in entries:
            rejects.append(Reject(name, member, f"{name} {member}: isic_id {isic_id} repeated (row "
                                                f"{entries[isic_id][0]} is kept)"))
        else:
            entries[isic_id] = (number, map_row(row, sites))
    return entries, rejects, ""


def read_isic(root: Path, options: IsicOptions | dict) -> Iterator[Union[RawItem, Reject, Unit]]:
    options = IsicOptions.of(options)
    metadata_name = options.metadata
    images_dir = root / options.images
    sites = {**SITES, **{k.lower(): v for k, v in options.localization_map.items()}}
    entries, rejects, unusable = read_metadata(root, metadata_name, sites)
    yield from rejects

    found: dict[str, str] = {}  # isic_id -> origin of its image
    metadata_path = (root / metadata_name).resolve()
    for path in sorted(p for p in images_dir.rglob("*") if p.is_file()):
        origin = path.relative_to(root).as_posix()
        inside = path.relative_to(images_dir)
        if path.resolve() == metadata_path or (len(inside.parts) == 1 and path.name in SKIPPED_FILES) \
                or inside.parts[0] == "licenses":
            continue
        isic_id = PurePosixPath(origin).stem
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            yield Reject(origin, "", f"{origin} is not an image file (expected <isic_id>.jpg)")
        elif isic_id not in entries:
            why = f" ({unusable})" if unusable else ""
            yield Reject(origin, "", f"{origin}: {isic_id} is not listed in {metadata_name}{why}")
        elif isic_id in found:
            yield Reject(origin, "", f"{origin}: second copy of {isic_id} (first: {found[isic_id]})")
        else:
            found[isic_id] = origin  # its row is answered by this file, readable or not
            number, fields = entries[isic_id]
            yield file_unit(path, origin, f"{metadata_name} row {number}", dict(fields), f"{origin} cannot be read")

    for isic_id, (number, _) in sorted(entries.items(), key=lambda entry: entry[1][0]):
        if isic_id not in found:
            yield Reject(metadata_name, f"row {number}",
                         f"{metadata_name} row {number}: no image file for {isic_id}")
