"""Print, as JSON, what is deployed on this host; run with the service environment's interpreter.

Usage: collect_manifest.py --profile P --env DIR --model-dir DIR
Everything is read from the host as it is now; nothing time-dependent is included, so an unchanged
host gives the same bytes (the deploy stays idempotent).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path


def os_release() -> dict:
    fields = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value.strip().strip('"')
    return {key.lower(): fields.get(key) for key in ("ID", "VERSION_ID", "PRETTY_NAME")}


def run(*args: str) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    result = subprocess.run(args, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def nvidia() -> dict:
    query = run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    gpus = [
        dict(zip(("name", "driver", "memory"), (p.strip() for p in line.split(","))))
        for line in (query or "").splitlines()
        if line
    ]
    toolkit = None
    version_json = Path("/usr/local/cuda/version.json")
    if version_json.exists():
        toolkit = json.loads(version_json.read_text()).get("cuda", {}).get("version")
    else:
        nvcc = run("nvcc", "--version") or ""
        match = re.search(r"release ([\d.]+)", nvcc)
        toolkit = match.group(1) if match else None
    return {
        "driver": gpus[0]["driver"] if gpus else None,
        "gpus": [{"name": g["name"], "memory": g.get("memory")} for g in gpus],
        "cuda_toolkit": toolkit,
        "cudnn_installed": installed_cudnn(),
    }


def cudnn_headers(root: Path = Path("/")) -> list[Path]:
    """Where cuDNN's version header lies: in the CUDA toolkit, in the cudnn role's tarball folders
    (/usr/local/cudnn-VERSION, newest first), or where NVIDIA's and Debian's packages put it."""
    tarballs = sorted(
        root.glob("usr/local/cudnn-*/include/cudnn_version.h"),
        key=lambda path: [int(n) for n in re.findall(r"\d+", path.parts[-3])],
        reverse=True,
    )
    return [
        root / "usr/local/cuda/include/cudnn_version.h",
        *tarballs,
        root / "usr/include/cudnn_version.h",
        *sorted(root.glob("usr/include/*-linux-gnu/cudnn_version_v*.h"), reverse=True),
    ]


def installed_cudnn(root: Path = Path("/")) -> str | None:
    for header in cudnn_headers(root):
        if header.exists():
            parts = dict(re.findall(r"#define CUDNN_(MAJOR|MINOR|PATCHLEVEL)\s+(\d+)", header.read_text()))
            return "{MAJOR}.{MINOR}.{PATCHLEVEL}".format(**parts) if len(parts) == 3 else None
    return None


def torch_info() -> dict:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - report, don't fail: the manifest records what is there
        return {"error": f"{type(exc).__name__}: {exc}"}
    cuda = torch.cuda.is_available()
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_available": cuda,
    }


def model(model_dir: Path) -> dict:
    marker = model_dir / ".cache" / "vlmkit" / "complete.json"
    if not marker.exists():
        if (model_dir / "config.json").exists():  # put there by hand (hf_model_download: false)
            files = sorted(path for path in model_dir.iterdir() if path.is_file())
            return {
                "path": str(model_dir),
                "complete": False,
                "source": "on_disk",
                "files": len(files),
                "bytes": sum(path.stat().st_size for path in files),
            }
        return {"path": str(model_dir), "complete": False}
    data = json.loads(marker.read_text())
    return {
        "path": str(model_dir),
        "complete": True,
        "repo": data.get("repo"),
        "revision": data.get("revision"),
        "sha": data.get("sha"),
        "files": len(data.get("files", [])),
        "bytes": data.get("bytes"),
    }


def reuse(env: Path, lock: Path) -> dict | None:
    """What python_env reused from a base environment (vlmkit-reuse.json), with versions seen now."""
    record = env / "vlmkit-reuse.json"
    if not record.exists():
        return None
    data = json.loads(record.read_text())
    roots = [Path(path).resolve() for path in data["site_packages"]]
    seen = {}
    for dist in metadata.distributions():
        location = Path(str(dist.locate_file(""))).resolve()
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if any(location == root or root in location.parents for root in roots) and name in data["lock"]:
            seen.setdefault(name, dist.version)
    return {
        "base": data["base"],
        "packages": {
            name: {"installed": seen.get(name), "lock": version} for name, version in sorted(data["lock"].items())
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", required=True)
    parser.add_argument("--env", required=True, type=Path)
    parser.add_argument("--model-dir", required=True, type=Path)
    args = parser.parse_args()
    packages = {dist.metadata["Name"]: dist.version for dist in metadata.distributions()}
    lock = args.env / "vlmkit-requirements.lock"
    wheel_sha = args.env / "vlmkit-wheel.sha256"
    manifest = {
        "profile": args.profile,
        "os": os_release(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "nvidia": nvidia(),
        "torch": torch_info(),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "environment": {
            "path": str(args.env),
            "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else None,
            "packages": dict(sorted(packages.items(), key=lambda item: item[0].lower())),
            "reused": reuse(args.env, lock),
        },
        "vlmkit": {
            "version": packages.get("vlmkit"),
            "wheel_sha256": wheel_sha.read_text().strip() if wheel_sha.exists() else None,
        },
        "model": model(args.model_dir),
    }
    print(json.dumps(manifest, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
