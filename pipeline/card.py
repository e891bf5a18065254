"""The data card of a release: `release/CARD.md` and its plots in `release/card/`.

CARD.md: citation, licence, images and lesions per split, counts per class, dx_type and dataset per split, and
dx_type per class. Plots (PNG, drawn with matplotlib's Agg renderer and Pillow; no timestamp or software tag in the
files, so the same release gives the same bytes):
    card/class_distribution.png   images per class, one bar per split
    card/dx_type_per_class.png    how each class's diagnosis was confirmed (stacked bars)
    card/contact_sheet.png        sample images per class, taken in turn from each source, one row a class
    card/age_sex.png              age by sex (histogram), all splits
    card/localization.png         images per body site
`CardDrawing` draws the plots in a second process, forked when the release starts, while the caller goes on
(the release reads its tables, links its images and writes its tables meanwhile; matplotlib's import and
drawing are about a second); its `finish()` draws the contact sheet and CARD.md, writes the files and returns
their paths, relative to the release folder, for the manifest.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing
import re
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .common import atomic_write_bytes
from .vocabulary import CLASS_NAMES, DX_TYPES, IMAGE_TYPES

SAMPLES_PER_CLASS = 8
THUMB = (120, 90)
LABEL_WIDTH = 70


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def class_distribution_png(by_split: dict, classes: list[str]) -> bytes:
    from matplotlib.figure import Figure

    splits = [s for s in by_split if by_split[s]]
    figure = Figure(figsize=(8, 4))
    axes = figure.subplots()
    width = 0.8 / max(1, len(splits))
    for number, split in enumerate(splits):
        counts = Counter(r["dx"] for r in by_split[split])
        xs = [i + (number - (len(splits) - 1) / 2) * width for i in range(len(classes))]
        bars = axes.bar(xs, [counts.get(c, 0) for c in classes], width, label=f"{split} ({len(by_split[split])})")
        axes.bar_label(bars, fontsize=7)
    axes.set_xticks(range(len(classes)), classes)
    axes.set_ylabel("images")
    axes.set_title("Images per class and split")
    axes.legend()
    figure.tight_layout()
    return _figure_png(figure)


def dx_type_png(rows: list[dict], classes: list[str]) -> bytes:
    from matplotlib.figure import Figure

    counts = Counter((r["dx"], r["dx_type"]) for r in rows)
    types = [t for t in DX_TYPES if any(counts[(c, t)] for c in classes)]
    types += sorted({t for _, t in counts} - set(types))
    figure = Figure(figsize=(8, 4))
    axes = figure.subplots()
    bottom = [0] * len(classes)
    for dx_type in types:
        heights = [counts[(c, dx_type)] for c in classes]
        axes.bar(range(len(classes)), heights, 0.6, bottom=bottom, label=dx_type or "(none)")
        bottom = [b + h for b, h in zip(bottom, heights)]
    axes.set_xticks(range(len(classes)), classes)
    axes.set_ylabel("images")
    axes.set_title("How each class's diagnosis was confirmed (dx_type)")
    axes.legend()
    figure.tight_layout()
    return _figure_png(figure)


def sample_per_class(by_split: dict, classes: list[str], per_class: int = SAMPLES_PER_CLASS) -> dict:
    """class -> up to `per_class` (image_id, split), taken in turn from each source (`dataset`) of that class, each
    source's images in an order fixed by a hash of their ID (not the first IDs: those are one source's, or the
    newest batch's): every collection shows, and the same release gives the same sheet."""
    by_class_source: dict = {}
    for split, rows in by_split.items():
        for row in rows:
            key = hashlib.sha256(f"card:{row['image_id']}".encode()).hexdigest()
            by_class_source.setdefault(row["dx"], {}).setdefault(row.get("dataset") or "", []).append(
                (key, row["image_id"], split))
    picked = {}
    for dx in classes:
        queues = [sorted(items) for _, items in sorted(by_class_source.get(dx, {}).items())]
        chosen = []
        while len(chosen) < per_class and any(queues):
            for queue in queues:
                if queue and len(chosen) < per_class:
                    _, image_id, split = queue.pop(0)
                    chosen.append((image_id, split))
        picked[dx] = chosen
    return picked


