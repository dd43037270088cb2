"""What the fleet tests drive: the balancer's view, a bounded client loop, and builds of other versions.

Traffic stays on this machine: every request goes to the test fleet's balancer or hosts on the
bridge 10.213.0.0/24.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.hosts import TestHost
from tests.lab.paths import REPO_ROOT

INVENTORY = REPO_ROOT / "inventory" / "test-fleet" / "hosts.yml"
INFERENCE_HOSTS = (("vlmkit-fleet-1", 31), ("vlmkit-fleet-2", 32))  # 10.213.0.41, .42
BALANCER_HOST = ("vlmkit-fleet-3", 33)  # 10.213.0.43
PORT = 8000  # the service's and the balancer's (role defaults the inventory keeps)
BACKEND = "vlmkit"
ADMIN_SOCKET = "/run/haproxy/admin.sock"
BACKEND_HEADER = "X-Vlmkit-Backend"  # inventory/test-fleet sets load_balancer_backend_header
CHECK_INTERVAL_S, CHECK_FALL = 1, 2  # inventory/test-fleet's load_balancer_check_interval, role's fall

# A 16x16 red PNG: small enough that HAProxy can replay a request to another host.
TINY_PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAGklEQVR42mM8oaHBQApgYiARjGoY1TB0NAAAjC0BOJDndDkAAAAASUVORK5CYII="


def http_json(url: str, timeout: float = 10, headers: dict | None = None) -> tuple[int, dict]:
    """GET a JSON document; (status, body), with status 0 when nothing answered."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.load(error)
        except ValueError:
            return error.code, {}
    except OSError:
        return 0, {}


def chat_body(model: str, stream: bool = False, max_tokens: int = 2) -> bytes:
    """A greedy answer of exactly `max_tokens` tokens: a sampled one may end at once."""
    return json.dumps(
        {
            "model": model,
            "max_tokens": max_tokens,
            "min_tokens": max_tokens,
            "temperature": 0,
            "stream": stream,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": TINY_PNG}},
                        {"type": "text", "text": "What colour is this image?"},
                    ],
                }
            ],
        }
    ).encode()


# --- the balancer ----------------------------------------------------------------------------------


@dataclass
class Balancer:
    host: TestHost

    @property
    def url(self) -> str:
        return f"http://{self.host.ip}:{PORT}"

    def servers(self) -> dict[str, dict]:
        """`show stat` for the fleet's backend, read on the balancer through its admin socket."""
        text = self.host.ssh(f"echo 'show stat' | socat stdio {ADMIN_SOCKET}", timeout=30).stdout.lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def status(self, server: str) -> str:
        return self.servers()[server]["status"]

    def sessions(self, server: str) -> int:
        return int(self.servers()[server]["stot"] or 0)

    def wait_for(self, server: str, predicate, timeout: float, poll: float = 0.1) -> float:
        """Seconds until the server's status satisfies predicate (AssertionError after timeout)."""
        started = time.monotonic()
        status = ""
        while time.monotonic() - started < timeout:
            status = self.status(server)
            if predicate(status):
                return time.monotonic() - started
            time.sleep(poll)
        raise AssertionError(f"{server} stayed {status!r} in the balancer for {timeout} s")


# --- a bounded client loop -------------------------------------------------------------------------


@dataclass
class Result:
    started: float
    status: int
    backend: str
    error: str = ""


@dataclass
class RequestLoop:
    """Chat completions through the balancer from a few workers, each on a keep-alive connection,
    until stopped, or until max_requests or max_seconds: bounded in count and time."""

    url: str
    api_key: str = field(repr=False)
    model: str
    workers: int = 2
    pause_s: float = 0.05
    max_requests: int = 4000
    max_seconds: float = 900
    results: list[Result] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        match = re.match(r"http://([^:/]+):(\d+)", self.url)
        self._address, self._port = match.group(1), int(match.group(2))

    def __enter__(self) -> RequestLoop:  # noqa: PYI034 (a final class; no subclasses)
        self._deadline = time.monotonic() + self.max_seconds
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"request-loop-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)

    def _budget_left(self) -> bool:
        with self._lock:
            return len(self.results) < self.max_requests and time.monotonic() < self._deadline

    def _work(self) -> None:
        body = chat_body(self.model)
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        connection = None
        while not self._stop.is_set() and self._budget_left():
            started = time.monotonic()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(self._address, self._port, timeout=120)
                connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
                answer = connection.getresponse()
                payload = answer.read()
                result = Result(started, answer.status, answer.getheader(BACKEND_HEADER, ""))
                if answer.status != 200:
                    result.error = payload[:300].decode(errors="replace")
                elif not isinstance(json.loads(payload)["choices"][0]["message"]["content"], str):
                    result.error = "no answer in the body"  # (the tiny random model may answer "")
                if answer.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                result = Result(started, 0, "", f"{type(exc).__name__}: {exc}")
                if connection is not None:
                    connection.close()
                connection = None
            with self._lock:
                self.results.append(result)
            time.sleep(self.pause_s)
        if connection is not None:
            connection.close()

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status != 200 or r.error]

    def backends(self, since: float = 0.0, until: float = float("inf")) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.results:
            if since <= result.started <= until:
                counts[result.backend] = counts.get(result.backend, 0) + 1
        return counts

    def summary(self) -> str:
        failed = self.failed
        text = f"{len(self.results)} requests, {len(failed)} failed, answered by {self.backends()}"
        if failed:
            text += "; first failures: " + "; ".join(f"{r.status} {r.error}" for r in failed[:5])
        return text


# --- another vlmkit build --------------------------------------------------------------------------


def current_version() -> str:
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.MULTILINE).group(1)


def source_with_version(destination: Path, version: str) -> Path:
    """A copy of this checkout's files (those git sees) with vlmkit's version set to `version`.

    The copy is its own (empty) git repository, so python_env's wheel build, which lists files with
    git, sees exactly these files. Deploy it with -e python_env_source_dir=<it>.
    """
    listing = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode()  # fmt: skip
    shutil.rmtree(destination, ignore_errors=True)
    for name in sorted({n for n in listing.split("\0") if n}):
        source = REPO_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for name, key in (("pyproject.toml", "version"), ("inference/__init__.py", "__version__")):
        path = destination / name
        text, count = re.subn(
            rf'^{key}\s*=\s*"[^"]+"', f'{key} = "{version}"', path.read_text(), count=1, flags=re.MULTILINE
        )
        assert count == 1, f"no version line in {name}"
        path.write_text(text)
    subprocess.run(
        ["git", "-c", "init.defaultBranch=main", "init", "-q", str(destination)], check=True, capture_output=True
    )
    return destination
