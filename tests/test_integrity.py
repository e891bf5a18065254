"""Content checks at every hand-over, links, label conflicts, release modes: dermatoscopic images in tmp_path (the
`some_images` fixture: the real ones where $HAM_DATA has them, else drawn ones), and real DVC in a throw-away copy
of the repository (the corrupted-cache cases).

Each store is damaged the way a disk, a bad copy or a hostile hand would (bytes flipped, file truncated, file
replaced) and the test shows the damage is caught: rebuilt from its source where the stage can, else the stage
fails naming the file and nothing corrupt is left in `release/`."""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline.common import PipelineError, read_csv, sha256_bytes, sha256_file, write_csv
from pipeline.ingest import ingest
from pipeline.integrity import CorruptFile, HashStore, check_cover_geometry
from pipeline.verify import verify
from pipeline.release import build_release
from pipeline.standardise import standardise
from tests.pipeline_repo import copy_repository, run
from tests.test_ingest import config, make_export

BIG = 100_000_000
RELEASE_PARAMS = {"isic_attribution": "ViDIR", "isic_license": "CC-BY-NC", "attribution": "Tschandl et al.",
                  "license": "CC BY-NC 4.0"}
STANDARDISE = {"width": 600, "height": 450, "quality": 100, "density": 72}


@pytest.fixture(scope="module")
def dsc(some_images) -> list[Path]:
    return some_images.dsc[:12]


