"""The release in two standard formats beside DVC: a Hugging Face `imagefolder` index per split and a Croissant
descriptor for the whole release. Written by the `release` stage (`write_formats`), listed in its manifests.

    release/<split>/images/metadata.jsonl   one line per image of the split: file_name (the image, relative to
                                            images/) and the split's metadata.csv row, age a number or null, and
                                            the split; `load_dataset("imagefolder", data_dir="release/train/images")`
                                            gives one row per image with its labels
    release/croissant.json                  MLCommons Croissant 1.0 (JSON-LD): name, description, licence,
                                            citation, version, date published; the metadata.jsonl files (each a
                                            FileObject with its sha256) and the images as FileSets; one RecordSet
                                            `images` with a record per released image (the image, image_id,
                                            lesion_id, dx, dx_type, age, sex, localization, dataset, split)

Why the index is in images/ and not beside the split's metadata.csv: `datasets`' folder builder takes every file
called metadata.csv (or .jsonl, .parquet) under `data_dir` as an index and needs a `file_name` column in each; the
split's own metadata.csv is the HAM10000 file people rely on and has none, so `data_dir` must be the images folder,
where the index sits alone. JSON Lines rather than a second metadata.csv: the ages keep their type (number or null)
instead of pandas' guess per file, and a split holds one file of each name.

The descriptor is written by hand as a dict (no `mlcroissant` at build time; the tests load it with
`mlcroissant`). Same inputs, same bytes: the date published is the params value `release.date_published`, never
the clock (a release whose params lack it has no datePublished, and `mlcroissant validate` warns); keys are
written in a fixed order, the index's lines in the split's metadata.csv order.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .common import atomic_write_bytes, sha256_bytes
from .vocabulary import CLASS_NAMES, DATASET_VALUES, DX_TYPES, RELEASE_COLUMNS, SEXES, SPLITS

INDEX_NAME = "metadata.jsonl"  # in <split>/images/, the name `datasets`' folder builder looks for
CROISSANT_NAME = "croissant.json"
CROISSANT_CONFORMS_TO = "http://mlcommons.org/croissant/1.0"
# The JSON-LD context of Croissant 1.0, as the spec's examples have it (`mlcroissant validate` warns at any other).
CROISSANT_CONTEXT = {
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/", "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"}, "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty", "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract", "field": "cr:field", "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet", "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath", "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField", "path": "cr:path",
    "recordSet": "cr:recordSet", "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated",
    "replace": "cr:replace", "samplingRate": "cr:samplingRate", "sc": "https://schema.org/",
    "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField", "transform": "cr:transform"}

# The record's fields besides the image: name -> (Croissant data type, description).
FIELDS = {
    "image_id": ("sc:Text", "ISIC image ID (ISIC_0000000), the image's file name without .jpg"),
    "lesion_id": ("sc:Text", "HAM lesion ID (HAM_0000000); a lesion's images are all in one split"),
    "dx": ("sc:Text", "diagnosis class: " + "; ".join(f"{code} = {name}" for code, name in CLASS_NAMES.items())),
    "dx_type": ("sc:Text", "how the diagnosis was confirmed: " +
                "; ".join(f"{code} = {name}" for code, name in DX_TYPES.items())),
    "age": ("sc:Float", "age in years, in steps of 5; empty where unknown"),
    "sex": ("sc:Text", f"one of {', '.join(SEXES)}"),
    "localization": ("sc:Text", "site of the lesion on the body (15 values, unknown included)"),
    "dataset": ("sc:Text", f"the study's collection the image comes from: {', '.join(DATASET_VALUES)}"),
    "split": ("sc:Text", f"the split the image is released in: {', '.join(SPLITS)}"),
}
assert set(FIELDS) == {*RELEASE_COLUMNS, "split"}  # every column of metadata.csv, and the split


def index_lines(rows: list[dict], split: str) -> bytes:
    """The `datasets` index of one split: a JSON object per image, in the order of `rows`."""
    lines = []
    for row in rows:
        record = {"file_name": f"{row['image_id']}.jpg", **{column: row[column] for column in RELEASE_COLUMNS},
                  "split": split}
        record["age"] = float(row["age"]) if row["age"].strip() else None
        lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def _licence_url(text: str) -> str:
    """The licence as Croissant wants it: its URL where the params text names one, else the text itself."""
    found = re.search(r"https?://\S+?(?=[)\s]|$)", text)
    return found.group(0) if found else text.strip()


def croissant(params: dict, splits: dict[str, list[dict]], index_sha256: dict[str, tuple[str, int]]) -> dict:
    """The Croissant descriptor of a release: `params` the release section, `splits` the metadata rows per split
    (only splits with images), `index_sha256` split -> (sha256, size) of its images/metadata.jsonl."""
    images = sum(len(rows) for rows in splits.values())
    counts = ", ".join(f"{split} {len(rows)}" for split, rows in splits.items())
    distribution = [
        {"@type": "cr:FileObject", "@id": f"{split}-index", "name": f"{split}/images/{INDEX_NAME}",
         "description": f"the {split} split's images with their metadata, one JSON object a line",
         "contentUrl": f"{split}/images/{INDEX_NAME}", "encodingFormat": "application/jsonlines",
         "sha256": sha, "contentSize": f"{size} B"}
        for split, (sha, size) in index_sha256.items()]
    distribution += [
        {"@type": "cr:FileSet", "@id": "indexes", "name": "indexes",
         "description": f"every split's images/{INDEX_NAME} (the FileObjects above)",
         "encodingFormat": "application/jsonlines", "includes": f"*/images/{INDEX_NAME}"},
        {"@type": "cr:FileSet", "@id": "image-files", "name": "image-files",
         "description": "the images: 600x450 JPEG, one per image ID, in <split>/images/",
         "encodingFormat": "image/jpeg", "includes": "*/images/*.jpg"}]

    def from_index(name: str, data_type: str, description: str) -> dict:
        return {"@type": "cr:Field", "@id": f"images/{name}", "name": name, "description": description,
                "dataType": data_type, "source": {"fileSet": {"@id": "indexes"}, "extract": {"column": name}}}

    fields = [{"@type": "cr:Field", "@id": "images/image", "name": "image", "description": "the image (JPEG)",
               "dataType": "sc:ImageObject",
               "source": {"fileSet": {"@id": "image-files"}, "extract": {"fileProperty": "content"}}},
              # The join of the images with their rows: an image file's name is its row's file_name.
              {"@type": "cr:Field", "@id": "images/file_name", "name": "file_name",
               "description": "the image's file name in <split>/images/", "dataType": "sc:Text",
               "source": {"fileSet": {"@id": "image-files"}, "extract": {"fileProperty": "filename"}},
               "references": {"fileSet": {"@id": "indexes"}, "extract": {"column": "file_name"}}}]
    fields += [from_index(name, data_type, description) for name, (data_type, description) in FIELDS.items()]
    return {
        "@context": CROISSANT_CONTEXT, "@type": "sc:Dataset", "conformsTo": CROISSANT_CONFORMS_TO,
        "name": "HAM10000",
        "description": (f"Dermatoscopic images of pigmented skin lesions with their diagnosis, rebuilt from the "
                        f"HAM10000 study's sources as a versioned release: {images} images ({counts}), "
                        f"lesion-disjoint splits."),
        "license": _licence_url(params["license"]), "citeAs": params["attribution"].strip(),
        "version": str(params.get("version") or "unversioned"),
        **({"datePublished": str(params["date_published"])} if params.get("date_published") else {}),
        "distribution": distribution,
        "recordSet": [{"@type": "cr:RecordSet", "@id": "images", "name": "images",
                       "description": "one record per released image", "key": {"@id": "images/image_id"},
                       "field": fields}]}


def write_formats(release_dir: Path, splits: dict[str, list[dict]], params: dict) -> dict[str | None, list[str]]:
    """Write each split's images/metadata.jsonl and the release's croissant.json; `splits` holds the metadata rows
    of each split with images, in metadata.csv order; `params` the release section. Returns the files written, for
    the manifests: {split: [paths relative to the split folder], None: [paths relative to release_dir]}."""
    release_dir = Path(release_dir)
    written: dict[str | None, list[str]] = {}
    index_sha256 = {}
    for split, rows in splits.items():
        data = index_lines(rows, split)
        atomic_write_bytes(release_dir / split / "images" / INDEX_NAME, data)
        index_sha256[split] = (sha256_bytes(data), len(data))
        written[split] = [f"images/{INDEX_NAME}"]
    descriptor = croissant(params, splits, index_sha256)
    atomic_write_bytes(release_dir / CROISSANT_NAME,
                       (json.dumps(descriptor, indent=2, ensure_ascii=False) + "\n").encode())
    written[None] = [CROISSANT_NAME]
    return written
