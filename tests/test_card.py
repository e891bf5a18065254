"""The data card a release carries: a Hugging Face style YAML header, uses and limitations, loading, age, sex and
site plots, and a contact sheet that shows every source of a class rather than the first IDs."""
from __future__ import annotations

import io

import yaml
from PIL import Image

from pipeline.card import _licence_id, draw_card, sample_per_class


def _rows(drawn_images):
    rows, paths = [], {}
    datasets = ("rosendahl", "vidir_modern", "vidir_molemax")
    for index in range(30):
        image_id = f"ISIC_{9000000 + index}"
        rows.append({"lesion_id": f"HAM_{9000000 + index // 2}", "image_id": image_id,
                     "dx": ("nv", "mel")[index % 2], "dx_type": "histo",
                     "age": str(20 + 5 * (index % 12)) if index % 7 else "",
                     "sex": ("male", "female", "unknown")[index % 3], "localization": ("back", "face")[index % 2],
                     "dataset": datasets[(index // 2) % 3]})
        paths[image_id] = str(drawn_images["dsc"][index])
    return {"train": rows[:20], "test": rows[20:]}, paths


def test_card_header_sections_and_plots(drawn_images):
    by_split, paths = _rows(drawn_images)
    summary = {"images": 30, "lesions": 15,
               "splits": {s: {"images": len(r), "lesions": len({x["lesion_id"] for x in r}),
                              "dx": {c: sum(x["dx"] == c for x in r) for c in ("mel", "nv")},
                              "dx_type": {"histo": len(r)},
                              "dataset": {d: sum(x["dataset"] == d for x in r) for d in {x["dataset"] for x in r}}}
                          for s, r in by_split.items()}}
    params = {"version": "9.9", "attribution": "Cite us.", "license": "CC BY-NC 4.0 (https://example.org)"}
    files = draw_card(paths, by_split, params, summary)
    assert {"card/age_sex.png", "card/localization.png", "card/contact_sheet.png", "CARD.md"} <= set(files)
    for name in ("card/age_sex.png", "card/localization.png"):
        assert Image.open(io.BytesIO(files[name])).size[0] >= 600
    text = files["CARD.md"].decode()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["license"] == "cc-by-nc-4.0" and header["task_categories"] == ["image-classification"]
    assert [c["split"] for c in header["configs"][0]["data_files"]] == ["train", "test"]
    for section in ("## Uses and limitations", "## Loading", "load_dataset(\"imagefolder\"",
                    "## Age, sex and body site", "card/age_sex.png", "card/localization.png"):
        assert section in text
    assert draw_card(paths, by_split, params, summary) == files  # same release, same bytes


def test_contact_sheet_takes_each_source_in_turn(drawn_images):
    by_split, _ = _rows(drawn_images)
    picked = sample_per_class(by_split, ["mel", "nv"], per_class=3)
    dataset_of = {r["image_id"]: r["dataset"] for rows in by_split.values() for r in rows}
    for dx in ("mel", "nv"):
        assert len({dataset_of[image_id] for image_id, _ in picked[dx]}) == 3  # all three sources show


def test_licence_identifiers():
    assert _licence_id("CC BY-NC 4.0 (https://creativecommons.org/licenses/by-nc/4.0/)") == "cc-by-nc-4.0"
    assert _licence_id("CC BY 4.0") == "cc-by-4.0"
    assert _licence_id("proprietary") == "other"
