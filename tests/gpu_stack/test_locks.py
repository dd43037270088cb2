"""The gpu profile's locks install on every supported Ubuntu release: each pinned wheel runs on glibc
2.35 (Ubuntu 22.04, the oldest supported) and CPython 3.12, read from the wheel names lock.py recorded
beside each lock (requirements/PROFILE.wheels). No network: the names carry the platform tags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements"
OLDEST_GLIBC = (2, 35)
PYTHON = "cp312"
LEGACY_MANYLINUX = {"manylinux1_x86_64": (2, 5), "manylinux2010_x86_64": (2, 12), "manylinux2014_x86_64": (2, 17)}


def runs_on_oldest_glibc(platform: str) -> bool:
    if platform == "any":
        return True
    if platform in LEGACY_MANYLINUX:
        return LEGACY_MANYLINUX[platform] <= OLDEST_GLIBC
    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", platform)
    return bool(match) and (int(match.group(1)), int(match.group(2))) <= OLDEST_GLIBC


def runs_on_python(interpreter: str, abi: str) -> bool:
    """pip's rule for CPython 3.12: cp312, cp3X-abi3 and py3X (X <= 12), py3."""
    if interpreter in ("py3", PYTHON):
        return True
    pure = re.fullmatch(r"py3(\d+)", interpreter)
    if pure:
        return abi == "none" and int(pure.group(1)) <= 12
    minor = re.fullmatch(r"cp3(\d+)", interpreter)
    return abi == "abi3" and bool(minor) and int(minor.group(1)) <= 12


def pins(lock: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in lock.read_text().splitlines()]
    return {canonicalize_name(name): version for name, _, version in (line.partition("==") for line in lines if line)}


@pytest.mark.parametrize("profile", ["gpu", "gpu-cu12"])
def test_every_pinned_wheel_of_the_lock_runs_on_glibc_2_35_and_python_3_12(profile):
    lock, wheels = REQUIREMENTS / f"{profile}.txt", REQUIREMENTS / f"{profile}.wheels"
    assert wheels.is_file(), (
        f"{wheels.name} is missing: regenerate the lock with requirements/lock.py (see {profile}.in)"
    )
    assert "manylinux_2_35_x86_64" in lock.read_text().splitlines()[3], (
        "the lock was not resolved for glibc 2.35 (Ubuntu 22.04)"
    )
    chosen = {}
    for filename in (line.strip() for line in wheels.read_text().splitlines()):
        if not filename or filename.startswith("#"):
            continue
        name, version, _build, tags = parse_wheel_filename(filename)
        chosen[canonicalize_name(name)] = (str(version), filename, tags)

    pinned = pins(lock)
    assert set(chosen) == set(pinned), f"lock and wheel list differ: {sorted(set(chosen) ^ set(pinned))}"
    wrong_version = {name: (pinned[name], chosen[name][0]) for name in pinned if chosen[name][0] != pinned[name]}
    assert not wrong_version, wrong_version
    unfit = [
        filename
        for _version, filename, tags in chosen.values()
        if not any(runs_on_oldest_glibc(tag.platform) and runs_on_python(tag.interpreter, tag.abi) for tag in tags)
    ]
    assert not unfit, f"wheels that need a newer glibc than 2.35 or another Python than 3.12: {unfit}"


def test_the_cuda_12_lock_is_a_cuda_12_torch_build_and_the_default_a_cuda_13_one():
    """The driver floor follows these pins (CUDA 12 -> 525, CUDA 13 -> 580): each lock must be the build it says."""
    assert pins(REQUIREMENTS / "gpu-cu12.txt")["nvidia-cuda-runtime-cu12"].startswith("12.")
    assert pins(REQUIREMENTS / "gpu.txt")["nvidia-cuda-runtime"].startswith("13.")
