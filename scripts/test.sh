#!/usr/bin/env bash
# Run every test: set up what is missing (scripts/setup.sh), then the whole pytest suite.
# Tests that need a GPU skip themselves here; the host-booting deploy tests need root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