def png_of(path: Path, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def ingest_source(tmp_path: Path, dsc: list[Path]) -> tuple[Path, Path]:
    """An export source of 4 plain JPEGs and one greyscale PNG (stored normalised), ingested once."""
    files = {f"img{i}.jpg": dsc[i].read_bytes() for i in range(4)}
    files["grey.png"] = png_of(dsc[4])
    make_export(tmp_path / "raw" / "a", files, list(files))
    out = tmp_path / "out"
    first = ingest([config("vidir_modern", "raw/a")], tmp_path, out, BIG)
    assert len(first.candidates) == 5 and first.decoded == 5
    return out, tmp_path / "raw" / "a"


# ------------------------------------------------------------------------------------------- ingest object store

def test_corrupt_objects_are_rebuilt_from_their_source(tmp_path, dsc):
    out, _ = ingest_source(tmp_path, dsc)
    objects = out / "objects"
    index = {r["candidate_id"]: r for r in read_csv(objects / "index.csv")}
    raw_object = next(objects / r["object"] for r in index.values() if r["object"].endswith(".jpg"))
    png_object = next(objects / r["object"] for r in index.values() if r["format"] == "PNG")
    good = {p.name: p.read_bytes() for p in objects.iterdir()}
    assert sha256_file(raw_object) == raw_object.stem  # a raw object is named by its bytes' hash
    assert sha256_file(png_object) == index[png_object.stem]["sha256"]  # a normalised one by its recorded hash

    flip_byte(raw_object)
    png_object.write_bytes(png_object.read_bytes()[:100])  # truncated
    again = ingest([config("vidir_modern", "raw/a")], tmp_path, out, BIG)

    assert again.decoded == 2 and again.units_read == 2 and again.units_cached == 3
    assert {p.name: p.read_bytes() for p in objects.iterdir()} == good
    assert len(again.candidates) == 5 and not again.rejects


def test_replaced_object_index_row_is_not_trusted(tmp_path, dsc):
    """An object swapped for another valid image (a foreign file under a trusted name) is rebuilt too."""
    out, _ = ingest_source(tmp_path, dsc)
    objects = out / "objects"
    victim = sorted(p for p in objects.iterdir() if p.suffix == ".jpg")[0]
    good = victim.read_bytes()
    victim.write_bytes(dsc[11].read_bytes())
    again = ingest([config("vidir_modern", "raw/a")], tmp_path, out, BIG)
    assert again.decoded == 1 and victim.read_bytes() == good


def test_checked_files_read_a_file_again_only_when_its_stat_changed(tmp_path, monkeypatch, dsc):
    import pipeline.integrity as integrity

    folder, record = tmp_path / "store", tmp_path / "checked.json"
    folder.mkdir()
    data = dsc[0].read_bytes()
    (folder / "a.jpg").write_bytes(data)
    (folder / "b.jpg").write_bytes(data)
    past = (os.stat(folder / "a.jpg").st_mtime_ns - 10_000_000_000,) * 2
    os.utime(folder / "a.jpg", ns=past)  # written long before the record: not racy
    checked = integrity.CheckedFiles(folder, record)
    assert checked.matches("a.jpg", sha256_bytes(data)) and checked.matches("b.jpg", sha256_bytes(data))
    checked.save()

    reads = []
    monkeypatch.setattr(integrity, "sha256_file", lambda path: reads.append(Path(path).name) or sha256_file(path))
    again = integrity.CheckedFiles(folder, record)
    assert again.matches("a.jpg", sha256_bytes(data))
    assert again.matches("b.jpg", sha256_bytes(data))  # modified within 2 s of the record: read, not trusted
    assert reads == ["b.jpg"]
    again.save()

    with open(folder / "a.jpg", "r+b") as handle:  # damaged in place: same inode and size, a new mtime
        handle.seek(1000)
        handle.write(bytes([data[1000] ^ 0xFF]))
    os.utime(folder / "a.jpg", ns=(past[0] + 1, past[1] + 1))
    reads.clear()
    third = integrity.CheckedFiles(folder, record)
    assert not third.matches("a.jpg", sha256_bytes(data)) and reads == ["a.jpg"]
    assert not third.matches("missing.jpg", sha256_bytes(data)) and not third.matches("b.jpg", "")


# ------------------------------------------------------------------------------------------- standardised store

def standardise_once(tmp_path: Path, dsc: list[Path]) -> tuple[Path, Path, Path, dict]:
    out, _ = ingest_source(tmp_path, dsc)
    decisions = tmp_path / "decisions.csv"
    write_csv(decisions, [{"candidate_id": c["candidate_id"], "keep": "true"} for c in read_csv(out / "candidates.csv")],
              ("candidate_id", "keep"))
    images_dir, index = tmp_path / "std" / "images", tmp_path / "std" / "index.csv"

    def run_stage() -> dict:
        return standardise(out / "candidates.csv", decisions, out / "objects", STANDARDISE, images_dir, index)

    assert run_stage()["processed"] == 5
    return images_dir, index, out, {"run": run_stage}


def test_corrupt_standardised_image_is_rebuilt(tmp_path, dsc):
    images_dir, index, _, stage = standardise_once(tmp_path, dsc)
    rows = read_csv(index)
    target = images_dir / rows[0]["file"]
    flip_byte(target)
    (images_dir / rows[1]["file"]).write_bytes(b"")
    counts = stage["run"]()
    assert (counts["processed"], counts["reused"]) == (2, 3)
    assert read_csv(index) == rows
    for row in rows:
        assert sha256_file(images_dir / row["file"]) == row["sha256"]


def test_image_without_a_record_is_not_trusted(tmp_path, dsc):
    """A file that SHA256SUMS does not vouch for (a run killed before it was saved, a file dropped in) is
    made again; a damaged SHA256SUMS makes every file be made again, never trusted."""
    images_dir, index, _, stage = standardise_once(tmp_path, dsc)
    sums = images_dir / HashStore.NAME
    sums.write_text("garbage\n")
    assert stage["run"]()["processed"] == 5
    assert len(sums.read_text().splitlines()) == 5


# ---------------------------------------------------------------------------------------------------- release

def release_inputs(tmp_path: Path, dsc: list[Path]) -> dict:
    """metadata, images and splits tables for 6 images (one lesion each) with standardised copies."""
    standardised = tmp_path / "standardised"
    standardised.mkdir()
    metadata, images, splits = [], [], []
    for number, path in enumerate(dsc[:6]):
        name = f"{sha256_file(path)}-recipe.jpg"
        shutil.copyfile(path, standardised / name)
        image_id, lesion = f"ISIC_90000{number:02d}", f"HAM_90000{number:02d}"
        metadata.append({"lesion_id": lesion, "image_id": image_id, "dx": "nv", "dx_type": "histo", "age": "45.0",
                         "sex": "male", "localization": "back", "dataset": "rosendahl"})
        images.append({"image_id": image_id, "lesion_id": lesion, "candidate_id": sha256_file(path), "file": name,
                       "sha256": sha256_file(path), "split_hint": ""})
        splits.append({"lesion_id": lesion, "split": "train" if number % 3 else "test"})
    from pipeline.metadata import METADATA_COLUMNS

    write_csv(tmp_path / "metadata.csv", metadata, METADATA_COLUMNS)
    write_csv(tmp_path / "images.csv", images, list(images[0]))
    write_csv(tmp_path / "splits.csv", splits, ("lesion_id", "split"))
    return {"standardised": standardised, "images": images}


def build(tmp_path: Path) -> dict:
    return build_release(tmp_path / "metadata.csv", tmp_path / "images.csv", tmp_path / "splits.csv",
                         tmp_path / "standardised", RELEASE_PARAMS, tmp_path / "release", tmp_path / "summary.json")


def test_release_refuses_a_corrupt_standardised_image(tmp_path, dsc):
    inputs = release_inputs(tmp_path, dsc)
    bad = inputs["standardised"] / inputs["images"][2]["file"]
    flip_byte(bad)
    with pytest.raises(CorruptFile) as error:
        build(tmp_path)
    assert str(bad) in str(error.value) and "does not match the sha256" in str(error.value)
    corrupt = sha256_file(bad)
    assert all(sha256_file(p) != corrupt for p in (tmp_path / "release").rglob("*.jpg"))
    assert not (tmp_path / "release" / "manifest.csv").exists()  # no manifest vouches for a partial release


def test_release_files_are_readable_by_all_whatever_the_umask(tmp_path, dsc):
    release_inputs(tmp_path, dsc)
    code = ("import os, sys; os.umask(0o077); from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
            "from tests.test_integrity import build; build(Path(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent.parent), str(tmp_path)], check=True,
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
             for p in [tmp_path / "release", *(tmp_path / "release").rglob("*")]}
    assert modes["release/manifest.csv"] == modes["release/ATTRIBUTION.md"] == 0o644
    assert all(mode == (0o755 if (tmp_path / path).is_dir() else 0o644) for path, mode in modes.items()), modes
    assert verify(tmp_path / "release").problems == []


def test_ham_verify_names_every_kind_of_damage(tmp_path, dsc):
    release_inputs(tmp_path, dsc)
    build(tmp_path)
    release = tmp_path / "release"
    manifest = read_csv(release / "manifest.csv")
    images = [release / m["path"] for m in manifest if m["path"].endswith(".jpg")]
    flip_byte(images[0])
    images[1].unlink()
    images[2].write_bytes(images[2].read_bytes()[:-10])
    (release / "train" / "images" / "ISIC_0000000.jpg").write_bytes(b"stray")
    problems = [str(p) for p in verify(release).problems]
    relative = [image.relative_to(release).as_posix() for image in images[:3]]
    assert len(problems) == 4
    assert f"altered: {relative[0]} (sha256 differs from the manifest)" in problems
    assert f"missing: {relative[1]}" in problems
    assert any(p.startswith(f"altered: {relative[2]} (") and "bytes" in p for p in problems)
    assert "extra: train/images/ISIC_0000000.jpg (not in the manifest)" in problems


def test_cover_geometry_guard():
    check_cover_geometry("ok.jpg", 600, 450, 600, 450)
    check_cover_geometry("portrait.jpg", 450, 800, 600, 450)
    for width, height in ((1, 800), (800, 1), (1, 300), (0, 10), (6000, 100)):
        with pytest.raises(PipelineError, match=f"strip.jpg: image is {width}x{height}"):
            check_cover_geometry("strip.jpg", width, height, 600, 450)


# ------------------------------------------------------------------------------------------------------- links

def test_links_out_of_the_source_are_rejected(tmp_path, dsc):
    outside = tmp_path / "elsewhere"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.jpg").write_bytes(dsc[8].read_bytes())
    (outside / "dir" / "x.jpg").write_bytes(dsc[9].read_bytes())
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    root = tmp_path / "raw" / "a"
    files = {"ok.jpg": dsc[0].read_bytes(), "inner/real.jpg": dsc[1].read_bytes()}
    rows = ["ok.jpg", "file_link.jpg", "dir_link/x.jpg", "inner_link.jpg", "passwd.jpg", "loop.jpg"]
    make_export(root, files, rows)
    (root / "file_link.jpg").symlink_to(outside / "secret.jpg")
    (root / "dir_link").symlink_to(outside / "dir", target_is_directory=True)
    (root / "inner_link.jpg").symlink_to("inner/real.jpg")  # stays inside: followed
    (root / "passwd.jpg").symlink_to(outside / "passwd")
    (root / "loop.jpg").symlink_to("loop.jpg")
    result = ingest([config("vidir_modern", "raw/a")], tmp_path, tmp_path / "out", BIG)

    reasons = {r["origin"]: r["reason"] for r in result.rejects}
    for origin, link in (("file_link.jpg", "file_link.jpg"), ("dir_link/x.jpg", "dir_link"),
                         ("passwd.jpg", "passwd.jpg")):
        assert f"link {link} -> " in reasons[origin] and "resolves outside the source folder" in reasons[origin]
    assert "loop.jpg" in reasons["loop.jpg"]
    taken = {c["origin"] for c in result.candidates}
    assert taken == {"ok.jpg", "inner_link.jpg"}
    outside_hashes = {sha256_file(p) for p in (outside / "secret.jpg", outside / "dir" / "x.jpg")}
    assert not outside_hashes & {c["candidate_id"] for c in result.candidates}
    assert len(result.candidates) + len(result.rejects) == len(rows) + 1  # + inner/real.jpg, not listed


def test_a_hard_link_from_outside_is_the_file_itself(tmp_path, dsc):
    """A hard link is not a way out of a source: it is the file, under one more name. With DVC's `cache.type
    hardlink` every tracked raw file has its other name in .dvc/cache, outside the source, and is read like any;
    only symbolic links can lead out (the test above)."""
    outside = tmp_path / "cache"
    outside.mkdir()
    (outside / "object").write_bytes(dsc[10].read_bytes())
    root = tmp_path / "raw" / "a"
    make_export(root, {"ok.jpg": dsc[0].read_bytes()}, ["ok.jpg", "tracked.jpg"])
    os.link(outside / "object", root / "tracked.jpg")
    assert (root / "tracked.jpg").stat().st_nlink == 2
    result = ingest([config("vidir_modern", "raw/a")], tmp_path, tmp_path / "out", BIG)
    assert result.rejects == []
    assert {c["origin"]: c["candidate_id"] for c in result.candidates} == {
        "ok.jpg": sha256_file(dsc[0]), "tracked.jpg": sha256_file(dsc[10])}


# --------------------------------------------------------------------------------------------- label conflicts

def test_conflicting_labels_exclude_every_row_identical_ones_are_duplicates(tmp_path, dsc):
    a, b = tmp_path / "raw" / "a", tmp_path / "raw" / "b"
    same, twin = dsc[0].read_bytes(), dsc[1].read_bytes()
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    for folder, names in ((a, ("x.jpg", "x_again.jpg", "t.jpg")), (b, ("y.jpg", "t2.jpg"))):
        for name in names:
            (folder / name).write_bytes(twin if name.startswith("t") else same)
    header = "file,lesion,diagnosis,dx,method\n"
    (a / "index.csv").write_text(header + "x.jpg,L1,melanoma in situ,mel,histo\nx_again.jpg,L1,melanoma in situ,mel,"
                                          "histo\nt.jpg,L7,,nv,histo\n")
    (b / "index.csv").write_text(header + "y.jpg,K9,Clark's nevus,nv,histo\nt2.jpg,K3,,nv,histo\n")
    options = {"columns": {"file": "file", "lesion_key": "lesion", "diagnosis": "diagnosis", "dx": "dx",
                           "dx_type": "method"}}
    sources = [{"name": "vidir_modern", "kind": "export", "path": "raw/a", "options": options},
               {"name": "rosendahl", "kind": "export", "path": "raw/b", "options": options}]
    result = ingest(sources, tmp_path, tmp_path / "out", BIG)

    conflicted = [r for r in result.rejects if r["reason"].startswith("conflicting labels: ")]
    assert {(r["source"], r["origin"]) for r in conflicted} == {("vidir_modern", "x.jpg"),
                                                              ("vidir_modern", "x_again.jpg"), ("rosendahl", "y.jpg")}
    reason = conflicted[0]["reason"]
    for origin in ("vidir_modern:x.jpg row 2", "vidir_modern:x_again.jpg row 3", "rosendahl:y.jpg row 2"):
        assert origin in reason
    assert "diagnosis='melanoma in situ'" in reason and "diagnosis=\"Clark's nevus\"" in reason
    assert "dx='mel'" in reason and "dx='nv'" in reason
    assert sha256_bytes(same) not in {c["candidate_id"] for c in result.candidates}
    assert sha256_bytes(same) not in {p["candidate_id"] for p in read_csv(tmp_path / "out" / "provenance.csv")}
    assert not any(p.name.startswith(sha256_bytes(same)) for p in (tmp_path / "out" / "objects").iterdir())
    # Same image, same labels except the lesion keys of two different sources: a plain duplicate.
    assert [c["origin"] for c in result.candidates] == ["t.jpg"]
    duplicate = next(r for r in result.rejects if r["origin"] == "t2.jpg")
    assert duplicate["reason"].startswith("duplicate of candidate")
    assert len(result.candidates) + len(result.rejects) == 5
    assert "_duplicate_of" not in read_csv(tmp_path / "out" / "rejects.csv")[0]


def test_same_image_two_lesions_in_one_source_is_a_conflict(tmp_path, dsc):
    files = {"a.jpg": dsc[0].read_bytes(), "b.jpg": dsc[0].read_bytes()}
    make_export(tmp_path / "raw" / "a", files, list(files))  # rows L000 and L001
    result = ingest([config("vidir_modern", "raw/a")], tmp_path, tmp_path / "out", BIG)
    assert not result.candidates
    assert all("conflicting labels" in r["reason"] and "lesion_key='L000'" in r["reason"] for r in result.rejects)


# ------------------------------------------------------------------------------------- DVC: corrupt cache objects

def dvc_cache_object(repo: Path, path: Path) -> Path:
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    return repo / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory) -> Path:
    repo = copy_repository(tmp_path_factory.mktemp("integrity") / "repo")
    run(["ham", "sample", "data/raw/sample"], repo)
    run(["dvc", "add", "data/raw/sample/rosendahl", "data/raw/sample/vidir_modern", "data/raw/sample/vidir_molemax",
         "data/raw/sample/vienna_dias", "data/raw/sample/image_types.csv"], repo)
    run(["dvc", "repro"], repo)
    assert verify(repo / "release").problems == []
    return repo


