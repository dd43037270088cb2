"""Hub-style git repos and a real mirror (olah, offline) that serves them.

build_repo lays a repo out as olah's offline mirror expects it: pointer files in git, content under
.git/lfs/objects, as on the Hub. OlahMirror runs olah-cli over a folder of such repos, on the address
it is given (127.0.0.1 for the download tests, the bridge address for test hosts), stopped by its PID.
ModelMirror is the tiny model published that way on the bridge, for deploys to test hosts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.hosts import BRIDGE_ADDRESS
from tests.lab.model import tiny_model
from tests.lab.paths import CACHE_DIR
from tests.lab.processes import start_process, stop_process
from tests.lab.waiting import wait_until

ORG = "vlmkit-test"
MODEL_NAME = "tiny-mllama"
MIRROR_PORT = 8090  # inventory/test/group_vars/all.yml names it


class MirrorError(RuntimeError):
    """The mirror could not be started."""


@dataclass
class TestRepo:
    repo_id: str
    path: Path  # the git work tree
    sha: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # path -> content as served
    lfs: set[str] = field(default_factory=set)

    __test__ = False  # not a pytest test class

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()


def build_repo(
    mirrors: Path,
    name: str,
    files: dict[str, bytes],
    lfs: dict[str, bytes],
    served_instead: dict[str, bytes] | None = None,
) -> TestRepo:
    """A git repo ORG/name under `mirrors`: `files` in git, `lfs` as LFS objects.

    `served_instead` stores different bytes (same size) as the LFS object of a file, so the mirror
    serves content that does not match the sha256 the repo lists.
    """
    work = mirrors / "models" / ORG / name
    work.mkdir(parents=True)

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=work, check=True, capture_output=True, text=True).stdout

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


def offline_env(**extra: str) -> dict[str, str]:
    """This environment without hub settings and proxies: the traffic stays with the lab's own servers."""
    drop = ("HF_", "HUGGING", "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    env = {key: value for key, value in os.environ.items() if not key.startswith(drop)}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return {**env, **extra}


@dataclass
class OlahMirror:
    """olah-cli serving the repos under `mirrors` offline on address:port; ready once `ready_repo` answers."""

    mirrors: Path
    workdir: Path
    address: str = "127.0.0.1"
    port: int = MIRROR_PORT
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "olah.log"

    def start(self, ready_repo: TestRepo | None = None, timeout: float = 60) -> OlahMirror:
        """Start olah; wait until it serves `ready_repo` at its sha (or just answers, without one)."""
        olah_cli = shutil.which("olah-cli") or str(Path(sys.executable).with_name("olah-cli"))
        if not Path(olah_cli).exists():
            raise MirrorError("olah-cli is not installed: pip install olah")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "olah.toml").write_text(
            "[basic]\n"
            f'host = "{self.address}"\nport = {self.port}\n'
            f'repos-path = "{self.workdir / "repos"}"\n'
            'mirror-scheme = "http"\n'
            f'mirror-netloc = "{self.address}:{self.port}"\nmirror-lfs-netloc = "{self.address}:{self.port}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            "[accessibility]\noffline = true\n"
        )
        self.process = start_process(
            [olah_cli, "-c", "olah.toml"],
            self.log,
            cwd=self.workdir,
            start_new_session=True,
            env=offline_env(HF_HOME=str(self.workdir / "hf_home")),
        )
        try:
            wait_until(
                lambda: self._serves(ready_repo),
                timeout,
                lambda: f"olah on {self.url}:\n{self._log_tail()}",
                give_up=lambda: self.process.poll() is not None and "olah exited",
            )
        except AssertionError as exc:
            self.stop()
            raise MirrorError(str(exc)) from exc
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout=10, group=True)
        self.process = None

    def requests(self) -> list[str]:
        """Request lines olah logged so far, e.g. 'GET /org/name/resolve/sha/file HTTP/1.1'."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line.split('"')[1] for line in lines if line.count('"') >= 2 and "HTTP/1.1" in line]

    def file_gets(self, since: int = 0) -> list[str]:
        return [r.split()[1] for r in self.requests()[since:] if r.startswith("GET ") and "/resolve/" in r]

    def _serves(self, repo: TestRepo | None) -> bool:
        if repo is None:
            with urllib.request.urlopen(self.url, timeout=2):
                return True
        with urllib.request.urlopen(f"{self.url}/api/models/{repo.repo_id}/revision/main", timeout=2) as answer:
            return json.load(answer).get("sha") == repo.sha

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def publish_checkpoint(mirrors: Path, checkpoint: Path, name: str = MODEL_NAME) -> TestRepo:
    """A checkpoint folder as repo ORG/name; its weights become LFS objects, as on the Hub."""
    files, lfs = {}, {}
    for path in sorted(checkpoint.iterdir()):
        if path.is_file():
            (lfs if path.suffix == ".safetensors" else files)[path.name] = path.read_bytes()
    shutil.rmtree(mirrors / "models" / ORG / name, ignore_errors=True)
    return build_repo(mirrors, name, files, lfs)


@dataclass
class ModelMirror:
    """The tiny model on olah on the bridge address, where test hosts download it from while deploying."""

    directory: Path = CACHE_DIR / "mirror"
    address: str = str(BRIDGE_ADDRESS)
    port: int = MIRROR_PORT
    olah: OlahMirror | None = None
    sha: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def repo_id(self) -> str:
        return f"{ORG}/{MODEL_NAME}"

    @property
    def process(self) -> subprocess.Popen | None:
        return self.olah.process if self.olah is not None else None

    def start(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        mirrors = self.directory / "mirrors"
        mirrors.mkdir(parents=True)
        repo = publish_checkpoint(mirrors, tiny_model(CACHE_DIR / MODEL_NAME))
        self.sha = repo.sha
        self.olah = OlahMirror(mirrors, self.directory, self.address, self.port).start(ready_repo=repo)

    def stop(self) -> None:
        if self.olah is not None:
            self.olah.stop()
            self.olah = None
