"""Image decoding helpers shared by stages: one rule for turning any decoded image into 8-bit RGB.

Ingest (normalised objects), the slides reader (cropped scans), standardise and the image-type filter all use
`to_rgb`, so a 16-bit, alpha, palette or CMYK image gives the same pixels in each of them. Kept out of any stage's
module so that a stage depends on this file and not on another stage's code (see pipeline/codedeps.py).
"""
from __future__ import annotations

from PIL import Image

EXIF_ORIENTATION = 0x0112  # the EXIF tag whose values 5 to 8 turn the picture by a quarter


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit scaled down, alpha composited on white, palette and CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        # In strips of rows, so the float copy never holds the whole image (a 16-bit 4000x4000 PNG took 464 MiB)
        pixels = np.asarray(image)
        top = 65535.0 if pixels.max() > 255 else 255.0
        out = np.empty(pixels.shape, dtype="uint8")
        for row in range(0, pixels.shape[0], 256):
            strip = pixels[row:row + 256].astype(np.float64)
            out[row:row + 256] = np.clip(strip / top * 255.0 + 0.5, 0, 255).astype("uint8")
        image = Image.fromarray(out, "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")
