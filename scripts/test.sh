#!/usr/bin/env bash
# Run every test: set up what is missing (scripts/setup.sh), then the whole pytest suite.
# Tests that need a GPU skip themselves here; the host-booting deploy tests need root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The venv's tools (ansible-playbook, ansible-inventory, vlmkit) are called by name from the tests.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
