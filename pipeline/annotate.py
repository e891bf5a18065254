"""`ham annotate`: the review page. A small HTTP server on 127.0.0.1 shows each image of the review queue (or of
any folder) with its source; the keys (or the buttons beside them, for mouse and touch) are the authors' d
(dermatoscopic), c (clinical overview), m (clinical close-up), plus s (skip), u (undo) and z (full size).

The queue comes most uncertain first (`review_order`, the order `ham filter` writes: the model's unsure decisions by
confidence, lowest first, then the images whose source the model contradicts); a folder comes in file order. Beside
the image stand the three types' definitions, each with an example from the queue itself (an image a person
annotated so, else the one the model is surest of where the model decides it; never the image under review) or,
where there is none, the text alone. The model's guess for an image, and the decision made so far, appear only after
the person answers (in the status line) or asks ("show the model's guess"), so the answer is the person's own.
Clicking the image (or z) shows it at its natural size, scrollable, and back.

The page is self-contained: one HTML document with its style and script inline, the images and the state from this
server; nothing is fetched from anywhere else.

Every answer is written at once to the annotations CSV as an `IMAGE,ANNOTATION,TIMESTAMP` row (IMAGE = the image's
sha256, which is the candidate ID), so the page can be closed at any time: images already answered in that file are
counted as done and the page starts at the first one still open. Each write makes a new file and renames it over
the old one (`annotations.replace_file`): the file `dvc add` tracks is, with the project's `cache.type hardlink`,
the inode of DVC's cache object, which an append in place would corrupt. Undo removes this session's last answer
(the file replaced by its content before that row) and shows that image again; a skipped image stays open and
comes back next time. The next `dvc repro` applies the answers (annotations beat the model and the sources).

The server answers only requests addressed to it by its loopback name (`Host` 127.0.0.1 or localhost and its
port: a DNS-rebinding page's host name is refused) and takes a POST only from its own page (`Origin` the same
address), so another web page open in the same browser cannot post answers. A browser that closes a connection
early (fast keys, a page reloaded mid-image) costs nothing: the server drops that connection quietly.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .annotations import ANNOTATION_KEYS, KEY_OF_TYPE, append_annotation, read_annotations_if_any, truncate_annotations
from .common import PipelineError, read_csv

IMAGE_SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
                  ".webp": "image/webp", ".bmp": "image/bmp"}


def review_order(item: dict) -> tuple[bool, float]:
    """The queue's own order (`filter.decide`): the model's unsure decisions first, by its confidence, lowest first;
    then the images whose source's declared type the model contradicts. An item without a confidence goes last
    in its group."""
    try:
        confidence = float(item["confidence"])
    except ValueError:
        confidence = math.inf
    return item["decided_by"] == "source", confidence


def queue_items(queue_csv: Path, objects_dir: Path) -> list[dict]:
    """The review queue's images, the most uncertain first (`review_order`; a stable sort, so the queue `ham
    filter` wrote keeps its order and a queue edited by hand is put back in it)."""
    rows = read_csv(queue_csv, ("candidate_id", "object", "source"))
    items = [{"image": row["candidate_id"], "path": Path(objects_dir) / row["object"], "source": row["source"],
              "origin": "/".join(filter(None, (row.get("origin", ""), row.get("member", "")))),
              "guess": row.get("model_type") or row.get("image_type", ""), "confidence": row.get("confidence", ""),
              "decided": row.get("image_type", ""), "decided_by": row.get("decided_by", "")} for row in rows]
    return sorted(items, key=review_order)


def folder_items(folder: Path) -> list[dict]:
    """Every image under `folder`, in sorted file order (there is no model's confidence to order them by)."""
    items = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        items.append({"image": hashlib.sha256(path.read_bytes()).hexdigest(), "path": path,
                      "source": str(Path(folder).name), "origin": path.relative_to(folder).as_posix(), "guess": "",
                      "confidence": "", "decided": "", "decided_by": ""})
    return items


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ham annotate</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 * { box-sizing: border-box; }
 body { font-family: sans-serif; margin: 0; padding: 0.8em; background: #2b2b2b; color: #eee; line-height: 1.35; }
 #layout { display: grid; grid-template-columns: minmax(0, 1fr) 22em; gap: 1em; align-items: start; }
 @media (max-width: 900px) { #layout { grid-template-columns: minmax(0, 1fr); } }
 #progress { font-weight: bold; }
 #viewer { margin: 0.5em 0; background: #111; text-align: center; max-width: 100%; }
 #viewer img { display: inline-block; max-width: 100%; max-height: 68vh; cursor: zoom-in; vertical-align: top; }
 #viewer.full { overflow: auto; max-height: 80vh; }
 #viewer.full img { max-width: none; max-height: none; cursor: zoom-out; }
 #viewer.empty { display: none; }
 .meta { color: #ccc; margin: 0.3em 0; overflow-wrap: anywhere; }
 .buttons { display: flex; flex-wrap: wrap; gap: 0.4em; margin: 0.4em 0; }
 .buttons button { font: inherit; color: #eee; background: #444; border: 1px solid #888; border-radius: 6px;
   padding: 0.5em 0.8em; min-height: 2.8em; min-width: 3em; cursor: pointer; touch-action: manipulation; }
 .buttons button.answer { background: #1f4e79; border-color: #6aa6d8; font-weight: bold; }
 .buttons button.answer { flex: 1 1 auto; }
 .buttons button:disabled { opacity: 0.4; cursor: default; }
 .buttons button:hover:not(:disabled) { filter: brightness(1.25); }
 kbd { display: inline-block; border: 1px solid #aaa; border-radius: 4px; padding: 0 0.35em; margin-right: 0.3em;
   font-family: monospace; background: #333; }
 #guessbox { background: #3a3320; border: 1px solid #a08a3a; border-radius: 6px; padding: 0.4em 0.6em; }
 #status { color: #9f9; min-height: 1.3em; margin: 0.4em 0; }
 #definitions h2 { font-size: 1.05em; margin: 0.2em 0 0.5em; }
 .definition { border: 1px solid #555; border-radius: 6px; padding: 0.5em; margin-bottom: 0.6em; background: #333; }
 .definition h3 { font-size: 1em; margin: 0 0 0.3em; }
 .definition p { margin: 0 0 0.4em; font-size: 0.92em; }
 .definition figure { margin: 0; display: flex; gap: 0.5em; align-items: flex-start; }
 .definition figure[hidden] { display: none; }
 .definition figure img { display: block; max-width: 10em; max-height: 7.5em; background: #111; cursor: zoom-in; }
 .definition figure.big { display: block; }
 .definition figure.big img { max-width: 100%; max-height: none; cursor: zoom-out; }
 .definition figcaption, .definition .none { font-size: 0.82em; color: #bbb; }
</style></head>
<body>
<div id="layout">
<main>
 <div id="progress">loading</div>
 <div id="viewer" title="click: full size / fit to screen"><img id="image" alt="the image to classify"></div>
 <div class="meta">source <b id="source"></b> <span id="origin"></span></div>
 <div class="buttons" id="answers">
  <button type="button" class="answer" data-key="d"><kbd>d</kbd>dermatoscopic</button>
  <button type="button" class="answer" data-key="c"><kbd>c</kbd>clinical overview</button>
  <button type="button" class="answer" data-key="m"><kbd>m</kbd>clinical close-up</button>
 </div>
 <div class="buttons" id="tools">
  <button type="button" data-key="s"><kbd>s</kbd>skip</button>
  <button type="button" data-key="u"><kbd>u</kbd>undo</button>
  <button type="button" data-key="z" id="zoom"><kbd>z</kbd><span id="zoomlabel">full size</span></button>
  <button type="button" id="reveal">show the model's guess</button>
 </div>
 <div id="guessbox" class="meta" hidden>model's guess <b id="guess"></b> <span id="confidence"></span>
  <span id="decided"></span></div>
 <div id="status" role="status"></div>
</main>
<aside id="definitions">
 <h2>The three image types</h2>
 <div class="definition" id="def-d"><h3><kbd>d</kbd>dermatoscopic (dsc)</h3>
  <p>Taken through a dermatoscope: the skin surface magnified about 10x, the lesion filling much of the frame.
   Often a round (circular) field with a dark rim, contact gel or air bubbles, a ruler or scale marks.</p>
  <figure><img alt="example of a dermatoscopic image"><figcaption></figcaption></figure><div class="none"></div></div>
 <div class="definition" id="def-m"><h3><kbd>m</kbd>clinical close-up (macro)</h3>
  <p>A close-up photograph of the lesion with the surrounding skin, taken without a dermatoscope: ordinary
   magnification, skin texture and hairs visible around it, no round field, no gel.</p>
  <figure><img alt="example of a clinical close-up"><figcaption></figcaption></figure><div class="none"></div></div>
 <div class="definition" id="def-c"><h3><kbd>c</kbd>clinical overview (clinic)</h3>
  <p>An overview photograph of a body region (back, face, a limb) in which the lesion is a small part; body
   contours, clothing or the background often visible.</p>
  <figure><img alt="example of a clinical overview"><figcaption></figcaption></figure><div class="none"></div></div>
</aside>
</div>
<script>
const names = {d: "dermatoscopic", c: "clinical overview", m: "clinical close-up"};
const typeOf = {d: "dsc", c: "clinic", m: "macro"};
let items = [], answered = {}, position = 0, history = [], chain = Promise.resolve(), revealed = false, handled = 0;
const $ = id => document.getElementById(id);

function openFrom(start) {
  for (let i = start; i < items.length; i++) if (!(items[i].image in answered)) return i;
  return items.length;
}
function guessText(item) {
  if (!item.guess) return "none";
  return item.guess + (item.confidence ? ` (confidence ${item.confidence})` : "");
}
// The model's guess (and the current decision, which may be the model's) stays out of the page until the person
// has answered or asks for it.
function renderGuess() {
  const item = position < items.length ? items[position] : null, on = Boolean(item && revealed);
  $("guessbox").hidden = !on;
  $("guess").textContent = on ? (item.guess || "none") : "";
  $("confidence").textContent = on && item.confidence ? `(confidence ${item.confidence})` : "";
  $("decided").textContent = on && item.decided_by ? `decided ${item.decided} by ${item.decided_by}` : "";
  $("reveal").disabled = !item || revealed;
  document.body.dataset.revealed = on ? "1" : "0";
}
// An example of each type from the queue itself: an image a person annotated so, else the image the model is
// surest is of that type where that is the decision (not where the source contradicts it); never the image under
// review (its example would give the guess away).
function exampleFor(key) {
  const current = position < items.length ? items[position].image : null;
  let best = null;
  for (let i = 0; i < items.length; i++) {
    const item = items[i];
    if (item.image === current) continue;
    if (answered[item.image] === key) return {index: i, kind: "annotation", caption: `annotated ${key} by a person`};
    if (item.guess !== typeOf[key] || item.decided_by !== "model" || item.image in answered) continue;
    const confidence = parseFloat(item.confidence) || 0;
    if (!best || confidence > best.confidence) best = {index: i, confidence: confidence, kind: "model",
      caption: `the model's guess` + (item.confidence ? ` (confidence ${item.confidence})` : "") +
               ", not yet checked by a person"};
  }
  return best;
}
function renderExamples() {
  for (const key of ["d", "c", "m"]) {
    const box = $("def-" + key), figure = box.querySelector("figure"), image = figure.querySelector("img");
    const example = exampleFor(key);
    figure.hidden = !example;
    box.querySelector(".none").textContent = example ? "" :
      "No example in this queue yet: the definition is the guide.";
    box.dataset.example = example ? items[example.index].image : "";
    box.dataset.kind = example ? example.kind : "";
    if (!example) { image.removeAttribute("src"); continue; }
    const src = "/image/" + example.index;
    if (image.getAttribute("src") !== src) { image.src = src; figure.classList.remove("big"); }
    figure.querySelector("figcaption").textContent = "Example from this queue: " + example.caption + ".";
  }
}
function setZoom(on, fx, fy) {
  const viewer = $("viewer"), image = $("image");
  viewer.classList.toggle("full", on);
  document.body.dataset.zoom = on ? "1" : "0";
  $("zoomlabel").textContent = on ? "fit to screen" : "full size";
  if (on) {  // keep the point clicked (else the centre) in view
    viewer.scrollLeft = (fx === undefined ? 0.5 : fx) * image.naturalWidth - viewer.clientWidth / 2;
    viewer.scrollTop = (fy === undefined ? 0.5 : fy) * image.naturalHeight - viewer.clientHeight / 2;
  }
}
function show() {
  const done = Object.keys(answered).filter(k => items.some(it => it.image === k)).length;
  const open = position < items.length;
  document.body.dataset.position = position;
  document.body.dataset.answered = done;
  revealed = false;
  setZoom(false);
  document.querySelectorAll("button[data-key]").forEach(button => {
    const key = button.dataset.key;
    button.disabled = key === "u" ? !history.length : !open;
  });
  renderGuess();
  renderExamples();
  $("viewer").classList.toggle("empty", !open);
  if (!open) {
    $("progress").textContent = `${done} of ${items.length} answered` + (done === items.length ? ": all done" :
      ": the skipped images come back next time");
    $("image").removeAttribute("src"); $("image").dataset.image = "";
    ["source", "origin"].forEach(id => $(id).textContent = "");
    return;
  }
  const item = items[position];
  $("progress").textContent = `${done} of ${items.length} answered; image ${position + 1} of ${items.length}`;
  $("image").src = "/image/" + position; $("image").dataset.image = item.image;
  $("source").textContent = item.source; $("origin").textContent = item.origin;
}
async function post(url, body) {
  const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify(body || {})});
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}
async function handle(key) {
  if (key in names && position < items.length) {
    const item = items[position];
    await post("/answer", {image: item.image, key: key});
    answered[item.image] = key;
    history.push({kind: "answer", position: position});
    // Now that the person has answered, the model's guess for that image may be shown.
    const verdict = !item.guess ? "" : item.guess === typeOf[key] ? "; it agrees" : "; it differs";
    $("status").textContent = `image ${position + 1} (${item.image.slice(0, 12)}): ${names[key]}. ` +
      `The model's guess: ${guessText(item)}${verdict}` +
      (item.decided_by === "source" ? `; the source says ${item.decided}.` : ".");
    position = openFrom(position + 1);
  } else if (key === "s" && position < items.length) {
    history.push({kind: "skip", position: position});
    $("status").textContent = "skipped";
    position = openFrom(position + 1);
  } else if (key === "u" && history.length) {
    const last = history.pop();
    if (last.kind === "answer") {
      const data = await post("/undo");
      delete answered[data.image];
    }
    position = last.position;
    $("status").textContent = "undone";
  } else if (key === "z" && position < items.length) {
    setZoom(!$("viewer").classList.contains("full"));
    return;
  } else {
    return;
  }
  show();
}
// Keys and buttons go through one queue: one at a time, in order, even when faster than the server answers.
function enqueue(key) {
  document.body.dataset.pending = "1";
  chain = chain.then(() => handle(key)).catch(error => { $("status").textContent = "error: " + error.message; });
  chain.then(() => { document.body.dataset.pending = "0"; document.body.dataset.handled = ++handled; });
}
document.addEventListener("keydown", event => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (!"dcmsuz".includes(key) || key.length !== 1) return;
  event.preventDefault();
  enqueue(key);
});
document.querySelectorAll("button[data-key]").forEach(button => button.addEventListener("click", event => {
  if (event.detail) button.blur();  // a mouse click or a tap: Enter or space later must not answer again
  enqueue(button.dataset.key);
}));
$("reveal").addEventListener("click", () => { revealed = true; renderGuess(); });
$("image").addEventListener("click", event => {
  const box = event.target.getBoundingClientRect();
  setZoom(!$("viewer").classList.contains("full"), (event.clientX - box.left) / box.width,
          (event.clientY - box.top) / box.height);
});
document.querySelectorAll(".definition figure").forEach(figure => figure.querySelector("img").addEventListener(
  "click", () => figure.classList.toggle("big")));
