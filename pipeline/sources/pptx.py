"""`pptx` sources: PowerPoint decks from Rosendahl's skin-cancer practice, one deck per calendar year.

Each slide shows one lesion: one or more pictures (a dermatoscopic image, often a clinical close-up or overview
beside it) and a text field with the lesion ID. This reader does what the authors' `extract/extract_pptx.py`
(ptschandl/HAM10000_dataset) did, with every picture and every problem accounted for:

- decks are found recursively under the source root (`pattern`, `legacy_pattern`); the year is the 4-digit
  19xx/20xx number in the deck's file name (`extract_pptx_sample_1999.pptx` -> 1999);
- every picture on every slide is yielded: plain pictures, pictures inside (nested) group shapes and filled
  picture placeholders, in the slide's shape order, numbered from 1 (`member` = `slide 2 picture 1`); the bytes
  are the embedded image file exactly as stored in the deck (PowerPoint cropping is not applied);
- the slide's text (every text frame and table cell on the slide, groups included, joined by new lines) gives the
  lesion ID (`id_pattern`, first group) and optionally a free-text diagnosis (`diagnosis_pattern`).
  The authors used the first run of digits of the slide's last text run; our default `id_pattern` wants at least
  five digits standing alone, so a year or a date on the slide is never taken for the ID. The two real sample
  decks hold the IDs 937946-937949 (six digits);
- fields: `lesion_key` = the ID, `diagnosis` = the diagnosis text if any, `visit_date` empty; extra keys `year`,
  `slide` (1-based position in the deck), `slide_id` (PowerPoint's internal slide ID, from 256) and
  `source_name` (`ID_YEAR_SLIDEID`, the file name the authors' tool gave the image, for cross-reference).

Options:
  pattern:           glob for decks relative to the root (default `**/*.pptx`, letters matched in either case)
  legacy_pattern:    glob for old binary decks (default `**/*.ppt`); converted with LibreOffice when it is on
                     PATH (`soffice` or `libreoffice`), else each one is rejected with the command to convert it
  convert_timeout:   seconds one LibreOffice conversion may take (default 300)
  id_pattern:        regex, first group = lesion ID (default `(?<![\\d.,])(\\d{5,})(?![.,]?\\d)`, see above)
  diagnosis_pattern: regex, first group (or the whole match) = diagnosis; searched in the slide text with the
                     ID's match blanked out. Default: a labelled line such as `Diagnosis: Bowen's disease`
                     (labels diagnosis, dx, histo, histology, histopathology, pathology). `null` or "" turns
                     deck diagnoses off.
  workbook:          companion Excel workbook (.xlsx/.xlsm) relative to the root, optional
  sheet:             sheet name in the workbook (default: the first sheet)
  header_row:        row holding the column headers (default 1)
  columns:           mapping our field names -> the sheet's column headers; the key column is `lesion_key`.
                     Fields not mapped are looked up under their own name and left alone where absent; extra
                     columns of the sheet are ignored.
  image_type:        dsc / macro / clinic for every picture (every kind takes it; decks mix types, so usually
                     left out and the filter decides)

Workbook join: pathology and patient data (diagnosis, dx, dx_type, age, sex, localization, ...) are joined by
lesion ID onto every picture of that lesion. The workbook is the pathology source of truth, so a non-empty
workbook cell wins over the deck's own diagnosis text; an empty cell leaves the deck's value. Lesion IDs with no
workbook row are still yielded with empty fields: the metadata stage excludes them with its own reason.
A workbook that cannot be used (file missing or unreadable, sheet missing, a mapped or key column missing or
renamed) gives ONE reject naming the workbook, sheet and column, and then joins nothing at all: a half-joined
table would be worse than an obviously missing one. The pictures are still yielded, with the deck's own fields,
so no picture is lost; fix the mapping and re-run (ingest's cache makes that cheap). A workbook row that repeats
a lesion ID with different values is rejected (the first row is used); a row with data but no ID is rejected.

Problems never stop the run; each ends up as a `Reject` naming the file (and slide, picture, sheet, row, column):
an unreadable or truncated deck (one reject for the deck), a deck without a year in its name (one reject per
picture), a `.ppt` that cannot be converted (one reject), a slide whose pictures have no lesion ID in the slide
text or several different ones (one reject per picture), a linked (not embedded) picture, an embedded picture
whose image part is missing. PowerPoint's own lock files (`~$name.pptx`) are rejected as such.
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Union

from ..common import stable_hash
from . import (ITEM_FIELDS, BadTable, RawItem, Reject, SourceOptions, Unit, file_stamp, mapping, number, option,
               read_sheet, regex, text)

DEFAULT_PATTERN = "**/*.pptx"
DEFAULT_LEGACY_PATTERN = "**/*.ppt"
DEFAULT_ID_PATTERN = r"(?<![\d.,])(\d{5,})(?![.,]?\d)"
DEFAULT_DIAGNOSIS_PATTERN = (r"(?im)^[ \t]*(?:diagnosis|dx|histo|histology|histopathology|pathology)[ \t]*[:=]"
                             r"[ \t]*(\S.*?)[ \t]*$")
DEFAULT_CONVERT_TIMEOUT = 300
YEAR = re.compile(r"(?<!\d)((?:19|20)\d\d)(?!\d)")
CONVERT_HINT = "soffice --headless --convert-to pptx --outdir OUTDIR {name}"
JOINED_FIELDS = tuple(name for name in ITEM_FIELDS if name != "lesion_key")
NS_A = "http://schemas.openxmlformats.org/drawingml/2006/main"
NS_R = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"


@dataclass(frozen=True)
class PptxOptions(SourceOptions):
    KIND = "pptx"
    pattern: str = option(DEFAULT_PATTERN, text(nullable=True, null=DEFAULT_PATTERN))
    legacy_pattern: str | None = option(DEFAULT_LEGACY_PATTERN, text(nullable=True))  # None: no legacy decks
    convert_timeout: float = option(float(DEFAULT_CONVERT_TIMEOUT), number(above=0))
    id_pattern: re.Pattern = option(re.compile(DEFAULT_ID_PATTERN), regex(groups=1))
    diagnosis_pattern: re.Pattern | None = option(re.compile(DEFAULT_DIAGNOSIS_PATTERN), regex(nullable=True))
    workbook: str | None = option(None, text(nullable=True))
    sheet: str | None = option(None, text(nullable=True))
    header_row: int = option(1, number(minimum=1, integer=True))
    columns: dict = option(check=mapping(ITEM_FIELDS), factory=dict)


def _any_case(pattern: str) -> str:
    """A glob matching letters in either case (Path.glob is case-sensitive on Linux before Python 3.12)."""
    out, in_class = [], False
    for char in pattern:
        if char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        if char.isalpha() and not in_class and char.lower() != char.upper():
            out.append(f"[{char.lower()}{char.upper()}]")
        else:
            out.append(char)
    return "".join(out)


def _find_decks(root: Path, pattern: str, legacy_pattern: str) -> list[tuple[Path, bool]]:
    found: dict[Path, bool] = {}
    for glob, legacy in ((legacy_pattern, True), (pattern, False)):  # a file matched by both is read as pptx
        if not glob:
            continue
        for path in root.glob(_any_case(glob)):
            if path.is_file():
                found[path] = legacy and path.suffix.lower() != ".pptx"
    return sorted(found.items(), key=lambda pair: pair[0].relative_to(root).as_posix())


def _cell_text(value) -> str:
    """A workbook cell as text: integral numbers without '.0', dates as YYYY-MM-DD."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime.datetime):
        return value.date().isoformat() if value.time() == datetime.time() else value.isoformat(sep=" ")
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value).strip()