@pytest.mark.slow
def test_corrupt_cache_object_of_a_released_image_is_caught(demo_repo):
    repo = demo_repo
    released = sorted((repo / "release" / "train" / "images").iterdir())[0]
    good = released.read_bytes()
    cached = dvc_cache_object(repo, released)
    os.chmod(cached, 0o644)
    flip_byte(cached)
    released.unlink()
    run(["dvc", "checkout", "release"], repo)
    assert released.read_bytes() != good  # DVC serves its cache as it is ...
    problems = [str(p) for p in verify(repo / "release").problems]  # ... and the content check names the file
    assert problems == [f"altered: {released.relative_to(repo / 'release').as_posix()} (sha256 differs from the "
                        f"manifest)"]
    cached.write_bytes(good)  # the repair a user makes: a good copy back (dvc pull), checkout again
    released.unlink()
    run(["dvc", "checkout", "release"], repo)
    assert verify(repo / "release").problems == []


@pytest.mark.slow
def test_damaged_standardised_image_never_reaches_the_release(demo_repo):
    """The stores are not DVC outputs (dvc.yaml): a standardised image damaged in place is refused by the release,
    which checks what it links, and made again by the next standardise run, which checks what it reuses."""
    repo = demo_repo
    images_dir = repo / "data" / "interim" / "standardised" / "images"
    victim = sorted(p for p in images_dir.iterdir() if p.suffix == ".jpg")[0]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # truncated in place: same inode, new size and mtime

    forced = run(["dvc", "repro", "--force", "-s", "release"], repo, check=False)
    assert forced.returncode != 0
    assert f"{victim.name}: content does not match the sha256" in forced.stdout + forced.stderr
    assert "Traceback" not in forced.stdout + forced.stderr
    corrupt = sha256_file(victim)
    assert all(sha256_file(p) != corrupt for p in (repo / "release").rglob("*.jpg"))

    run(["dvc", "repro", "--force", "-s", "standardise"], repo)  # the stat differs from its record: re-read, remade
    assert victim.read_bytes() == good
    run(["dvc", "repro"], repo)
    assert verify(repo / "release").problems == []
    assert "up to date" in run(["dvc", "status"], repo).stdout


