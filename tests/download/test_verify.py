"""Verification: hashes against the repo metadata, and only broken or missing files fetched again."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.download.model_repo import SHARD

pytestmark = pytest.mark.timeout(120)


def flip_byte(path, offset=4096):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture
def complete(vlmkit, olah, test_repo, tmp_path):
    target = tmp_path / "m"
    run = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", olah.url)
    assert run.returncode == 0, run.stderr
    return target


def test_changed_byte_is_detected_by_verify_and_only_that_file_is_refetched(vlmkit, olah, test_repo, complete):
    shard = complete / SHARD
    st = shard.stat()
    flip_byte(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only a hash can tell
    before = len(olah.requests())
    run = vlmkit(test_repo.repo_id, "--local-dir", str(complete), "--endpoint", olah.url, "--verify", "--json")
    assert run.returncode == 0, run.stderr
    assert run.result["status"] == "repaired"
    assert run.result["repaired"] == [SHARD] and run.result["fetched"] == [SHARD]
    assert f"{SHARD} is broken (sha256" in run.stderr
    assert [g.rsplit("/", 1)[1] for g in olah.file_gets(since=before)] == [SHARD]
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == test_repo.sha256(SHARD)


def test_edited_file_is_hashed_again_without_verify_flag(vlmkit, olah, test_repo, complete):
    target = complete / "config.json"
    flip_byte(target, offset=2)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    run = vlmkit(test_repo.repo_id, "--local-dir", str(complete), "--endpoint", olah.url, "--json")
    assert run.returncode == 0, run.stderr
    assert run.result["status"] == "repaired"
    assert run.result["repaired"] == ["config.json"]
    assert "git-sha1" in run.stderr  # non-LFS files are checked against their git blob id
    assert target.read_bytes() == test_repo.files["config.json"]


def test_verify_on_an_intact_folder_fetches_nothing(vlmkit, olah, test_repo, complete):
    before = len(olah.requests())
    run = vlmkit(test_repo.repo_id, "--local-dir", str(complete), "--endpoint", olah.url, "--verify", "--json")
    assert run.returncode == 0, run.stderr
    assert run.result["status"] == "unchanged"
    assert olah.file_gets(since=before) == []
    assert "verify: 40.0 MiB" in run.stderr  # it did hash the files


def test_folder_from_another_tool_is_hashed_and_adopted_without_downloading(vlmkit, olah, test_repo, tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    for name, data in test_repo.files.items():
        (target / name).write_bytes(data)
    before = len(olah.requests())
    run = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", olah.url, "--json")
    assert run.returncode == 0, run.stderr
    assert run.result["status"] == "unchanged"
    assert olah.file_gets(since=before) == []
    assert (target / ".cache" / "vlmkit" / "complete.json").exists()


def test_mirror_serving_other_bytes_than_the_repo_lists_fails_verification(vlmkit, olah, corrupt_repo, tmp_path):
    target = tmp_path / "m"
    run = vlmkit(corrupt_repo.repo_id, "--local-dir", str(target), "--endpoint", olah.url, "--json")
    assert run.returncode == 8, run.stderr
    assert json.loads(run.stdout)["error"] == "verification_failed"
    assert "model.safetensors" in run.stderr and "does not match" in run.stderr
    assert not (target / "model.safetensors").exists(), "an unverified file took its place in the folder"
    assert not (target / ".cache" / "vlmkit" / "complete.json").exists()
