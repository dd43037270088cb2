"""Interrupted transfers: killed processes, connection resets, 5xx and 429 answers."""

from __future__ import annotations

import hashlib
import signal

import pytest

from tests.download.model_repo import SHARD, SHARD_BYTES
from tests.download.relay import Relay, http_response
from tests.lab.processes import stop_process
from tests.lab.waiting import WaitTimeout, wait_until

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024


def kill_mid_shard(proc, target):
    """SIGKILL `proc` once its partial shard holds at least 10 MiB but not all of it; return its size."""
    partial_dir = target / ".cache" / "vlmkit" / "partial"
    wait_for_partial(proc, partial_dir, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    partial = max(partial_dir.glob("*.part"), key=lambda p: p.stat().st_size)
    return partial.stat().st_size


def wait_for_partial(proc, partial_dir, timeout: float) -> None:
    """Until a partial shard holds 10 MiB; the download is killed if it never does, and must not end first."""
    try:
        wait_until(
            lambda: any(p.stat().st_size >= 10 * MIB for p in partial_dir.glob("*.part")),
            timeout,
            "a partial shard of 10 MiB",
            interval=0.02,
            give_up=lambda: proc.poll() is not None and f"the download ended first: {proc.communicate()}",
        )
    except WaitTimeout:
        stop_process(proc, timeout=10)
        raise


def assert_shard_ok(target, test_repo):
    assert hashlib.sha256((target / SHARD).read_bytes()).hexdigest() == test_repo.sha256(SHARD)


def test_sigkill_mid_file_then_rerun_completes_and_verifies(vlmkit, relay, test_repo, tmp_path):
    target = tmp_path / "m"
    relay.rate = 8 * MIB  # the 40 MiB shard takes 5 s: time to kill it halfway
    proc = vlmkit.start(test_repo.repo_id, "--local-dir", str(target), "--endpoint", relay.url)
    kept = kill_mid_shard(proc, target)
    assert 0 < kept < SHARD_BYTES
    assert not (target / SHARD).exists(), "an unfinished file took its place in the folder"
    assert not (target / ".cache" / "vlmkit" / "complete.json").exists()

    relay.rate = None
    run = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", relay.url, "--json")
    assert run.returncode == 0, run.stderr
    assert run.result["status"] == "downloaded"
    assert "resuming:" in run.stderr
    # The rerun asked to continue; olah ignores Range and sends the whole file, which is still fine.
    assert f"range: bytes={kept}-" in relay.seen.decode(errors="replace").lower()
    assert_shard_ok(target, test_repo)
    assert list((target / ".cache" / "vlmkit" / "partial").glob("*")) == []


def test_sigkill_mid_file_then_rerun_resumes_from_the_partial_file_with_a_range_server(
    vlmkit, range_server, test_repo, tmp_path
):
    # nginx instead of olah: olah answers Range requests with the whole file, nginx honours them.
    target = tmp_path / "m"
    proc = vlmkit.start(test_repo.repo_id, "--local-dir", str(target), "--endpoint", range_server.url)
    kept = kill_mid_shard(proc, target)

    run = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", range_server.url, "--json")
    assert run.returncode == 0, run.stderr
    assert run.result["status"] == "downloaded"
    assert_shard_ok(target, test_repo)
    shard_gets = [r for r in range_server.file_requests() if r["uri"].endswith(SHARD)]
    resumed = shard_gets[-1]
    assert resumed["status"] == "206" and resumed["range"] == f"bytes={kept}-", shard_gets
    assert int(resumed["length"]) == SHARD_BYTES - kept, "the rerun fetched more than the missing tail"


def test_connection_reset_mid_file_is_retried_and_resumed(vlmkit, range_server, test_repo, tmp_path):
    # A reset makes httpx raise ReadError, which huggingface_hub does not retry on its own.
    relay = Relay(range_server.port).start()
    try:
        relay.reset_after = 12 * MIB
        target = tmp_path / "m"
        run = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", relay.url, "--json")
    finally:
        relay.stop()
    assert run.returncode == 0, run.stderr
    assert relay.resets == 1
    assert "ReadError" in run.stderr and "attempt 2 of" in run.stderr
    assert_shard_ok(target, test_repo)
    resumed = [r for r in range_server.file_requests() if r["uri"].endswith(SHARD)][-1]
    assert resumed["status"] == "206" and int(resumed["length"]) < SHARD_BYTES


def test_connection_reset_with_olah_is_retried_from_zero_and_verifies(vlmkit, relay, test_repo, tmp_path):
    relay.reset_after = 12 * MIB
    target = tmp_path / "m"
    run = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", relay.url, "--json")
    assert run.returncode == 0, run.stderr
    assert relay.resets == 1
    assert_shard_ok(target, test_repo)


def test_503_and_429_answers_are_retried(vlmkit, relay, test_repo, tmp_path):
    relay.canned = [
        http_response(503, "Service Unavailable"),
        http_response(429, "Too Many Requests", {"Retry-After": "1"}),
    ]
    run = vlmkit(test_repo.repo_id, "--local-dir", str(tmp_path / "m"), "--endpoint", relay.url, "--json")
    assert run.returncode == 0, run.stderr
    assert relay.canned_sent == 2
    assert "HTTP 503" in run.stderr and "HTTP 429" in run.stderr
    assert run.result["status"] == "downloaded"


def test_ctrl_c_exits_130_and_the_next_run_resumes(vlmkit, relay, test_repo, tmp_path):
    target = tmp_path / "m"
    relay.rate = 8 * MIB
    proc = vlmkit.start(test_repo.repo_id, "--local-dir", str(target), "--endpoint", relay.url)
    wait_for_partial(proc, target / ".cache" / "vlmkit" / "partial", 30)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not (target / SHARD).exists()
    relay.rate = None
    run = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", relay.url)
    assert run.returncode == 0, run.stderr
    assert "resuming:" in run.stdout
    assert_shard_ok(target, test_repo)
