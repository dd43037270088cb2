"""Fixtures for `vlmkit download`: a test model in a git repo, served by a real mirror (olah).

Everything listens on 127.0.0.1 only. HF_HOME points into the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.download.model_repo import SHARD, SHARD_BYTES, safetensors_like, small_files
from tests.download.relay import Relay
from tests.lab.olah_mirror import MirrorError, OlahMirror, TestRepo, build_repo, offline_env
from tests.lab.paths import REPO_ROOT
from tests.lab.processes import stop_process
from tests.lab.server import free_port
from tests.lab.waiting import wait_until


@pytest.fixture(scope="session")
def mirror_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mirrors")


@pytest.fixture(scope="session")
def test_repo(mirror_dir) -> TestRepo:
    """The test model: a config, a few small json files and a 40 MiB LFS shard."""
    return build_repo(mirror_dir, "tiny-vision", small_files(), {SHARD: safetensors_like(SHARD_BYTES, seed=3)})


@pytest.fixture(scope="session")
def corrupt_repo(mirror_dir) -> TestRepo:
    """A repo whose mirror copy of the LFS file differs from the sha256 the repo lists."""
    good = random.Random(5).randbytes(1024 * 1024)
    bad = bytearray(good)
    bad[1000] ^= 0xFF
    return build_repo(
        mirror_dir,
        "corrupt",
        {"config.json": b"{}"},
        {"model.safetensors": good},
        served_instead={"model.safetensors": bytes(bad)},
    )


@pytest.fixture(scope="session")
def olah(tmp_path_factory, mirror_dir, test_repo, corrupt_repo):
    """olah-cli serving the test repos offline on 127.0.0.1; stopped by PID at teardown."""
    mirror = OlahMirror(mirror_dir, tmp_path_factory.mktemp("olah"), port=free_port())
    try:
        mirror.start(ready_repo=test_repo)
    except MirrorError as exc:
        pytest.fail(str(exc))
    try:
        yield mirror
    finally:
        mirror.stop()


@pytest.fixture
def relay(olah):
    r = Relay(olah.port).start()
    yield r
    r.stop()


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def result(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


class Vlmkit:
    """Runs `vlmkit download` as a separate process, the way systemd and Ansible run it."""

    def __init__(self, hf_home: Path) -> None:
        self.env = offline_env()
        self.env["HF_HOME"] = str(hf_home)
        self.env["PYTHONPATH"] = str(REPO_ROOT)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "inference.cli", "download", *args]

    def __call__(self, *args: str, timeout: float = 90, env: dict[str, str] | None = None) -> Run:
        start = time.monotonic()
        proc = subprocess.run(
            self.command(*args),
            cwd=REPO_ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            self.command(*args),
            cwd=REPO_ROOT,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def vlmkit(tmp_path) -> Vlmkit:
    return Vlmkit(tmp_path / "hf_home")


@dataclass
class RangeServer:
    url: str
    port: int
    access_log: Path

    def file_requests(self) -> list[dict[str, str]]:
        """One dict per logged GET of a file: uri, status, range (the Range header sent), length (Content-Length)."""
        out = []
        for line in self.access_log.read_text().splitlines():
            fields = dict(part.split("=", 1) for part in line.split("\t"))
            if "/resolve/" in fields["uri"]:
                out.append(fields)
        return out


@pytest.fixture
def range_server(tmp_path, test_repo):
    """nginx (Debian package nginx-light) serving the test repo's files and hub API answers as static files.

    Used where a behaviour needs a server that honours Range requests (true resume): olah answers
    a Range request with the whole file. nginx serves byte ranges natively; `limit_rate` slows it
    down so a test can kill a download mid-file.
    """
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light): needed as the Range-capable server")
    root = tmp_path / "nginx-root"
    repo = test_repo.repo_id
    api = root / "api" / "models" / repo
    (api / "revision").mkdir(parents=True)
    (api / "tree").mkdir(parents=True)
    info = {"id": repo, "sha": test_repo.sha, "siblings": [{"rfilename": p} for p in sorted(test_repo.files)]}
    (api / "revision" / "main").write_text(json.dumps(info))
    tree = []
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "-l", "HEAD"], cwd=test_repo.path, check=True, capture_output=True, text=True
    ).stdout
    for line in listing.splitlines():
        meta, path = line.split("\t", 1)
        _mode, _kind, blob_id, pointer_size = meta.split()
        entry = {"type": "file", "oid": blob_id, "size": len(test_repo.files[path]), "path": path}
        if path in test_repo.lfs:
            entry["lfs"] = {
                "oid": test_repo.sha256(path),
                "size": len(test_repo.files[path]),
                "pointerSize": int(pointer_size),
            }
        tree.append(entry)
    (api / "tree" / test_repo.sha).write_text(json.dumps(tree))
    for path, data in test_repo.files.items():
        target = root / repo / "resolve" / test_repo.sha / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    port = free_port()
    work = tmp_path / "nginx"
    work.mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""
    (work / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        "  log_format ranges 'uri=$uri\\tstatus=$status\\trange=$http_range\\tlength=$sent_http_content_length';\n"
        f"  access_log {work}/access.log ranges;\n"
        f"  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;\n"
        f"  uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;\n"
        "  default_type application/json;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; limit_rate 8m; }}\n"
        "}\n"
    )
    proc = subprocess.Popen(
        [nginx, "-p", str(work), "-e", str(work / "error.log"), "-c", str(work / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        urllib.request.urlopen(f"{url}/api/models/{repo}/revision/main", timeout=2).close()
        return True

    try:
        wait_until(
            answers,
            20,
            "nginx to start",
            give_up=lambda: proc.poll() is not None and f"nginx exited: {proc.stderr.read() if proc.stderr else ''}",
        )
    except AssertionError as exc:
        stop_process(proc, timeout=10)
        pytest.fail(str(exc))
    (work / "access.log").write_text("")  # forget the readiness probe
    try:
        yield RangeServer(url=url, port=port, access_log=work / "access.log")
    finally:
        stop_process(proc, timeout=10)
