"""A corpus of bad input, made in tmp_path from the real images in $HAM_DATA (re-encoded, truncated, resized,
zipped, put in a deck; never committed): one ingest run over four sources holding every kind at once, each kind
with its expected ledger entry, every good item beside them still a candidate, and the accounting (candidates +
rejects = raw items) holding per source. Params kinds are checked the way every stage checks its section."""
from __future__ import annotations

import csv
import io
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.common import sha256_bytes
from pipeline.ingest import Limits, ingest
from pipeline.params import params_problems
from pipeline.source_rules import ingest_rules
from tests.test_source_pptx import make_deck

LIMITS = Limits(max_pixels=1_500_000, min_side=64, max_aspect=4.0, max_decode_mib=32)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR claiming another size (CRC fixed): a bomb header on a tiny file."""
    ihdr = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


class Corpus:
    """Builds an export source: each file with its index row, and what ingest must say about it."""

    def __init__(self, root: Path):
        self.root, self.rows, self.expected, self.good = root, [], {}, []
        (root / "images").mkdir(parents=True)

    def add(self, name: str, data: bytes | None, reason: str | None, lesion: str = "", dx: str = "nv",
            listed: bool = True) -> None:
        """`reason`: a part of the ledger reason (None: must be a candidate); `data` None: file absent."""
        origin = f"images/{name}"
        if data is not None:
            (self.root / origin).write_bytes(data)
        if listed:
            self.rows.append([origin, lesion or f"L-{name}", dx])
        if reason is None:
            self.good.append(origin)
        else:
            self.expected[origin] = reason

    def write_index(self, extra_rows=()) -> None:
        with open(self.root / "index.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "lesion", "dx"])
            writer.writerows([*self.rows, *extra_rows])


@pytest.fixture(scope="module")
def real(ham_data) -> list[Path]:
    return sorted((ham_data / "ham10000" / "images").glob("*.jpg"))


def build_export(root: Path, real: list[Path], outside: Path) -> Corpus:
    photos = iter(real)
    take = lambda: next(photos).read_bytes()  # noqa: E731  every item its own image, so none is a duplicate
    image = lambda: Image.open(next(photos)).convert("RGB")  # noqa: E731
    c = Corpus(root)
    # --- good items, next to the bad ones
    c.add("good1.jpg", take(), None)
    c.add("good2.jpg", take(), None)
    c.add("cmyk.jpg", encode(image().convert("CMYK"), "JPEG"), None)  # normalised to RGB
    exif = Image.Exif()
    exif[0x0112] = 6
    c.add("rotated.jpg", encode(image(), "JPEG", exif=exif.tobytes()), None)
    c.add("grey16.png", encode(Image.fromarray(np.asarray(image().convert("L"), dtype=np.uint16) * 257), "PNG"),
          None)
    c.add("palette_alpha.png", encode(image().convert("P"), "PNG", transparency=0), None)
    c.add("jpeg_named.png", take(), None)  # content decides, not the extension
    c.add("gif.gif", encode(image(), "GIF"), None)
    c.add("tiff.tif", encode(image(), "TIFF"), None)
    # --- bad images
    jpeg, png = take(), encode(image(), "PNG")
    c.add("empty.jpg", b"", "empty file (0 bytes)")
    c.add("text.jpg", b"lesion HAM_0000118, left shoulder\n" * 20, "not an image (unrecognised format)")
    c.add("html.png", b"<!doctype html><html><body>404 not found</body></html>", "not an image")
    c.add("truncated.jpg", jpeg[: len(jpeg) // 2], "corrupt or truncated JPEG image")
    c.add("truncated.png", png[: len(png) // 2], "corrupt or truncated PNG image")
    c.add("header_only.jpg", jpeg[:200], "not a readable image (Truncated File Read)")
    broken = bytearray(png)
    broken[len(png) // 2: len(png) // 2 + 64] = b"\0" * 64  # zlib stream broken mid-file
    c.add("broken_stream.png", bytes(broken), "corrupt or truncated PNG image")
    c.add("bomb.png", with_png_size(encode(Image.new("RGB", (1, 1)), "PNG"), 60000, 60000),
          "= 3600000000 pixels, over the limit ingest.max_pixels = 1500000")
    c.add("big.png", encode(image().resize((1500, 1100)), "PNG"), "over the limit ingest.max_pixels")
    c.add("strip_1x800.png", encode(Image.new("RGB", (1, 800), "white"), "PNG"),
          "image is 1x800, a side under the limit ingest.min_side = 64")
    c.add("strip_1x300.png", encode(Image.new("RGB", (1, 300), "white"), "PNG"), "image is 1x300, a side under")
    c.add("tiny.jpg", encode(image().resize((40, 30)), "JPEG"), "image is 40x30, a side under")
    c.add("narrow.jpg", encode(image().resize((1000, 100)), "JPEG"),
          "aspect ratio 10.0:1 over the limit ingest.max_aspect = 4")
    # a 16-bit PNG at 1.44 Mpx is within the budget (stored), an RGBA one of 1.5 Mpx is not (refused undecoded)
    c.add("deep16.png", encode(Image.fromarray(np.full((1200, 1200), 40000, dtype=np.uint16)), "PNG"), None)
    c.add("rgba_budget.png", encode(image().resize((1224, 1224)).convert("RGBA"), "PNG"),
          "1224x1224 RGBA PNG image needs about 34 MiB to decode, over the limit ingest.max_decode_mib = 32")
    # --- catalogue problems
    c.add("ghost.jpg", None, "image file images/ghost.jpg not found")
    c.add("unlisted.jpg", take(), "is not listed in index.csv", listed=False)
    dup = take()
    c.add("dup_a.jpg", dup, None, lesion="L-dup")
    c.add("dup_b.jpg", dup, "duplicate of candidate", lesion="L-dup")
    clash = take()
    c.add("clash_a.jpg", clash, "conflicting labels", lesion="L-clash", dx="mel")
    c.add("clash_b.jpg", clash, "conflicting labels", lesion="L-clash", dx="nv")
    # --- links
    (outside / "secret.jpg").write_bytes(take())
    (root / "images" / "link_out.jpg").symlink_to(outside / "secret.jpg")
    c.add("link_out.jpg", None, "resolves outside the source folder")
    (outside / "folder").mkdir()
    (outside / "folder" / "x.jpg").write_bytes(take())
    (root / "images" / "folder_link").symlink_to(outside / "folder", target_is_directory=True)
    c.add("folder_link/x.jpg", None, "link images/folder_link -> ")
    (root / "images" / "loop.jpg").symlink_to("loop.jpg")
    c.add("loop.jpg", None, "links cannot be resolved")
    c.write_index(extra_rows=[["../../etc/passwd", "L-x", "nv"], ["/etc/passwd", "L-y", "nv"]])
    c.expected["index.csv row ../../etc/passwd"] = "bad file name '../../etc/passwd'"
    c.expected["index.csv row /etc/passwd"] = "bad file name '/etc/passwd'"
    return c


def build_archive(root: Path, ham_data: Path) -> dict:
    """A HAM10000-layout source: a zip with unsafe, stray, oversize, unlisted and repeated members, a metadata
    file with a row no member answers and a repeated row, and a second 'zip' that is not one."""
    root.mkdir(parents=True)
    images = sorted((ham_data / "ham10000" / "images").glob("*.jpg"))[-12:]
    with open(ham_data / "ham10000" / "metadata" / "HAM10000_metadata.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        header, wanted = reader.fieldnames, {p.stem for p in images}
        rows = [row for row in reader if row["image_id"] in wanted]
    rows.sort(key=lambda r: r["image_id"])
    rows.append({**rows[1], "dx": "mel" if rows[1]["dx"] != "mel" else "nv"})  # repeated image_id, other dx
    rows.append({**rows[0], "image_id": "ISIC_9999999"})  # no member anywhere
    with open(root / "HAM10000_metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        writer.writerows(rows)
    big = max(images[:8], key=lambda p: p.stat().st_size)  # its member is refused as oversize
    with zipfile.ZipFile(root / "HAM10000_images_part_1.zip", "w") as archive:
        for path in images[:8]:
            archive.write(path, path.name)
        archive.writestr("../evil.jpg", images[8].read_bytes())
        archive.writestr("/abs.jpg", images[8].read_bytes())
        archive.writestr("readme.txt", "not an image")
        archive.writestr("__MACOSX/._x.jpg", b"\0" * 10)
        archive.writestr("ISIC_0000001.jpg", images[9].read_bytes())  # not in the metadata
        archive.writestr("copy/" + images[0].name, images[0].read_bytes())  # a second copy
        archive.writestr("truncated/" + images[10].name, images[10].read_bytes()[:3000])
    (root / "HAM10000_images_part_2.zip").write_bytes(b"PK\x03\x04 but not really a zip" * 10)
    members = 8 + 7
    expected = {
        ("HAM10000_images_part_1.zip", "../evil.jpg"): "path contains '..'",
        ("HAM10000_images_part_1.zip", "/abs.jpg"): "absolute path",
        ("HAM10000_images_part_1.zip", "readme.txt"): "not an image file",
        ("HAM10000_images_part_1.zip", "__MACOSX/._x.jpg"): "macOS resource fork",
        ("HAM10000_images_part_1.zip", "ISIC_0000001.jpg"): "image ISIC_0000001 is not listed in",
        ("HAM10000_images_part_1.zip", "copy/" + images[0].name): "second copy of image",
        ("HAM10000_images_part_1.zip", "truncated/" + images[10].name): "corrupt or truncated JPEG",
        ("HAM10000_images_part_1.zip", big.name): f"is {big.stat().st_size} bytes, over max_member_bytes",
        ("HAM10000_images_part_2.zip", ""): "not a readable zip file",
        ("HAM10000_metadata.csv", f"row {len(rows) + 1}"): "image ISIC_9999999 not found in",
        ("HAM10000_metadata.csv", f"row {len(rows)}"): f"image_id {rows[1]['image_id']} repeated (conflicts with "
                                                       f"row 3",
    }
    row_of = {row["image_id"]: number for number, row in enumerate(rows[:-2], start=2)}
    expected[("HAM10000_metadata.csv", f"row {row_of[big.stem]}")] = (
        f"image {big.stem}: its member {big.name} in HAM10000_images_part_1.zip is {big.stat().st_size} bytes, over "
        f"max_member_bytes")
    for path in images[8:]:
        if path.stem != images[10].stem:
            expected[("HAM10000_metadata.csv", f"row {row_of[path.stem]}")] = "not found in"
    max_bytes = max(p.stat().st_size for p in images[:8] if p != big) + 1
    assert big.stat().st_size >= max_bytes and max_bytes > max(len(images[10].read_bytes()[:3000]), 4096)
    return {"expected": expected, "members": members, "max_bytes": max_bytes, "good": [p.name for p in images[:8]
                                                                                          if p != big]}


def build_decks(root: Path, real: list[Path]) -> dict:
    good, tiny = real[-20], root.parent / "tiny.jpg"
    Image.open(real[-21]).resize((32, 24)).save(tiny)
    expected_pictures = make_deck(root / "clinic_2003.pptx", [
        {"texts": ["900101"], "items": [("pic", good)]},
        {"texts": ["900102"], "items": [("pic", tiny)]},
    ])
    (root / "garbage_2004.pptx").write_bytes(b"this is not a zip file" * 50)
    (root / "~$clinic_2003.pptx").write_bytes(b"lock")
    return {"pictures": len(expected_pictures), "expected": {
        ("clinic_2003.pptx", "slide 2 picture 1"): "image is 32x24, a side under the limit ingest.min_side",
        ("garbage_2004.pptx", ""): "not a readable PowerPoint deck",
        ("~$clinic_2003.pptx", ""): "PowerPoint lock file"}}


def build_sheet_source(root: Path, real: list[Path]) -> dict:
    """An export whose index is a damaged workbook: the index and every image are rejected, naming why."""
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(real[-30].read_bytes())
    (root / "images" / "b.jpg").write_bytes(real[-31].read_bytes())
    (root / "index.xlsx").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    return {"raw": 3, "expected": {("index.xlsx", ""): "index.xlsx: unreadable workbook",
                                   ("images/a.jpg", ""): "cannot be matched with an index row",
                                   ("images/b.jpg", ""): "cannot be matched with an index row"}}


def build_latin1_source(root: Path, real: list[Path]) -> dict:
    (root / "images").mkdir(parents=True)
    (root / "images" / "c.jpg").write_bytes(real[-32].read_bytes())
    (root / "index.csv").write_bytes("file,lesion\nimages/c.jpg,Läsion\n".encode("latin-1"))
    return {"raw": 2, "expected": {("index.csv", ""): "unreadable CSV",
                                   ("images/c.jpg", ""): "cannot be matched with an index row"}}


def test_bad_input_corpus_one_run(tmp_path, real, ham_data):
    raw, outside = tmp_path / "raw", tmp_path / "outside"
    outside.mkdir()
    export = build_export(raw / "batch", real, outside)
    archive = build_archive(raw / "archive", ham_data)
    decks = build_decks(raw / "decks", real)
    sheet = build_sheet_source(raw / "sheet", real)
    latin = build_latin1_source(raw / "latin", real)
    columns = {"file": "file", "lesion_key": "lesion", "dx": "dx"}
    sources = [
        {"name": "batch", "kind": "export", "path": "raw/batch", "options": {"columns": columns}},
        {"name": "archive", "kind": "ham10000", "path": "raw/archive",
         "options": {"max_member_bytes": archive["max_bytes"]}},
        {"name": "decks", "kind": "pptx", "path": "raw/decks", "options": {}},
        {"name": "sheet", "kind": "export", "path": "raw/sheet", "options": {"index": "index.xlsx"}},
        {"name": "latin", "kind": "export", "path": "raw/latin", "options": {}},
    ]
    result = ingest(sources, tmp_path, tmp_path / "out", LIMITS)
    candidates = {(c["source"], c["origin"]) for c in result.candidates}
    ledger = {}
    for r in result.rejects:
        ledger.setdefault((r["source"], r["origin"], r["member"]), []).append(r["reason"])

    def reason_of(source: str, origin: str, member: str | None = None) -> str:
        found = [reason for (s, o, m), reasons in ledger.items() for reason in reasons
                 if s == source and o == origin and (member is None or m == member)]
        assert found, f"no ledger entry for {source} {origin} {member or ''}"
        return " | ".join(found)

    kinds = 0
    # export source: every bad kind with its reason, every good item a candidate
    for origin, expected in export.expected.items():
        if origin.startswith("index.csv row "):
            text = " | ".join(r["reason"] for r in result.rejects if r["source"] == "batch")
            assert expected in text, origin
        else:
            assert expected in reason_of("batch", origin), (origin, reason_of("batch", origin))
        kinds += 1
    clash = [r for r in result.rejects if r["origin"] == "images/clash_a.jpg"][0]["reason"]
    assert "batch:images/clash_a.jpg" in clash and "batch:images/clash_b.jpg" in clash and "dx='mel'" in clash
    assert {("batch", origin) for origin in export.good} <= candidates
    batch_raw = len(export.rows) + 2 + 1  # index rows (2 with bad names) + the unlisted file
    batch = [c for c in candidates if c[0] == "batch"]
    assert len(batch) + sum(r["source"] == "batch" for r in result.rejects) == batch_raw
    assert len(batch) == len(export.good)

    # archive source
    for (origin, member), expected in archive["expected"].items():
        assert expected in reason_of("archive", origin, member), (origin, member, reason_of("archive", origin))
        kinds += 1
    assert {c["member"] for c in result.candidates if c["source"] == "archive"} == set(archive["good"])

    # decks
    for (origin, member), expected in decks["expected"].items():
        assert expected in reason_of("decks", origin, member)
        kinds += 1
    decks_candidates = [c for c in result.candidates if c["source"] == "decks"]
    assert len(decks_candidates) == 1
    assert len(decks_candidates) + sum(r["source"] == "decks" for r in result.rejects) == decks["pictures"] + 2

    # unusable indexes: a damaged workbook, a CSV that is not UTF-8
    for name, spec in (("sheet", sheet), ("latin", latin)):
        for (origin, member), expected in spec["expected"].items():
            assert expected in reason_of(name, origin, member), reason_of(name, origin)
            kinds += 1
        assert sum(r["source"] == name for r in result.rejects) == spec["raw"]
        assert not [c for c in result.candidates if c["source"] == name]

    assert kinds >= 40
    # nothing from outside a source was taken, and the objects are exactly the candidates
    outside_hashes = {sha256_bytes(p.read_bytes()) for p in outside.rglob("*.jpg")}
    assert not outside_hashes & {c["candidate_id"] for c in result.candidates}
    assert len(result.candidates) == len({c["candidate_id"] for c in result.candidates})


PARAMS_CASES = [
    ("  max_pixels: 100000000", '  max_pixels: "lots"', "ingest.max_pixels", "expected an integer, got text"),
    ("  max_pixels: 100000000", "  max_pixels: 0", "ingest.max_pixels", ""),
    ("  min_side: 64", "  min_side: 0", "ingest.min_side", ""),
    ("  min_side: 64", "  min_side: 1.5", "ingest.min_side", "integer"),
    ("  max_aspect: 4.0", "  max_aspect: -1", "ingest.max_aspect", ""),
    ("  max_aspect: 4.0", "  max_aspect: wide", "ingest.max_aspect", "number"),
    ("  max_decode_mib: 1024", "  max_decode_mib: -5", "ingest.max_decode_mib", ""),
    ("      kind: pptx\n      path: data/raw/sample/rosendahl",
     "      kind: ptpx\n      path: data/raw/sample/rosendahl", "ingest.sources[0].kind", ""),
    ("        index: index.csv", "        indx: index.csv", "ingest.sources[1].options", "indx"),
    ("  max_pixels: 100000000", "  max_pixels: 100000000\n  max_pixels: 5", "ingest.max_pixels", "duplicate key"),
    ("    - name: vidir_modern  #", "    - name: rosendahl  #", "ingest.sources[1].name", "duplicate source name"),
]


@pytest.mark.parametrize("old, new, field, message", PARAMS_CASES)
def test_bad_params_are_named_with_their_line(tmp_path, repo_root, old, new, field, message):
    text = (repo_root / "params.yaml").read_text()
    assert old in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new, 1))
    problems = params_problems(path, "ingest", stage=False, ingest_rules=ingest_rules)
    assert problems, new
    line = problems[0].line()
    assert line.startswith(f"{path}:") and field in line and message in line, line


# ------------------------------------------------------------------------------------------------- one-line failures

def test_a_broken_schema_file_is_one_line_naming_it(tmp_path, repo_root, monkeypatch):
    """A schema file with a JSON syntax error: `ham validate` and a stage say so in one line naming the file and
    line, exit 1, no traceback."""
    from click.testing import CliRunner

    from pipeline import schema_messages
    from pipeline.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    schemas = tmp_path / "schemas"
    shutil.copytree(repo_root / "schemas", schemas)
    text = (schemas / "params.schema.json").read_text()
    cut = text.index('"epochs"')
    (schemas / "params.schema.json").write_text(text[:cut] + text[cut + 1:])  # a quote lost: not JSON any more
    line = text[:cut].count("\n") + 1
    params = tmp_path / "params.yaml"
    shutil.copyfile(repo_root / "params.yaml", params)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(schema_messages, "SCHEMA_DIR", schemas)
    schema_messages.load_schema.cache_clear(), schema_messages.validator.cache_clear()
    try:
        for command in (["validate", str(params)], ["split", "--params", str(params)]):
            result = CliRunner().invoke(main, command)
            assert result.exit_code == 1
            assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
            assert result.output.startswith(f"Error: {schemas / 'params.schema.json'}:{line}: schema file is not "
                                            f"valid JSON: ") and result.output.count("\n") == 1, result.output
    finally:
        schema_messages.load_schema.cache_clear(), schema_messages.validator.cache_clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "schemas"]  # no work, nothing noted


def test_an_unreadable_source_folder_is_one_line_naming_it(tmp_path, repo_root, monkeypatch):
    """A subfolder of a source that cannot be listed: ingest refuses the source in one line naming the folder,
    before any work (its files could be neither read nor put in the ledger). The folder's mode is really 000;
    root reads it anyway, so there the kernel's answer to anyone else (EACCES) is given by `os.scandir`."""
    import errno
    import os

    from click.testing import CliRunner

    from pipeline.cli import main

    source = tmp_path / "raw"
    (source / "images" / "locked").mkdir(parents=True)
    (source / "images" / "open").mkdir()
    Image.new("RGB", (600, 450), (180, 120, 100)).save(source / "images" / "open" / "a.jpg")
    Image.new("RGB", (600, 450), (90, 60, 50)).save(source / "images" / "locked" / "b.jpg")
    (source / "index.csv").write_text("file,lesion\nopen/a.jpg,L1\nlocked/b.jpg,L2\n")
    params = tmp_path / "params.yaml"
    settings = yaml.safe_load((repo_root / "params.yaml").read_text())
    settings["ingest"]["sources"] = [{"name": "vidir_modern", "kind": "export", "path": "raw"}]
    params.write_text(yaml.safe_dump(settings, sort_keys=False))
    locked = source / "images" / "locked"
    os.chmod(locked, 0)
    if os.geteuid() == 0:
        real_scandir = os.scandir

        def scandir(path="."):
            if Path(path).resolve() == locked.resolve():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.chdir(tmp_path)
    try:
        result = CliRunner().invoke(main, ["ingest", "--params", str(params), "--out", str(tmp_path / "out")])
    finally:
        os.chmod(locked, 0o755)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines()[-1] == (  # after the warning that raw/ has no .dvc file of its own
        "Error: source vidir_modern: raw/images/locked cannot be read (Permission denied); make it readable "
        "(chmod -R u+rX) or move it out of the source")
    assert result.exception is None or isinstance(result.exception, SystemExit)
    # nothing read, nothing written but the empty object store folder
    assert [p.relative_to(tmp_path).as_posix() for p in sorted((tmp_path / "out").rglob("*"))] == ["out/objects"]


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """A stage that hits ENOSPC (disk full) exits 1 with one line naming the file, not a traceback."""
    import errno as errno_

    from click.testing import CliRunner

    from pipeline import annotations as annotations_module
    from pipeline.cli import main

    def full(*args, **kwargs):
        raise OSError(errno_.ENOSPC, "No space left on device", str(tmp_path / "objects" / "abc.jpg"))

    # collect-annotated: a stage whose params check needs no raw source on disk (a fresh clone has none)
    monkeypatch.setattr(annotations_module, "collect_annotated", full)
    result = CliRunner().invoke(main, ["collect-annotated", "--params", str(Path(__file__).resolve().parent.parent /
                                                                             "params.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: no space left on the device writing {tmp_path / 'objects' / 'abc.jpg'}: free some space and run "
        f"it again (nothing half-written is kept)"]
