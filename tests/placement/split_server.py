"""`vlmkit serve` with the model loaded through an explicit device_map (a JSON file) instead of the configured
placement: `python -m tests.placement.split_server serve --config CONFIG --device-map MAP`.

For the CPU test: accelerate cannot split a model across CPU "devices", so the test builds the planner's
device_map for GPUs, sends every entry to "cpu", and serves the tiny model loaded through it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import inference.backends
from inference import server


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])  # as `vlmkit serve`, so the lab starts it the same way
    server.configure(parser)
    parser.add_argument("--device-map", type=Path, required=True)
    args = parser.parse_args()
    device_map = json.loads(args.device_map.read_text())

    def load(settings):
        from inference.backends.transformers_backend import TransformersBackend

        return TransformersBackend(
            settings.model_path,
            device=settings.device,
            dtype=settings.dtype,
            max_context_tokens=settings.max_context_tokens,
            device_map=device_map,
        )

    inference.backends.load_backend = load  # server.build looks it up when it builds the engine
    return server.run(args)


if __name__ == "__main__":
    sys.exit(main())
