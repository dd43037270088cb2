"""What a hostile or broken mirror, a forged marker and credentials in the endpoint must not achieve.

The listings that git cannot hold (paths climbing out, ids that are not hashes) come from
tests/download/hostile.py, a loopback stand-in for such a mirror; the rest runs against olah.
"""

from __future__ import annotations

import json

import pytest

from tests.download.hostile import HostileMirror, lfs_entry, plain_entry
from tests.download.relay import http_response
from tests.lab.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

REPO = "vlmkit-test/hostile"
DATA = b'{"model_type": "mllama"}'


def state_dir(target):
    return target / ".cache" / "vlmkit"


def written_files(folder) -> set[str]:
    """Files under `folder`, the lock aside (any run creates it before it reads the listing)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "lock"}


# The partial file is DIR/.cache/vlmkit/partial/<content id>.part: four levels up is tmp_path.
CLIMBING_ID = "../../../../victim"


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(lfs_entry("model.safetensors", DATA, sha256=CLIMBING_ID), id="lfs-sha256"),
        pytest.param(plain_entry("config.json", DATA, oid=CLIMBING_ID), id="git-blob-id"),
        pytest.param(plain_entry("config.json", DATA, oid="ab" * 32), id="blob-id-of-sha256-length"),
        pytest.param(lfs_entry("model.safetensors", DATA, sha256="XY" * 32), id="sha256-not-hex"),
    ],
)
def test_content_id_from_the_listing_must_be_hex_of_its_length_and_nothing_outside_is_touched(vlmkit, tmp_path, entry):
    victim = tmp_path / "victim.part"
    victim.write_bytes(b"an operator's file next to the model folder\n" * 4)
    before = victim.read_bytes()
    target = tmp_path / "m"
    with HostileMirror(REPO, [entry], {entry["path"]: DATA}) as mirror:
        run = vlmkit(REPO, "--local-dir", str(target), "--endpoint", mirror.url, "--json", "--retries", "0")
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.result["error"] == "failed"
    assert "invalid" in run.result["message"] and entry["path"] in run.result["message"]
    assert victim.read_bytes() == before
    assert written_files(target) == set()


@pytest.mark.parametrize(
    "path", ["../outside.txt", "/tmp/vlmkit-absolute.txt", "sub/../../outside.txt", "..\\outside.txt"]
)
def test_path_that_leaves_the_folder_is_refused_before_any_write(vlmkit, tmp_path, path):
    target = tmp_path / "m"
    with HostileMirror(REPO, [plain_entry(path, DATA)], {path: DATA}) as mirror:
        run = vlmkit(REPO, "--local-dir", str(target), "--endpoint", mirror.url, "--json", "--retries", "0")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "unsafe path" in run.result["message"]
    assert not (tmp_path / "outside.txt").exists()
    assert written_files(target) == set()


def test_path_through_a_symbolic_link_out_of_the_folder_is_refused(vlmkit, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = tmp_path / "m"
    target.mkdir()
    (target / "linked").symlink_to(outside)
    path = "linked/config.json"
    with HostileMirror(REPO, [plain_entry(path, DATA)], {path: DATA}) as mirror:
        run = vlmkit(REPO, "--local-dir", str(target), "--endpoint", mirror.url, "--json", "--retries", "0")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "resolves outside" in run.result["message"] and path in run.result["message"]
    assert list(outside.iterdir()) == []


def test_repository_path_inside_the_tools_own_state_folder_is_refused(vlmkit, tmp_path):
    forged = json.dumps({"repo": REPO, "files": []}).encode()
    listing = [plain_entry("config.json", DATA), plain_entry(".cache/vlmkit/complete.json", forged)]
    target = tmp_path / "m"
    with HostileMirror(REPO, listing, {"config.json": DATA, ".cache/vlmkit/complete.json": forged}) as mirror:
        run = vlmkit(REPO, "--local-dir", str(target), "--endpoint", mirror.url, "--json", "--retries", "0")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "state folder" in run.result["message"]
    assert written_files(target) == set()


SECRET_USER, SECRET_PASSWORD = "vlmkit-user", "s3cret-Pa55word"


def test_credentials_in_the_endpoint_are_never_printed_or_written(vlmkit, olah, test_repo, tmp_path):
    def with_credentials(url: str) -> str:
        return url.replace("http://", f"http://{SECRET_USER}:{SECRET_PASSWORD}@")

    target = tmp_path / "m"
    runs = {
        "downloaded": vlmkit(
            test_repo.repo_id, "--local-dir", str(target), "--endpoint", with_credentials(olah.url), "--json"
        ),
        "unchanged, endpoint from HF_ENDPOINT": vlmkit(
            test_repo.repo_id, "--local-dir", str(target), "--json", env={"HF_ENDPOINT": with_credentials(olah.url)}
        ),
        "repo not found": vlmkit(
            f"{test_repo.repo_id}-nope",
            "--local-dir",
            str(tmp_path / "x"),
            "--json",
            "--endpoint",
            with_credentials(olah.url),
        ),
        "unreachable": vlmkit(
            test_repo.repo_id,
            "--local-dir",
            str(tmp_path / "y"),
            "--json",
            "--retries",
            "0",
            "--endpoint",
            with_credentials("http://127.0.0.1:9"),
        ),
        "not http": vlmkit(
            test_repo.repo_id,
            "--local-dir",
            str(tmp_path / "z"),
            "--json",
            "--endpoint",
            f"ftp://{SECRET_USER}:{SECRET_PASSWORD}@127.0.0.1",
        ),
    }
    codes = {name: (run.returncode, run.result.get("status")) for name, run in runs.items()}
    assert codes == {
        "downloaded": (0, "downloaded"),
        "unchanged, endpoint from HF_ENDPOINT": (0, "unchanged"),
        "repo not found": (3, "error"),
        "unreachable": (6, "error"),
        "not http": (2, "error"),
    }
    for name, run in runs.items():
        for text in (run.stdout, run.stderr):
            assert SECRET_PASSWORD not in text and f"{SECRET_USER}:" not in text, f"{name}: {text}"
    assert "127.0.0.1" in runs["repo not found"].result["message"]  # the endpoint is named, without credentials
    stored = [p for p in list(tmp_path.rglob("*")) if p.is_file()]
    assert any(p.name == "complete.json" for p in stored)
    for path in stored:
        assert SECRET_PASSWORD.encode() not in path.read_bytes(), path


def _download(vlmkit, olah, test_repo, target, *args):
    run = vlmkit(test_repo.repo_id, "--local-dir", str(target), "--endpoint", olah.url, "--json", *args)
    assert run.returncode == 0, run.stderr
    return run.result


def test_marker_listing_no_files_is_not_complete(vlmkit, olah, test_repo, tmp_path):
    target = tmp_path / "m"
    state_dir(target).mkdir(parents=True)
    (state_dir(target) / "complete.json").write_text(
        json.dumps(
            {
                "repo": test_repo.repo_id,
                "revision": "main",
                "sha": test_repo.sha,
                "include": [],
                "exclude": [],
                "bytes": 0,
                "files": [],
                "verified_at": "2026-12-04T00:00:00+00:00",
            }
        )
    )
    result = _download(vlmkit, olah, test_repo, target)
    assert result["status"] == "downloaded" and result["files"] == len(test_repo.files)
    assert all((target / name).is_file() for name in test_repo.files)


def test_marker_whose_file_disagrees_with_the_verified_records_is_not_complete(vlmkit, olah, test_repo, tmp_path):
    target = tmp_path / "m"
    _download(vlmkit, olah, test_repo, target)
    # config.json replaced, and the marker edited to its new size and mtime (a marker copied from
    # elsewhere, or written by hand): the verified records still describe the original file.
    config = target / "config.json"
    config.write_bytes(b'{"model_type": "something else entirely"}')
    marker_path = state_dir(target) / "complete.json"
    marker = json.loads(marker_path.read_text())
    entry = next(f for f in marker["files"] if f["path"] == "config.json")
    marker["bytes"] += config.stat().st_size - entry["size"]
    entry.update(size=config.stat().st_size, mtime_ns=config.stat().st_mtime_ns)
    marker_path.write_text(json.dumps(marker))

    result = _download(vlmkit, olah, test_repo, target)
    assert result["status"] == "repaired" and result["repaired"] == ["config.json"]
    assert config.read_bytes() == test_repo.files["config.json"]


def test_marker_whose_sizes_disagree_with_its_total_is_not_complete(vlmkit, olah, test_repo, tmp_path):
    target = tmp_path / "m"
    _download(vlmkit, olah, test_repo, target)
    marker_path = state_dir(target) / "complete.json"
    marker = json.loads(marker_path.read_text())
    marker["bytes"] += 1
    marker_path.write_text(json.dumps(marker))
    result = _download(vlmkit, olah, test_repo, target)
    # Not taken as complete: listed and checked again (nothing to fetch), and the marker rewritten.
    assert result["status"] == "unchanged"
    assert json.loads(marker_path.read_text())["bytes"] == sum(len(d) for d in test_repo.files.values())


def test_a_run_that_waited_for_the_lock_keeps_the_records_of_the_run_before_it(vlmkit, relay, test_repo, tmp_path):
    target = tmp_path / "m"
    # The first run takes the lock, then meets a 503 that asks it to wait 5 s before it records anything.
    relay.canned = [http_response(503, "Service Unavailable", {"Retry-After": "5"})]
    first = vlmkit.start(test_repo.repo_id, "--local-dir", str(target), "--endpoint", relay.url)
    wait_until(
        lambda: relay.canned_sent > 0,
        60,
        "the first run to meet the 503",
        interval=0.05,
        give_up=lambda: first.poll() is not None and f"the first run ended: {first.communicate()}",
    )
    # The second run wants one file only: it verifies and records it once the lock is its own.
    second = vlmkit.start(
        test_repo.repo_id, "--local-dir", str(target), "--endpoint", relay.url, "--include", "config.json"
    )
    first_out, first_err = first.communicate(timeout=90)
    second_out, second_err = second.communicate(timeout=90)
    assert first.returncode == 0 and second.returncode == 0, first_err + second_err
    assert f"waiting for another vlmkit download into {target}" in second_out

    records = json.loads((state_dir(target) / "verified.json").read_text())
    assert set(records) == set(test_repo.files), "the waiting run wrote back the records it read before the lock"
