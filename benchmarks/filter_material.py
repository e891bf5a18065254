"""The real image-type material in $HAM_DATA, grouped by collection and condition, and the perturbations that test
whether the filter learnt a shortcut. Shared by `bench_filter` and the filter tests; nothing here trains.

Collections (the unit a held-out evaluation leaves out whole):
- dermatoscopic: `ham10000` (ham10000/images + test_images), `derm7pt`, `isic-uda1`, `isic2017-256`
  (filter_training/dermatoscopic, by file-name prefix), `dermnet-dsc` (the 16 dermatoscopic photos DermNet files
  among clinical conditions, watermarked like the clinical ones);
- clinical: `dermnet` (clinical/dermnet and filter_training/clinical), grouped by condition (the DermNet category),
  so a held-out condition is never seen in training, on either side.
"""
from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

DSC_COLLECTIONS = ("ham10000", "derm7pt", "isic-uda1", "isic2017-256")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def material(data: Path) -> list[dict]:
    """Every labelled image: path, truth (dsc / clinic), collection, condition (DermNet category or lesion)."""
    data = Path(data)
    items = []
    for row in _rows(data / "ham10000/images_manifest.csv"):
        items.append({"path": data / "ham10000/images" / f"{row['image_id']}.jpg", "truth": "dsc",
                      "collection": "ham10000", "condition": row["lesion_id"]})
    for path in sorted((data / "ham10000/test_images").glob("*.jpg")):
        items.append({"path": path, "truth": "dsc", "collection": "ham10000", "condition": path.stem})
    training = data / "filter_training"
    for row in _rows(training / "manifests/train_dermatoscopic.csv"):
        items.append({"path": training / "dermatoscopic" / row["file"], "truth": "dsc",
                      "collection": row["file"].split("__")[0], "condition": row["file"]})
    for row in _rows(training / "manifests/train_dermatoscopic_dermnet.csv"):
        items.append({"path": training / "dermatoscopic_dermnet" / row["file"], "truth": "dsc",
                      "collection": "dermnet-dsc", "condition": row["category_or_label"]})
    for row in _rows(data / "clinical/clinical_manifest.csv"):
        items.append({"path": data / "clinical/dermnet" / row["file"], "truth": "clinic", "collection": "dermnet",
                      "condition": row["dermnet_category"]})
    for row in _rows(training / "manifests/train_clinical.csv"):
        items.append({"path": training / "clinical" / row["file"], "truth": "clinic", "collection": "dermnet",
                      "condition": row["category_or_label"]})
    return items


# ---- perturbations: what must not flip a decision --------------------------------------------------------------

def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def paste_logo(image: Image.Image, style: int = 0) -> Image.Image:
    """A DermNet-like watermark in the lower-left corner, as on DermNet's photographs: a white round emblem with
    "DermNet" and "All about the skin" under it (style 0), or "Te Whatu Ora / Health New Zealand" (style 1), drawn
    half-transparent in white at the same place and scale as DermNet's own (relative to the frame)."""
    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w, h = base.size
    if style == 0:
        r = int(0.045 * w)
        cx, cy = int(0.085 * w), int(0.75 * h)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(255, 255, 255, 190), width=max(2, r // 6))
        draw.line((cx, cy - r + 4, cx, cy + r - 4), fill=(255, 255, 255, 190), width=max(2, r // 5))
        draw.text((int(0.03 * w), cy + r + 2), "DermNet", fill=(255, 255, 255, 220), font=_font(max(8, h // 26)))
        draw.text((int(0.03 * w), cy + r + 2 + h // 24), "All about the skin", fill=(255, 255, 255, 200),
                  font=_font(max(6, h // 48)))
    else:
        draw.text((int(0.04 * w), int(0.8 * h)), "Te Whatu Ora", fill=(255, 255, 255, 230),
                  font=_font(max(8, h // 16)))
        draw.text((int(0.04 * w), int(0.88 * h)), "Health New Zealand", fill=(255, 255, 255, 210),
                  font=_font(max(6, h // 28)))
    return Image.alpha_composite(base, layer).convert("RGB")


def crop_watermark(image: Image.Image) -> Image.Image:
    """The frame without its lower part, where DermNet's logos sit (below 62 % of the height)."""
    return image.crop((0, 0, image.width, int(image.height * 0.62)))


def squash(image: Image.Image) -> Image.Image:
    """Squashed to 256x256 without keeping the aspect, as the ISIC 2017 copy was."""
    return image.resize((256, 256), Image.BILINEAR)


def shrink(image: Image.Image) -> Image.Image:
    """Resized to a third of its sides (a low-resolution device or a thumbnail)."""
    return image.resize((max(16, image.width // 3), max(16, image.height // 3)), Image.BILINEAR)
