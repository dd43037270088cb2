"""The multi-GPU settings: what the config alone gets wrong (exit 2 naming the field), and what the host
makes wrong when the model loads (a GPU that does not exist, placement on a host without CUDA: exit 1
naming the field)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from inference.backends.base import BackendUnavailable
from inference.placement import resolve
from inference.planner.gpus import parse_gpus
from inference.settings import ConfigError, load_settings
from tests.lab.published import META_90B, fixture_dir
from tests.lab.server import free_port


def settings_from(tmp_path, **values):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))
    return load_settings(config)


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"max_memory": {0: "70GiB"}}, "max_memory", "only used with placement: max_memory"),
        ({"placement": "max_memory"}, "max_memory", "needs a cap per GPU"),
        (
            {"placement": "max_memory", "gpus": [0, 1], "max_memory": {0: "70GiB", 2: "70GiB"}},
            "max_memory",
            "GPU 2 is not one of gpus",
        ),
        ({"placement": "max_memory", "max_memory": {0: "70Gb"}}, "max_memory", "cannot read 0: 70Gb"),
        ({"placement": "max_memory", "max_memory": {0: "lots"}}, "max_memory", "cannot read"),
        ({"gpus": [0, 0]}, "gpus", "distinct"),
        ({"gpus": [-1]}, "gpus", "distinct"),
        ({"placement": "everywhere"}, "placement", "'auto', 'planner' or 'max_memory'"),
        ({"device": "cpu", "gpus": [0, 1]}, "gpus", "device is cpu"),
        ({"device": "cpu", "placement": "planner"}, "placement", "device is cpu"),
        ({"backend": "unsloth", "placement": "planner"}, "placement", "use backend: transformers"),
    ],
)
def test_a_placement_the_config_alone_gets_wrong_is_refused_naming_the_field(tmp_path, values, field, words):
    with pytest.raises(ConfigError) as caught:
        settings_from(tmp_path, **values)
    assert f"{field}: " in str(caught.value) and words in str(caught.value)


def test_placement_fields_come_from_yaml_and_from_vlmkit_environment_variables(tmp_path, monkeypatch):
    settings = settings_from(
        tmp_path, gpus=[0, 1, 2], placement="max_memory", max_memory={0: "70GiB", 1: "70GiB", 2: 75_000_000_000}
    )
    assert settings.gpus == [0, 1, 2] and settings.max_memory == {0: "70GiB", 1: "70GiB", 2: 75_000_000_000}
    assert settings_from(tmp_path).gpus == [] and settings_from(tmp_path).placement == "auto"
    monkeypatch.setenv("VLMKIT_GPUS", "[2, 3]")
    monkeypatch.setenv("VLMKIT_PLACEMENT", "planner")
    settings = settings_from(tmp_path, gpus=[0])
    assert settings.gpus == [2, 3] and settings.placement == "planner"


def test_vlmkit_serve_exits_2_naming_the_field_of_a_bad_placement(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"placement": "max_memory", "model_path": str(tmp_path)}))
    result = subprocess.run(
        [sys.executable, "-m", "inference.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "max_memory: placement: max_memory needs a cap per GPU" in result.stderr


HOST = parse_gpus("2x80GB")
MODEL = fixture_dir(META_90B)


@pytest.mark.parametrize(
    ("gpus", "placement", "max_memory", "message"),
    [
        ([0, 3], "auto", {}, "gpus: GPU 3 does not exist: torch sees GPUs 0-1"),
        ([2], "planner", {}, "gpus: GPU 2 does not exist"),
        ([], "max_memory", {0: "70GiB", 5: "70GiB"}, "max_memory: GPU 5 does not exist"),
    ],
)
def test_a_gpu_index_this_host_does_not_have_is_a_start_up_error_naming_the_field(gpus, placement, max_memory, message):
    with pytest.raises(BackendUnavailable, match=message):
        resolve("cuda", gpus, placement, max_memory, HOST, model_path=MODEL)


@pytest.mark.parametrize(
    ("gpus", "placement", "max_memory", "field"),
    [
        ([0, 1], "auto", {}, "gpus"),
        ([], "planner", {}, "placement"),
        ([], "max_memory", {0: "70GiB"}, "placement"),
    ],
)
def test_placement_options_on_a_host_without_cuda_are_a_start_up_error_naming_the_field(
    gpus, placement, max_memory, field
):
    with pytest.raises(BackendUnavailable, match=f"^{field}: spreads the model over GPUs, but it runs on the CPU"):
        resolve("cpu", gpus, placement, max_memory, [], model_path=MODEL)


def test_vlmkit_serve_with_gpus_on_this_cpu_host_exits_1_naming_the_field(tiny_model_dir, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model_path": str(tiny_model_dir), "gpus": [0, 1], "port": free_port()}))
    result = subprocess.run(
        [sys.executable, "-m", "inference.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "the model could not be loaded: gpus: spreads the model over GPUs, but it runs on the CPU" in result.stderr
