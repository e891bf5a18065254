"""`series` sources: MoleMax HD sequential imaging (the `vidir_molemax` route), dated images per lesion.

Layout (paths relative to the source root):

    <patient>/<lesion>/<YYYY-MM-DD>[_anything].<jpg|jpeg|png|tif|tiff|bmp>
    lesions.csv                      optional: patient, lesion, diagnosis, dx_type, age, sex, localization

Every image becomes a RawItem with lesion_key `<patient>/<lesion>`, visit_date `YYYY-MM-DD` taken from the file
name and member `visit <date>`. Rows of `lesions.csv` are joined on patient + lesion; a histopathology result
shows as dx_type `histo` plus the free-text `diagnosis` (unified to a class by the metadata stage).

Follow-up ground truth (the study's rule: nevi unchanged over follow-up): a lesion photographed on at least
`min_visits` distinct dates spanning at least `min_months` full months, for which lesions.csv gives no diagnosis
of its own (no histopathology, no consensus diagnosis), gets dx `nv` and dx_type `follow_up` on every image.
Every image carries the extra field `follow_up_note` saying which rule gave its ground truth or why it has
none (e.g. "2 visits over 7 months, needs 18"); images without any diagnosis are still yielded with an empty dx
and the metadata stage excludes them with its own reason. Follow-up counts visits from file names: a date whose
only image later fails ingest's image checks still counts as a visit.

Options:
  lesions:      the lesions CSV, relative to the source root (default `lesions.csv`; optional unless named)
  columns:      mapping from our column names (patient, lesion, diagnosis, dx, dx_type, age, sex, localization) to
                the CSV's names, as in `export` sources
  date_pattern: regular expression searched in the file name (without extension) for the visit date, with named
                groups `year`, `month`, `day` (or three groups in that order). Default: YYYY-MM-DD or YYYYMMDD
                not touching other digits.
  min_visits:   distinct visit dates needed for follow-up ground truth (default 2)
  min_months:   full months needed between the first and last visit (default 18, the study's ~1.5 years)
  image_type:   dsc / macro / clinic for every image (every kind takes it)

Rejected (never silently dropped): files at the wrong depth, hidden files, files whose extension is not an image
type, file names without a date or with an impossible date (2019-13-45), symlinks leading outside the source,
unreadable files, lesions.csv rows that are malformed, duplicated or name no images. Missing lesions.csv columns
are a Reject naming the file and column; the images are still yielded. If lesions.csv is named but absent, or
lacks a column that says whether a lesion has a diagnosis (patient, lesion, diagnosis, dx_type), no lesion gets
follow-up ground truth, because a histopathology result could be hidden from us.
Ignored on purpose: the operating systems' folder litter `.DS_Store` and `Thumbs.db` (anywhere), and
documentation/metadata files (.csv, .md, .txt, ...) at the top level of the source.
"""
from __future__ import annotations

import datetime
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from . import BadTable, RawItem, Reject, SourceOptions, Unit, file_unit, mapping, number, option, read_table, regex, text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
IGNORED_NAMES = {".DS_Store", "Thumbs.db"}
TOP_LEVEL_SKIP = {".csv", ".xlsx", ".xls", ".md", ".txt", ".json", ".yaml", ".yml"}
DEFAULT_DATE_PATTERN = r"(?<!\d)(?P<year>\d{4})(?P<sep>-?)(?P<month>\d{2})(?P=sep)(?P<day>\d{2})(?!\d)"
REQUIRED_COLUMNS = ("patient", "lesion", "diagnosis", "dx_type")  # needed to trust the follow-up rule
DETAIL_COLUMNS = ("age", "sex", "localization")
OPTIONAL_COLUMNS = ("dx",)
COLUMN_KEYS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *DETAIL_COLUMNS)  # what `columns` may map


@dataclass(frozen=True)
class SeriesOptions(SourceOptions):
    KIND = "series"
    lesions: str | None = option(None, text(nullable=True))  # None: lesions.csv, used if present
    columns: dict = option(check=mapping(COLUMN_KEYS), factory=dict)
    date_pattern: re.Pattern = option(re.compile(DEFAULT_DATE_PATTERN),
                                      regex(groups=3, named=("year", "month", "day"), default=DEFAULT_DATE_PATTERN))
    min_visits: int = option(2, number(minimum=1, integer=True))
    min_months: float = option(18.0, number(minimum=0))

    @property
    def lesions_file(self) -> str:
        return self.lesions or "lesions.csv"

    @property
    def lesions_named(self) -> bool:
        return self.lesions is not None


