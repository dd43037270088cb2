"""`vlmkit download` against a real mirror (olah, offline, on 127.0.0.1): the normal path."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import struct
import subprocess
import termios
import time

import pytest

from tests.download.model_repo import SHARD
from tests.lab.paths import REPO_ROOT

pytestmark = pytest.mark.timeout(120)


def assert_folder_matches(folder, repo, names=None):
    for name in names or repo.files:
        data = (folder / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(repo.files[name]).hexdigest(), name


def test_download_then_rerun_reports_unchanged_in_seconds_without_fetching(vlmkit, olah, test_repo, tmp_path):
    target = tmp_path / "model"
    first = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", olah.url, "--json")
    assert first.returncode == 0, first.stderr
    result = first.result
    assert result["status"] == "downloaded"
    assert result["sha"] == test_repo.sha
    assert result["files"] == len(test_repo.files)
    assert result["bytes"] == sum(len(d) for d in test_repo.files.values())
    assert_folder_matches(target, test_repo)
    marker = json.loads((target / ".cache" / "vlmkit" / "complete.json").read_text())
    assert marker["repo"] == test_repo.repo_id and marker["sha"] == test_repo.sha
    assert {f["path"] for f in marker["files"]} == set(test_repo.files)
    assert marker["verified_at"]

    requests_before = len(olah.requests())
    again = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", olah.url, "--json")
    assert again.returncode == 0, again.stderr
    assert again.result["status"] == "unchanged"
    assert again.result["sha"] == test_repo.sha
    assert again.elapsed < 5, f"rerun took {again.elapsed:.1f}s"
    assert olah.file_gets(since=requests_before) == [], "a rerun on a complete folder fetched files"


def test_json_mode_keeps_stdout_to_one_object_and_human_lines_on_stderr(vlmkit, olah, test_repo, tmp_path):
    run = vlmkit(
        test_repo.repo_id, "--local-dir", str(tmp_path / "m"), "--endpoint", olah.url, "--json", "--include", "*.json"
    )
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.strip().splitlines()) == 1
    assert json.loads(run.stdout)["status"] == "downloaded"
    assert "downloaded:" in run.stderr


def test_include_and_exclude_select_the_files(vlmkit, olah, test_repo, tmp_path):
    target = tmp_path / "m"
    run = vlmkit(
        test_repo.repo_id,
        "--local-dir",
        str(target),
        "--endpoint",
        olah.url,
        "--json",
        "--include",
        "*.json",
        "--exclude",
        "generation_config.json",
    )
    assert run.returncode == 0, run.stderr
    expected = {n for n in test_repo.files if n.endswith(".json") and n != "generation_config.json"}
    on_disk = {p.name for p in target.iterdir() if p.is_file()}
    assert on_disk == expected
    assert run.result["files"] == len(expected)


def test_endpoint_comes_from_hf_endpoint_when_no_flag(vlmkit, olah, test_repo, tmp_path):
    run = vlmkit(
        test_repo.repo_id,
        "--local-dir",
        str(tmp_path / "m"),
        "--json",
        "--include",
        "config.json",
        env={"HF_ENDPOINT": olah.url},
    )
    assert run.returncode == 0, run.stderr
    assert run.result["status"] == "downloaded"


def test_missing_file_is_fetched_alone(vlmkit, olah, test_repo, tmp_path):
    target = tmp_path / "m"
    assert vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", olah.url).returncode == 0
    (target / "config.json").unlink()
    before = len(olah.requests())
    run = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", olah.url, "--json")
    assert run.returncode == 0, run.stderr
    assert run.result["status"] == "downloaded"
    assert run.result["fetched"] == ["config.json"]
    assert [g.rsplit("/", 1)[1] for g in olah.file_gets(since=before)] == ["config.json"]
    assert_folder_matches(target, test_repo)


def test_progress_is_plain_lines_with_bytes_rate_and_eta_when_not_a_terminal(vlmkit, relay, test_repo, tmp_path):
    relay.rate = 16 * 1024 * 1024  # about 2.5 s for the shard: several progress lines at 0.3 s
    run = vlmkit(
        test_repo.repo_id, "--local-dir", str(tmp_path / "m"), "--endpoint", relay.url, "--progress-interval", "0.3"
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("download: ") and "ETA" in line]
    assert len(lines) >= 2, run.stdout
    assert all("MiB/s" in line or "KiB/s" in line or "B/s" in line for line in lines)
    assert all(" of 40.0 MiB (" in line for line in lines), lines
    assert "\r" not in run.stdout + run.stderr, "a redrawn bar in a log"


def test_progress_is_a_bar_on_a_terminal(vlmkit, relay, test_repo, tmp_path):
    relay.rate = 16 * 1024 * 1024
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen(
        vlmkit.command(test_repo.repo_id, "--local-dir", str(tmp_path / "m"), "--endpoint", relay.url),
        cwd=REPO_ROOT,
        env=vlmkit.env,
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(30) == 0
    terminal = b"".join(chunks).decode(errors="replace")
    assert "\r" in terminal and "download" in terminal and "%|" in terminal, terminal[-500:]


def test_token_is_sent_but_never_printed_or_stored(vlmkit, relay, test_repo, tmp_path):
    token = "hf_vlmkitTESTtoken0123456789abcdefXYZ"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    target = tmp_path / "m"
    outputs = []
    ok = vlmkit(
        test_repo.repo_id,
        "--local-dir",
        str(target),
        "--endpoint",
        relay.url,
        "--json",
        "--token-file",
        str(token_file),
        "--progress-interval",
        "0.2",
    )
    assert ok.returncode == 0, ok.stderr
    outputs += [ok.stdout, ok.stderr]
    # Error paths print exception text: a wrong repo, with the token from HF_TOKEN this time.
    missing = vlmkit(
        f"{test_repo.repo_id}-nope",
        "--local-dir",
        str(tmp_path / "x"),
        "--endpoint",
        relay.url,
        "--json",
        env={"HF_TOKEN": token},
    )
    assert missing.returncode == 3
    outputs += [missing.stdout, missing.stderr]
    # A retried failure logs warnings: a connection reset mid-shard.
    relay.reset_after = 5 * 1024 * 1024
    (target / SHARD).unlink()
    retried = vlmkit(
        test_repo.repo_id, "--local-dir", str(target), "--endpoint", relay.url, "--token-file", str(token_file)
    )
    assert retried.returncode == 0, retried.stderr
    assert relay.resets == 1
    outputs += [retried.stdout, retried.stderr]

    assert f"authorization: bearer {token}".lower() in relay.seen.decode(errors="replace").lower(), (
        "the token was not sent: this test would prove nothing"
    )
    for text in outputs:
        assert token not in text
    stored = [p for p in list(target.rglob("*")) + list(tmp_path.joinpath("hf_home").rglob("*")) if p.is_file()]
    for path in stored:
        assert token.encode() not in path.read_bytes(), path


def test_second_run_into_the_same_folder_waits_for_the_first(vlmkit, olah, test_repo, tmp_path):
    target = tmp_path / "m"
    state = target / ".cache" / "vlmkit"
    state.mkdir(parents=True)
    with open(state / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running download holds it
        proc = vlmkit.start(test_repo.repo_id, "--local-dir", str(target), "--endpoint", olah.url)
        time.sleep(2)
        assert proc.poll() is None, "did not wait for the lock"
        assert not (target / "config.json").exists()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"waiting for another vlmkit download into {target}" in out
    assert_folder_matches(target, test_repo)