# ---------------------------------------------------------------------------------------------- workbook


def _read_workbook(root: Path, options: PptxOptions) -> tuple[dict[str, dict], list[Reject]]:
    """Lesion ID -> joined fields, and the workbook's rejects. An unusable workbook gives ({}, [one reject])."""
    name = options.workbook
    sheet_name = options.sheet
    header_row = options.header_row
    columns = options.columns
    path = root / name
    if not path.is_file():
        return {}, [Reject(name, "", f"workbook {name} not found in the source folder; nothing joined")]
    if path.suffix.lower() == ".xls":
        return {}, [Reject(name, "", f"workbook {name} is an old binary .xls file; convert it with "
                                     f"'soffice --headless --convert-to xlsx --outdir OUTDIR {path.name}' and set "
                                     f"option workbook to the .xlsx; nothing joined")]
    try:
        sheet_name, header_cells, rows = read_sheet(path, name, sheet_name, header_row)
    except BadTable as error:
        return {}, [Reject(name, f"sheet {sheet_name}" if sheet_name else "", f"workbook {error}; nothing joined")]
    where = f"workbook {name} sheet {sheet_name}"
    header = [_cell_text(value) for value in header_cells]
    positions = {title: index for index, title in reversed(list(enumerate(header))) if title}
    key_column = columns.get("lesion_key", "lesion_key")
    missing = [f"'{columns.get(field, field)}' ({field})" for field in ("lesion_key", *JOINED_FIELDS)
               if (field == "lesion_key" or field in columns) and columns.get(field, field) not in positions]
    if missing:
        return {}, [Reject(name, f"sheet {sheet_name}",
                           f"{where}: missing column {', '.join(missing)} in header row {header_row} "
                           f"(columns: {', '.join(h for h in header if h) or 'none'}); nothing joined, the "
                           f"pictures keep only the deck's own fields")]
    take = {field: positions[columns.get(field, field)] for field in JOINED_FIELDS
            if columns.get(field, field) in positions}
    key_at = positions[key_column]
    joined: dict[str, dict] = {}
    first_row: dict[str, int] = {}
    rejects: list[Reject] = []
    for number, row in rows:
        cells = [_cell_text(value) for value in row]
        get = (lambda index: cells[index] if index < len(cells) else "")
        key = get(key_at)
        values = {field: get(index) for field, index in take.items()}
        if not key:
            if any(values.values()):
                rejects.append(Reject(name, f"sheet {sheet_name} row {number}",
                                      f"{where} row {number}: no lesion ID in column '{key_column}'"))
            continue
        if key in joined:
            if joined[key] != values:
                rejects.append(Reject(name, f"sheet {sheet_name} row {number}",
                                      f"{where} row {number}: lesion ID {key} again with different values "
                                      f"(first at row {first_row[key]}, which is used)"))
            continue
        joined[key], first_row[key] = values, number
    return joined, rejects


