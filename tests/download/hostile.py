"""A stand-in for a hostile mirror: a loopback HTTP server that answers the hub API with a listing we write.

olah serves what a git repository holds, and git refuses the paths and ids a hostile mirror would
send (`../x`, ids that are not hashes). This server answers `/api/models/{repo}/revision/{rev}`
and `/api/models/{repo}/tree/{sha}` with any listing, and serves file bytes at
`/{repo}/resolve/{sha}/{path}`; everything else is a 404.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

SHA = "0123456789abcdef0123456789abcdef01234567"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def plain_entry(path: str, data: bytes, **overrides) -> dict:
    """A listing entry for a small (non-LFS) file, with any field overridden."""
    return {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data), **overrides}


def lfs_entry(path: str, data: bytes, *, sha256: str | None = None) -> dict:
    """A listing entry for an LFS file; `sha256` replaces the content id the listing claims."""
    return {
        "type": "file",
        "path": path,
        "size": 134,
        "oid": git_blob_id(b"pointer " + data),
        "lfs": {"oid": sha256 or hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134},
    }


class HostileMirror:
    def __init__(self, repo: str, listing: list[dict], files: dict[str, bytes] | None = None) -> None:
        self.repo, self.listing, self.files = repo, listing, files or {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-mirror", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HostileMirror:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def _answer(self, path: str) -> tuple[int, bytes]:
        api = f"/api/models/{self.repo}/"
        if path.startswith(api + "revision/"):
            siblings = [{"rfilename": entry["path"]} for entry in self.listing]
            return 200, json.dumps({"id": self.repo, "sha": SHA, "siblings": siblings}).encode()
        if path.startswith(api + "tree/"):
            return 200, json.dumps(self.listing).encode()
        resolve = f"/{self.repo}/resolve/{SHA}/"
        if path.startswith(resolve) and path[len(resolve) :] in self.files:
            return 200, self.files[path[len(resolve) :]]
        return 404, b'{"error": "not found"}'

    def _handler(self):
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                mirror.requests.append(self.path)
                status, body = mirror._answer(unquote(urlsplit(self.path).path))
                self.send_response(status)
                self.send_header(
                    "Content-Type",
                    "application/json" if status != 200 or "/api/" in self.path else "application/octet-stream",
                )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        return Handler