@pytest.mark.slow
def test_damaged_object_in_the_ingest_store_is_refused_downstream_and_rebuilt_by_ingest(demo_repo):
    repo = demo_repo
    objects = repo / "data" / "interim" / "ingest" / "objects"
    standardised = repo / "data" / "interim" / "standardised" / "images"
    victim = sorted(p for p in objects.iterdir() if p.suffix == ".jpg")[0]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 3])
    # standardise reads an object only to make a new image: with its image gone, it reads the damaged object
    made = [p for p in standardised.iterdir() if p.name.startswith(victim.stem)]
    for path in made:
        path.unlink()
    failed = run(["dvc", "repro", "--force", "-s", "standardise"], repo, check=False)
    assert failed.returncode != 0 and "Traceback" not in failed.stdout + failed.stderr
    assert (f"{victim.name}: the object no longer hashes to the sha256 in objects/index.csv (damaged in the store); "
            f"make it again from its source with `dvc repro --force -s ingest`") in failed.stdout + failed.stderr
    run(["dvc", "repro", "--force", "-s", "ingest"], repo)  # what the message says: ingest re-reads the source
    assert victim.read_bytes() == good
    run(["dvc", "repro"], repo)
    assert verify(repo / "release").problems == []
    assert "up to date" in run(["dvc", "status"], repo).stdout
    assert verify(repo / "release").problems == []


