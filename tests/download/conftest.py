"""Fixtures for `vlmkit download`: a test model in a git repo, served by a real mirror (olah).

Everything listens on 127.0.0.1 only. HF_HOME points into the test's tmp dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.download.relay import Relay

REPO_ROOT = Path(__file__).resolve().parents[2]
ORG = "vlmkit-test"
SHARD = "model-00001-of-00001.safetensors"
SHARD_BYTES = 40 * 1024 * 1024


@dataclass
class TestRepo:
    repo_id: str
    path: Path  # the git work tree
    sha: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # path -> content as served
    lfs: set[str] = field(default_factory=set)

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()


def safetensors_like(size: int, seed: int) -> bytes:
    """Exactly `size` bytes shaped like safetensors (header length, JSON header, raw bytes), random content."""
    header_len = 128
    body_len = size - 8 - header_len
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "weight": {"dtype": "U8", "shape": [body_len], "data_offsets": [0, body_len]}})
    data = struct.pack("<Q", header_len) + header.ljust(header_len).encode() + random.Random(seed).randbytes(body_len)
    assert len(data) == size
    return data


def build_repo(mirrors: Path, name: str, files: dict[str, bytes], lfs: dict[str, bytes],
               served_instead: dict[str, bytes] | None = None) -> TestRepo:
    """A git repo as olah's offline mirror expects it: pointer files in git, content in .git/lfs/objects.

    `served_instead` stores different bytes (same size) as the LFS object of a file, so the mirror
    serves content that does not match the sha256 the repo lists.
    """
    work = mirrors / "models" / ORG / name
    work.mkdir(parents=True)
    git = lambda *a: subprocess.run(["git", *a], cwd=work, check=True, capture_output=True, text=True).stdout  # noqa: E731
    git("init", "-q", "-b", "main")
    repo = TestRepo(repo_id=f"{ORG}/{name}", path=work)
    for rel, data in files.items():
        (work / rel).write_bytes(data)
        repo.files[rel] = data
    for rel, data in lfs.items():
        oid = hashlib.sha256(data).hexdigest()
        stored = (served_instead or {}).get(rel, data)
        obj = work / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(stored)
        (work / rel).write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n")
        repo.files[rel] = data
        repo.lfs.add(rel)
    gitattributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    (work / ".gitattributes").write_bytes(gitattributes)
    repo.files[".gitattributes"] = gitattributes
    git("add", "-A")
    git("-c", "user.name=vlmkit tests", "-c", "user.email=tests@vlmkit.invalid", "commit", "-q", "-m", "test model")
    repo.sha = git("rev-parse", "HEAD").strip()
    return repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mirror_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mirrors")


@pytest.fixture(scope="session")
def test_repo(mirror_dir) -> TestRepo:
    """The test model: a config, a few small json files and a 40 MiB LFS shard."""
    shard = safetensors_like(SHARD_BYTES, seed=3)
    small = {
        "config.json": json.dumps({"model_type": "mllama", "architectures": ["MllamaForConditionalGeneration"]}).encode(),
        "generation_config.json": json.dumps({"temperature": 0.6, "top_p": 0.9}).encode(),
        "tokenizer_config.json": json.dumps({"model_max_length": 131072}).encode(),
        "special_tokens_map.json": json.dumps({"eos_token": "<|eot_id|>"}).encode(),
        "model.safetensors.index.json": json.dumps({"metadata": {"total_size": SHARD_BYTES},
                                                     "weight_map": {"weight": SHARD}}).encode(),
    }
    return build_repo(mirror_dir, "tiny-vision", small, {SHARD: shard})


@pytest.fixture(scope="session")
def corrupt_repo(mirror_dir) -> TestRepo:
    """A repo whose mirror copy of the LFS file differs from the sha256 the repo lists."""
    good = random.Random(5).randbytes(1024 * 1024)
    bad = bytearray(good)
    bad[1000] ^= 0xFF
    return build_repo(mirror_dir, "corrupt", {"config.json": b"{}"}, {"model.safetensors": good},
                      served_instead={"model.safetensors": bytes(bad)})


@dataclass
class Olah:
    url: str
    port: int
    log: Path

    def requests(self) -> list[str]:
        """Request lines olah logged so far, e.g. 'GET /org/name/resolve/sha/file HTTP/1.1'."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line.split('"')[1] for line in lines if line.count('"') >= 2 and "HTTP/1.1" in line]

    def file_gets(self, since: int = 0) -> list[str]:
        return [r.split()[1] for r in self.requests()[since:] if r.startswith("GET ") and "/resolve/" in r]


@pytest.fixture(scope="session")
def olah(tmp_path_factory, mirror_dir, test_repo, corrupt_repo):
    """olah-cli serving the test repos offline on 127.0.0.1; killed by PID at teardown."""
    olah_cli = shutil.which("olah-cli") or str(Path(sys.executable).with_name("olah-cli"))
    if not Path(olah_cli).exists():
        pytest.fail("olah-cli is not installed: pip install olah")
    work = tmp_path_factory.mktemp("olah")
    port = free_port()
    (work / "olah.toml").write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        f'repos-path = "{work / "repos"}"\n'
        'mirror-scheme = "http"\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        f'mirrors-path = ["{mirror_dir}"]\n'
        "[accessibility]\noffline = true\n"
    )
    log = work / "olah.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([olah_cli, "-c", "olah.toml"], cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                env={**_clean_env(), "HF_HOME": str(work / "hf_home")}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/models/{test_repo.repo_id}/revision/main", timeout=2) as r:
                if json.load(r).get("sha") == test_repo.sha:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"olah did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    try:
        yield Olah(url=url, port=port, log=log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def relay(olah):
    r = Relay(olah.port).start()
    yield r
    r.stop()


def _clean_env() -> dict[str, str]:
    """The environment without hub settings and proxies: all test traffic stays on 127.0.0.1."""
    drop = ("HF_", "HUGGING", "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


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
        self.env = _clean_env()
        self.env["HF_HOME"] = str(hf_home)
        self.env["PYTHONPATH"] = str(REPO_ROOT)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "inference.cli", "download", *args]

    def __call__(self, *args: str, timeout: float = 90, env: dict[str, str] | None = None) -> Run:
        start = time.monotonic()
        proc = subprocess.run(self.command(*args), cwd=REPO_ROOT, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)
        return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.command(*args), cwd=REPO_ROOT, env={**self.env, **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
    listing = subprocess.run(["git", "ls-tree", "-r", "-l", "HEAD"], cwd=test_repo.path, check=True,
                             capture_output=True, text=True).stdout
    for line in listing.splitlines():
        meta, path = line.split("\t", 1)
        _mode, _kind, blob_id, pointer_size = meta.split()
        entry = {"type": "file", "oid": blob_id, "size": len(test_repo.files[path]), "path": path}
        if path in test_repo.lfs:
            entry["lfs"] = {"oid": test_repo.sha256(path), "size": len(test_repo.files[path]),
                            "pointerSize": int(pointer_size)}
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
    proc = subprocess.Popen([nginx, "-p", str(work), "-e", str(work / "error.log"), "-c", str(work / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/models/{repo}/revision/main", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"nginx did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.1)
    (work / "access.log").write_text("")  # forget the readiness probe
    try:
        yield RangeServer(url=url, port=port, access_log=work / "access.log")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
