"""`vlmkit bench` against a real server on the tiny model: the report's fields and the consistency of its
numbers (never its speed), failures reported as errors, and the user's own images."""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys

import httpx
import pytest
from PIL import Image

from inference import bench
from tests.bench.runner import run_bench
from tests.lab.server import free_port

LEVEL_FIELDS = {
    "concurrency",
    "requests",
    "completed",
    "errors",
    "errors_by_kind",
    "error_examples",
    "wall_s",
    "requests_per_s",
    "prompt_tokens",
    "completion_tokens",
    "output_tok_per_s",
    "ttft_s",
    "itl_s",
    "e2e_s",
    "decode_tok_per_s",
    "chunk_usage_mismatches",
    "per_request",
}
DISTRIBUTION_FIELDS = {"count", "mean", "min", "p50", "p90", "p95", "p99", "max"}
REQUEST_FIELDS = {
    "index",
    "image",
    "prompt",
    "ok",
    "error_kind",
    "error",
    "sent_at_s",
    "ttft_s",
    "e2e_s",
    "prompt_tokens",
    "completion_tokens",
    "chunks",
    "chunks_match_usage",
    "finish_reason",
    "decode_tok_per_s",
    "itl_max_s",
}
HAS_MATPLOTLIB = bench.report.plot_available()


def generated_tokens(server) -> float:
    text = httpx.get(server.base_url + "/metrics").text
    return sum(float(value) for value in re.findall(r"^vlmkit_generation_tokens_total\{[^}]*\} (\S+)$", text, re.M))


@pytest.fixture(scope="module")
def sweep(bench_server, tmp_path_factory):
    """One short sweep, fixed 8-token answers: concurrency 1 and 2, three requests each, one warm-up."""
    workdir = tmp_path_factory.mktemp("sweep")
    before = generated_tokens(bench_server)
    plot = ["--plot", str(workdir / "bench.png")] if HAS_MATPLOTLIB else []
    run = run_bench(
        bench_server,
        workdir,
        "--concurrency",
        "1,2",
        "--requests",
        "3",
        "--max-tokens",
        "8",
        "--fixed-output",
        "--warmup",
        "1",
        "--image-size",
        "448x448",
        "--temperature",
        "0",
        *plot,
    )
    run.server_tokens = generated_tokens(bench_server) - before
    run.workdir = workdir
    return run


def test_sweep_succeeds_and_prints_one_table_row_per_level(sweep):
    assert sweep.returncode == 0, sweep.stderr
    assert "TTFT p50" in sweep.stdout and "out tok/s" in sweep.stdout
    rows = [line.split() for line in sweep.stdout.splitlines() if re.match(r"^\s+\d+\s+\d+\s+\d+\s", line)]
    assert [(row[0], row[1], row[2]) for row in rows] == [("1", "3", "0"), ("2", "3", "0")]


