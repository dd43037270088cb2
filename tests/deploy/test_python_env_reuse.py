"""python_env's reuse of a CUDA torch already on the host: the install set and the environment check.

The deploy itself ran on the lent H200 (docs/lab/gpu-host.md). Here, without a GPU, the two scripts the role
runs are checked on real environments: a base made of packages copied, dist-info and all, from this
test run's own site-packages (torch's place taken by small packages), and a venv layered on it with the
same .pth file the role writes.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

ROLE_FILES = Path(__file__).resolve().parents[2] / "roles" / "python_env" / "files"
LOCK = Path(__file__).resolve().parents[2] / "requirements" / "gpu.txt"
DEFAULT_REUSED = yaml.safe_load((ROLE_FILES.parent / "defaults" / "main.yml").read_text())["python_env_reused_packages"]


def test_install_set_is_the_lock_less_torchs_family(tmp_path):
    out = tmp_path / "install.lock"
    result = subprocess.run(
        [sys.executable, ROLE_FILES / "install_lock.py", LOCK, out, *(f"--reuse={glob}" for glob in DEFAULT_REUSED)],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(result.stdout)
    names = {line.split("==")[0].lower() for line in out.read_text().splitlines()}
    assert "torch" in report["reused"] and "triton" in report["reused"] and "nvidia-cudnn-cu13" in report["reused"]
    assert not {"torch", "torchvision", "triton", "xformers"} & names
    assert not any(name.startswith(("nvidia-", "nvidia_", "cuda-")) for name in names)
    assert {"transformers", "bitsandbytes", "unsloth", "fastapi"} <= names
    again = subprocess.run(
        [sys.executable, ROLE_FILES / "install_lock.py", LOCK, out, *(f"--reuse={glob}" for glob in DEFAULT_REUSED)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(again.stdout)["changed"] is False, "a second run must not rewrite the file (idempotence)"


def copy_distribution(name: str, target: Path) -> str:
    """Copy an installed distribution (its files and dist-info) into target; returns its version."""
    dist = metadata.distribution(name)
    for file in dist.files:
        source = Path(str(dist.locate_file(file)))
        if source.is_file() and ".." not in file.parts:
            destination = target / file
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(source.read_bytes())
    return dist.version


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    """A base site-packages holding idna and certifi, and a venv layered on it as the role does."""
    root = tmp_path_factory.mktemp("reuse")
    base = root / "base-site"
    versions = {name: copy_distribution(name, base) for name in ("idna", "certifi")}
    env = root / "venv"
    venv.create(env, with_pip=False)
    purelib = subprocess.run(
        [env / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "vlmkit-reuse.pth").write_text(f"{base}\n")
    return env, base, versions


def check(env: Path, base: Path, lock_lines: list[str], reused: list[str]) -> subprocess.CompletedProcess:
    lock = env / "lock.txt"
    lock.write_text("".join(f"{line}\n" for line in lock_lines))
    record = env / "vlmkit-reuse.json"
    record.write_text(json.dumps({"base": str(base), "site_packages": [str(base)], "packages": reused, "lock": {}}))
    return subprocess.run(
        [env / "bin" / "python", ROLE_FILES / "check_env.py", "--lock", lock, "--reuse", record],
        capture_output=True,
        text=True,
    )


def test_reused_package_at_another_version_is_reported_not_refused(layered):
    env, base, versions = layered
    result = check(env, base, [f"idna=={versions['idna']}.post99", f"certifi=={versions['certifi']}"], reused=["idna"])
    # vlmkit itself is not in this stand-in venv; everything else must pass.
    assert result.stderr.strip().splitlines()[1:] == ["  vlmkit is not installed"], result.stderr


def test_pin_the_base_meets_at_the_locks_version_counts_as_installed(layered):
    env, base, versions = layered
    result = check(env, base, [f"certifi=={versions['certifi']}"], reused=[])
    assert "certifi" not in result.stderr, result.stderr


def test_pin_the_base_has_at_another_version_is_a_drift(layered):
    env, base, versions = layered
    result = check(env, base, [f"certifi=={versions['certifi']}.post99"], reused=[])
    assert f"certifi is {versions['certifi']}, the lock says {versions['certifi']}.post99" in result.stderr


def test_reused_torch_missing_from_the_base_is_refused(layered):
    env, base, _ = layered
    result = check(env, base, ["torch==2.13.0", "xformers==0.0.35"], reused=["torch", "xformers"])
    assert result.returncode == 1
    assert "torch (reused) is missing" in result.stderr and "xformers" not in result.stderr
