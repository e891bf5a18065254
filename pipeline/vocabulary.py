"""The release's vocabulary, each value set defined once here; readers, stages and the JSON Schemas derive from it.

What it holds (everything else in `pipeline/` imports these names, and tests/test_vocabulary.py checks that the
enums of `schemas/*.json` equal them):

- the seven diagnosis classes (code -> full name) and the ISIC 2018 ground truth's class columns;
- dx_type, sex and localization: the release values and the raw spellings the metadata stage accepts for them;
- the `dataset` values (the study's four collections, plus `unknown`) and the collections that are all histo;
- the release columns, the splits and the image types (with the annotators' d / m / c keys);
- the HAM10000-to-ISIC-Archive mappings (diagnosis, confirm type, site, sex, image type), and the reverse maps the
  `isic` reader uses, derived from the forward ones where those are one to one (the exceptions are listed where
  they are made);
- the ISIC diagnosis hierarchy as the release uses it: each class's node and the subtrees the class covers, the
  older flat diagnoses' nodes, and helpers to place a node and to split it into isic-cli's level columns (the
  archive's enumeration itself stays in the `isic-metadata` package, which the tests check these against);
- one age parser (`parse_age`), used for binning raw ages and for writing ISIC's `age_approx`.

Plain tuples and dicts, in release order (the order the schemas list them in); no imports from the rest of the
pipeline, so any stage may depend on this module and nothing else comes with it.
"""
from __future__ import annotations

import math
from collections import defaultdict
from functools import lru_cache

# ------------------------------------------------------------------------------------------------ diagnosis classes

# HAM10000 class code -> full name (Tschandl et al. 2018).
CLASS_NAMES = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}
CLASSES = tuple(CLASS_NAMES)

# Columns of the ISIC 2018 Task 3 ground truth (one-hot, one column per class), in the challenge's order.
GROUND_TRUTH_COLUMNS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")

# ------------------------------------------------------------------------------------------------ dx_type

# How a diagnosis was confirmed: release value -> description.
DX_TYPES = {
    "histo": "histopathology",
    "follow_up": "unchanged on digital follow-up",
    "consensus": "expert consensus",
    "confocal": "in-vivo confocal microscopy",
}
# Raw spellings accepted besides the values themselves (compared lower-cased and stripped).
DX_TYPE_SPELLINGS = {"histopathology": "histo", "histology": "histo", "follow-up": "follow_up",
                     "followup": "follow_up"}

# ------------------------------------------------------------------------------------------------ sex

SEXES = ("male", "female", "unknown")
SEX_SPELLINGS = {"m": "male", "f": "female", "w": "female", "u": "unknown", "": "unknown"}

# ------------------------------------------------------------------------------------------------ localization

# The 15 sites of the original release; 'trunk' is the coarser site the MoleMax series uses.
LOCALIZATIONS = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand", "lower extremity",
                 "neck", "scalp", "trunk", "unknown", "upper extremity")
LOCALIZATION_SYNONYMS = {"": "unknown", "lower limb": "lower extremity", "leg": "lower extremity",
                         "upper limb": "upper extremity", "arm": "upper extremity", "genitalia": "genital"}
# The sites 'trunk' covers: a lesion may be 'back' on one image and 'trunk' on another (the real release has two
# such lesions, HAM_0000871 and HAM_0001726).
TRUNK_PARTS = frozenset({"abdomen", "back", "chest"})

# ------------------------------------------------------------------------------------------------ dataset

# The study's four collections (the release's `dataset` column).
DATASETS = ("rosendahl", "vidir_modern", "vidir_molemax", "vienna_dias")
# For public images whose collection no source records (the ISIC 2018 test set, an archive export).
UNKNOWN_DATASET = "unknown"
DATASET_VALUES = (*DATASETS, UNKNOWN_DATASET)
# Source kinds that read a public release, whose images may carry their collection per image or none at all
# (UNKNOWN_DATASET); every other source needs a name from DATASETS or a declared `dataset`.
PUBLIC_KINDS = ("ham10000", "isic")
# Collections whose images were all confirmed by histopathology (Tschandl et al. 2018, table 1).
HISTO_ONLY_DATASETS = ("rosendahl", "vienna_dias")

# ------------------------------------------------------------------------------------------------ release layout

# The columns of the original HAM10000_metadata.csv, in its order; the release adds `dataset` (its newer edition).
HAM_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
RELEASE_COLUMNS = (*HAM_COLUMNS, "dataset")
SPLITS = ("train", "val", "test")

# ------------------------------------------------------------------------------------------------ image types

# What the image-type filter decides: dermatoscopic, clinical close-up, clinical overview (the network's outputs,
# in this order).
IMAGE_TYPES = ("dsc", "macro", "clinic")
# The authors' annotation keys.
ANNOTATION_KEYS = {"d": "dsc", "m": "macro", "c": "clinic"}
# Files taken for images by their suffix where no index names them (labelled folders, `index: null` sources).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")

# ------------------------------------------------------------------------------------------------ age

AGE_MAX = 130


