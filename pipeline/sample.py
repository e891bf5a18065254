"""`ham sample DIR`: a small, deterministic, procedurally drawn set of raw sources for the demo pipeline.

Synthetic lesions, used only for this demo (tests use the real images). Four `export` sources shaped like the
study's routes, each a folder of images and an `index.csv` in the source's own words (free-text pathology,
raw ages and sexes), with close-ups and overviews mixed in among the dermatoscopic images, two bad files for the
rejects ledger, and `image_types.csv`: the annotator's d / c / m labels for most images (IMAGE is the sha256 of
the image file, as the annotation page records it).
Same seed, same bytes: the drawing uses numpy's PCG64 generator and Pillow's bundled JPEG encoder.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .common import atomic_write_bytes, sha256_bytes
from .vocabulary import ANNOTATION_KEYS

DIAGNOSES = {
    "mel": ["Superficial spreading melanoma, Breslow 0.4mm, Clark II", "Lentigo maligna melanoma, in toto",
            "Nodular melanoma, Breslow 2.1mm"],
    "nv": ["Compound nevus", "Junctional melanocytic nevus", "Clark's nevus", "Dermal nevus"],
    "bkl": ["Seborrheic keratosis", "Solar lentigo", "Verruca seborrhoica"],
    "bcc": ["Basal cell carcinoma, nodular", "Pigmented basal cell carcinoma (punch biopsy)"],
    "akiec": ["Actinic keratosis", "Bowen's disease"],
    "df": ["Dermatofibroma"],
    "vasc": ["Hemangioma", "Angiokeratoma (punch biopsy)"],
}
LESION_COLOURS = {  # mean RGB of each class's synthetic lesion
    "mel": (70, 45, 40), "nv": (125, 80, 55), "bkl": (150, 115, 80), "bcc": (170, 110, 110),
    "akiec": (185, 110, 100), "df": (160, 110, 85), "vasc": (150, 40, 60),
}
SITES = ["back", "trunk", "lower extremity", "upper extremity", "abdomen", "face", "chest", "neck", "scalp"]
TYPE_KEYS = {image_type: key for key, image_type in ANNOTATION_KEYS.items()}  # dsc -> d, ...


@dataclass
class SourcePlan:
    name: str
    lesions: int  # lesions with dermatoscopic images
    images_per_lesion: tuple[int, ...]  # cycled over the lesions
    classes: tuple[str, ...]  # cycled over the lesions
    dx_types: tuple[str, ...]
    macro: int  # extra close-ups of some lesions
    clinic: int  # extra overviews of some lesions


PLANS = [
    SourcePlan("rosendahl", 18, (1, 2), ("mel", "bcc", "akiec", "bkl", "nv", "df"), ("histo",), 10, 10),
    SourcePlan("vidir_modern", 20, (1, 1, 2), ("nv", "mel", "bkl", "bcc", "vasc", "df", "akiec"),
               ("histo", "histo", "consensus", "confocal"), 0, 4),
    SourcePlan("vidir_molemax", 8, (3,), ("nv",), ("follow_up",), 0, 0),
    SourcePlan("vienna_dias", 8, (1,), ("mel", "nv", "bcc", "bkl"), ("histo",), 4, 0),
]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid scaled up bilinearly."""
    grid = rng.random((cells, cells))
    image = Image.fromarray((grid * 255).astype(np.uint8), "L").resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.float64) / 255.0