fetch("/state").then(r => r.json()).then(state => {
  items = state.items; answered = state.answered; position = openFrom(0); show();
  document.body.dataset.ready = "1";
});
</script>
</body></html>
"""


class AnnotationSession:
    """The state one server holds: the items, the annotations file and this session's undo stack."""

    def __init__(self, annotations: Path, items: list[dict]):
        self.annotations, self.items = Path(annotations), items
        self.lock = threading.Lock()
        self.undo: list[tuple[str, int, int]] = []  # (image, length before the row, length after)

    def state(self) -> dict:
        labels = read_annotations_if_any(self.annotations)
        known = {item["image"] for item in self.items}
        return {"items": [{k: item[k] for k in ("image", "source", "origin", "guess", "confidence", "decided",
                                                 "decided_by")} for item in self.items],
                "answered": {image: KEY_OF_TYPE[t] for image, t in labels.items() if image in known}}

    def answer(self, image: str, key: str) -> dict:
        if key not in ANNOTATION_KEYS:
            raise PipelineError(f"key {key!r} is not one of d, c, m")
        if image not in {item["image"] for item in self.items}:
            raise PipelineError(f"image {image!r} is not on this page")
        with self.lock:
            before = append_annotation(self.annotations, image, key)
            self.undo.append((image, before, self.annotations.stat().st_size))
        return {"image": image, "key": key}

    def undo_last(self) -> dict:
        with self.lock:
            if not self.undo:
                raise PipelineError("nothing to undo in this session")
            image, before, after = self.undo[-1]
            if self.annotations.stat().st_size != after:
                raise PipelineError(f"{self.annotations} changed outside this page; undo refused")
            truncate_annotations(self.annotations, before)
            self.undo.pop()
        return {"image": image}


