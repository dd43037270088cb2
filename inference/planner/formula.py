"""The common rule of thumb: M = (P × 4 bytes) / (32 / Q) × 1.2.

P is the parameter count, Q the bits per weight, 1.2 the 20% it adds for activations and
intermediate results. With P in billions, M is in GB (10^9 bytes): 90B at 16 bits gives 216 GB,
at 4 bits 54 GB.
"""

from __future__ import annotations

import re
from math import ceil

OVERHEAD = 1.2
# A bare number below this is read in billions, as the formula writes P = 90 for 90B: no real model has
# fewer than ten thousand parameters, and "90" read as ninety would plan 0.0 GB and say FITS.
BARE_BILLIONS_BELOW = 1e4
_SCALE = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
_PARAMETERS = re.compile(
    r"\s*(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<exponent>e[+]?\d+)?\s*(?P<suffix>[kmbt])?\s*", re.IGNORECASE
)


def parameter_count(text: str) -> float:
    """The parameter count written as 90B, 11b, 1.5T, 90e9, 90000000000, or 90 (a bare number below 10^4 is billions)."""
    match = _PARAMETERS.fullmatch(text)
    if not match:
        raise ValueError(f"not a parameter count: {text!r} (write e.g. 90B, 11B, 90e9, or 90 for 90 billion)")
    value = float(match["number"] + (match["exponent"] or ""))
    if match["suffix"]:
        value *= _SCALE[match["suffix"].lower()]
    elif not match["exponent"] and value < BARE_BILLIONS_BELOW:
        value *= 1e9
    if value < 1:
        raise ValueError(f"the parameter count must be positive, got {text!r}")
    return value


def formula_bytes(parameters: float, bits: int) -> float:
    """Memory the formula predicts, in bytes, for `parameters` weights of `bits` bits."""
    if parameters <= 0 or bits <= 0:
        raise ValueError("parameters and bits must be positive")
    return parameters * 4 / (32 / bits) * OVERHEAD


def gpus_needed(total_bytes: float, gpu_bytes: int) -> int:
    """How many GPUs of `gpu_bytes` the formula's total needs, as the formula counts them (216 GB -> 3 × 80 GB)."""
    return max(1, ceil(total_bytes / gpu_bytes))
