"""`ham10000` sources: the public HAM10000 release as published on the Harvard Dataverse, rebuilt from its files.

Layout of the source root:
  HAM10000_images_part_1.zip      training images `ISIC_0024306.jpg`, at the top or in a subfolder
  HAM10000_images_part_2.zip
  HAM10000_metadata.csv           lesion_id,image_id,dx,dx_type,age,sex,localization[,dataset]
  ISIC2018_Task3_Test_Input.zip   optional: the official held-out test images (ISIC 2018 Task 3)
  ISIC2018_Task3_Test_GroundTruth.csv
                                  its labels, one-hot: image,MEL,NV,BCC,AKIEC,BKL,DF,VASC

Options (all file names relative to the source root):
  metadata:          the release metadata CSV (default `HAM10000_metadata.csv`)
  zips:              list of the training image zips (default the two `HAM10000_images_part_N.zip`)
  test_zip:          the test image zip (default `ISIC2018_Task3_Test_Input.zip`; skipped if the default is
                     absent, rejected if a name given here is absent; null or "" reads no test set)
  test_ground_truth: the test labels (default `ISIC2018_Task3_Test_GroundTruth.csv`)
  test_metadata:     optional CSV with the test images' lesion IDs: column `image` or `image_id`, column
                     `lesion_id`, and optionally dx_type (or ISIC's diagnosis_confirm_type), age, sex,
                     localization; or the ISIC Archive export of the collection as it is (isic_id, lesion_id,
                     diagnosis_confirm_type, age_approx, sex, anatom_site_general: sites coarser than the
                     release's vocabulary become `unknown`, the raw site is kept as an extra field). Without it each test image is its own lesion, key `test/<image_id>`, and
                     the test images carry no dx_type (the ground truth has none).
  max_member_bytes:  zip members larger than this are rejected unread (default 256 MiB; zip bombs)
  image_type:        dsc / macro / clinic for every image (every kind takes it; the release is all dsc)
  train_split:       the split hint of the training images (default `train`, the study's split: the 10015
                     training images train, the ISIC 2018 test images test); empty lets the split stage deal the
                     training lesions out by `split.test_fraction` / `val_fraction` like any other source's

Fields: the official IDs are kept (image_id = ISIC_..., lesion_key = HAM_...); dx, dx_type, age, sex and
localization exactly as in the CSV; `dataset` (newer edition) as an extra field; image_type_hint `dsc` (the
release holds dermoscopic images only); split_hint `test` for the official test set and `train` (option
`train_split`) for the training images, so the release keeps the published split.

Zip members are read into memory, never extracted. Every member other than a directory entry ends up as one item
or one reject: unsafe names (absolute, `..`), non-image files (`__MACOSX/`, `.DS_Store`, `LICENSE.txt`), images no
metadata row names, a second copy of an image, unreadable members. A zip that cannot be opened is rejected by
name and the others are still read. Every metadata row whose image is in no zip, every repeated image_id and
every row with a bad value is rejected with its file and row number; a missing column rejects the whole file,
naming the column.
"""
from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Iterator, Union

from ..vocabulary import DX_TYPE_FROM_ISIC, GROUND_TRUTH_COLUMNS as GROUND_TRUTH_CLASSES, HAM_COLUMNS
from ..vocabulary import SITE_FROM_ISIC, SPLITS
from . import (BadTable, RawItem, Reject, SourceOptions, Unit, choice, file_stamp, number, option, read_table, text,
               text_list)

DEFAULT_METADATA = "HAM10000_metadata.csv"
DEFAULT_ZIPS = ("HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip")
DEFAULT_TEST_ZIP = "ISIC2018_Task3_Test_Input.zip"
DEFAULT_TEST_GROUND_TRUTH = "ISIC2018_Task3_Test_GroundTruth.csv"
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024