def allowed_hosts(port: int) -> set[str]:
    return {f"127.0.0.1:{port}", f"localhost:{port}"}


def make_handler(session: AnnotationSession):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: one line per request would bury the console
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: dict, status: int = 200) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def do_GET(self):  # noqa: N802
            if self.headers.get("Host", "") not in allowed_hosts(self.server.server_address[1]):
                self._json({"error": "not this server's name"}, HTTPStatus.FORBIDDEN)  # a rebinding page reads nothing
            elif self.path in ("/", "/index.html"):
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif self.path == "/state":
                self._json(session.state())
            elif self.path.startswith("/image/") and self.path[7:].isdigit() and \
                    int(self.path[7:]) < len(session.items):
                path = session.items[int(self.path[7:])]["path"]
                try:
                    data = Path(path).read_bytes()
                except OSError as error:
                    self._json({"error": f"{path}: {error.strerror}"}, HTTPStatus.NOT_FOUND)
                    return
                self._send(200, data, IMAGE_SUFFIXES.get(Path(path).suffix.lower(), "application/octet-stream"))
            else:
                self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)

        def _refused(self) -> str | None:
            """Why this request may not write (None: it may): a foreign Host or Origin."""
            hosts = allowed_hosts(self.server.server_address[1])
            host, origin = self.headers.get("Host", ""), self.headers.get("Origin")
            if host not in hosts:
                return f"Host {host!r} is not this server ({' or '.join(sorted(hosts))})"
            if origin is None or origin.removeprefix("http://") not in hosts:
                return f"Origin {origin!r} is not this page: answers are taken from this server's own page only"
            return None

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            refused = self._refused()
            if refused:
                self.close_connection = True
                self._json({"error": refused}, HTTPStatus.FORBIDDEN)
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/answer":
                    self._json(session.answer(str(body.get("image", "")), str(body.get("key", ""))))
                elif self.path == "/undo":
                    self._json(session.undo_last())
                else:
                    self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
            except (PipelineError, ValueError) as error:
                self._json({"error": str(error)}, HTTPStatus.BAD_REQUEST)

    return Handler


