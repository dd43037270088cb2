"""Where the checkout is and where the lab keeps what it builds once (base image, wheelhouse, tiny model)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "test-hosts"