METADATA_COLUMNS = HAM_COLUMNS
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class Ham10000Options(SourceOptions):
    KIND = "ham10000"
    metadata: str = option(DEFAULT_METADATA, text())
    zips: tuple = option(DEFAULT_ZIPS, text_list(DEFAULT_ZIPS))
    # None: the default name, read if that file is present; "" (null in params): no test set
    test_zip: str | None = option(None, text(nullable=True, null=""))
    test_ground_truth: str = option(DEFAULT_TEST_GROUND_TRUTH, text())
    test_metadata: str | None = option(None, text(nullable=True))
    max_member_bytes: int = option(DEFAULT_MAX_MEMBER_BYTES, number(above=0, integer=True))
    # The training images' split hint: 'train' as published; '' lets the split stage deal them out.
    train_split: str | None = option("train", choice(*SPLITS, ""))


def unsafe_member_name(name: str) -> str | None:
    """Why an archive member name must not be used as a path (absolute, '..', drive letter), or None if safe."""
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if "\x00" in name:
        return "contains a NUL byte"
    if path.is_absolute():
        return "absolute path"
    if ".." in path.parts:
        return "path contains '..'"
    if len(posix) >= 2 and posix[1] == ":":
        return "drive-letter path"
    return None


def not_an_image(name: str) -> str | None:
    """Why a (safe) member name is not an image file, or None."""
    path = PurePosixPath(name)
    if "__MACOSX" in path.parts or path.name.startswith("._"):
        return "macOS resource fork, not an image"
    if path.name.startswith("."):
        return "hidden file, not an image"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not an image file (expected .jpg/.jpeg/.png)"
    return None


class Catalogue:
    """Image ID -> fields from one metadata file; remembers which rows an image in a zip used."""

    def __init__(self, name: str):
        self.name = name  # the metadata file, for reasons
        self.unusable = ""  # why the whole file could not be used
        self.entries: dict[str, tuple[int, dict]] = {}  # image_id -> (row number, fields)
        self.used: set[str] = set()
        self.refused: dict[str, str] = {}  # image_id -> why its member was rejected unread (for the row's reason)

    def add(self, number: int, image_id: str, fields: dict) -> Reject | None:
        if not image_id:
            return Reject(self.name, f"row {number}", f"{self.name} row {number}: empty image ID")
        if image_id in self.entries:
            first, first_fields = self.entries[image_id]
            same = "identical to" if first_fields == fields else "conflicts with"
            return Reject(self.name, f"row {number}",
                          f"{self.name} row {number}: image_id {image_id} repeated ({same} row {first}, "
                          f"which is kept)")
        self.entries[image_id] = (number, fields)
        return None


def ham_catalogue(root: Path, name: str, train_split: str = "train") -> tuple[Catalogue, list[Reject]]:
    catalogue, rejects = Catalogue(name), []
    try:
        header, rows = read_table(root, name, METADATA_COLUMNS)
    except BadTable as error:
        catalogue.unusable = str(error)
        return catalogue, [Reject(name, "", str(error))]
    for number, row in rows:
        fields = {"lesion_key": row["lesion_id"], "image_id": row["image_id"], "dx": row["dx"],
                  "dx_type": row["dx_type"], "age": row["age"], "sex": row["sex"],
                  "localization": row["localization"], "diagnosis": "", "visit_date": "", "image_type_hint": "dsc",
                  "split_hint": train_split}
        if "dataset" in header:
            fields["dataset"] = row["dataset"]
        reject = catalogue.add(number, row["image_id"], fields)
        if reject:
            rejects.append(reject)
    return catalogue, rejects


