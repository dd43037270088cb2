"""A fleet behind HAProxy: requests reach every host, rolling upgrades drop none, a broken host stops
the rollout, a killed service is routed around. Two inference hosts and a balancer, each in its own
netns, the tiny model on CPU; deployed once for the module (tests/fleet/conftest.py)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from email.message import Message

import pytest

from tests.fleet.harness import (
    BACKEND_HEADER,
    CHECK_FALL,
    CHECK_INTERVAL_S,
    INVENTORY,
    RequestLoop,
    chat_body,
    current_version,
    source_with_version,
)

pytestmark = [pytest.mark.hosts]

HOST_1, HOST_2 = "vlmkit-fleet-1", "vlmkit-fleet-2"


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _post(url: str, body: bytes, key: str | None) -> tuple[int, Message, bytes]:
    """POST through urllib; the headers come back case-insensitive (HAProxy sends them lower-case)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def _upgrade_args(source, builds) -> tuple[str, ...]:
    """Deploy the vlmkit build made from `source` (its own wheel folder, the shared wheelhouse)."""
    return ("-e", f"python_env_source_dir={source}", "-e", f"python_env_wheel_dir={builds / 'dist'}")


def _status(fleet, name: str, tmp_path) -> dict[str, dict]:
    """playbooks/fleet-status.yml, read back from its JSON."""
    out = tmp_path / f"{name}.json"
    run = fleet.playbook("fleet-status.yml", name, extra_args=("-e", f"fleet_status_json={out}"))
    assert run.returncode == 0, _tail(run.output)
    return {row["host"]: row for row in json.loads(out.read_text())}


