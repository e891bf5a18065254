"""The plain-DVC baseline's stage: standardise EVERY image of a folder, the way a DVC stage without per-item
caching does it today (treeverse/dvc#4228: a stage's outputs are removed and the command redoes the whole folder
whenever one input file changes). Same recipe as the authors' mogrify (strip, portrait turned, cover 600x450,
centre crop, 72 dpi, quality 100), with Pillow; standalone on purpose (no `pipeline` import).

    python plain_standardise.py IN_FOLDER OUT_FOLDER
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageOps


def main(src: Path, out: Path, width: int = 600, height: int = 450) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
        if image.width < image.height:
            image = image.transpose(Image.Transpose.ROTATE_270)
        scale = max(width / image.width, height / image.height)
        size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        image = image.resize(size, Image.LANCZOS)
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        image.crop((left, top, left + width, top + height)).save(
            out / f"{path.stem}.jpg", "JPEG", quality=100, subsampling=0, dpi=(72, 72))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
