"""The scale fixture of `make bench`: the public release's real metadata paired with distinct derived images.

`build_fixture(scale)` lays out, under a temporary cache folder (never in the repository), the raw sources a
maintainer would add for the HAM10000 release, built from $HAM_DATA (default ../shared/data):

  ham10000/   kind `ham10000`: HAM10000_images_part_{1,2}.zip (600x450 JPEGs, stored), HAM10000_metadata.csv
              (the real rows whose image is in the zips), ISIC2018_Task3_Test_Input.zip + its ground truth, and
              the ISIC Archive's export of the collection as `test_metadata` (the test images' lesion IDs)
  vidir_modern/   kind `export`: 600x450 images (a quarter of them turned to portrait) + index.csv
  vidir_molemax/  kind `series`: <patient>/<lesion>/<date>.jpg at 2400x1800 (4.3 megapixels) + lesions.csv
  vienna_dias/    kind `slides`: 2200x1500 scans, the picture inside a dark mount border, + index.csv (histopathology
                  rows only, as the route requires)
  rosendahl/      kind `pptx`: four yearly decks, one 1024x768 picture per slide with the lesion ID and diagnosis
  dermnet/        kind `export`: DermNet clinical photographs (not dermatoscopic: the filter drops them)
  increment/      kind `export`: 1 % more images, added by the benchmark after the first build
  image_types.csv the annotations (IMAGE = sha256 of the raw bytes): 1 in 20 dermatoscopic images `d`, 2 in 3
                  clinical photographs `c`

Scales: `10k` uses every row (10015 training + 1512 test); `1k` about a tenth, whole lesions chosen by a hash
of the lesion ID and every tenth test row. Each row gets its own image, derived deterministically from one of the
490 real 600x450 images: row g takes real image g % 490 and a random crop (62-95 % of the frame, anywhere),
horizontal/vertical flips by g // 490, colour and brightness changes and a JPEG quality of 80-95, all seeded by
g, so no two fixture images are the same bytes (checked) and variants of one real image differ by more than a
re-encoding. The derived images are cached under $TMPDIR/ham-bench-fixture/<hash of the recipe>/ and reused by
later runs; the 1k fixture uses the 10k fixture's images.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HAM_DATA", REPO.parent / "shared" / "data"))
IMAGE_RECIPE = 1  # bump when the derivation of an image changes: the derived images' cache key changes with it
LAYOUT_RECIPE = 4  # bump when the layout of the sources changes

# Rows (of the 10015) given to each non-ham10000 kind at the 10k scale; the 1k scale takes a tenth.
KIND_ROWS = {"export": 300, "series": 100, "slides": 50, "pptx": 120}
INCREMENT_FRACTION = 0.01
DIAGNOSIS_TEXT = {"mel": "melanoma", "nv": "compound nevus", "bcc": "basal cell carcinoma",
                  "akiec": "actinic keratosis", "bkl": "seborrheic keratosis", "df": "dermatofibroma",
                  "vasc": "hemangioma"}
HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


@dataclass
class Fixture:
    scale: str
    root: Path  # the raw sources, laid out as described above
    sources: list[dict]  # params entries, paths relative to `root`
    increment: dict  # the params entry of the increment source
    counts: dict = field(default_factory=dict)  # images per source

    @property
    def images(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "increment")


def _stable(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _derive(job: tuple) -> tuple[str, str]:
    """One derived image: (kind-specific recipe, global index g, output path) -> (path, sha256)."""
    base_path, g, size, out, quality_range, portrait = job
    out = Path(out)
    if out.exists():
        return str(out), hashlib.sha256(out.read_bytes()).hexdigest()
    rng = random.Random(f"ham-bench:{g}")
    with Image.open(base_path) as image:
        image = image.convert("RGB")
    scale = rng.uniform(0.62, 0.95)
    width, height = round(image.width * scale), round(image.height * scale)
    left, top = rng.randint(0, image.width - width), rng.randint(0, image.height - height)
    image = image.crop((left, top, left + width, top + height))
    variant = g // 490
    if variant % 2:
        image = ImageOps.mirror(image)
    if (variant // 2) % 2:
        image = ImageOps.flip(image)
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.8, 1.25))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.1))
    image = image.resize(size, Image.BILINEAR)
    if portrait:
        image = image.transpose(Image.Transpose.ROTATE_90)
    if out.suffix == ".scan":  # a slide scan: the picture inside a dark mount on a lighter scanner bed
        scan = Image.new("RGB", (2200, 1500), (70, 70, 72))
        mount = Image.new("RGB", (2000, 1400), (12, 11, 13))
        mount.paste(image, ((2000 - image.width) // 2, (1400 - image.height) // 2))
        scan.paste(mount, (100, 50))
        image = scan
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=rng.randint(*quality_range))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(out)
    return str(out), hashlib.sha256(buffer.getvalue()).hexdigest()


# (size of the picture, JPEG quality range, portrait) per kind
KIND_IMAGES = {"ham10000": ((600, 450), (80, 95), False), "export": ((600, 450), (80, 95), None),
               "increment": ((600, 450), (80, 95), False), "series": ((2400, 1800), (85, 92), False),
               "slides": ((1800, 1200), (88, 94), False), "pptx": ((1024, 768), (85, 92), False)}


def _assign(data: Path) -> tuple[list[tuple[str, dict]], list[dict]]:
    """Every real row -> its kind, in a fixed order (the 10k scale); returns (kind, row) pairs and the test rows."""
    rows = _read(data / "ham10000/metadata/HAM10000_metadata.csv")
    lesions = sorted({r["lesion_id"] for r in rows}, key=lambda l: (_stable(l), l))
    # whole lesions to the smaller kinds, in hash order, so each gets a stable, representative set
    order = {lesion: number for number, lesion in enumerate(lesions)}
    by_lesion: dict[str, list[dict]] = {}
    for row in rows:
        by_lesion.setdefault(row["lesion_id"], []).append(row)
    targets = [("increment", round(INCREMENT_FRACTION * (len(rows) + 1512))), *KIND_ROWS.items()]
    assigned, taken = [], set()
    pool = iter(sorted(by_lesion, key=order.get))
    for kind, wanted in targets:
        count = 0
        while count < wanted:
            lesion = next(pool)
            for row in by_lesion[lesion]:
                assigned.append((kind, row))
                taken.add(row["image_id"])
            count += len(by_lesion[lesion])
    assigned += [("ham10000", row) for row in rows if row["image_id"] not in taken]
    test = _read(data / "ham10000/metadata/ISIC2018_Task3_Test_GroundTruth.csv")
    return assigned, test


def _in_scale(scale: str, key: str) -> bool:
    return scale == "10k" or _stable(f"1k:{key}") % 10 == 0


def cache_root() -> Path:
    return Path(os.environ.get("HAM_BENCH_CACHE", Path(tempfile.gettempdir()) / "ham-bench-fixture"))


def build_fixture(scale: str, data: Path = DATA, jobs: int = 2) -> Fixture:
    assert scale in ("1k", "10k"), scale
    recipe = {"version": IMAGE_RECIPE, "kinds": KIND_ROWS, "images": KIND_IMAGES, "increment": INCREMENT_FRACTION,
              "metadata": hashlib.sha256((data / "ham10000/metadata/HAM10000_metadata.csv").read_bytes()).hexdigest()}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache = cache_root() / key
    root = cache / f"{scale}-layout{LAYOUT_RECIPE}"
    if (root / "fixture.json").exists():
        saved = json.loads((root / "fixture.json").read_text())
        return Fixture(scale, root, saved["sources"], saved["increment"], saved["counts"])

    bases = sorted((data / "ham10000/images").glob("*.jpg"))
    assigned, test = _assign(data)
    # Global index g: the 10k order, so the 1k fixture's images are a subset of the 10k fixture's.
    entries = [(kind, row, g) for g, (kind, row) in enumerate(assigned)]
    entries += [("test", row, len(assigned) + n) for n, row in enumerate(test)]
    # the vienna_dias route's images are all histopathology (pipeline/source_rules.py): other rows the slides
    # were given go to the export folder instead (same index g, so no other image changes)
    entries = [("export" if kind == "slides" and row["dx_type"] != "histo" else kind, row, g)
               for kind, row, g in entries]
    chosen = [e for e in entries if _in_scale(scale, e[1]["lesion_id"] if e[0] != "test" else e[1]["image"])]
    # the increment: 1 % of the scale's images (whole lesions chosen by hash give the 1k scale a few more)
    wanted = round(INCREMENT_FRACTION * sum(1 for e in chosen if e[0] != "increment"))
    extra = [e for e in chosen if e[0] == "increment"][wanted:]
    chosen = [e for e in chosen if e not in extra]
    jobs_list = []
    for kind, row, g in chosen:
        size, quality, portrait = KIND_IMAGES["ham10000" if kind == "test" else kind]
        if portrait is None:
            portrait = g % 4 == 0
        suffix = ".scan" if kind == "slides" else ".jpg"
        jobs_list.append((str(bases[g % len(bases)]), g, size, str(cache / "images" / kind / f"{g}{suffix}"),
                          quality, portrait))
    with ProcessPoolExecutor(jobs) as pool:
        derived = list(pool.map(_derive, jobs_list, chunksize=64))
    digests = [digest for _, digest in derived]
    assert len(set(digests)) == len(digests), "two derived images are the same bytes"

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    by_kind: dict[str, list[tuple[dict, Path, str]]] = {}
    for (kind, row, g), (path, digest) in zip(chosen, derived):
        by_kind.setdefault(kind, []).append((row, Path(path), digest))
    annotations = []  # (sha256, key)
    sources, counts = [], {}

    def link(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst)

    # ham10000: the two training zips, the test zip, the metadata as published (its rows whose image is here)
    ham = root / "ham10000"
    ham.mkdir()
    train = by_kind.get("ham10000", [])
    half = (len(train) + 1) // 2
    for number, part in enumerate((train[:half], train[half:]), start=1):
        with zipfile.ZipFile(ham / f"HAM10000_images_part_{number}.zip", "w", zipfile.ZIP_STORED) as archive:
            for row, path, _ in part:
                archive.write(path, f"HAM10000_images_part_{number}/{row['image_id']}.jpg")
    with open(ham / "HAM10000_metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, HAM_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: row[c] for c in HAM_COLUMNS} for row, _, _ in train)
    tests = by_kind.get("test", [])
    with zipfile.ZipFile(ham / "ISIC2018_Task3_Test_Input.zip", "w", zipfile.ZIP_STORED) as archive:
        for row, path, _ in tests:
            archive.write(path, f"ISIC2018_Task3_Test_Input/{row['image']}.jpg")
    with open(ham / "ISIC2018_Task3_Test_GroundTruth.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(tests[0][0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(row for row, _, _ in tests)
    # the test images' lesion IDs, dx_type, age, sex and site: the ISIC Archive's export of the collection
    shutil.copyfile(data / "ham10000/metadata/ISIC_archive_HAM10000_collection_metadata.csv",
                    ham / "ISIC_archive_metadata.csv")
    sources.append({"name": "ham10000", "kind": "ham10000", "path": "ham10000",
                    "options": {"test_metadata": "ISIC_archive_metadata.csv"}})
    counts["ham10000"] = len(train) + len(tests)
    annotations += [(digest, "d") for n, (_, _, digest) in enumerate(train + tests) if n % 20 == 0]

    def export(name: str, items: list, dataset: str | None) -> dict:
        folder = root / name
        columns = ["file", "lesion_key", "image_id", "dx", "dx_type", "age", "sex", "localization"]
        folder.mkdir()
        with open(folder / "index.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns, lineterminator="\n")
            writer.writeheader()
            for row, path, _ in items:
                link(path, folder / "images" / f"{row['image_id']}.jpg")
                writer.writerow({"file": f"images/{row['image_id']}.jpg", "lesion_key": row["lesion_id"],
                                 **{c: row[c] for c in columns[2:]}})
        counts[name] = len(items)
        entry = {"name": name, "kind": "export", "path": name, "options": {}}
        if dataset:
            entry["dataset"] = dataset
        return entry

    sources.append(export("vidir_modern", by_kind.get("export", []), None))
    annotations += [(d, "d") for n, (_, _, d) in enumerate(by_kind.get("export", [])) if n % 20 == 0]
    increment = export("increment", by_kind.get("increment", []), "vidir_modern")

    # series: one patient per lesion, its images as visits 200 days apart
    series = root / "vidir_molemax"
    series.mkdir()
    lesion_rows: dict[str, dict] = {}
    visits: dict[str, int] = {}
    for row, path, digest in by_kind.get("series", []):
        lesion = row["lesion_id"]
        visit = visits.get(lesion, 0)
        visits[lesion] = visit + 1
        day = date(2014, 3, 1) + timedelta(days=200 * visit)
        link(path, series / f"P{lesion[4:]}" / lesion / f"{day.isoformat()}.jpg")
        lesion_rows[lesion] = row
    with open(series / "lesions.csv", "w", newline="") as handle:
        columns = ["patient", "lesion", "diagnosis", "dx", "dx_type", "age", "sex", "localization"]
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        for lesion, row in sorted(lesion_rows.items()):
            writer.writerow({"patient": f"P{lesion[4:]}", "lesion": lesion, "diagnosis": "",
                             **{c: row[c] for c in columns[3:]}})
    sources.append({"name": "vidir_molemax", "kind": "series", "path": "vidir_molemax", "options": {}})
    counts["vidir_molemax"] = len(by_kind.get("series", []))
    annotations += [(d, "d") for n, (_, _, d) in enumerate(by_kind.get("series", [])) if n % 20 == 0]

    # slides: scans with a mount border (their candidates are the crops, so none is annotated)
    slides = root / "vienna_dias"
    slides.mkdir()
    with open(slides / "index.csv", "w", newline="") as handle:
        columns = ["file", "lesion_key", "image_id", "dx", "dx_type", "age", "sex", "localization"]
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        for row, path, _ in by_kind.get("slides", []):
            link(path, slides / "scans" / f"{row['image_id']}.jpg")
            writer.writerow({"file": f"scans/{row['image_id']}.jpg", "lesion_key": row["lesion_id"],
                             **{c: row[c] for c in columns[2:]}})
    sources.append({"name": "vienna_dias", "kind": "slides", "path": "vienna_dias", "options": {}})
    counts["vienna_dias"] = len(by_kind.get("slides", []))

    # pptx: four yearly decks, one picture per slide with a numeric lesion ID and the diagnosis in words
    from pptx import Presentation
    from pptx.util import Inches

    decks = root / "rosendahl"
    decks.mkdir()
    pictures = by_kind.get("pptx", [])
    lesion_numbers: dict[str, int] = {}
    for year in range(4):
        deck = Presentation()
        for row, path, _ in pictures[year::4]:
            number = lesion_numbers.setdefault(row["lesion_id"], 900000 + len(lesion_numbers))
            slide = deck.slides.add_slide(deck.slide_layouts[6])
            slide.shapes.add_picture(str(path), Inches(1), Inches(1.5), width=Inches(6))
            frame = slide.shapes.add_textbox(Inches(1), Inches(0.3), Inches(8), Inches(1)).text_frame
            frame.text = f"{number}\nDiagnosis: {DIAGNOSIS_TEXT[row['dx']]}"
        deck.save(decks / f"rosendahl_{2001 + year}.pptx")
    sources.append({"name": "rosendahl", "kind": "pptx", "path": "rosendahl", "options": {}})
    counts["rosendahl"] = len(pictures)
    annotations += [(d, "d") for n, (_, _, d) in enumerate(pictures) if n % 20 == 0]

    # DermNet clinical photographs as they are (each a distinct real photograph); a tenth of them at 1k
    clinical = sorted((data / "clinical/dermnet").glob("*.jpg"))
    clinical = [p for p in clinical if _in_scale(scale, p.name)]
    folder = root / "dermnet"
    with_images = folder / "images"
    with_images.mkdir(parents=True)
    with open(folder / "index.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file", "lesion_key", "diagnosis"], lineterminator="\n")
        writer.writeheader()
        for number, path in enumerate(clinical):
            shutil.copyfile(path, with_images / path.name)
            writer.writerow({"file": f"images/{path.name}", "lesion_key": f"DN-{number}",
                             "diagnosis": path.name.split("__")[0].replace("_", " ")})
            if number % 3:
                annotations.append((hashlib.sha256(path.read_bytes()).hexdigest(), "c"))
    sources.append({"name": "dermnet", "kind": "export", "path": "dermnet", "dataset": "unknown", "options": {}})
    counts["dermnet"] = len(clinical)

    with open(root / "image_types.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["IMAGE", "ANNOTATION", "TIMESTAMP"])
        for digest, key_ in annotations:
            writer.writerow([digest, key_, "2018-01-01T00:00:00"])
    (root / "fixture.json").write_text(json.dumps({"sources": sources, "increment": increment, "counts": counts},
                                                  indent=1))
    return Fixture(scale, root, sources, increment, counts)


if __name__ == "__main__":
    import sys
    import time

    for scale in sys.argv[1:] or ["1k"]:
        start = time.perf_counter()
        fixture = build_fixture(scale)
        print(f"{scale}: {fixture.images} images + {fixture.counts['increment']} increment in {fixture.root} "
              f"({time.perf_counter() - start:.1f} s): {fixture.counts}")