def ground_truth_catalogue(root: Path, ground_truth: str, metadata: str | None) -> tuple[Catalogue, list[Reject]]:
    catalogue, rejects = Catalogue(ground_truth), []
    try:
        _, rows = read_table(root, ground_truth, ("image", *GROUND_TRUTH_CLASSES))
    except BadTable as error:
        catalogue.unusable = str(error)
        return catalogue, [Reject(ground_truth, "", str(error))]
    extra: dict[str, dict] = {}
    if metadata:
        extra, more = read_test_lesions(root, metadata)
        rejects += more
    for number, row in rows:
        member = f"row {number}"
        try:
            ones = [c for c in GROUND_TRUTH_CLASSES if float(row[c] or "nan") == 1.0]
            zeros = [c for c in GROUND_TRUTH_CLASSES if float(row[c] or "nan") == 0.0]
        except ValueError:
            rejects.append(Reject(ground_truth, member, f"{ground_truth} {member}: a class column is not a number"))
            continue
        if len(ones) != 1 or len(ones) + len(zeros) != len(GROUND_TRUTH_CLASSES):
            rejects.append(Reject(ground_truth, member, f"{ground_truth} {member}: expected exactly one class "
                                                        f"column 1.0 and the others 0.0"))
            continue
        image_id = row["image"]
        fields = {"lesion_key": f"test/{image_id}", "image_id": image_id, "dx": ones[0].lower(), "dx_type": "",
                  "age": "", "sex": "", "localization": "", "diagnosis": "", "visit_date": "", "image_type_hint": "dsc",
                  "split_hint": "test"}
        if metadata and image_id not in extra:
            rejects.append(Reject(ground_truth, member, f"{ground_truth} {member}: image {image_id} has no row in "
                                                        f"{metadata}"))
            continue
        fields.update(extra.get(image_id, {}))
        reject = catalogue.add(number, image_id, fields)
        if reject:
            rejects.append(reject)
    return catalogue, rejects


def read_test_lesions(root: Path, name: str) -> tuple[dict[str, dict], list[Reject]]:
    """image ID -> lesion_key (and dx_type, age, sex, localization where given) from the test metadata.

    Takes either a plain table (image or image_id, lesion_id, optional dx_type/diagnosis_confirm_type, age, sex,
    localization) or the ISIC Archive export as it is (isic_id, lesion_id, diagnosis_confirm_type, age_approx,
    sex, anatom_site_general). Rows for images outside the test set are simply not looked up.
    """
    try:
        header, rows = read_table(root, name, ("lesion_id",))
    except BadTable as error:
        return {}, [Reject(name, "", str(error))]
    id_column = next((c for c in ("image", "image_id", "isic_id") if c in header), None)
    if id_column is None:
        return {}, [Reject(name, "", f"{name}: missing column 'image' (or 'image_id', 'isic_id')")]
    found, rejects = {}, []
    for number, row in rows:
        image_id = row[id_column]
        if image_id in found or not image_id or not row["lesion_id"]:
            problem = "repeated image" if image_id in found else "empty image or lesion_id"
            rejects.append(Reject(name, f"row {number}", f"{name} row {number}: {problem} {image_id!r}"))
            continue
        found[image_id] = test_fields(row)
    return found, rejects


def test_fields(row: dict) -> dict:
    """Our fields from one test-metadata row, in HAM or ISIC vocabulary."""
    fields = {"lesion_key": row["lesion_id"]}
    confirm = row.get("dx_type") or row.get("diagnosis_confirm_type") or ""
    if confirm:
        fields["dx_type"] = DX_TYPE_FROM_ISIC.get(confirm.lower(), confirm)
    age = row.get("age") or row.get("age_approx") or ""
    if age:
        fields["age"] = age
    if row.get("sex"):
        fields["sex"] = row["sex"]
    if row.get("localization"):
        fields["localization"] = row["localization"]
    elif row.get("anatom_site_general"):
        # Only the sites that map one to one are translated; head/neck and anterior torso are coarser than the
        # release's vocabulary, so the site is 'unknown' there and the archive's value is kept as an extra field.
        site = row["anatom_site_general"]
        fields["localization"] = SITE_FROM_ISIC.get(site.lower(), "unknown")
        fields["anatom_site_general"] = site
    return fields