def parse_age(raw: str) -> float | None:
    """A raw age in years as a number; None when empty. ValueError, with a message naming the value, when it is
    not a number or lies outside 0..AGE_MAX."""
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"age {raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or value > AGE_MAX:
        raise ValueError(f"age {raw!r} is out of range")
    return value


# ------------------------------------------------------------------------------------------------ spellings

def accepted(values, spellings: dict[str, str]) -> dict[str, str]:
    """Raw spelling (lower case) -> value: every value as itself, plus the extra spellings."""
    table = {value: value for value in values}
    table.update(spellings)
    return table


DX_TYPE_OF = accepted(DX_TYPES, DX_TYPE_SPELLINGS)
SEX_OF = accepted(SEXES, SEX_SPELLINGS)
LOCALIZATION_OF = accepted(LOCALIZATIONS, LOCALIZATION_SYNONYMS)

# ------------------------------------------------------------------------------------------------ ISIC Archive

# The HAM10000 -> ISIC mappings, as in the archive's export of the HAM10000 collection (see pipeline/isic_export.py
# for how they were derived and checked). The diagnosis hierarchy the archive uses today follows below them.

# dx -> (diagnosis, benign_malignant, melanocytic): the flat diagnosis of the archive's older exports
ISIC_DIAGNOSIS = {
    "akiec": ("actinic keratosis", "", "False"),
    "bcc": ("basal cell carcinoma", "", "False"),
    "bkl": ("pigmented benign keratosis", "", "False"),
    "df": ("dermatofibroma", "", "False"),
    "mel": ("melanoma", "malignant", "True"),
    "nv": ("nevus", "benign", "True"),
    "vasc": ("vascular lesion", "", "False"),
}

# dx_type -> (diagnosis_confirm_type, concomitant_biopsy)
ISIC_CONFIRM_TYPE = {
    "histo": ("histopathology", "True"),
    "follow_up": ("serial imaging showing no change", "False"),
    "consensus": ("single image expert consensus", "False"),
    "confocal": ("confocal microscopy with consensus dermoscopy", "False"),
}

# localization -> anatom_site_general (coarser); "" where the archive has no general site.
ISIC_SITE = {
    "scalp": "head/neck",
    "face": "head/neck",
    "ear": "head/neck",
    "neck": "head/neck",
    "chest": "anterior torso",
    "abdomen": "anterior torso",
    "back": "posterior torso",
    "upper extremity": "upper extremity",
    "hand": "upper extremity",
    "lower extremity": "lower extremity",
    "foot": "lower extremity",
    "acral": "palms/soles",
    "trunk": "",
    "genital": "",
    "unknown": "",
}

# sex -> ISIC sex ('unknown' is an empty cell there)
ISIC_SEX = {"male": "male", "female": "female", "unknown": ""}

# image type -> ISIC image_type
ISIC_IMAGE_TYPE = {"dsc": "dermoscopic", "macro": "clinical: close-up", "clinic": "clinical: overview"}


def one_to_one_inverse(forward: dict) -> dict:
    """value -> key for each non-empty value that exactly one key maps to (the invertible part of a mapping)."""
    keys_of = defaultdict(list)
    for key, value in forward.items():
        keys_of[value].append(key)
    return {value: keys[0] for value, keys in keys_of.items() if value != "" and len(keys) == 1}


# The reverse maps the `isic` reader uses (ISIC value, lower case -> ours).

# The class names invert one to one; besides, the archive splits akiec into "actinic keratosis" and "squamous cell
# carcinoma" (intraepithelial carcinoma, Bowen's disease), so both read as akiec, while akiec is written back as
# "actinic keratosis" only.
DIAGNOSIS_FROM_ISIC = {**one_to_one_inverse({dx: names[0] for dx, names in ISIC_DIAGNOSIS.items()}),
                       "squamous cell carcinoma": "akiec"}
DX_TYPE_FROM_ISIC = one_to_one_inverse({dx_type: confirm for dx_type, (confirm, _) in ISIC_CONFIRM_TYPE.items()})
# Sites invert where one localization maps to them (posterior torso -> back, palms/soles -> acral). The archive's
# upper and lower extremity also cover hand and foot; they read as the release value of the same name. head/neck,
# anterior torso and an empty site have no single release value, so the reader leaves them as they are.
SITE_FROM_ISIC = {**{site: site for site in ISIC_SITE.values() if site in LOCALIZATIONS},
                  **one_to_one_inverse(ISIC_SITE)}
IMAGE_TYPE_FROM_ISIC = one_to_one_inverse(ISIC_IMAGE_TYPE)


# ------------------------------------------------------------------------------------------------ ISIC hierarchy

# Today the archive's `diagnosis` is a node of its diagnosis hierarchy: up to five levels joined by ':'
# ("Benign:Benign melanocytic proliferations:Nevus:Nevus, NOS, Junctional"); an export (isic-cli) has one column per
# level, diagnosis_1 .. diagnosis_5. The enumeration of valid nodes belongs to the archive's own package,
# `isic-metadata` (DiagnosisEnum; the optional extra `isic`); tests/test_isic_hierarchy.py checks every node named
# here and in pipeline/rules/diagnoses.yaml against it, so none is copied here.
ISIC_LEVELS = tuple(f"diagnosis_{level}" for level in range(1, 6))
ISIC_SEPARATOR = ":"

