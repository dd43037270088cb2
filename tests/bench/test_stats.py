"""The benchmark's arithmetic on hand-made numbers: percentiles, per-request rates, level summaries, and
the workload's determinism."""

from __future__ import annotations

import math

import pytest

from inference.bench.client import RequestResult
from inference.bench.load import LevelRun
from inference.bench.stats import distribution, percentile, summarize_level
from inference.bench.workload import WorkloadError, build, generated_images, parse_size


def test_percentile_interpolates_between_closest_ranks():
    values = [4, 1, 3, 2]  # unsorted on purpose
    assert percentile(values, 0) == 1
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4
    assert math.isclose(percentile(values, 95), 3.85)  # rank 2.85: 3 + 0.85 * (4 - 3)
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_no_values_and_out_of_range_q():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_distribution_of_five_values():
    d = distribution([50, 10, 40, 20, 30])
    assert d == {
        "count": 5,
        "mean": 30,
        "min": 10,
        "p50": 30,
        "p90": 46,
        "p95": 48,
        "p99": pytest.approx(49.6),
        "max": 50,
    }


def test_distribution_of_nothing_is_all_none_but_the_count():
    assert distribution([]) == {
        "count": 0,
        "mean": None,
        "min": None,
        "p50": None,
        "p90": None,
        "p95": None,
        "p99": None,
        "max": None,
    }


def result(
    index: int,
    chunk_times: list[float],
    tokens: int | None,
    finish: str = "length",
    ok: bool = True,
    error_kind: str | None = None,
) -> RequestResult:
    r = RequestResult(
        index,
        "img",
        "q",
        sent_at=index * 0.1,
        ok=ok,
        error_kind=error_kind,
        error="refused" if error_kind else None,
        chunk_times=chunk_times,
        prompt_tokens=10 if ok else None,
        completion_tokens=tokens,
        finish_reason=finish if ok else None,
    )
    if ok:
        r.ttft = chunk_times[0]
        r.e2e = chunk_times[-1] + 0.01
    return r


def test_decode_rate_counts_the_tokens_after_the_first_over_the_chunk_span():
    r = result(0, [0.1, 0.2, 0.3, 0.5], tokens=9)
    assert r.itl == pytest.approx([0.1, 0.1, 0.2])
    assert r.decode_tok_per_s == pytest.approx(8 / 0.4)  # chunks may carry several tokens: usage counts
    assert result(0, [0.1], tokens=1).decode_tok_per_s is None
    assert result(0, [0.1, 0.1], tokens=2).decode_tok_per_s is None  # no time between them


def test_chunks_match_usage_allows_one_textless_stop_token():
    assert result(0, [0.1, 0.2, 0.3], tokens=3).chunks_match_usage is True
    assert result(0, [0.1, 0.2, 0.3], tokens=4, finish="stop").chunks_match_usage is True
    assert result(0, [0.1, 0.2, 0.3], tokens=4, finish="length").chunks_match_usage is False
    assert result(0, [0.1, 0.2], tokens=4, finish="stop").chunks_match_usage is False
    assert result(0, [], None, ok=False, error_kind="HTTP 429").chunks_match_usage is None


def test_level_summary_counts_successes_errors_tokens_and_rates():
    results = [
        result(0, [0.2, 0.3, 0.4], tokens=3),
        result(1, [0.4, 0.5, 0.7], tokens=3),
        result(2, [0.3, 0.4], tokens=5),  # two chunks for five tokens: a mismatch
        result(3, [], None, ok=False, error_kind="HTTP 429"),
    ]
    summary = summarize_level(LevelRun(concurrency=2, results=results, wall_s=2.0))
    assert (summary["requests"], summary["completed"], summary["errors"]) == (4, 3, 1)
    assert summary["errors_by_kind"] == {"HTTP 429": 1}
    assert summary["error_examples"] == {"HTTP 429": "refused"}
    assert summary["completion_tokens"] == 11 and summary["prompt_tokens"] == 30
    assert summary["output_tok_per_s"] == 5.5 and summary["requests_per_s"] == 1.5
    assert summary["ttft_s"]["p50"] == 0.3 and summary["ttft_s"]["count"] == 3
    assert summary["itl_s"]["count"] == 5  # pooled over the requests: 2 + 2 + 1 gaps
    assert summary["itl_s"]["max"] == pytest.approx(0.2)
    assert summary["decode_tok_per_s"]["count"] == 3
    assert summary["decode_tok_per_s"]["max"] == pytest.approx(4 / 0.1)
    assert summary["chunk_usage_mismatches"] == 1
    assert [r["index"] for r in summary["per_request"]] == [0, 1, 2, 3]


def test_generated_images_are_the_same_bytes_for_the_same_seed():
    first, again, other = (generated_images(2, 160, 120, seed) for seed in (7, 7, 8))
    assert first == again and first != other
    assert first[0].url != first[1].url  # distinct images within a run
    assert (first[0].width, first[0].height) == (160, 120) and first[0].url.startswith("data:image/jpeg;base64,")


def test_requests_cycle_through_images_and_prompts():
    workload = build(None, 2, (64, 64), ["one?", "two?", "three?"], seed=0)
    pairs = [(workload.request(i).image.name, workload.request(i).prompt) for i in range(4)]
    assert pairs == [
        ("generated-0.jpg", "one?"),
        ("generated-1.jpg", "two?"),
        ("generated-0.jpg", "three?"),
        ("generated-1.jpg", "one?"),
    ]
    content = workload.request(0).messages()[0]["content"]
    assert [part["type"] for part in content] == ["image_url", "text"]


def test_image_size_and_folder_errors_are_explained(tmp_path):
    assert parse_size("1120x1120") == (1120, 1120) and parse_size("448×336") == (448, 336)
    for bad in ("1120", "0x10", "axb", "20000x10"):
        with pytest.raises(WorkloadError):
            parse_size(bad)
    with pytest.raises(WorkloadError, match="no image files"):
        build(tmp_path, 1, (64, 64), None, seed=0)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(WorkloadError, match="not a readable image"):
        build(tmp_path, 1, (64, 64), None, seed=0)
