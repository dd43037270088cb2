"""The deploy manifest's cuDNN lookup finds the version wherever the cudnn role or a package put it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "collect_manifest", REPO / "roles" / "deploy_manifest" / "files" / "collect_manifest.py"
)
collect_manifest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(collect_manifest)


def write_header(root: Path, relative: str, major: int, minor: int, patch: int) -> None:
    header = root / relative
    header.parent.mkdir(parents=True, exist_ok=True)
    header.write_text(f"#define CUDNN_MAJOR {major}\n#define CUDNN_MINOR {minor}\n#define CUDNN_PATCHLEVEL {patch}\n")


def test_no_cudnn_gives_none(tmp_path):
    assert collect_manifest.installed_cudnn(tmp_path) is None


def test_the_cudnn_roles_tarball_folder_is_found_newest_first(tmp_path):
    write_header(tmp_path, "usr/local/cudnn-9.1.0.70/include/cudnn_version.h", 9, 1, 0)
    write_header(tmp_path, "usr/local/cudnn-9.10.2.21/include/cudnn_version.h", 9, 10, 2)
    assert collect_manifest.installed_cudnn(tmp_path) == "9.10.2"


def test_the_toolkits_copy_comes_first_and_debian_packages_last(tmp_path):
    write_header(tmp_path, "usr/include/x86_64-linux-gnu/cudnn_version_v9.h", 9, 14, 0)
    assert collect_manifest.installed_cudnn(tmp_path) == "9.14.0"
    write_header(tmp_path, "usr/local/cuda/include/cudnn_version.h", 9, 1, 0)
    assert collect_manifest.installed_cudnn(tmp_path) == "9.1.0"