def read_zip(root: Path, zip_name: str, catalogue: Catalogue, seen: dict[str, str],
             max_bytes: int) -> Iterator[Union[RawItem, Reject, Unit]]:
    """Every member of one zip as an item (matched to the catalogue) or a reject; never extracts anything."""
    try:
        archive = zipfile.ZipFile(root / zip_name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        yield Reject(zip_name, "", f"{zip_name}: not a readable zip file ({error}); its images are missing")
        return
    with archive:
        for info in archive.infolist():
            name = info.filename
            if name.endswith("/"):
                continue  # a directory entry, not a file
            problem = unsafe_member_name(name) or not_an_image(name)
            if problem:
                yield Reject(zip_name, name, f"{zip_name}: member {name!r}: {problem}")
                continue
            image_id = PurePosixPath(name).stem
            if catalogue.unusable or image_id not in catalogue.entries:
                why = f" ({catalogue.unusable})" if catalogue.unusable else ""
                yield Reject(zip_name, name, f"{zip_name}: member {name}: image {image_id} is not listed in "
                                             f"{catalogue.name}{why}")
                continue
            if image_id in seen:
                yield Reject(zip_name, name, f"{zip_name}: member {name}: second copy of image {image_id} "
                                             f"(first in {seen[image_id]})")
                continue
            if info.file_size > max_bytes:
                catalogue.refused[image_id] = (f"its member {name} in {zip_name} is {info.file_size} bytes, over "
                                               f"max_member_bytes = {max_bytes}, and was rejected unread")
                yield Reject(zip_name, name, f"{zip_name}: member {name} is {info.file_size} bytes, over "
                                             f"max_member_bytes = {max_bytes}")
                continue
            seen[image_id] = f"{zip_name}:{name}"  # its metadata row is answered by this member, readable or not
            catalogue.used.add(image_id)
            _, fields = catalogue.entries[image_id]
            stamp = file_stamp(root / zip_name, name, info.CRC, info.file_size, info.compress_size, fields)
            yield Unit(zip_name, stamp, partial(read_member, archive, info, zip_name, dict(fields), max_bytes))


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, zip_name: str, fields: dict,
                max_bytes: int) -> list:
    """One member's bytes, read into memory (never extracted), or a reject with the reason."""
    name = info.filename
    try:
        with archive.open(info) as handle:
            data = handle.read(max_bytes + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError,
            ValueError) as error:
        return [Reject(zip_name, name, f"{zip_name}: member {name} cannot be read ({error})")]
    if len(data) > max_bytes:
        return [Reject(zip_name, name, f"{zip_name}: member {name} unpacks to more than "
                                       f"max_member_bytes = {max_bytes}")]
    return [RawItem(data, zip_name, name, fields)]


def unmatched_rows(catalogue: Catalogue, zip_names: list[str], unreadable: list[str]) -> Iterator[Reject]:
    where = " or ".join(zip_names) or "no zip"
    note = f" (unreadable: {', '.join(unreadable)})" if unreadable else ""
    for image_id, (number, _) in sorted(catalogue.entries.items(), key=lambda entry: entry[1][0]):
        if image_id in catalogue.refused:
            yield Reject(catalogue.name, f"row {number}", f"{catalogue.name} row {number}: image {image_id}: "
                                                          f"{catalogue.refused[image_id]}")
        elif image_id not in catalogue.used:
            yield Reject(catalogue.name, f"row {number}", f"{catalogue.name} row {number}: image {image_id} not "
                                                          f"found in {where}{note}")


def read_zips(root: Path, zip_names: list[str], catalogue: Catalogue, seen: dict[str, str],
              max_bytes: int) -> Iterator[Union[RawItem, Reject, Unit]]:
    unreadable = []
    for zip_name in zip_names:
        if not (root / zip_name).is_file():
            unreadable.append(zip_name)
            yield Reject(zip_name, "", f"{zip_name} not found in {root}")
            continue
        for item in read_zip(root, zip_name, catalogue, seen, max_bytes):
            if isinstance(item, Reject) and not item.member:
                unreadable.append(zip_name)
            yield item
    yield from unmatched_rows(catalogue, zip_names, unreadable)


def read_ham10000(root: Path, options: Ham10000Options | dict) -> Iterator[Union[RawItem, Reject, Unit]]:
    options = Ham10000Options.of(options)
    max_bytes = options.max_member_bytes
    seen: dict[str, str] = {}  # image_id -> where its first copy was found, across all zips

    catalogue, rejects = ham_catalogue(root, options.metadata, options.train_split or "")
    yield from rejects
    yield from read_zips(root, list(options.zips), catalogue, seen, max_bytes)

    test_zip = DEFAULT_TEST_ZIP if options.test_zip is None else options.test_zip
    if not test_zip or (options.test_zip is None and not (root / test_zip).exists()):
        return  # no official test set in this source
    test, rejects = ground_truth_catalogue(root, options.test_ground_truth, options.test_metadata)
    yield from rejects
    yield from read_zips(root, [test_zip], test, seen, max_bytes)