@dataclass
class DatedImage:
    path: Path
    origin: str
    date: datetime.date


@dataclass
class LesionInfo:
    """What lesions.csv says about one lesion (all strings, empty where unknown)."""
    diagnosis: str = ""
    dx: str = ""
    dx_type: str = ""
    age: str = ""
    sex: str = ""
    localization: str = ""


def parse_date(stem: str, pattern: re.Pattern) -> datetime.date | str:
    """The visit date in a file name (without extension), or a reason why there is none."""
    match = pattern.search(stem)
    if match is None:
        return "no visit date in the file name"
    if {"year", "month", "day"} <= set(pattern.groupindex):
        year, month, day = match.group("year"), match.group("month"), match.group("day")
    else:
        year, month, day = match.group(1), match.group(2), match.group(3)
    try:
        return datetime.date(int(year), int(month), int(day))
    except (TypeError, ValueError):
        return f"impossible visit date {match.group(0)!r} in the file name"


def months_between(first: datetime.date, last: datetime.date) -> int:
    """Full calendar months from first to last (2017-01-15 -> 2018-07-14 is 17, -> 2018-07-15 is 18)."""
    months = (last.year - first.year) * 12 + (last.month - first.month)
    return months - 1 if last.day < first.day else months


def follow_up(dates: set[datetime.date], options: SeriesOptions) -> tuple[bool, str]:
    """Whether a lesion's visits qualify for follow-up ground truth, and a note saying why (not)."""
    visits = len(dates)
    months = months_between(min(dates), max(dates))
    need_months = f"{options.min_months:g}"
    summary = f"{visits} visit{'s' if visits != 1 else ''} over {months} month{'s' if months != 1 else ''}"
    if visits < options.min_visits:
        return False, f"{summary}, needs {options.min_visits} visits"
    if months < options.min_months:
        return False, f"{summary}, needs {need_months}"
    return True, f"{summary}: unchanged over follow-up (>= {options.min_visits} visits, >= {need_months} months)"


def read_lesions(root: Path, options: SeriesOptions) -> tuple[dict, bool, list[Reject]]:
    """lesions.csv as {(patient, lesion): (row number, LesionInfo)}, whether it can be trusted for the
    follow-up rule, and the Rejects it produced."""
    name = options.lesions_file
    path = root / name
    if not path.is_file():
        if options.lesions_named:
            return {}, False, [Reject(name, "", f"lesions file {name} not found in the source; no lesion gets "
                                                f"follow-up ground truth")]
        return {}, True, []
    column = {key: options.columns.get(key, key) for key in (*REQUIRED_COLUMNS, *DETAIL_COLUMNS, *OPTIONAL_COLUMNS)}
    try:
        header, rows = read_table(root, name)
    except BadTable as error:
        return {}, False, [Reject(name, "", f"{error}; no lesion gets follow-up ground truth")]
    rejects = []
    missing_required = [key for key in REQUIRED_COLUMNS if column[key] not in header]
    for key in missing_required:
        rejects.append(Reject(name, "", f"{name}: missing column '{column[key]}' ({key}); the file is not used "
                                        f"and no lesion gets follow-up ground truth"))
    if missing_required:
        return {}, False, rejects
    for key in DETAIL_COLUMNS:
        if column[key] not in header:
            rejects.append(Reject(name, "", f"{name}: missing column '{column[key]}' ({key}); left empty"))

    lesions: dict[tuple[str, str], tuple[int, LesionInfo]] = {}
    for number, row in rows:
        member = f"row {number}"
        values = {key: row.get(column[key]) or "" for key in column}
        key = (values["patient"], values["lesion"])
        if not key[0] or not key[1]:
            rejects.append(Reject(name, member, f"{name} {member}: empty patient or lesion"))
            continue
        if key in lesions:
            rejects.append(Reject(name, member, f"{name} {member}: lesion {key[0]}/{key[1]} already described in "
                                                f"row {lesions[key][0]}; this row is ignored"))
            continue
        info = LesionInfo(**{k: values[k] for k in ("diagnosis", "dx", "dx_type", "age", "sex", "localization")})
        lesions[key] = (number, info)
    return lesions, True, rejects