# ---------------------------------------------------------------------------------------------- .ppt


def _soffice() -> str | None:
    return shutil.which("soffice") or shutil.which("libreoffice")


def _convert_ppt(path: Path, origin: str, out_dir: Path, timeout: float) -> tuple[Path | None, str]:
    """Convert a legacy .ppt with LibreOffice; (converted path, "") or (None, reason)."""
    command = _soffice()
    hint = CONVERT_HINT.format(name=path.name)
    if command is None:
        return None, (f"{origin}: legacy .ppt deck and LibreOffice is not installed (no soffice or libreoffice on "
                      f"PATH); convert it with '{hint}' and put the .pptx in the source folder")
    profile = out_dir / "profile"  # a private profile: runs alongside an open LibreOffice or another conversion
    argv = [command, f"-env:UserInstallation={profile.as_uri()}", "--headless", "--convert-to", "pptx",
            "--outdir", str(out_dir), str(path)]
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except OSError as error:
        return None, f"{origin}: could not start LibreOffice {command} ({error}); convert it with '{hint}'"
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # soffice starts soffice.bin: end the whole group we started
        except OSError:
            pass
        process.communicate()
        return None, (f"{origin}: LibreOffice conversion to .pptx timed out after {timeout:g} s "
                      f"(option convert_timeout); convert it with '{hint}'")
    converted = out_dir / (path.stem + ".pptx")
    if process.returncode != 0 or not converted.is_file():
        detail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit status {process.returncode}"]
        return None, f"{origin}: LibreOffice could not convert it to .pptx ({detail[0]}); try '{hint}' by hand"
    return converted, ""


# ---------------------------------------------------------------------------------------------- slides


def _walk_shapes(shapes) -> Iterator:
    """Every shape in document order, descending into (nested) group shapes."""
    from pptx.shapes.group import GroupShape

    for shape in shapes:
        yield shape
        if isinstance(shape, GroupShape):
            yield from _walk_shapes(shape.shapes)


def _slide_text(slide) -> str:
    parts: list[str] = []
    for shape in _walk_shapes(slide.shapes):
        if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            parts.append(shape.text_frame.text)
        elif getattr(shape, "has_table", False) and shape.has_table:
            for row in shape.table.rows:
                for cell in row.cells:
                    parts.append(cell.text_frame.text)
    return "\n".join(part.replace("\v", "\n") for part in parts if part.strip())


def _picture_bytes(shape, slide_part) -> tuple[bytes | None, str]:
    """The embedded image's bytes, or (None, why not)."""
    blip = shape._element.find(f".//{{{NS_A}}}blip")
    if blip is None:
        return None, "picture without image data"
    embed, link = blip.get(f"{{{NS_R}}}embed"), blip.get(f"{{{NS_R}}}link")
    if not embed:
        if link:
            try:
                target = slide_part.target_ref(link)
            except Exception:
                target = "?"
            return None, f"linked picture ({target}), not embedded in the deck; insert the image file itself"
        return None, "picture without image data"
    try:
        return slide_part.related_part(embed).blob, ""
    except Exception as error:
        return None, f"embedded image is missing from the deck ({type(error).__name__}: {error})"