# ----------------------------------------------------------------------------------------- bounded decode memory

# Peak resident memory added by one check_image call: the kernel's high-water mark (VmHWM) is reset to the
# current size just before the call (clear_refs 5), so imports (numpy, which to_rgb loads on first use, once
# a process) and reading the file do not count.
MEASURE = """
import sys
import numpy
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from pipeline.ingest import BadImage, Limits, check_image
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
data = Path(sys.argv[2]).read_bytes()
limits = Limits(max_pixels=int(sys.argv[3]), max_decode_mib=int(sys.argv[4]))
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status("VmRSS")
try:
    checked = check_image(data, limits)
    outcome = f"stored {checked.width}x{checked.height}"
except BadImage as error:
    outcome = f"rejected {error}"
print(status("VmHWM") - before, outcome)
"""


def worst_inputs(source: Path, folder: Path, side: int, edge: dict) -> dict[str, Path]:
    """The costliest kinds of image at the pixel limit (side x side), and each normalised kind at the largest
    size the budget admits (`edge`: kind -> side)."""
    import numpy as np

    base = Image.open(source).convert("RGB")

    def at(size: int) -> Image.Image:
        return base.resize((size, size))

    exif = Image.Exif()
    exif[0x0112] = 6
    grey16 = lambda size: Image.fromarray(np.asarray(at(size).convert("L"), dtype=np.uint16) * 257)  # noqa: E731
    makers = {
        "plain.jpg": lambda s: at(s).save(folder / "plain.jpg", quality=90),
        "progressive.jpg": lambda s: at(s).save(folder / "progressive.jpg", quality=90, progressive=True),
        "rotated.jpg": lambda s: at(s).save(folder / "rotated.jpg", quality=90, exif=exif.tobytes()),
        "cmyk.jpg": lambda s: at(s).convert("CMYK").save(folder / "cmyk.jpg", quality=90),
        "rgb.png": lambda s: at(s).save(folder / "rgb.png"),
        "grey16.png": lambda s: grey16(s).save(folder / "grey16.png"),
        "rgba.png": lambda s: at(s).convert("RGBA").save(folder / "rgba.png"),
        "palette.png": lambda s: at(s).convert("P").save(folder / "palette.png", transparency=0),
        "rgb.tif": lambda s: at(s).save(folder / "rgb.tif"),
        "grey16.tif": lambda s: grey16(s).save(folder / "grey16.tif"),
    }
    paths = {}
    for name, make in makers.items():
        make(side)
        paths[name] = folder / name
        if name in edge:
            edge_name = f"edge-{name}"
            make(edge[name])
            (folder / name).rename(folder / edge_name)
            make(side)
            paths[edge_name] = folder / edge_name
    return paths


