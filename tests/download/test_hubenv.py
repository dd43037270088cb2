"""huggingface_hub reads HF_ENDPOINT and HF_HUB_DISABLE_XET at import time: vlmkit must not depend on import order."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.lab.paths import REPO_ROOT

pytestmark = pytest.mark.timeout(60)

PROBE = """
import json, sys
import huggingface_hub                      # imported first, with no HF_ENDPOINT and Xet on
from huggingface_hub import constants
before = (constants.ENDPOINT, constants.HF_HUB_DISABLE_XET)
from inference.download.hubenv import HubSettings, load_hub
hub = load_hub(HubSettings(endpoint=sys.argv[1], timeout=5))
from huggingface_hub.utils._runtime import is_xet_available
print(json.dumps({
    "before": before,
    "endpoint": constants.ENDPOINT,
    "xet_disabled": constants.HF_HUB_DISABLE_XET,
    "xet_available": is_xet_available(),
    "url": hub.hf_hub_url("org/name", "config.json", revision="main"),
}))
"""


def probe(endpoint, vlmkit):
    env = {k: v for k, v in vlmkit.env.items() if k not in ("HF_ENDPOINT", "HF_HUB_DISABLE_XET")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, endpoint], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def test_mirror_endpoint_and_xet_off_apply_even_if_huggingface_hub_was_imported_first(vlmkit):
    seen = probe("http://127.0.0.1:9", vlmkit)
    assert seen["before"] == ["https://huggingface.co", False]
    assert seen["endpoint"] == "http://127.0.0.1:9"
    assert seen["xet_disabled"] is True and seen["xet_available"] is False
    assert seen["url"] == "http://127.0.0.1:9/org/name/resolve/main/config.json"


def test_official_hub_keeps_xet(vlmkit):
    seen = probe("https://huggingface.co", vlmkit)
    assert seen["xet_disabled"] is False


def test_download_imports_neither_torch_nor_transformers(vlmkit, olah, test_repo, tmp_path):
    code = (
        "import sys\nfrom inference.cli import main\n"
        f"rc = main(['download', {test_repo.repo_id!r}, '--local-dir', {str(tmp_path / 'm')!r},"
        f" '--endpoint', {olah.url!r}, '--include', '*.json'])\n"
        "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=vlmkit.env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == "0 False False", out.stdout + out.stderr
