"""Failures: each with its own exit code and message, in bounded time, before bytes move."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from tests.download.model_repo import SHARD
from tests.download.relay import http_response
from tests.lab.paths import REPO_ROOT

pytestmark = pytest.mark.timeout(90)


def test_wrong_repo_exits_3_with_repo_not_found(vlmkit, olah, test_repo, tmp_path):
    run = vlmkit("vlmkit-test/no-such-model", "--local-dir", str(tmp_path / "m"), "--endpoint", olah.url, "--json")
    assert run.returncode == 3, run.stderr
    assert "repository vlmkit-test/no-such-model not found" in run.stderr
    assert json.loads(run.stdout)["error"] == "repo_not_found"
    assert run.elapsed < 15


def test_wrong_revision_exits_5_with_revision_not_found(vlmkit, olah, test_repo, tmp_path):
    run = vlmkit(
        test_repo.repo_id,
        "--local-dir",
        str(tmp_path / "m"),
        "--endpoint",
        olah.url,
        "--revision",
        "no-such-branch",
        "--json",
    )
    assert run.returncode == 5, run.stderr
    assert "revision 'no-such-branch' not found" in run.stderr
    assert json.loads(run.stdout)["error"] == "revision_not_found"
    assert run.elapsed < 15


def test_refused_connection_exits_6_after_bounded_retries(vlmkit, test_repo, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    run = vlmkit(
        test_repo.repo_id,
        "--local-dir",
        str(tmp_path / "m"),
        "--endpoint",
        f"http://127.0.0.1:{port}",
        "--retries",
        "2",
        "--json",
    )
    assert run.returncode == 6, run.stderr
    assert f"http://127.0.0.1:{port} still failing after 3 attempt(s)" in run.stderr
    assert "ConnectError" in run.stderr
    assert run.stderr.count("attempt ") >= 2  # the retries were announced
    assert run.elapsed < 20


def test_endpoint_that_accepts_but_never_answers_exits_6_within_the_time_bound(vlmkit, test_repo, tmp_path):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes the handshake; nobody ever reads or answers
        port = silent.getsockname()[1]
        run = vlmkit(
            test_repo.repo_id,
            "--local-dir",
            str(tmp_path / "m"),
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--timeout",
            "1",
            "--retries",
            "5",
            "--retry-time",
            "4",
        )
    assert run.returncode == 6, run.stderr
    assert "Timeout" in run.stderr
    assert run.elapsed < 20


@pytest.mark.parametrize(
    "response, expected",
    [
        (
            http_response(403, "Forbidden", {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"}),
            "gated",
        ),
        (
            http_response(401, "Unauthorized", {"X-Error-Message": "Invalid credentials in Authorization header"}),
            "Invalid credentials",
        ),
    ],
    ids=["gated", "invalid-token"],
)
def test_gated_or_unauthorized_exits_4(vlmkit, relay, test_repo, tmp_path, response, expected):
    # No mirror we can run offline has gated repos: the relay answers as the hub does.
    relay.canned = [response] * 20
    run = vlmkit(test_repo.repo_id, "--local-dir", str(tmp_path / "m"), "--endpoint", relay.url, "--json")
    assert run.returncode == 4, run.stderr
    assert expected in run.stderr
    assert json.loads(run.stdout)["error"] == "unauthorized"
    assert relay.canned_sent <= 3  # not retried like a network error


def test_not_enough_space_on_a_small_tmpfs_is_refused_before_any_file_is_fetched(vlmkit, olah, test_repo, tmp_path):
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private tmpfs here (unshare: {probe.stderr.decode().strip()})")
    target = tmp_path / "small"
    target.mkdir()
    before = len(olah.requests())
    # A 16 MiB tmpfs mounted over the target, in a mount namespace of the command alone.
    command = [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        'mount -t tmpfs -o size=16m vlmkit-test "$0" && exec "$@"',
        str(target),
        *vlmkit.command(
            test_repo.repo_id, "--local-dir", str(target), "--endpoint", olah.url, "--reserve", "1MiB", "--json"
        ),
    ]
    start = time.monotonic()
    proc = subprocess.run(command, cwd=REPO_ROOT, env=vlmkit.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 7, proc.stderr
    assert f"not enough disk space at {target}: need 41.0 MiB (40.0 MiB to download + 1.0 MiB reserve)" in proc.stderr
    assert "16.0 MiB free" in proc.stderr
    assert json.loads(proc.stdout)["error"] == "no_space"
    assert olah.file_gets(since=before) == [], "bytes moved before the space check"
    assert time.monotonic() - start < 20


def test_reserve_beyond_free_space_is_refused_before_any_file_is_fetched(vlmkit, olah, test_repo, tmp_path):
    before = len(olah.requests())
    run = vlmkit(test_repo.repo_id, "--local-dir", str(tmp_path / "m"), "--endpoint", olah.url, "--reserve", "1000TiB")
    assert run.returncode == 7, run.stderr
    assert "not enough disk space" in run.stderr and "1000.0 TiB reserve" in run.stderr
    assert olah.file_gets(since=before) == []
    assert not (tmp_path / "m" / SHARD).exists()


def test_complete_folder_stays_unchanged_when_the_endpoint_is_down(vlmkit, olah, test_repo, tmp_path):
    target = tmp_path / "m"
    assert vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", olah.url).returncode == 0
    down = "http://127.0.0.1:9"
    run = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", down, "--json")
    assert run.returncode == 0, run.stderr
    assert run.result["status"] == "unchanged"
    assert "cannot reach http://127.0.0.1:9 to check whether 'main' moved" in run.stderr
    # ...but not when a file is missing: then the endpoint is needed and its failure is reported.
    (target / "config.json").unlink()
    broken = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", down, "--retries", "1")
    assert broken.returncode == 6, broken.stderr


def test_unreadable_token_file_exits_2(vlmkit, test_repo, tmp_path):
    run = vlmkit(
        test_repo.repo_id,
        "--local-dir",
        str(tmp_path / "m"),
        "--endpoint",
        "http://127.0.0.1:9",
        "--token-file",
        str(tmp_path / "absent"),
    )
    assert run.returncode == 2
    assert "cannot read the token file" in run.stderr