class QuietServer(ThreadingHTTPServer):
    """A closed connection (the browser moved on before an image was sent) is no error worth a traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipe, ConnectionReset, ConnectionAborted
            return
        super().handle_error(request, client_address)


def make_server(annotations: Path, queue: Path | None = None, objects: Path | None = None,
                folder: Path | None = None, port: int = 0) -> ThreadingHTTPServer:
    """The server, bound to 127.0.0.1 (never another interface: the page writes files)."""
    if folder is not None:
        if not Path(folder).is_dir():
            raise PipelineError(f"{folder}: not a folder")
        items = folder_items(Path(folder))
    else:
        items = queue_items(Path(queue), Path(objects))
    read_annotations_if_any(annotations)  # a broken annotations file is named now, not at the first key
    try:
        server = QuietServer(("127.0.0.1", port), make_handler(AnnotationSession(annotations, items)))
    except OSError as error:
        raise PipelineError(f"127.0.0.1:{port}: {error.strerror}") from None
    server.items = items
    return server


def serve(annotations: Path, queue: Path | None = None, objects: Path | None = None, folder: Path | None = None,
          port: int = 8765) -> None:
    server = make_server(annotations, queue, objects, folder, port)
    labels = read_annotations_if_any(annotations)
    open_items = sum(item["image"] not in labels for item in server.items)
    print(f"annotate: {len(server.items)} images, {open_items} not yet answered; answers go to {annotations}\n"
          f"open http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