def _skin(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    tone = np.array([225, 180, 150], dtype=np.float64) * rng.uniform(0.8, 1.05)
    texture = _smooth_noise(rng, height, width, 8)[..., None] * 30 - 15
    return np.clip(tone + texture + rng.normal(0, 4, (height, width, 1)), 0, 255)


def _blob_mask(rng: np.random.Generator, height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """Soft mask of an irregular blob: a radius modulated by a few random harmonics."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = np.arctan2(yy - cy, xx - cx)
    outline = np.ones_like(angle)
    for harmonic in range(2, 6):
        outline += rng.uniform(0, 0.15) * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
    distance = np.hypot(yy - cy, xx - cx) / (radius * outline)
    return np.clip((1.0 - distance) * 6.0, 0, 1)


def _paint_lesion(rng, canvas, dx, cy, cx, radius):
    height, width, _ = canvas.shape
    mask = _blob_mask(rng, height, width, cy, cx, radius)[..., None]
    colour = np.array(LESION_COLOURS[dx], dtype=np.float64) * rng.uniform(0.85, 1.15)
    texture = _smooth_noise(rng, height, width, 12)[..., None] * 50 - 25
    return canvas * (1 - mask) + np.clip(colour + texture, 0, 255) * mask


def draw(rng: np.random.Generator, image_type: str, dx: str, portrait: bool = False) -> Image.Image:
    """One synthetic image: dermatoscopic (`dsc`), close-up (`macro`) or overview (`clinic`)."""
    height, width = (400, 300) if portrait else (300, 400)
    if image_type == "dsc":
        canvas = _paint_lesion(rng, _skin(rng, height, width), dx, height / 2 + rng.normal(0, 10),
                               width / 2 + rng.normal(0, 10), min(height, width) * rng.uniform(0.2, 0.35))
        for _ in range(int(rng.integers(0, 6))):  # hairs
            y0, y1 = rng.uniform(0, height, 2)
            xs = np.arange(width)
            ys = np.clip((y0 + (y1 - y0) * xs / width).astype(int), 0, height - 1)
            canvas[ys, xs] = canvas[ys, xs] * 0.3
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
        field = np.hypot(yy - height / 2, xx - width / 2) / (min(height, width) * 0.62)
        canvas *= np.clip((1.15 - field) * 5, 0, 1)[..., None]  # the dermatoscope's dark round field
    elif image_type == "macro":
        canvas = _skin(rng, height, width) * np.linspace(0.8, 1.1, width)[None, :, None]
        canvas = _paint_lesion(rng, canvas, dx, height * rng.uniform(0.35, 0.65), width * rng.uniform(0.35, 0.65),
                               min(height, width) * rng.uniform(0.08, 0.14))
        canvas[: height // 12, :, :] = np.array([235, 235, 225])  # a paper ruler along the top edge
        canvas[: height // 12, :: width // 20, :] = 40
    else:
        wall = np.array(rng.choice([[90, 110, 140], [200, 200, 190], [60, 90, 80]]), dtype=np.float64)
        canvas = np.broadcast_to(wall, (height, width, 3)).copy()
        body = _blob_mask(rng, height, width, height * 0.6, width / 2, min(height, width) * 0.45)[..., None]
        canvas = canvas * (1 - body) + _skin(rng, height, width) * body
        for _ in range(int(rng.integers(2, 5))):
            canvas = _paint_lesion(rng, canvas, dx, height * rng.uniform(0.45, 0.75), width * rng.uniform(0.3, 0.7),
                                   min(height, width) * 0.025)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _raw_sex(rng) -> str:
    return str(rng.choice(["male", "female", "M", "F", "female", "male", ""]))


def write_sample(target: Path, seed: int = 20180814) -> dict[str, int]:
    """Write the sample raw sources under `target`; return the number of files written per source."""
    target = Path(target)
    rng = np.random.default_rng(seed)
    annotations: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    for plan in PLANS:
        rows = []
        folder = target / plan.name
        number = 0

        def add(image_type, dx, lesion_key, meta, portrait=False):
            nonlocal number
            number += 1
            name = f"{plan.name[:3]}_{number:04d}.jpg"
            data = _jpeg(draw(rng, image_type, dx, portrait))
            atomic_write_bytes(folder / "images" / name, data)
            rows.append({"file": f"images/{name}", "lesion": lesion_key, **meta})
            annotations.append((sha256_bytes(data), TYPE_KEYS[image_type]))

        lesions = []
        for index in range(plan.lesions):
            dx = plan.classes[index % len(plan.classes)]
            lesion_key = f"{plan.name[:3].upper()}-{1000 + index}"
            meta = {
                "pathology": str(rng.choice(DIAGNOSES[dx])) if plan.dx_types != ("follow_up",) else "",
                "diagnosis_code": "nv" if plan.dx_types == ("follow_up",) else "",
                "method": plan.dx_types[index % len(plan.dx_types)] if dx in ("nv", "mel", "bkl") or
                          plan.dx_types == ("histo",) else "histo",
                "age": str(int(rng.integers(20, 90))) if index % 9 else "",
                "sex": _raw_sex(rng),
                "site": str(rng.choice(SITES)),
            }
            if meta["method"] == "follow_up" and dx != "nv":
                meta["method"] = "histo"
            lesions.append((dx, lesion_key, meta))
            for _ in range(plan.images_per_lesion[index % len(plan.images_per_lesion)]):
                add("dsc", dx, lesion_key, meta, portrait=(number % 7 == 3))
        for extra in range(plan.macro):
            dx, lesion_key, meta = lesions[extra % len(lesions)]
            add("macro", dx, lesion_key, meta)
        for extra in range(plan.clinic):
            dx, lesion_key, meta = lesions[(extra * 3) % len(lesions)]
            add("clinic", dx, lesion_key, meta)
        if plan.name == "rosendahl":  # one report that is not a diagnosis: excluded by the unify rules
            rows[0]["pathology"] = "No signs of residual tumor"
        if plan.name == "vidir_modern":  # two bad files the rejects ledger must explain
            atomic_write_bytes(folder / "images" / "empty.jpg", b"")
            atomic_write_bytes(folder / "images" / "notes.jpg", b"lesion photographed twice, see chart\n")
            rows.append({"file": "images/empty.jpg", "lesion": "VID-1999"})
        with open(folder / "index.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, ["file", "lesion", "pathology", "diagnosis_code", "method", "age",
                                             "sex", "site"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        counts[plan.name] = len(list((folder / "images").iterdir()))

    # The annotator labelled about three in four images; the filter predicts the rest.
    with open(target / "image_types.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["IMAGE", "ANNOTATION", "TIMESTAMP"])
        for position, (digest, key) in enumerate(annotations):
            if position % 4 != 1:
                writer.writerow([digest, key, f"2018-03-01T10:{position // 60:02d}:{position % 60:02d}"])
    return counts