@pytest.mark.timeout(600)
def test_requests_through_the_balancer_reach_both_hosts_with_the_key_passed_through(fleet):
    model = fleet.model
    before = {name: fleet.balancer.sessions(name) for name in fleet.hosts}
    answered = {}
    for _ in range(12):
        status, headers, body = _post(
            f"{fleet.balancer.url}/v1/chat/completions", chat_body(model), fleet.vault.api_key
        )
        assert status == 200, body
        assert isinstance(json.loads(body)["choices"][0]["message"]["content"], str)
        answered[headers[BACKEND_HEADER]] = answered.get(headers[BACKEND_HEADER], 0) + 1
    assert set(answered) == set(fleet.hosts), f"answered by {answered}"
    # HAProxy's own counters agree: each host served requests.
    for name in fleet.hosts:
        assert fleet.balancer.sessions(name) > before[name], f"{name} got no request: {fleet.balancer.servers()[name]}"

    # The key goes through untouched and the hosts check it.
    for key in (None, "not-the-key"):
        status, _, body = _post(f"{fleet.balancer.url}/v1/chat/completions", chat_body(model), key)
        assert status == 401, body

    # A stream comes through as server-sent events, ending with [DONE].
    status, headers, body = _post(
        f"{fleet.balancer.url}/v1/chat/completions", chat_body(model, stream=True, max_tokens=8), fleet.vault.api_key
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream"), body
    events = [line for line in body.decode().splitlines() if line.startswith("data: ")]
    assert len(events) >= 2 and events[-1] == "data: [DONE]", body

    # The balancer's role is idempotent.
    again = fleet.playbook("fleet-balancer.yml", "balancer-second-run")
    assert again.returncode == 0, _tail(again.output)
    assert again.changed == 0, "second run changed:\n" + "\n".join(again.changed_tasks())


@pytest.mark.timeout(900)
def test_rolling_upgrade_under_load_drops_no_request_and_ends_on_the_new_version(fleet, tmp_path):
    old = {name: fleet.ready(name)["version"] for name in fleet.hosts}
    new_version = f"{current_version()}+fleet1"
    source = source_with_version(tmp_path / "src", new_version)

    with RequestLoop(fleet.balancer.url, fleet.vault.api_key, fleet.model) as loop:
        time.sleep(2)
        run = fleet.playbook("upgrade.yml", "upgrade", _upgrade_args(source, tmp_path))
        time.sleep(2)
    print(f"rolling upgrade: {run.seconds:.0f} s; client loop: {loop.summary()}")
    assert run.returncode == 0, _tail(run.output, 100)
    failed = loop.failed
    assert not failed, loop.summary()
    assert len(loop.results) >= 50, loop.summary()
    assert set(loop.backends()) == set(fleet.hosts), loop.summary()

    # One host at a time (a batch each), each reported going from its old version to the new one.
    flat = " ".join(run.output.split())
    assert flat.count("PLAY [Upgrade the inference hosts one at a time behind the balancer]") == len(fleet.hosts)
    for name in fleet.hosts:
        assert f"{name}: vlmkit {old[name]} -> {new_version}, ready" in flat, _tail(run.output, 100)
        ready = fleet.ready(name)
        assert ready["http_status"] == 200 and ready["version"] == new_version, ready
        assert fleet.balancer.status(name) == "UP"

    status = _status(fleet, "status-after-upgrade", tmp_path)
    for name in fleet.hosts:
        row = status[name]
        assert row["ready"] and row["version"] == row["installed"] == row["manifest_version"] == new_version, row
        assert row["model"] == "vlmkit-test/tiny-mllama" and row["model_sha"], row
        assert row["gpus"] == [] and row["balancer"] == "UP", row


@pytest.mark.timeout(600)
def test_killed_service_is_taken_out_of_the_balancer_within_the_health_check_interval(fleet):
    victim, survivor = HOST_2, HOST_1
    assert {name: fleet.balancer.status(name) for name in fleet.hosts} == {victim: "UP", survivor: "UP"}
    with RequestLoop(fleet.balancer.url, fleet.vault.api_key, fleet.model) as loop:
        time.sleep(2)
        pid = fleet.hosts[victim].ssh("systemctl show --property=MainPID --value vlmkit").stdout.strip()
        killed_at = time.monotonic()
        fleet.hosts[victim].ssh(f"kill -KILL {pid}")
        taken_out = fleet.balancer.wait_for(victim, lambda s: s.startswith("DOWN"), timeout=30)
        down_since = killed_at + taken_out
        # systemd restarts it; the balancer takes it back once its checks pass again.
        back = fleet.balancer.wait_for(victim, lambda s: s == "UP", timeout=180, poll=0.5)
        back_at = killed_at + back
        time.sleep(3)
    fleet.timings["kill -> out of the balancer"] = round(taken_out, 2)
    fleet.timings["kill -> back in the balancer"] = round(back, 1)
    print(f"killed {victim}: out of the balancer after {taken_out:.2f} s, back after {back:.1f} s; {loop.summary()}")
    # fall x interval, plus one check's time: the detection this configuration promises.
    assert taken_out <= CHECK_FALL * CHECK_INTERVAL_S + CHECK_INTERVAL_S + 1.0, f"{taken_out:.2f} s"
    # While it was out, the survivor answered everything (a request starts before its answer).
    during = loop.backends(since=down_since + 0.5, until=back_at - 1.0)
    assert set(during) == {survivor}, during
    assert loop.backends(since=back_at + 0.5).get(victim), f"{victim} got nothing once back: {loop.summary()}"
    # Only requests already on their way to the host when it died may fail (at most one per worker):
    # every request sent after the balancer took it out was answered.
    failed = loop.failed
    assert len(failed) <= loop.workers and all(r.started < down_since for r in failed), loop.summary()


@pytest.mark.timeout(900)
def test_rollout_stops_at_a_broken_host_and_the_fleet_keeps_serving_the_old_version(fleet, tmp_path):
    old = {name: fleet.ready(name)["version"] for name in fleet.hosts}
    new_version = f"{current_version()}+fleet2"
    source = source_with_version(tmp_path / "src", new_version)
    # The first host gets an invalid setting (max_queue must be >= 1): vlmkit serve refuses to start.
    inventory = tmp_path / "inventory"
    shutil.copytree(INVENTORY.parent, inventory)
    (inventory / "host_vars").mkdir()
    (inventory / "host_vars" / f"{HOST_1}.yml").write_text(
        "---\ninference_service_settings:\n  default_max_tokens: 16\n  max_tokens_cap: 64\n  max_queue: 0\n"
    )

    with RequestLoop(fleet.balancer.url, fleet.vault.api_key, fleet.model) as loop:
        time.sleep(2)
        run = fleet.playbook(
            "upgrade.yml", "upgrade-broken", _upgrade_args(source, tmp_path), inventory=inventory / "hosts.yml"
        )
        stopped_at = time.monotonic()
        time.sleep(4)
    print(f"broken rollout: {run.seconds:.0f} s; client loop: {loop.summary()}")
    assert run.returncode != 0, _tail(run.output)
    flat = " ".join(run.output.split())
    assert f"{HOST_1} failed its upgrade to vlmkit {new_version}" in flat, _tail(run.output, 80)
    assert "max_queue" in flat, _tail(run.output, 80)  # the service's own reason
    assert "The rollout stops here" in flat
    # It stopped after the first host: the second was never touched and serves the old version.
    assert HOST_2 not in run.recap or run.recap[HOST_2]["changed"] == 0, run.recap
    assert run.recap[HOST_1]["failed"] == 1, run.recap
    survivor = fleet.ready(HOST_2)
    assert survivor["http_status"] == 200 and survivor["version"] == old[HOST_2], survivor
    # The balancer routes around the broken host: out of rotation, every request answered by the other.
    assert fleet.balancer.status(HOST_1) == "MAINT"
    assert fleet.ready(HOST_1)["http_status"] != 200
    failed = loop.failed
    assert not failed, loop.summary()
    assert set(loop.backends(since=stopped_at)) == {HOST_2}, loop.summary()

    status = _status(fleet, "status-after-broken-rollout", tmp_path)
    assert not status[HOST_1]["ready"] and status[HOST_1]["installed"] == new_version, status[HOST_1]
    assert status[HOST_1]["balancer"] == "MAINT", status[HOST_1]
    assert status[HOST_2]["ready"] and status[HOST_2]["version"] == old[HOST_2], status[HOST_2]
