"""A small Hugging Face mirror on 127.0.0.1: serves folders as repos over the Hub's resolve URLs.

`GET|HEAD /{owner}/{name}/resolve/{revision}/{file}`, with the headers huggingface_hub reads
(X-Repo-Commit, ETag, Content-Length) and byte ranges (`Range: bytes=a-b`, answered 206), which is
how the planner reads safetensors headers without the weights. Unknown repos and files get the
Hub's 404s (X-Error-Code RepoNotFound / EntryNotFound). Every request is logged in `requests`.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Mirror:
    def __init__(self, repos: dict[str, Path]):
        self.repos = dict(repos)
        self.requests: list[
            dict
        ] = []  # {"method", "path", "range", "sent"}: what was asked and how many bytes went out
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                mirror._answer(self, body=False)

            def do_GET(self):
                mirror._answer(self, body=True)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(handler.path.split("?", 1)[0])
        wanted = handler.headers.get("Range")
        record = {"method": handler.command, "path": path, "range": wanted, "sent": 0}
        self.requests.append(record)
        match = _RESOLVE.match(path)
        if not match or match["repo"] not in self.repos:
            return _not_found(handler, "RepoNotFound")
        file = (self.repos[match["repo"]] / match["file"]).resolve()
        if not file.is_file() or self.repos[match["repo"]].resolve() not in file.parents:
            return _not_found(handler, "EntryNotFound")
        size = file.stat().st_size
        start, end, status = 0, size - 1, 200
        if wanted and _RANGE.match(wanted):
            first, last = _RANGE.match(wanted).groups()
            start, end, status = int(first), min(int(last) if last else size - 1, size - 1), 206
        handler.send_response(status)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{hashlib.sha1(f"{file}{size}".encode()).hexdigest()}"')
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        handler.end_headers()
        if body:
            with open(file, "rb") as f:
                f.seek(start)
                data = f.read(end - start + 1)
            handler.wfile.write(data)
            record["sent"] = len(data)

    def sent_for(self, filename: str) -> int:
        """Bytes of `filename` that went out, over all requests."""
        return sum(r["sent"] for r in self.requests if r["path"].endswith("/" + filename))


def _not_found(handler: BaseHTTPRequestHandler, code: str) -> None:
    handler.send_response(404)
    handler.send_header("X-Error-Code", code)
    handler.send_header("Content-Length", "0")
    handler.end_headers()