def scan_images(root: Path, options: SeriesOptions) -> tuple[dict[tuple[str, str], list[DatedImage]], list[Reject]]:
    """Walk the source: dated images grouped by (patient, lesion), and Rejects for everything else."""
    lesions: dict[tuple[str, str], list[DatedImage]] = defaultdict(list)
    rejects = []
    resolved_root = root.resolve()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        origin = relative.as_posix()
        if path.is_dir() and path.is_symlink():
            rejects.append(Reject(origin, "", f"{origin}: symbolic link to a folder, not followed"))
            continue
        if path.is_dir() or path.name in IGNORED_NAMES:
            continue
        parts = relative.parts
        if len(parts) == 1 and (origin == options.lesions_file or path.suffix.lower() in TOP_LEVEL_SKIP):
            continue  # lesions.csv and documentation at the top
        if any(part.startswith(".") for part in parts):
            rejects.append(Reject(origin, "", f"{origin}: hidden file or folder"))
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(resolved_root):
            rejects.append(Reject(origin, "", f"{origin}: symbolic link leading outside the source"))
            continue
        if not path.is_file():
            rejects.append(Reject(origin, "", f"{origin}: not a regular file"))
            continue
        if len(parts) != 3:
            rejects.append(Reject(origin, "", f"{origin}: at the wrong depth; expected "
                                              f"<patient>/<lesion>/<date>.<ext>"))
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            rejects.append(Reject(origin, "", f"{origin}: not an image file type "
                                              f"({', '.join(sorted(IMAGE_SUFFIXES))})"))
            continue
        date = parse_date(path.stem, options.date_pattern)
        if isinstance(date, str):
            rejects.append(Reject(origin, "", f"{origin}: {date}"))
            continue
        lesions[(parts[0], parts[1])].append(DatedImage(path, origin, date))
    return lesions, rejects


def lesion_fields(key: tuple[str, str], dates: set[datetime.date], described: LesionInfo | None,
                  trusted: bool, options: SeriesOptions) -> dict:
    """The fields every image of one lesion shares (all but visit_date)."""
    info = described or LesionInfo()
    fields = {"lesion_key": f"{key[0]}/{key[1]}", "diagnosis": info.diagnosis, "dx": info.dx,
              "dx_type": info.dx_type, "age": info.age, "sex": info.sex, "localization": info.localization}
    qualifies, note = follow_up(dates, options)
    if info.diagnosis or info.dx:
        fields["follow_up_note"] = f"diagnosis from {options.lesions_file} ({info.dx_type or 'no dx_type'}); {note}"
    elif info.dx_type and info.dx_type != "follow_up":
        fields["follow_up_note"] = f"{options.lesions_file} gives dx_type {info.dx_type} but no diagnosis; {note}"
    elif not trusted:
        fields["follow_up_note"] = f"{options.lesions_file} unusable, follow-up ground truth not assigned; {note}"
    elif qualifies:
        fields.update(dx="nv", dx_type="follow_up", follow_up_note=note)
    else:
        fields.update(dx_type="", follow_up_note=note)
    return fields


def read_series(root: Path, options: SeriesOptions | dict) -> Iterator[Union[RawItem, Reject, Unit]]:
    settings = SeriesOptions.of(options)
    described, trusted, csv_rejects = read_lesions(root, settings)
    yield from csv_rejects
    lesions, file_rejects = scan_images(root, settings)
    yield from file_rejects

    for key, (number, _) in sorted(described.items(), key=lambda item: item[1][0]):
        if key not in lesions:
            yield Reject(settings.lesions_file, f"row {number}",
                         f"{settings.lesions_file} row {number}: no images for lesion {key[0]}/{key[1]}")

    for key in sorted(lesions):
        images = sorted(lesions[key], key=lambda image: (image.date, image.origin))
        shared = lesion_fields(key, {image.date for image in images}, described.get(key, (0, None))[1],
                               trusted, settings)
        for image in images:
            visit = image.date.isoformat()
            yield file_unit(image.path, image.origin, f"visit {visit}", {**shared, "visit_date": visit},
                            f"{image.origin}: unreadable")
