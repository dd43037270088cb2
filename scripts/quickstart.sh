#!/usr/bin/env bash
# The main job, end to end on this machine: set up, deploy vlmkit with Ansible to a disposable local
# test host (a Debian container booted with systemd, the tiny test model published on a local mirror,
# CPU profile), then ask the deployed service an image question with `vlmkit ask`.
# Needs root. Stop everything afterwards with: .venv/bin/python -m tests.lab down
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/python -m tests.lab up
.venv/bin/python - <<'PY'
from PIL import Image, ImageDraw
image = Image.new("RGB", (320, 200), "white")
draw = ImageDraw.Draw(image)
draw.rectangle((20, 20, 300, 180), outline="black", width=3)
draw.text((40, 90), "TIRE PRESSURE LOW  24 PSI", fill="red")
image.save(".cache/quickstart-dashboard.png")
PY
echo
echo "Asking the deployed service about .cache/quickstart-dashboard.png (random tiny model: the answer is noise):"
VLMKIT_API_KEY=$(.venv/bin/python -m tests.lab key) \
  .venv/bin/vlmkit ask .cache/quickstart-dashboard.png "What's the problem? What should be good numbers?" \
  --url "$(.venv/bin/python -m tests.lab url)/v1" --max-tokens 32