def age_sex_png(rows: list[dict]) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.6))
    axes = figure.subplots()
    edges = list(range(0, 95, 5))
    sexes = sorted({r.get("sex") or "unknown" for r in rows})
    ages = {sex: [float(r["age"]) for r in rows if (r.get("sex") or "unknown") == sex and r.get("age")]
            for sex in sexes}
    axes.hist([ages[s] for s in sexes], bins=edges, label=[f"{s} ({len(ages[s])})" for s in sexes], stacked=True)
    missing = sum(1 for r in rows if not r.get("age"))
    axes.set_xlabel(f"age (years, steps of 5; {missing} without an age)")
    axes.set_ylabel("images")
    axes.set_title("Age by sex")
    axes.legend()
    figure.tight_layout()
    return _figure_png(figure)


def localization_png(rows: list[dict]) -> bytes:
    from matplotlib.figure import Figure

    counts = Counter(r.get("localization") or "unknown" for r in rows)
    sites = sorted(counts, key=lambda site: (-counts[site], site))
    figure = Figure(figsize=(8, 3.6))
    axes = figure.subplots()
    bars = axes.barh(range(len(sites)), [counts[s] for s in sites])
    axes.bar_label(bars, fontsize=7)
    axes.set_yticks(range(len(sites)), sites, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("images")
    axes.set_title("Body site (localization)")
    figure.tight_layout()
    return _figure_png(figure)


def contact_sheet_png(image_paths: dict[str, str], by_split: dict, classes: list[str]) -> bytes:
    """One row per class: SAMPLES_PER_CLASS images of that class across its sources (`sample_per_class`).
    `image_paths`: image ID -> a file holding the image's bytes."""
    picked = sample_per_class(by_split, classes)
    sheet = Image.new("RGB", (LABEL_WIDTH + SAMPLES_PER_CLASS * (THUMB[0] + 2), len(classes) * (THUMB[1] + 2)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, dx in enumerate(classes):
        top = row * (THUMB[1] + 2)
        draw.text((6, top + THUMB[1] // 2 - 6), dx, fill="black", font=font)
        for column, (image_id, split) in enumerate(picked[dx]):
            with Image.open(image_paths[image_id]) as image:
                # libjpeg decodes at half scale (300x225 for a 600x450 image): the sheet in half the time
                image.draft("RGB", (2 * THUMB[0], 2 * THUMB[1]))
                thumb = image.convert("RGB").resize(THUMB, Image.BILINEAR)
            sheet.paste(thumb, (LABEL_WIDTH + column * (THUMB[0] + 2), top))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def card_text(by_split: dict, params: dict, summary: dict, classes: list[str]) -> str:
    splits = [s for s in by_split if by_split[s]]
    rows = [r for s in splits for r in by_split[s]]
    version = params.get("version") or "unversioned"
    parts = [*yaml_header(version, summary, splits, params), f"# HAM10000 release {version}: data card", "",
             f"{summary['images']} dermatoscopic images of {summary['lesions']} pigmented skin lesions, "
             f"in {len(splits)} lesion-disjoint splits ({', '.join(splits)}).", "",
             "## Citation", "", params["attribution"].strip(), "", "## Licence", "", params["license"].strip(), "",
             "## Splits", "",
             _table(["split", "images", "lesions"],
                    [[s, summary["splits"][s]["images"], summary["splits"][s]["lesions"]] for s in splits] +
                    [["all", summary["images"], summary["lesions"]]]), "",
             "## Images per class", "",
             _table(["dx", "class", *splits, "all"],
                    [[c, CLASS_NAMES.get(c, c), *(summary["splits"][s]["dx"].get(c, 0) for s in splits),
                      sum(r["dx"] == c for r in rows)] for c in classes]), "",
             "![images per class and split](card/class_distribution.png)", "",
             "## Ground truth (dx_type) per split", ""]
    dx_types = [t for t in DX_TYPES if any(r["dx_type"] == t for r in rows)]
    dx_types += sorted({r["dx_type"] for r in rows} - set(dx_types))
    parts += [_table(["dx_type", *splits, "all"],
                     [[t or "(none)", *(summary["splits"][s]["dx_type"].get(t, 0) for s in splits),
                       sum(r["dx_type"] == t for r in rows)] for t in dx_types]), "",
              "## dx_type per class", "",
              _table(["dx", *(t or "(none)" for t in dx_types)],
                     [[c, *(sum(r["dx"] == c and r["dx_type"] == t for r in rows) for t in dx_types)]
                      for c in classes]), "",
              "![dx_type per class](card/dx_type_per_class.png)", "",
              "## Dataset (collection) per split", ""]
    datasets = sorted({r["dataset"] for r in rows})
    parts += [_table(["dataset", *splits, "all"],
                     [[d, *(summary["splits"][s]["dataset"].get(d, 0) for s in splits),
                       sum(r["dataset"] == d for r in rows)] for d in datasets]), "",
              "## Age, sex and body site", "",
              "![age by sex](card/age_sex.png)", "", "![body site](card/localization.png)", "",
              "## Sample images", "", "Images of each class, taken in turn from each source:", "",
              "![sample images per class](card/contact_sheet.png)", "",
              *filter_model_section(params.get("filter_model")),
              *USES_AND_LIMITATIONS, *loading_section(splits),
              "## Checking a copy", "",
              "`ham verify release` (or `ham verify release/test` for one split) checks every file against "
              "`manifest.csv`; `release.json` holds the version, the code version and the params hash.", ""]
    return "\n".join(parts)


def _licence_id(text: str) -> str:
    """The Hugging Face licence identifier of a licence text (cc-by-nc-4.0 from "CC BY-NC 4.0 (...)")."""
    match = re.match(r"\s*(CC[ -]BY(?:[ -](?:NC|SA|ND))*)[ -](\d\.\d)", text or "", re.I)
    return f"{match.group(1).lower().replace(' ', '-')}-{match.group(2)}" if match else "other"


def _size_category(count: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if count < limit:
            return name
    return "100K<n<1M"


def yaml_header(version: str, summary: dict, splits: list[str], params: dict) -> list[str]:
    """The card's YAML front matter, in the Hugging Face dataset-card style (licence, task, size, the splits as
    image folders), so a hub or a catalogue reads it without parsing the prose."""
    lines = ["---", f"pretty_name: HAM10000 release {version}", f"license: {_licence_id(params.get('license', ''))}",
             "task_categories:", "- image-classification", "tags:", "- dermatology", "- dermoscopy",
             "- skin-lesion", "- medical", "size_categories:", f"- {_size_category(summary['images'])}",
             "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: {split}/images/*"]
    return [*lines, "---", ""]


USES_AND_LIMITATIONS = [
    "## Uses and limitations", "",
    "Intended for research on automated diagnosis of pigmented skin lesions from dermatoscopic images: training "
    "on the train split, reporting on the held-out test split, which shares no lesion with it. Keep the splits "
    "as released: images of one lesion are near-copies, and mixing them across splits inflates any figure.", "",
    "Not for clinical use: it is not a diagnostic device, and no model trained on it is one without a clinical "
    "study of its own.", "",
    "Limitations to weigh: the images come from two sites (Vienna, Austria and Queensland, Australia) and mostly "
    "show lightly pigmented skin, so figures do not carry over to darker skin types; the classes are unbalanced "
    "(nevi are most images); ground truth differs by image (`dx_type`: histopathology, follow-up, consensus, "
    "confocal), and follow-up and consensus labels are less certain than histopathology; several images of one "
    "lesion are common; age is given in steps of five and is missing for some images. The images were chosen "
    "by people, their sources and an image-type network (see its section); an image the network wrongly "
    "took for a clinical photograph is not here.", ""]


def loading_section(splits: list[str]) -> list[str]:
    split = "test" if "test" in splits else (splits[0] if splits else "train")
    return ["## Loading", "",
            "With Hugging Face `datasets` (one row per image, with its labels), or with the project's light loader "
            "(`pip install \"ham10000-loader @ git+REPO#subdirectory=loader\"`):", "",
            "```python",
            "from datasets import load_dataset",
            f'{split} = load_dataset("imagefolder", data_dir="{split}/images", split="train")',
            "",
            "from ham10000_loader import ReleaseDataset",
            f'{split} = ReleaseDataset("{split}")  # items: (image, label index, metadata row)',
            "```", ""]


def filter_model_section(model: dict | None) -> list[str]:
    """A short model card of the image-type filter that chose the images (release.json has it whole)."""
    if not model:
        return []
    material = model.get("material") or {}
    per_source = model.get("held_out_per_source") or {}
    rows = [[source, *(counts.get(t, 0) for t in IMAGE_TYPES),
             per_source.get(source, "") if per_source.get(source) is not None else ""]
            for source, counts in sorted(material.items())]
    return ["## The image-type filter", "",
            f"Every image was kept by a person's label, its source's declared type, or the image-type network "
            f"`{(model.get('model_sha256') or '')[:12]}` (sha256 in `release.json`), trained on "
            f"{model.get('trained_on')} labelled images; images of a source with `role: training` taught it and are "
            f"not released. It keeps {', '.join(model.get('keep_types') or [])} images it is at least "
            f"{model.get('min_confidence')} sure of, and queues for a person every decision under "
            f"{model.get('review_below')} (softmax temperature {model.get('temperature')}, fitted on held-out "
            f"lesions).", "",
            _table(["material (source)", *IMAGE_TYPES, "held-out accuracy"], rows), "",
            f"Held out during training: {model.get('held_out')} images, accuracy {model.get('held_out_accuracy')}. "
            f"On whole collections and conditions it never saw, see the project's `bench/results.json` "
            f"(`python -m benchmarks.bench_filter`).", ""]


def draw_card(image_paths: dict[str, str], by_split: dict, params: dict, summary: dict) -> dict:
    """The card's files: path relative to the release folder -> bytes (`image_paths` as for `contact_sheet_png`)."""
    by_split = {s: rows for s, rows in by_split.items() if rows}
    return {**plots(by_split), **sheet_and_text(image_paths, by_split, params, summary)}


def _classes(by_split: dict) -> list[str]:
    return sorted({r["dx"] for rows in by_split.values() for r in rows})


def plots(by_split: dict) -> dict:
    """The matplotlib plots: they read each row's dx, dx_type, age, sex and localization only."""
    classes = _classes(by_split)
    rows = [r for rows in by_split.values() for r in rows]
    return {"card/class_distribution.png": class_distribution_png(by_split, classes),
            "card/dx_type_per_class.png": dx_type_png(rows, classes),
            "card/age_sex.png": age_sex_png(rows), "card/localization.png": localization_png(rows)}


def sheet_and_text(image_paths: dict[str, str], by_split: dict, params: dict, summary: dict) -> dict:
    classes = _classes(by_split)
    return {"card/contact_sheet.png": contact_sheet_png(image_paths, by_split, classes),
            "CARD.md": card_text(by_split, params, summary, classes).encode()}


class CardDrawing:
    """The data card of a release, drawn while the release links its images and writes its tables.

    Made when the release starts: where this machine has more than one core it forks a second process, which
    imports matplotlib (half a second) while the release reads its tables. `draw(...)` hands that process the
    plots (each row's dx and dx_type); `finish()`, called once the caller's own work is done, draws the contact
    sheet and CARD.md here, waits for the plots, writes the files into the release folder and returns their
    paths. With one core everything is drawn in `finish()`. The bytes are `draw_card`'s either way."""

    def __init__(self, release_dir: Path):
        self.release_dir = Path(release_dir)
        self.pool = self.plots = self.job = None
        if (os.cpu_count() or 1) > 1 and "fork" in multiprocessing.get_all_start_methods():
            # fork: the child starts without importing this package again
            self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
            self.pool.submit(_import_matplotlib)

    def draw(self, image_paths: dict[str, str], by_split: dict, params: dict, summary: dict) -> None:
        """`image_paths` maps each image ID to a file with its bytes (the standardised store's)."""
        by_split = {s: rows for s, rows in by_split.items() if rows}
        self.job = (image_paths, by_split, params, summary)
        if self.pool is not None:
            slim = {split: [{key: r.get(key, "") for key in ("dx", "dx_type", "age", "sex", "localization")}
                            for r in rows] for split, rows in by_split.items()}
            self.plots = self.pool.submit(plots, slim)

    def abandon(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def finish(self) -> list[str]:
        try:
            if self.plots is None:
                outputs = draw_card(*self.job)
            else:
                outputs = {**sheet_and_text(*self.job), **self.plots.result()}
        finally:
            if self.pool is not None:
                self.pool.shutdown()
        for name, data in sorted(outputs.items()):
            atomic_write_bytes(self.release_dir / name, data)
        return sorted(outputs)


def _import_matplotlib() -> None:
    from matplotlib.figure import Figure  # noqa: F401
    from matplotlib.backends import backend_agg  # noqa: F401
