"""`ham annotate`: the review page in headless Chromium. Keys are pressed, buttons clicked and tapped on a few images
of a review queue, and the annotations CSV is read back: answers written at once, undo, skip, resume, progress and
source; the queue's order (most uncertain first); the model's guess hidden until the answer or a request; zoom to
the image's natural size; the types' definitions with examples from the queue.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them) and the `selenium` package (test extra);
skipped with the reason where they are absent.
"""
from __future__ import annotations

import csv
import hashlib
import os
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
         "--disable-dev-shm-usage", "--force-device-scale-factor=1")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(f"headless browser absent ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver",
                allow_module_level=True)

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(1280, 900)
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
        const image = document.getElementById('image'), box = document.getElementById('guessbox');
        return {image: image.dataset.image, loaded: image.complete && image.naturalWidth,
                progress: document.getElementById('progress').textContent,
                source: document.getElementById('source').textContent,
                guess: document.getElementById('guess').textContent,
                decided: document.getElementById('decided').textContent,
                guess_visible: box.offsetParent !== null && box.getBoundingClientRect().height > 0,
                status: document.getElementById('status').textContent, text: document.body.innerText};""")


def _reveal(driver) -> dict:
    """Press "show the model's guess" (a mouse click) and return what is shown."""
    driver.find_element(By.ID, "reveal").click()
    WebDriverWait(driver, 10).until(lambda d: _shown(d)["guess_visible"])
    return _shown(driver)


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
        assert (shown["source"], shown["guess"]) == ("source1", "")  # the guess waits for the answer
        assert _reveal(browser)["guess"] == "dsc"

        _press(browser, "d")
        assert [(r["IMAGE"], r["ANNOTATION"]) for r in _rows(annotations)][-1] == (ids[1], "d")  # written at once
        _press(browser, "c")
        assert len(_rows(annotations)) == 3
        _press(browser, "u")  # undo: the row goes, the image comes back
        assert len(_rows(annotations)) == 2 and _shown(browser)["image"] == ids[2]
        _press(browser, "m")
        _press(browser, "s")  # skip ids[3]
        shown = _shown(browser)
        assert shown["image"] == ids[4] and (shown["guess"], shown["decided"]) == ("", "")
        shown = _reveal(browser)
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
        assert _shown(browser)["guess"] == "" and _reveal(browser)["guess"] == "none"
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


def _handled(driver) -> int:
    return int(driver.execute_script("return document.body.dataset.handled || '0'"))


def _click(driver, selector: str) -> None:
    """A mouse click on a button; returns once the page has handled it."""
    before = _handled(driver)
    driver.find_element(By.CSS_SELECTOR, selector).click()
    WebDriverWait(driver, 20).until(lambda d: _handled(d) > before)


def _tap(driver, selector: str) -> None:
    """A finger's tap at the element's centre: touch start and end through Chromium's touch input (a touch screen
    emulated), from which the browser makes the click, as on a tablet."""
    before = _handled(driver)
    box = driver.execute_script("const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                                "return [r.left + r.width / 2, r.top + r.height / 2];", selector)
    driver.execute_script("window.touches = 0; document.addEventListener('touchend', () => touches++, {once: true});")
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 1})
    try:
        driver.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": box[0],
                                                                                                   "y": box[1]}]})
        driver.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        WebDriverWait(driver, 20).until(lambda d: _handled(d) > before)
    finally:
        driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
    assert driver.execute_script("return window.touches") == 1  # it came as a touch, not a mouse click


def test_buttons_answer_skip_and_undo_by_mouse_and_touch(browser, tmp_path):
    queue, objects, ids = _queue(tmp_path)
    annotations = tmp_path / "answers.csv"
    server, url = _serve(annotations, queue=queue, objects=objects)
    try:
        _open(browser, url)
        undo = browser.find_element(By.CSS_SELECTOR, "button[data-key=u]")
        assert not undo.is_enabled()  # nothing to undo yet
        _click(browser, "button[data-key=d]")
        assert [(r["IMAGE"], r["ANNOTATION"]) for r in _rows(annotations)] == [(ids[0], "d")]
        assert _shown(browser)["image"] == ids[1] and undo.is_enabled()
        _tap(browser, "button[data-key=m]")
        assert [(r["IMAGE"], r["ANNOTATION"]) for r in _rows(annotations)][-1] == (ids[1], "m")
        _tap(browser, "button[data-key=u]")  # undo by touch: the row goes, the image comes back
        assert len(_rows(annotations)) == 1 and _shown(browser)["image"] == ids[1]
        _click(browser, "button[data-key=s]")
        _click(browser, "button[data-key=c]")
        assert [(r["IMAGE"], r["ANNOTATION"]) for r in _rows(annotations)] == [(ids[0], "d"), (ids[2], "c")]
        _click(browser, "button[data-key=u]")
        _click(browser, "button[data-key=u]")  # undoes the skip: back at ids[1]
        assert _shown(browser)["image"] == ids[1] and len(_rows(annotations)) == 1
        _press(browser, "c")  # keys and buttons mix
        _click(browser, "button[data-key=d]")
        assert [(r["IMAGE"], r["ANNOTATION"]) for r in _rows(annotations)] == [(ids[0], "d"), (ids[1], "c"),
                                                                               (ids[2], "d")]
    finally:
        server.shutdown()
        server.server_close()


def test_model_guess_hidden_until_answered_or_asked(browser, tmp_path):
    """Before the answer the page holds neither the model's guess nor its confidence nor the current decision; after
    the answer the status line gives the guess for the image answered; "show the model's guess" shows it for the
    image under review, and the next image starts hidden again."""
    queue, objects, ids = _queue(tmp_path)
    server, url = _serve(tmp_path / "answers.csv", queue=queue, objects=objects)
    try:
        _open(browser, url)
        shown = _shown(browser)
        assert shown["image"] == ids[0] and not shown["guess_visible"]
        assert (shown["guess"], shown["decided"]) == ("", "")
        assert "0.60" not in shown["text"] and "guess: clinic" not in shown["text"]  # nowhere on the page
        _press(browser, "m")  # the person answers
        shown = _shown(browser)
        assert "image 1" in shown["status"] and "clinical close-up" in shown["status"]
        assert "model's guess: clinic (confidence 0.60); it differs" in shown["status"]
        assert shown["image"] == ids[1] and not shown["guess_visible"] and shown["guess"] == ""
        assert "0.61" not in shown["text"]  # the next image's guess is hidden again

        shown = _reveal(browser)  # on request
        assert (shown["guess"], shown["image"]) == ("dsc", ids[1]) and "0.61" in shown["text"]
        assert not browser.find_element(By.ID, "reveal").is_enabled()
        _press(browser, "d")
        shown = _shown(browser)
        assert "model's guess: dsc (confidence 0.61); it agrees" in shown["status"]
        assert not shown["guess_visible"] and "0.62" not in shown["text"]
        _press(browser, "u")  # back at ids[1], answer undone: its guess is hidden again until asked
        shown = _shown(browser)
        assert shown["image"] == ids[1] and not shown["guess_visible"] and "0.61" not in shown["text"]
    finally:
        server.shutdown()
        server.server_close()


def _zoom(driver) -> dict:
    return driver.execute_script("""
        const image = document.getElementById('image'), viewer = document.getElementById('viewer');
        return {natural: [image.naturalWidth, image.naturalHeight], shown: [image.clientWidth, image.clientHeight],
                scroll: [viewer.scrollWidth > viewer.clientWidth, viewer.scrollHeight > viewer.clientHeight],
                viewer: [viewer.clientWidth, viewer.clientHeight], left: viewer.scrollLeft,
                zoom: document.body.dataset.zoom, label: document.getElementById('zoomlabel').textContent};""")


def test_zoom_shows_natural_size(browser, tmp_path):
    """An image larger than the window is fitted to it; a click on the image (or z, or the button) shows it at its
    natural size in a scrollable box, centred where it was clicked; again fits it back. The next image is fitted."""
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.new("RGB", (2400, 1600), (120, 80, 60)).save(folder / "a_large.png")
    Image.new("RGB", (2000, 1500), (60, 80, 120)).save(folder / "b_large.png")
    server, url = _serve(tmp_path / "answers.csv", folder=folder)
    browser.set_window_size(1100, 800)
    try:
        _open(browser, url)
        WebDriverWait(browser, 10).until(lambda d: _zoom(d)["natural"][0] == 2400)
        fitted = _zoom(browser)
        assert fitted["zoom"] == "0" and fitted["shown"][0] < 1100 and fitted["shown"][1] < 800
        assert abs(fitted["shown"][0] / fitted["shown"][1] - 1.5) < 0.02  # fitted, not stretched
        assert fitted["scroll"] == [False, False]

        image = browser.find_element(By.ID, "image")
        ActionChains(browser).move_to_element_with_offset(image, fitted["shown"][0] // 4, 0).click().perform()
        full = _zoom(browser)  # clicked right of centre: the right part of the image is in view
        assert full["zoom"] == "1" and full["shown"] == [2400, 1600] and full["scroll"] == [True, True]
        assert full["label"] == "fit to screen" and full["left"] > (2400 - full["viewer"][0]) / 2
        image.click()
        assert _zoom(browser)["shown"] == fitted["shown"]

        _press(browser, "z")
        assert _zoom(browser)["shown"] == [2400, 1600]
        _click(browser, "#zoom")
        assert _zoom(browser)["shown"] == fitted["shown"]
        _press(browser, "z")
        _press(browser, "d")  # the next image comes fitted
        WebDriverWait(browser, 10).until(lambda d: _zoom(d)["natural"][0] == 2000)
        assert _zoom(browser)["zoom"] == "0" and _zoom(browser)["shown"][0] < 1100
    finally:
        browser.set_window_size(1280, 900)
        server.shutdown()
        server.server_close()


def _examples(driver) -> dict:
    return driver.execute_script("""
        const out = {};
        for (const key of ['d', 'c', 'm']) {
          const box = document.getElementById('def-' + key), image = box.querySelector('figure img');
          out[key] = {image: box.dataset.example, kind: box.dataset.kind, text: box.innerText,
                      shown: !box.querySelector('figure').hidden, loaded: image.complete && image.naturalWidth};
        }
        return out;""")


def test_definitions_with_examples_from_the_queue(browser, tmp_path):
    """Each type's definition is on the page. Its example is an image of the queue a person annotated so, else the
    one the model is surest of where the model decides it (not where the source contradicts the model), never
    the image under review; a type with neither says so beside its text."""
    queue, objects, ids = _queue(tmp_path)
    # the model's guesses: ids[0] clinic 0.60, ids[1] dsc 0.61, ids[2] clinic 0.62, ids[3] dsc 0.63, ids[4] macro
    # 0.64 (the one image the source decides: it says clinic)
    annotations = tmp_path / "answers.csv"
    annotations.write_text(f"IMAGE,ANNOTATION,TIMESTAMP\n{ids[3]},c,2018-01-01T00:00:00\n")
    server, url = _serve(annotations, queue=queue, objects=objects)
    try:
        _open(browser, url)
        assert _shown(browser)["image"] == ids[0]
        examples = _examples(browser)
        assert "dermatoscope" in examples["d"]["text"] and "round" in examples["d"]["text"]
        assert "close-up" in examples["m"]["text"] and "without a dermatoscope" in examples["m"]["text"]
        assert "overview" in examples["c"]["text"] and "body region" in examples["c"]["text"]
        # d: the model's surest dsc left open is ids[1] (ids[3] is annotated c); c: the annotation; m: none (the
        # model's only macro is contradicted by its source)
        assert (examples["d"]["image"], examples["d"]["kind"]) == (ids[1], "model")
        assert "confidence 0.61" in examples["d"]["text"] and "not yet checked" in examples["d"]["text"]
        assert (examples["c"]["image"], examples["c"]["kind"]) == (ids[3], "annotation")
        assert examples["m"]["image"] == "" and not examples["m"]["shown"]
        assert "No example in this queue yet" in examples["m"]["text"]
        WebDriverWait(browser, 10).until(lambda d: all(e["loaded"] for e in _examples(d).values() if e["shown"]))
        assert _examples(browser)["d"]["loaded"] == 61  # the example is that image itself

        _press(browser, "s")  # ids[1] under review: it is not its own example, and no other dsc is left
        examples = _examples(browser)
        assert examples["d"]["image"] == "" and not examples["d"]["shown"]
        assert "No example in this queue yet" in examples["d"]["text"]
        _press(browser, "d")  # a person's answer makes ids[1] the example of d from the next image on
        examples = _examples(browser)
        assert (examples["d"]["image"], examples["d"]["kind"]) == (ids[1], "annotation")
        assert "annotated d by a person" in examples["d"]["text"]
    finally:
        server.shutdown()
        server.server_close()

    folder = tmp_path / "folder"
    folder.mkdir()
    Image.new("RGB", (30, 20), (90, 50, 50)).save(folder / "a.png")
    server, url = _serve(tmp_path / "folder_answers.csv", folder=folder)
    try:
        _open(browser, url)  # no model, no annotations: the definitions alone
        assert all(not e["shown"] and "No example" in e["text"] for e in _examples(browser).values())
    finally:
        server.shutdown()
        server.server_close()


def _layout(driver) -> dict:
    return driver.execute_script("""
        const buttons = [...document.querySelectorAll('.buttons button')].map(b => b.getBoundingClientRect());
        const image = document.getElementById('image').getBoundingClientRect();
        return {width: innerWidth, height: innerHeight, page_width: document.documentElement.scrollWidth,
                buttons_right: Math.max(...buttons.map(r => r.right)),
                buttons_bottom: Math.max(...buttons.map(r => r.bottom)),
                buttons_small: Math.min(...buttons.map(r => r.height)), image_right: image.right,
                image_bottom: image.bottom, image_width: image.width,
                foreign: [...performance.getEntriesByType('resource')].map(e => e.name)
                           .filter(name => !name.startsWith(location.origin + '/')),
                external: document.querySelectorAll('link, script[src], iframe, object, embed').length};""")


def test_real_images_page_layout(browser, tmp_path, ham_data):
    """The page on real images (HAM10000 dermatoscopic, DermNet clinical), at a desktop and a phone size: no
    sideways scrolling, the buttons on screen with the image without scrolling and big enough for a finger, the
    examples loaded, nothing fetched from anywhere but the server. Screenshots go to $HAM_SCREENSHOTS (else the
    test's temporary folder) for a person to look at."""
    files = ["ham10000/images/" + name for name in sorted(os.listdir(ham_data / "ham10000" / "images"))[:2]]
    files += ["clinical/dermnet/" + name for name in sorted(os.listdir(ham_data / "clinical" / "dermnet"))[:2]]
    guesses = [("dsc", "0.93", "dsc", "source"), ("dsc", "0.55", "dsc", "model"), ("macro", "0.48", "macro", "model"),
               ("clinic", "0.71", "clinic", "model")]
    rows, ids = [], []
    for path, (model_type, confidence, image_type, decided_by) in zip(files, guesses):
        ids.append(hashlib.sha256((ham_data / path).read_bytes()).hexdigest())
        rows.append({"candidate_id": ids[-1], "object": path, "source": path.split("/")[0], "origin": path,
                     "member": "", "image_type": image_type, "decided_by": decided_by, "model_type": model_type,
                     "confidence": confidence})
    rows[0]["model_type"], rows[0]["confidence"] = "macro", "0.58"  # the source says dsc, the model disagrees
    queue = _write_queue(tmp_path / "review_queue.csv", rows)
    annotations = tmp_path / "answers.csv"
    annotations.write_text(f"IMAGE,ANNOTATION,TIMESTAMP\n{ids[3]},c,2018-01-01T00:00:00\n")
    shots = Path(os.environ.get("HAM_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    server, url = _serve(annotations, queue=queue, objects=ham_data)
    try:
        for size, name in (((1280, 900), "desktop"), ((412, 915), "phone")):
            browser.set_window_size(*size)
            _open(browser, url)
            assert _shown(browser)["image"] == ids[2]  # 0.48, the most uncertain open image
            WebDriverWait(browser, 10).until(lambda d: _shown(d)["loaded"] and all(
                e["loaded"] or not e["shown"] for e in _examples(d).values()))
            examples = _examples(browser)
            assert examples["c"]["kind"] == "annotation" and examples["d"]["image"] == ids[1]
            layout = _layout(browser)
            assert layout["page_width"] <= layout["width"], layout  # no sideways scrolling
            assert layout["buttons_right"] <= layout["width"] and layout["image_right"] <= layout["width"], layout
            assert layout["buttons_bottom"] <= layout["height"], layout  # answer without scrolling
            assert layout["buttons_small"] >= 40, layout  # a finger's size
            assert layout["foreign"] == [] and layout["external"] == 0, layout
            browser.save_screenshot(str(shots / f"annotate-{name}.png"))
        browser.set_window_size(1280, 900)
        _open(browser, url)
        _press(browser, "m")
        _reveal(browser)
        browser.save_screenshot(str(shots / "annotate-answered-revealed.png"))
        _press(browser, "z")
        assert _zoom(browser)["shown"] == [600, 450]  # HAM10000's own size
        browser.save_screenshot(str(shots / "annotate-zoomed.png"))
    finally:
        browser.set_window_size(1280, 900)
        server.shutdown()
        server.server_close()
    assert all((shots / f"annotate-{name}.png").stat().st_size > 10_000 for name in ("desktop", "phone", "zoomed"))
