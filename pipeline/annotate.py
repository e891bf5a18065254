"""`ham annotate`: the review page. A small HTTP server on 127.0.0.1 shows each image of the review queue (or of
any folder) with its source and the model's guess; the keys are the authors' d (dermatoscopic), c (clinical
overview), m (clinical close-up), plus s (skip) and u (undo).

Every answer is written at once to the annotations CSV as an `IMAGE,ANNOTATION,TIMESTAMP` row (IMAGE = the image's
sha256, which is the candidate ID), so the page can be closed at any time: images already answered in that file are
counted as done and the page starts at the first one still open. Each write makes a new file and renames it over
the old one (`annotations.replace_file`): the file `dvc add` tracks is, with the project's `cache.type hardlink`,
the inode of DVC's cache object, which an append in place would corrupt. Undo removes this session's last answer
(the file replaced by its content before that row) and shows that image again; a skipped image stays open and
comes back next time. The next `dvc repro` applies the answers (annotations beat the model and the sources).

The queue comes most uncertain first (`review_order`, the order `ham filter` writes: the model's unsure decisions by
confidence, lowest first, then the images whose source the model contradicts); a folder comes in file order.

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
<style>
 body { font-family: sans-serif; margin: 1em; background: #222; color: #eee; }
 #image { max-width: 95vw; max-height: 70vh; display: block; margin: 0.5em 0; background: #000; }
 #keys span { display: inline-block; border: 1px solid #888; border-radius: 4px; padding: 0 0.4em; margin-right: 0.3em; }
 #status { color: #9f9; min-height: 1.2em; }
 .meta { color: #ccc; }
</style></head>
<body>
<div id="progress">loading</div>
<img id="image" alt="">
<div class="meta">source <b id="source"></b> <span id="origin"></span></div>
<div class="meta">model's guess <b id="guess"></b> <span id="confidence"></span> <span id="decided"></span></div>
<div id="keys"><span>d</span>dermatoscopic <span>c</span>clinical overview <span>m</span>clinical close-up
 <span>s</span>skip <span>u</span>undo</div>
<div id="status"></div>
<script>
const names = {d: "dermatoscopic", c: "clinical overview", m: "clinical close-up"};
let items = [], answered = {}, position = 0, history = [], chain = Promise.resolve();
const $ = id => document.getElementById(id);

function openFrom(start) {
  for (let i = start; i < items.length; i++) if (!(items[i].image in answered)) return i;
  return items.length;
}
function show() {
  const done = Object.keys(answered).filter(k => items.some(it => it.image === k)).length;
  document.body.dataset.position = position;
  document.body.dataset.answered = done;
  if (position >= items.length) {
    $("progress").textContent = `${done} of ${items.length} answered` + (done === items.length ? ": all done" :
      ": the skipped images come back next time");
    $("image").removeAttribute("src"); $("image").dataset.image = "";
    ["source", "origin", "guess", "confidence", "decided"].forEach(id => $(id).textContent = "");
    return;
  }
  const item = items[position];
  $("progress").textContent = `${done} of ${items.length} answered; image ${position + 1} of ${items.length}`;
  $("image").src = "/image/" + position; $("image").dataset.image = item.image;
  $("source").textContent = item.source; $("origin").textContent = item.origin;
  $("guess").textContent = item.guess ? item.guess : "none";
  $("confidence").textContent = item.confidence ? `(confidence ${item.confidence})` : "";
  $("decided").textContent = item.decided_by ? `decided ${item.decided} by ${item.decided_by}` : "";
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
    $("status").textContent = `${item.image.slice(0, 12)}: ${names[key]}`;
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
  } else {
    return;
  }
  show();
}
document.addEventListener("keydown", event => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (!"dcmsu".includes(key) || key.length !== 1) return;
  event.preventDefault();
  // One key at a time, in order, even when typed faster than the server answers.
  chain = chain.then(() => handle(key)).catch(error => { $("status").textContent = "error: " + error.message; });
  chain.then(() => { document.body.dataset.pending = "0"; });
  document.body.dataset.pending = "1";
});
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
