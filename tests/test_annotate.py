"""`ham annotate`: the review page in headless Chromium. Keys are pressed on a few images of a review queue, and the
annotations CSV is read back: answers appended at once, undo, skip, resume, progress, source and model's guess.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them) and the `selenium` package (test extra);
skipped with the reason where they are absent.
"""
from __future__ import annotations

import csv
import hashlib
import shutil
import threading
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from pipeline.annotate import make_server, queue_items
from pipeline.annotations import read_annotations

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-dev-shm-usage")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(f"headless browser absent ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver",
                allow_module_level=True)

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _queue(tmp_path: Path, count: int = 5) -> tuple[Path, Path, list[str]]:
    """A review queue of `count` small images in an object store, as `ham filter` writes it."""
    objects = tmp_path / "objects"
    objects.mkdir()
    rows, ids = [], []
    for number in range(count):
        path = tmp_path / f"raw{number}.png"
        Image.new("RGB", (60 + number, 40), (40 * number, 120, 200 - 30 * number)).save(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, objects / f"{digest}.png")
        ids.append(digest)
        rows.append({"candidate_id": digest, "object": f"{digest}.png", "source": f"source{number % 2}",
                     "origin": f"raw{number}.png", "member": "", "image_type": "dsc" if number % 2 else "clinic",
                     "decided_by": "source" if number == 4 else "model", "model_type": "macro" if number == 4 else
                     ("dsc" if number % 2 else "clinic"), "confidence": f"0.{60 + number}"})
    queue = tmp_path / "review_queue.csv"
    with open(queue, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return queue, objects, ids


def _serve(annotations: Path, **kwargs):
    server = make_server(annotations, port=0, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def _open(driver, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")


def _press(driver, keys: str) -> None:
    body = driver.find_element(By.TAG_NAME, "body")
    for key in keys:
        body.send_keys(key)
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.pending") == "0")


def _shown(driver) -> dict:
    return driver.execute_script("""
        const image = document.getElementById('image');
        return {image: image.dataset.image, loaded: image.complete && image.naturalWidth,
                progress: document.getElementById('progress').textContent,
                source: document.getElementById('source').textContent,
                guess: document.getElementById('guess').textContent,
                decided: document.getElementById('decided').textContent};""")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_keys_answer_undo_skip_and_resume(browser, tmp_path):
    queue, objects, ids = _queue(tmp_path)
    annotations = tmp_path / "image_types.csv"
    annotations.write_text(f"IMAGE,ANNOTATION,TIMESTAMP\n{ids[0]},c,2018-01-01T00:00:00\n")  # answered before
    server, url = _serve(annotations, queue=queue, objects=objects)
    try:
        _open(browser, url)
        shown = _shown(browser)
        assert shown["image"] == ids[1]  # resumes at the first open image
        WebDriverWait(browser, 10).until(lambda d: _shown(d)["loaded"] == 61)  # the image itself, 61 px wide
        assert shown["progress"].startswith("1 of 5 answered; image 2 of 5")
        assert (shown["source"], shown["guess"]) == ("source1", "dsc")

        _press(browser, "d")
        assert [(r["IMAGE"], r["ANNOTATION"]) for r in _rows(annotations)][-1] == (ids[1], "d")  # written at once
        _press(browser, "c")
        assert len(_rows(annotations)) == 3
        _press(browser, "u")  # undo: the row goes, the image comes back
        assert len(_rows(annotations)) == 2 and _shown(browser)["image"] == ids[2]
        _press(browser, "m")
        _press(browser, "s")  # skip ids[3]
        shown = _shown(browser)
        assert shown["image"] == ids[4]
        assert shown["guess"] == "macro" and "decided clinic by source" in shown["decided"]
        _press(browser, "xd")  # an unknown key does nothing
        assert _shown(browser)["progress"].startswith("4 of 5 answered: the skipped images come back")
    finally:
        server.shutdown()
        server.server_close()

    rows = _rows(annotations)
    assert [(r["IMAGE"], r["ANNOTATION"]) for r in rows] == [(ids[0], "c"), (ids[1], "d"), (ids[2], "m"),
                                                             (ids[4], "d")]
    for row in rows:
        datetime.strptime(row["TIMESTAMP"], "%Y-%m-%dT%H:%M:%S")
    assert read_annotations(annotations) == {ids[0]: "clinic", ids[1]: "dsc", ids[2]: "macro", ids[4]: "dsc"}

    # A new session resumes at the skipped image; its answer is appended after the others.
    server, url = _serve(annotations, queue=queue, objects=objects)
    try:
        _open(browser, url)
        assert _shown(browser)["image"] == ids[3]
        assert _shown(browser)["progress"].startswith("4 of 5 answered; image 4 of 5")
        _press(browser, "u")  # nothing of this session to undo: the file is untouched
        _press(browser, "c")
        assert _shown(browser)["progress"].startswith("5 of 5 answered: all done")
    finally:
        server.shutdown()
        server.server_close()
    assert [(r["IMAGE"], r["ANNOTATION"]) for r in _rows(annotations)][-1] == (ids[3], "c")
    assert len(_rows(annotations)) == 5


def test_any_folder_of_images(browser, tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    for number, name in enumerate(("a.jpg", "sub/b.png")):
        Image.new("RGB", (30, 20), (number * 90, 50, 50)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    annotations = tmp_path / "new" / "answers.csv"  # created with its header on the first answer
    server, url = _serve(annotations, folder=folder)
    try:
        _open(browser, url)
        assert _shown(browser)["progress"].startswith("0 of 2 answered")
        assert _shown(browser)["guess"] == "none"
        _press(browser, "dm")
    finally:
        server.shutdown()
        server.server_close()
    digests = [hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("a.jpg", "sub/b.png")]
    assert [(r["IMAGE"], r["ANNOTATION"]) for r in _rows(annotations)] == [(digests[0], "d"), (digests[1], "m")]


def _write_queue(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_most_uncertain_first(browser, tmp_path):
    """A queue whose rows are out of order (edited by hand) is shown by the model's confidence, lowest first, the
    images whose source the model contradicts after them (the order `ham filter` writes); ties keep file order."""
    queue, objects, ids = _queue(tmp_path)
    rows = _rows(queue)
    for row, confidence, decided_by in zip(rows, ("0.91", "0.42", "0.42", "0.30", "0.15"),
                                           ("model", "model", "model", "source", "model")):
        row["confidence"], row["decided_by"] = confidence, decided_by
    rows = [rows[i] for i in (2, 0, 4, 3, 1)]  # ids[2] before ids[1]: equal confidence, file order kept
    _write_queue(queue, rows)
    expected = [ids[4], ids[2], ids[1], ids[0], ids[3]]
    assert [item["image"] for item in queue_items(queue, objects)] == expected

    server, url = _serve(tmp_path / "answers.csv", queue=queue, objects=objects)
    try:
        _open(browser, url)
        seen = []
        for _ in expected:
            seen.append(_shown(browser)["image"])
            _press(browser, "s")
        assert seen == expected
    finally:
        server.shutdown()
        server.server_close()

