"""Readers for each kind of raw source.

A reader turns one raw source folder into a stream of `RawItem` (an image file's bytes plus what the source says
about it) and `Reject` (a raw item that could not be used, with the reason). Readers never decide whether bytes
are a usable image: ingest checks every item the same way. Register a new kind in `READERS`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Union

# What a source may say about an image; every candidate row carries these columns (empty where unknown).
ITEM_FIELDS = (
    "lesion_key",  # the source's own lesion identifier (deck slide text, export column, series folder, ...)
    "image_id",  # an official image ID to keep (public release), else empty
    "diagnosis",  # free-text pathology, unified to a class in the metadata stage
    "dx",  # a diagnosis class already given by the source
    "dx_type",
    "age",
    "sex",
    "localization",
    "visit_date",  # YYYY-MM-DD
    "image_type_hint",  # dsc / macro / clinic where the source says so
    "split_hint",  # train / val / test where the source fixes it (the official ISIC 2018 test set)
)


@dataclass
class RawItem:
    data: bytes
    origin: str  # path of the raw file relative to the source root
    member: str = ""  # archive member, slide reference or sheet row inside the origin file
    fields: dict = field(default_factory=dict)


@dataclass
class Reject:
    origin: str
    member: str
    reason: str


Reader = Callable[[Path, dict], Iterator[Union[RawItem, Reject]]]

# kind -> (module in this package, reader function). A reader takes (source root folder, options dict).
KINDS = {
    "export": ("export", "read_export"),
    "folder": ("export", "read_export"),
    "pptx": ("pptx", "read_pptx"),
    "series": ("series", "read_series"),
    "slides": ("slides", "read_slides"),
    "ham10000": ("ham10000", "read_ham10000"),
    "isic": ("isic", "read_isic"),
}


def reader_for(kind: str) -> Reader:
    if kind not in KINDS:
        raise KeyError(kind)
    module_name, function = KINDS[kind]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, function)


def known_kinds() -> list[str]:
    return sorted(KINDS)
