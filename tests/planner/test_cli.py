"""`vlmkit plan` as a user and the preflight run it: text, JSON contract, exit status, --from-host."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from inference.planner.memory import GiB
from tests.lab.paths import REPO_ROOT
from tests.lab.published import BNB_90B, FIXTURES, META_90B

JSON_KEYS = {
    "schema",
    "method",
    "model",
    "source",
    "parameters",
    "settings",
    "gpus",
    "components",
    "weights_bytes",
    "total_bytes",
    "capacity_bytes",
    "fits",
    "placement",
    "max_context",
    "model_max_context",
    "suggestions",
    "recommendation",
}


def vlmkit(*args: str, cwd=FIXTURES, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "inference.cli", "plan", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plan_for_the_90b_bnb_4bit_on_80gb_prints_the_breakdown_and_fits():
    result = vlmkit(BNB_90B, "--gpu", "80GB")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for label in (
        "weights: self-attention decoder layers",
        "weights: cross-attention decoder layers",
        "weights: vision encoder",
        "KV cache",
        "cross-attention cache",
        "activations",
        "CUDA context",
        "margin",
        "total",
    ):
        assert label in out
    assert "FITS" in out and "largest context that fits" in out


def test_plan_for_the_90b_in_16_bit_on_80gb_does_not_fit_and_says_what_would():
    result = vlmkit(META_90B, "--gpu", "80GB")
    assert result.returncode == 1
    assert "DOES NOT FIT" in result.stdout
    assert "load in 4-bit" in result.stdout and "use 3 GPUs" in result.stdout


def test_plan_on_three_gpus_shows_where_each_part_goes():
    result = vlmkit(META_90B, "--gpus", "3x80GB")
    assert result.returncode == 0, result.stderr
    assert "placement" in result.stdout
    assert "layers 0-" in result.stdout and "output head" in result.stdout


def test_json_is_the_contract_the_preflight_reads():
    result = vlmkit(BNB_90B, "--gpu", "80GB", "--context", "16384", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert JSON_KEYS <= data.keys()
    assert data["fits"] is True and data["settings"]["context"] == 16384
    assert data["total_bytes"] == sum(data["components"].values())
    assert data["weights_bytes"] == sum(v for k, v in data["components"].items() if k.startswith("weights_"))
    assert data["placement"][0]["used_bytes"] == data["total_bytes"]
    assert data["capacity_bytes"] == 80 * GiB
    assert data["max_context"] >= 16384


def test_json_when_it_does_not_fit_carries_the_suggestions_and_exit_status_1():
    result = vlmkit(META_90B, "--gpu", "80GB", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["fits"] is False and data["max_context"] is None
    assert [s["change"] for s in data["suggestions"]] == ["bits", "gpus"]
    assert data["recommendation"] == data["suggestions"][0] and data["recommendation"]["fits"] is True


def test_formula_method_reproduces_the_seeds_figures():
    sixteen = json.loads(vlmkit(META_90B, "--method", "formula", "--params", "90B", "--json").stdout)
    four = json.loads(vlmkit(META_90B, "--method", "formula", "--params", "90B", "--bits", "4", "--json").stdout)
    assert sixteen["total_bytes"] == 216 * 10**9 and sixteen["gpus_needed"] == 3
    assert four["total_bytes"] == 54 * 10**9 and four["gpus_needed"] == 1


@pytest.mark.parametrize("written", ["90", "90B", "90b", "90e9", "90000000000", "0.09T", "90000M"])
def test_params_read_90_as_the_formula_writes_it_ninety_billion(written):
    result = vlmkit(META_90B, "--method", "formula", "--params", written, "--json")
    assert result.returncode == 1, result.stdout + result.stderr  # 216 GB: not on one 80 GB GPU
    data = json.loads(result.stdout)
    assert data["parameters"] == 90 * 10**9 and data["total_bytes"] == 216 * 10**9 and data["gpus_needed"] == 3


def test_params_alone_plans_with_the_formula_and_says_p_in_billions():
    result = vlmkit(META_90B, "--gpu", "80GB", "--params", "11")
    assert result.returncode == 0, result.stderr
    assert "P = 11.00 B parameters (given)" in result.stdout and "26.4 GB" in result.stdout and "FITS" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--params", "0"], "must be positive"),
        (["--params", "ninety"], "not a parameter count"),
        (["--params", "90X"], "not a parameter count"),
        (["--method", "exact", "--params", "90B"], "use it with --method formula"),
    ],
)
def test_a_params_value_that_cannot_be_the_formulas_p_is_refused_with_a_message(args, message):
    result = vlmkit(META_90B, *args)
    assert result.returncode == 2 and message in result.stderr, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_model_is_an_error_with_exit_status_2(tmp_path):
    result = vlmkit(str(tmp_path / "nothing-here"), "--json")
    assert result.returncode == 2
    assert "error" in json.loads(result.stdout)
    text = vlmkit(str(tmp_path / "nothing-here"))
    assert text.returncode == 2 and "vlmkit plan:" in text.stderr


def test_a_bad_gpu_size_is_an_error():
    result = vlmkit(BNB_90B, "--gpu", "eighty")
    assert result.returncode == 2 and "80GB" in result.stderr


def _fake_nvidia_smi(folder, output: str, status: int = 0) -> dict:
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{output}'\nexit {status}\n")
    script.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def test_from_host_reads_the_gpus_nvidia_smi_reports(tmp_path):
    env = _fake_nvidia_smi(tmp_path / "bin", "NVIDIA H800 PCIe, 81559\\nNVIDIA H800 PCIe, 81559\\n")
    data = json.loads(vlmkit(BNB_90B, "--from-host", "--json", env=env).stdout)
    assert [g["name"] for g in data["gpus"]] == ["NVIDIA H800 PCIe"] * 2
    assert all(g["memory_bytes"] == 81559 * 1024**2 for g in data["gpus"])


def test_from_host_without_nvidia_smi_fails_clearly(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = vlmkit(BNB_90B, "--from-host", env={"PATH": str(empty)})
    assert result.returncode == 2 and "nvidia-smi" in result.stderr


def test_from_host_when_nvidia_smi_fails_reports_its_message(tmp_path):
    env = _fake_nvidia_smi(
        tmp_path / "bin", "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver", 9
    )
    result = vlmkit(BNB_90B, "--from-host", env=env)
    assert result.returncode == 2 and "could not communicate" in result.stderr


@pytest.mark.parametrize("flag", ["--context", "--batch"])
def test_zero_context_or_batch_is_refused_by_the_parser(flag):
    assert vlmkit(BNB_90B, flag, "0").returncode == 2