def test_report_has_every_field(sweep):
    report = sweep.report
    assert {
        "schema",
        "vlmkit_version",
        "started_at",
        "config",
        "workload",
        "warmup",
        "levels",
        "totals",
        "aborted",
    } <= report.keys()
    assert report["schema"] == "vlmkit.bench/1" and report["aborted"] is None
    assert report["config"]["model"] == "tiny-mllama"  # found through /models
    assert report["config"]["concurrency"] == [1, 2] and report["config"]["fixed_output"] is True
    assert report["warmup"] == {"requests": 1, "errors": 0, "errors_by_kind": {}}
    assert [level["concurrency"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert LEVEL_FIELDS <= level.keys()
        for metric in ("ttft_s", "itl_s", "e2e_s", "decode_tok_per_s"):
            assert DISTRIBUTION_FIELDS <= level[metric].keys()
            assert level[metric]["count"] > 0
        for record in level["per_request"]:
            assert REQUEST_FIELDS <= record.keys()


def test_fixed_output_answers_have_exactly_max_tokens_and_totals_are_their_sums(sweep):
    report = sweep.report
    for level in report["levels"]:
        records = level["per_request"]
        assert level["requests"] == level["completed"] == len(records) == 3
        assert [r["index"] for r in records] == [0, 1, 2]
        assert all(r["ok"] and r["completion_tokens"] == 8 and r["finish_reason"] == "length" for r in records)
        assert level["completion_tokens"] == sum(r["completion_tokens"] for r in records) == 24
        assert level["prompt_tokens"] == sum(r["prompt_tokens"] for r in records) > 0
        assert math.isclose(level["output_tok_per_s"], level["completion_tokens"] / level["wall_s"])
        assert math.isclose(level["requests_per_s"], level["completed"] / level["wall_s"])
    totals = report["totals"]
    assert totals == {
        "requests": 6,
        "completed": 6,
        "errors": 0,
        "completion_tokens": sum(level["completion_tokens"] for level in report["levels"]),
    }
    # The server's own counter saw the same tokens: the warm-up's 8 and the measured 48.
    assert sweep.server_tokens == 8 + totals["completion_tokens"]


def test_percentiles_are_ordered_and_counts_match_the_requests(sweep):
    for level in sweep.report["levels"]:
        records = level["per_request"]
        for metric in ("ttft_s", "itl_s", "e2e_s", "decode_tok_per_s"):
            d = level[metric]
            assert 0 <= d["min"] <= d["p50"] <= d["p90"] <= d["p95"] <= d["p99"] <= d["max"], metric
            assert d["min"] <= d["mean"] <= d["max"], metric
        assert level["ttft_s"]["count"] == level["e2e_s"]["count"] == 3
        assert level["itl_s"]["count"] == sum(r["chunks"] - 1 for r in records)
        assert level["ttft_s"]["max"] == max(r["ttft_s"] for r in records)
        assert level["itl_s"]["max"] == max(r["itl_max_s"] for r in records)


def test_each_request_gets_its_first_token_before_it_ends(sweep):
    for level in sweep.report["levels"]:
        for r in level["per_request"]:
            assert 0 < r["ttft_s"] < r["e2e_s"]
            assert 0 <= r["sent_at_s"] < r["sent_at_s"] + r["e2e_s"] <= level["wall_s"]
            assert r["decode_tok_per_s"] > 0 and r["chunks"] >= 2


def test_no_errors_and_chunk_mismatches_are_counted_not_hidden(sweep):
    for level in sweep.report["levels"]:
        assert level["errors"] == 0 and level["errors_by_kind"] == {}
        records = level["per_request"]
        # The tiny model's random tokens often decode to no text, so chunks and tokens may differ:
        # the count must say exactly how many answers that is.
        assert all(r["chunks_match_usage"] == (r["chunks"] == r["completion_tokens"]) for r in records)
        assert level["chunk_usage_mismatches"] == sum(1 for r in records if not r["chunks_match_usage"])


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the plot needs matplotlib (pip install matplotlib)")
def test_plot_is_a_png(sweep):
    png = sweep.workdir / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.width > 600 and image.height > 200


def test_wrong_key_is_reported_as_errors_and_exits_non_zero(bench_server, tmp_path):
    run = run_bench(
        bench_server,
        tmp_path,
        "--model",
        "tiny-mllama",
        "--warmup",
        "0",
        "--concurrency",
        "1,2",
        "--requests",
        "2",
        "--max-tokens",
        "4",
        "--image-size",
        "64x64",
        api_key="wrong-key",
    )
    assert run.returncode == 1
    assert "4 of 4 requests failed" in run.stderr
    assert "HTTP 401" in run.stdout
    for level in run.report["levels"]:
        assert level["errors"] == level["requests"] == 2 and level["completed"] == 0
        assert level["errors_by_kind"] == {"HTTP 401": 2}
        assert level["completion_tokens"] == 0 and level["ttft_s"]["p50"] is None
    assert run.report["totals"]["errors"] == 4


def test_wrong_key_stops_at_the_model_list_when_no_model_is_named(bench_server, tmp_path):
    run = run_bench(bench_server, tmp_path, "--concurrency", "1", "--requests", "1", api_key="wrong-key")
    assert run.returncode == 1
    assert "could not list the server's models" in run.stderr and "HTTP 401" in run.stderr
    assert run.report["levels"] == [] and "HTTP 401" in run.report["aborted"]


def test_unreachable_server_exits_1_with_the_reason(tmp_path):
    class Nowhere:
        base_url = f"http://127.0.0.1:{free_port()}"

    run = run_bench(Nowhere(), tmp_path, "--model", "m", "--concurrency", "1", "--requests", "1")
    assert run.returncode == 1
    assert "every warm-up request failed (connection" in run.stderr


def test_image_folder_is_sent_as_stored_for_a_duration(bench_server, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, size, colour in (("a.png", (300, 200), (200, 30, 30)), ("b.jpg", (120, 160), (30, 200, 30))):
        Image.new("RGB", size, colour).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    run = run_bench(
        bench_server,
        tmp_path,
        "--image-dir",
        str(folder),
        "--duration",
        "0.5",
        "--concurrency",
        "2",
        "--warmup",
        "0",
        "--max-tokens",
        "4",
        "--fixed-output",
        "--temperature",
        "0",
        "--prompt",
        "What colour is this?",
    )
    assert run.returncode == 0, run.stderr
    workload = run.report["workload"]
    assert [(i["name"], i["width"], i["height"], i["bytes"]) for i in workload["images"]] == [
        ("a.png", 300, 200, (folder / "a.png").stat().st_size),
        ("b.jpg", 120, 160, (folder / "b.jpg").stat().st_size),
    ]
    assert workload["prompts"] == ["What colour is this?"]
    level = run.report["levels"][0]
    assert run.report["config"]["requests_per_level"] is None and run.report["config"]["duration_s"] == 0.5
    assert level["completed"] >= 2 and level["errors"] == 0
    assert all(r["image"] in {"a.png", "b.jpg"} and r["sent_at_s"] < 0.5 for r in level["per_request"])
    assert all(r["completion_tokens"] == 4 for r in level["per_request"])  # greedy, fixed: never a sampled length


def test_plot_without_matplotlib_is_refused_before_any_request(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    parser = argparse.ArgumentParser()
    bench.configure(parser)
    args = parser.parse_args(["--url", f"http://127.0.0.1:{free_port()}/v1", "--plot", str(tmp_path / "p.png")])
    assert bench.run(args) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_saved_report_is_rendered_again_without_sending_requests(sweep, tmp_path):
    plot = ["--plot", str(tmp_path / "again.png")] if HAS_MATPLOTLIB else []
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "inference.cli",
            "bench",
            "--url",
            f"http://127.0.0.1:{free_port()}/v1",
            "--from-json",
            str(sweep.workdir / "report.json"),
            *plot,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == sweep.stdout  # the same table, from the JSON alone
    if HAS_MATPLOTLIB:
        assert (tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"
