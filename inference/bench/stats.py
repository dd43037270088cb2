"""Percentiles and the per-level summary (the numbers `vlmkit bench` reports; docs/bench.md defines them)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from inference.bench.client import RequestResult
from inference.bench.load import LevelRun

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating linearly between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float]) -> dict:
    """count, mean, min, p50, p90, p95, p99, max; all but count are None for no values."""
    summary: dict = {
        "count": len(values),
        "mean": None,
        "min": None,
        **{f"p{q}": None for q in PERCENTILES},
        "max": None,
    }
    if values:
        summary["mean"] = sum(values) / len(values)
        summary["min"], summary["max"] = min(values), max(values)
        for q in PERCENTILES:
            summary[f"p{q}"] = percentile(values, q)
    return summary


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def summarize_level(run: LevelRun) -> dict:
    ok = [r for r in run.results if r.ok]
    failed = [r for r in run.results if not r.ok]
    completion_tokens = sum(r.completion_tokens for r in ok)
    examples: dict[str, str] = {}
    for r in failed:
        examples.setdefault(r.error_kind, r.error)
    return {
        "concurrency": run.concurrency,
        "requests": len(run.results),
        "completed": len(ok),
        "errors": len(failed),
        "errors_by_kind": dict(Counter(r.error_kind for r in failed)),
        "error_examples": examples,
        "wall_s": run.wall_s,
        "requests_per_s": rate(len(ok), run.wall_s),
        "prompt_tokens": sum(r.prompt_tokens for r in ok),
        "completion_tokens": completion_tokens,
        "output_tok_per_s": rate(completion_tokens, run.wall_s),
        "ttft_s": distribution([r.ttft for r in ok if r.ttft is not None]),
        "itl_s": distribution([gap for r in ok for gap in r.itl]),
        "e2e_s": distribution([r.e2e for r in ok]),
        "decode_tok_per_s": distribution([r.decode_tok_per_s for r in ok if r.decode_tok_per_s is not None]),
        "chunk_usage_mismatches": sum(1 for r in ok if r.chunks_match_usage is False),
        "per_request": [request_record(r) for r in run.results],
    }


def request_record(r: RequestResult) -> dict:
    return {
        "index": r.index,
        "image": r.image,
        "prompt": r.prompt,
        "ok": r.ok,
        "error_kind": r.error_kind,
        "error": r.error,
        "sent_at_s": r.sent_at,
        "ttft_s": r.ttft,
        "e2e_s": r.e2e,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "chunks": r.chunks,
        "chunks_match_usage": r.chunks_match_usage,
        "finish_reason": r.finish_reason,
        "decode_tok_per_s": r.decode_tok_per_s,
        "itl_max_s": max(r.itl) if r.itl else None,
    }