def _read_deck(path: Path, origin: str, year: str, deck_problem: str, id_pattern: re.Pattern,
               diagnosis_pattern: re.Pattern | None, joined: dict[str, dict]) -> Iterator[Union[RawItem, Reject]]:
    """Every picture of one deck; `deck_problem` (e.g. no year in the name) rejects each picture with it."""
    from pptx import Presentation
    from pptx.shapes.picture import Picture

    try:
        deck = Presentation(str(path))
        slides = list(deck.slides)
    except Exception as error:
        yield Reject(origin, "", f"{origin}: not a readable PowerPoint deck, corrupt or truncated "
                                 f"({type(error).__name__}: {error})")
        return
    for number, slide in enumerate(slides, start=1):
        try:
            pictures = [shape for shape in _walk_shapes(slide.shapes) if isinstance(shape, Picture)]
            text = _slide_text(slide) if pictures else ""
        except Exception as error:
            yield Reject(origin, f"slide {number}", f"{origin} slide {number}: could not read the slide "
                                                    f"({type(error).__name__}: {error})")
            continue
        if not pictures:
            continue
        ids = [key for key in dict.fromkeys((match.group(1) or "").strip() for match in id_pattern.finditer(text))
               if key]
        problem = deck_problem
        if not problem and not ids:
            problem = f"{origin} slide {number}: no lesion ID in the slide text ({text.strip()[:60]!r})"
        elif not problem and len(ids) > 1:
            problem = f"{origin} slide {number}: several lesion IDs in the slide text ({', '.join(ids)})"
        lesion = ids[0] if len(ids) == 1 else ""
        diagnosis = ""
        if lesion and diagnosis_pattern is not None:
            rest = id_pattern.sub(lambda match: " " * len(match.group(0)), text)
            found = diagnosis_pattern.search(rest)
            if found:
                diagnosis = (found.group(1) if found.re.groups and found.group(1) is not None
                             else found.group(0)).strip()
        for index, shape in enumerate(pictures, start=1):
            member = f"slide {number} picture {index}"
            if problem:
                yield Reject(origin, member, f"{problem}; picture {index} not used")
                continue
            data, why = _picture_bytes(shape, slide.part)
            if data is None:
                yield Reject(origin, member, f"{origin} {member}: {why}")
                continue
            fields = {name: "" for name in ITEM_FIELDS}
            fields.update(lesion_key=lesion, diagnosis=diagnosis)
            for name, value in joined.get(lesion, {}).items():
                if value:  # the workbook is the pathology source of truth; an empty cell keeps the deck's value
                    fields[name] = value
            fields.update(year=year, slide=str(number), slide_id=str(slide.slide_id),
                          source_name=f"{lesion}_{year}_{slide.slide_id}")
            yield RawItem(data, origin, member, fields)


def read_pptx(root: Path, options: PptxOptions | dict) -> Iterator[Union[RawItem, Reject, Unit]]:
    root = Path(root)
    options = PptxOptions.of(options)
    id_pattern, diagnosis_pattern = options.id_pattern, options.diagnosis_pattern
    timeout = options.convert_timeout

    joined: dict[str, dict] = {}
    if options.workbook:
        joined, workbook_rejects = _read_workbook(root, options)
        yield from workbook_rejects
    joined_digest = stable_hash(joined)  # a workbook change re-reads every deck: any lesion may have changed

    decks = _find_decks(root, options.pattern, options.legacy_pattern)
    for path, legacy in decks:
        origin = path.relative_to(root).as_posix()
        if path.name.startswith("~$"):
            yield Reject(origin, "", f"{origin}: a PowerPoint lock file (the deck is or was open), not a deck")
            continue
        years = sorted(set(YEAR.findall(path.name)))
        year, deck_problem = (years[0] if len(years) == 1 else ""), ""
        if len(years) != 1:  # the deck is still opened, so each of its pictures gets its own reject
            reason = "no year (19xx or 20xx) in the file name" if not years else \
                f"several years in the file name ({', '.join(years)})"
            deck_problem = f"{origin}: {reason}; decks are one per calendar year, named e.g. rosendahl_1999.pptx"
        context = (year, deck_problem, id_pattern.pattern, diagnosis_pattern and diagnosis_pattern.pattern,
                   joined_digest, timeout if legacy else None)
        yield Unit(origin, file_stamp(path, *context), partial(_read_any_deck, path, origin, legacy, timeout, year,
                                                               deck_problem, id_pattern, diagnosis_pattern, joined))


def _read_any_deck(path: Path, origin: str, legacy: bool, timeout: float, *deck_args) -> list:
    """One deck's pictures and rejects (a legacy .ppt converted first): the work a re-run skips."""
    if not legacy:
        return list(_read_deck(path, origin, *deck_args))
    with tempfile.TemporaryDirectory(prefix="ham-ppt-") as scratch:
        converted, why = _convert_ppt(path, origin, Path(scratch), timeout)
        if converted is None:
            return [Reject(origin, "", why)]
        return list(_read_deck(converted, origin, *deck_args))
