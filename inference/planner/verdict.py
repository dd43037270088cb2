"""Fits or not; if not, the changes that would fit; and the largest context that fits.

Each suggestion is the smallest change of its kind that fits: fewer bits, more GPUs (copies of the
largest one given), a shorter context, a smaller batch. They are listed best first, and the first
is the recommendation: fewer bits (quality barely moves, the bill does not), then
a shorter context or smaller batch that keeps at least half of what was asked, then more GPUs
(they cost money), then the deeper cuts of context or batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from inference.planner.estimate import Estimate, Estimator
from inference.planner.gpus import Gpu
from inference.planner.memory import Serving

MAX_GPUS = 8  # one host


@dataclass
class Suggestion:
    change: str  # "bits", "gpus", "context" or "batch"
    value: int
    estimate: Estimate
    description: str


def max_context(estimator: Estimator, gpus: list[Gpu], serving: Serving, bits: int | None) -> int | None:
    """The largest context (tokens per sequence) that fits, up to the model's limit; None if not even one token fits."""

    def fits(context: int) -> bool:
        return estimator.estimate(gpus, replace(serving, context=context), bits).fits

    limit = estimator.dims.max_position_embeddings
    if not fits(1):
        return None
    if fits(limit):
        return limit
    low, high = 1, limit  # fits(low) and not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def suggestions(estimator: Estimator, gpus: list[Gpu], serving: Serving, bits: int | None) -> list[Suggestion]:
    current_bits = estimator.weights(bits).bits
    out: list[Suggestion] = []

    for fewer in (16, 8, 4):
        if fewer < current_bits:
            estimate = estimator.estimate(gpus, serving, fewer)
            if estimate.fits:
                out.append(
                    Suggestion(
                        "bits", fewer, estimate, f"load in {fewer}-bit ({estimate.weights.quantization.split(',')[0]})"
                    )
                )
                break

    largest = max(gpus, key=lambda g: g.memory)
    for count in range(len(gpus) + 1, MAX_GPUS + 1):
        more = gpus + [largest] * (count - len(gpus))
        estimate = estimator.estimate(more, serving, bits)
        if estimate.fits:
            out.append(
                Suggestion(
                    "gpus",
                    count,
                    estimate,
                    f"use {count} GPUs ({len(more) - len(gpus)} more of {largest.memory / 2**30:g} GiB)",
                )
            )
            break

    context = max_context(estimator, gpus, serving, bits)
    if context is not None and context < serving.context:
        estimate = estimator.estimate(gpus, replace(serving, context=context), bits)
        out.append(Suggestion("context", context, estimate, f"shorten the context to {context:,} tokens"))

    for batch in range(serving.batch - 1, 0, -1):
        estimate = estimator.estimate(gpus, replace(serving, batch=batch), bits)
        if estimate.fits:
            out.append(Suggestion("batch", batch, estimate, f"serve batches of {batch}"))
            break
    return sorted(out, key=lambda s: _preference(s, serving))


def _preference(s: Suggestion, serving: Serving) -> int:
    keeps_half = (s.change == "context" and 2 * s.value >= serving.context) or (
        s.change == "batch" and 2 * s.value >= serving.batch
    )
    if s.change == "bits":
        return 0
    if keeps_half:
        return 1
    return 2 if s.change == "gpus" else 3