_NEVUS = "Benign:Benign melanocytic proliferations:Nevus"
_EPIDERMAL = "Benign:Benign epidermal proliferations"

# The class's node: the node of an image whose class is all that is known (a source that gives dx without a
# report), and of a report that names no subtype. Most are the root of the class's subtree; bkl's is the archive's
# own name for the class ("Pigmented benign keratosis", its flat diagnosis for bkl), a leaf beside seborrheic
# keratosis, solar lentigo and lichen planus-like keratosis; akiec's subtrees share no node below the root, so its
# node is actinic keratosis, as in the flat export.
ISIC_CLASS_NODE = {
    "akiec": "Indeterminate:Indeterminate epidermal proliferations:Solar or actinic keratosis",
    "bcc": "Malignant:Malignant adnexal epithelial proliferations - Follicular:Basal cell carcinoma",
    "bkl": f"{_EPIDERMAL}:Pigmented benign keratosis",
    "df": "Benign:Benign soft tissue proliferations - Fibro-histiocytic:Dermatofibroma",
    "mel": "Malignant:Malignant melanocytic proliferations (Melanoma)",
    "nv": _NEVUS,
    "vasc": "Benign:Benign soft tissue proliferations - Vascular",
}

# The subtrees each class covers (a node and everything below it), after the study's definition of the classes:
# akiec is actinic keratosis and intraepithelial carcinoma (squamous cell carcinoma in situ, Bowen's disease); bkl
# is seborrheic keratosis, solar lentigo and lichen planus-like keratosis; vasc includes hemorrhage.
ISIC_CLASS_SUBTREES = {
    "akiec": (ISIC_CLASS_NODE["akiec"], "Malignant:Malignant epidermal proliferations:Squamous cell carcinoma in situ"),
    "bcc": (ISIC_CLASS_NODE["bcc"],),
    "bkl": (ISIC_CLASS_NODE["bkl"], f"{_EPIDERMAL}:Seborrheic keratosis", f"{_EPIDERMAL}:Solar lentigo",
            f"{_EPIDERMAL}:Lichen planus like keratosis"),
    "df": (ISIC_CLASS_NODE["df"],),
    "mel": (ISIC_CLASS_NODE["mel"],),
    "nv": (_NEVUS,),
    "vasc": (ISIC_CLASS_NODE["vasc"], "Benign:Hemorrhagic lesions"),
}

# The archive's older, flat diagnoses (as the `isic` reader meets them in older exports) -> node: each class name
# of ISIC_DIAGNOSIS is the class's node; "squamous cell carcinoma" is what the archive calls the HAM10000 akiec
# images that are intraepithelial carcinoma, so it reads as squamous cell carcinoma in situ.
ISIC_NODE_FROM_FLAT = {**{names[0]: ISIC_CLASS_NODE[dx] for dx, names in ISIC_DIAGNOSIS.items()},
                       "squamous cell carcinoma": ISIC_CLASS_SUBTREES["akiec"][1]}


def isic_under(node: str, root: str) -> bool:
    """Whether `node` is `root` or lies below it in the hierarchy."""
    return node == root or node.startswith(root + ISIC_SEPARATOR)


@lru_cache(maxsize=4096)  # a release asks it for every row, of a few dozen distinct nodes
def isic_class_of(node: str) -> str:
    """The class whose subtrees hold `node`, or '' (the subtrees of different classes do not overlap)."""
    for dx, roots in ISIC_CLASS_SUBTREES.items():
        if any(isic_under(node, root) for root in roots):
            return dx
    return ""


def isic_refines(dx: str, node: str) -> bool:
    """Whether `node` says more than class `dx` does: it lies in the class's subtrees and is not its node."""
    return node != ISIC_CLASS_NODE[dx] and isic_class_of(node) == dx


def isic_levels(node: str) -> dict[str, str]:
    """diagnosis_1 .. diagnosis_5 of a node ('' below its depth), as an isic-cli export writes them."""
    parts = node.split(ISIC_SEPARATOR) if node else []
    if len(parts) > len(ISIC_LEVELS):
        raise ValueError(f"diagnosis {node!r} has more than {len(ISIC_LEVELS)} levels")
    return {column: parts[index] if index < len(parts) else "" for index, column in enumerate(ISIC_LEVELS)}


def isic_node(levels: dict[str, str]) -> str:
    """The node named by diagnosis_1 .. diagnosis_5 (the reverse of isic_levels; trailing empty levels dropped).
    ValueError when a level is empty but a deeper one is not."""
    parts = [(levels.get(column) or "").strip() for column in ISIC_LEVELS]
    while parts and not parts[-1]:
        parts.pop()
    if "" in parts:
        raise ValueError(f"{ISIC_LEVELS[parts.index('')]} is empty but a deeper level is not")
    return ISIC_SEPARATOR.join(parts)
