"""The seed's rule of thumb: M = (P × 4 bytes) / (32 / Q) × 1.2.

P is the parameter count, Q the bits per weight, 1.2 the 20% the seed adds for activations and
intermediate results. With P in billions, M is in GB (10^9 bytes): 90B at 16 bits gives 216 GB,
at 4 bits 54 GB.
"""

from __future__ import annotations

from math import ceil

OVERHEAD = 1.2


def formula_bytes(parameters: float, bits: int) -> float:
    """Memory the seed's formula predicts, in bytes, for `parameters` weights of `bits` bits."""
    if parameters <= 0 or bits <= 0:
        raise ValueError("parameters and bits must be positive")
    return parameters * 4 / (32 / bits) * OVERHEAD


def gpus_needed(total_bytes: float, gpu_bytes: int) -> int:
    """How many GPUs of `gpu_bytes` the formula's total needs, as the seed counts them (216 GB -> 3 × 80 GB)."""
    return max(1, ceil(total_bytes / gpu_bytes))
