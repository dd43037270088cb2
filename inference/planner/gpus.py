"""The GPUs a plan is for: given as sizes (`80GB`, `2x80GB`, `80GB,48GB`) or read from nvidia-smi.

A size in GB is read the way GPUs are labelled: an "80GB" H100 has 80 GiB of memory (of which
the driver reports 81559 MiB). Give MiB (`81559MiB`) for an exact figure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from inference.planner.memory import GiB

MiB = 1024**2
_SIZE = re.compile(r"^\s*(?:(\d+)\s*[x×*]\s*)?(\d+(?:\.\d+)?)\s*(gib|gb|g|mib|mb|m|tib|tb|t)?\s*$", re.IGNORECASE)
_UNITS = {
    "g": GiB,
    "gb": GiB,
    "gib": GiB,
    "m": MiB,
    "mb": MiB,
    "mib": MiB,
    "t": 1024 * GiB,
    "tb": 1024 * GiB,
    "tib": 1024 * GiB,
}
NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]


class GpuError(Exception):
    """No usable GPU description (bad size, no nvidia-smi, no GPU)."""


@dataclass(frozen=True)
class Gpu:
    name: str
    memory: int  # bytes

    @property
    def label(self) -> str:
        if self.name.endswith(" GPU"):  # a size the user gave: the name already says it
            return self.name
        return f"{self.name} ({self.memory / GiB:.1f} GiB)"


def parse_gpus(text: str) -> list[Gpu]:
    """`80GB` -> one GPU; `2x80GB` -> two; `80GB,2x48GB` -> three."""
    gpus: list[Gpu] = []
    for part in text.split(","):
        match = _SIZE.match(part)
        if not match:
            raise GpuError(f"cannot read GPU size {part.strip()!r}: write e.g. 80GB, 2x80GB or 81559MiB")
        count = int(match.group(1) or 1)
        unit = (match.group(3) or "gb").lower()
        size = int(float(match.group(2)) * _UNITS[unit])
        if count < 1 or size <= 0:
            raise GpuError(f"GPU size {part.strip()!r} must be positive")
        gpus.extend(Gpu(_size_label(size), size) for _ in range(count))
    return gpus


def _size_label(size: int) -> str:
    gib = size / GiB
    return f"{gib:g} GiB GPU" if gib == int(gib) else f"{size // MiB} MiB GPU"


def from_host(run=subprocess.run) -> list[Gpu]:
    """The GPUs of this machine, as nvidia-smi reports them."""
    if shutil.which("nvidia-smi") is None:
        raise GpuError("--from-host needs nvidia-smi (an NVIDIA driver) on this machine; give --gpu SIZE instead")
    try:
        result = run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GpuError(f"nvidia-smi failed: {exc}") from None
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        raise GpuError(f"nvidia-smi failed: {message}")
    return parse_nvidia_smi(result.stdout)


def parse_nvidia_smi(output: str) -> list[Gpu]:
    gpus = []
    for line in output.strip().splitlines():
        name, _, memory = line.rpartition(",")
        try:
            gpus.append(Gpu(name.strip(), int(float(memory.strip())) * MiB))
        except ValueError:
            raise GpuError(f"cannot read nvidia-smi line {line!r}") from None
    if not gpus:
        raise GpuError("nvidia-smi lists no GPU on this machine")
    return gpus