def test_decoding_memory_stays_within_the_budget_for_the_worst_allowed_input(tmp_path, dsc):
    """Every kind of image at the pixel limit, and each normalised kind at the largest size the budget lets
    through, vetted in a fresh process: the peak resident memory added by check_image stays under
    max_decode_mib. Over the budget, JPEGs are decoded reduced (draft) and the rest rejected before decoding."""
    side, budget = 2000, 32  # max_pixels 4 Mpx: unbounded, a 16-bit PNG would take 56 MiB, an RGBA one 96 MiB
    from pipeline.ingest import decode_cost

    def largest(mode: str, plain: bool = False) -> int:
        size = side
        while decode_cost(mode, size, size, plain) > budget << 20:
            size -= 8
        return size

    edge = {"grey16.png": largest("I;16"), "rgba.png": largest("RGBA"), "palette.png": largest("P"),
            "rgb.png": largest("RGB"), "rgb.tif": largest("RGB"), "grey16.tif": largest("I;16")}
    paths = worst_inputs(dsc[0], tmp_path, side, edge)
    outcomes = {}
    for name, path in sorted(paths.items()):
        result = subprocess.run([sys.executable, "-c", MEASURE, str(Path(__file__).parent.parent), str(path),
                                 str(side * side), str(budget)], capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        peak_kib, outcome = result.stdout.strip().split(" ", 1)
        outcomes[name] = (int(peak_kib) / 1024, outcome)
    print("\n".join(f"{name}: {peak:.1f} MiB, {outcome}" for name, (peak, outcome) in sorted(outcomes.items())))
    for name, (peak_mib, outcome) in outcomes.items():
        assert peak_mib <= budget, f"{name}: {peak_mib:.1f} MiB > {budget} MiB ({outcome})"
    assert all(outcomes[n][1].startswith("stored") for n in outcomes if n.startswith("edge-")), outcomes
    for name in ("grey16.png", "rgba.png", "palette.png", "grey16.tif"):  # too costly at the limit: refused
        assert f"over the limit ingest.max_decode_mib = {budget}" in outcomes[name][1], outcomes[name]
    for name in ("rotated.jpg", "cmyk.jpg"):  # decoded reduced by draft mode and normalised at that size
        assert outcomes[name][1] in ("stored 1000x1000", "stored 500x500"), outcomes[name]
    # checked at a reduced scale (its coefficient buffers would not fit), stored as it came
    assert outcomes["progressive.jpg"][1] == outcomes["plain.jpg"][1] == "stored 2000x2000"


def test_repair_removes_only_a_half_written_dvc_lock_record(tmp_path):
    from pipeline.integrity import repair_dvc_locks

    record = tmp_path / ".dvc" / "tmp" / "rwlock"
    assert repair_dvc_locks(tmp_path) == []
    record.parent.mkdir(parents=True)
    record.write_text('{"write": {}, "read": {}}')
    assert repair_dvc_locks(tmp_path) == [] and record.exists()
    record.write_text("")  # what a dvc killed while rewriting it leaves
    assert "removed" in repair_dvc_locks(tmp_path)[0] and not record.exists()


def test_repair_restores_a_cut_short_dvc_lock_from_git(tmp_path, repo_root):
    from pipeline.integrity import repair_dvc_locks

    good = (repo_root / "dvc.lock").read_text()
    (tmp_path / "dvc.lock").write_text(good)
    run(["git", "init", "-q"], tmp_path)
    run(["git", "add", "dvc.lock"], tmp_path)
    run(["git", "commit", "-q", "-m", "lock"], tmp_path)
    assert repair_dvc_locks(tmp_path) == []
    integer_md5 = re.sub(r"md5: [0-9a-f]{32}\n", "md5: 12345\n", good, count=1)  # DVC's schema lets it pass
    assert integer_md5 != good
    for cut in (good[: good.index("hash:", len(good) // 2) + 5], good[:8], "", integer_md5):
        (tmp_path / "dvc.lock").write_text(cut)  # what DVC leaves when killed while rewriting it
        assert "restored from the git index" in repair_dvc_locks(tmp_path)[0]
        assert (tmp_path / "dvc.lock").read_text() == good
    # a cut DVC still reads (whole entries, a digest cut short) needs no repair: those stages simply re-run
    readable = good[: good.index("\n", good.index("md5:", len(good) // 2)) - 4] + "\n"
    (tmp_path / "dvc.lock").write_text(readable)
    assert repair_dvc_locks(tmp_path) == []
    assert (tmp_path / "dvc.lock").read_text() == readable
