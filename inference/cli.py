"""The `vlmkit` command: one subcommand per module, imported only when used.

Each module named in COMMANDS provides `configure(parser)` (adds its arguments) and
`run(args) -> int` (the exit code). Importing lazily keeps `vlmkit download` and
`vlmkit ask` free of torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from inference import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("inference.server", "run the OpenAI-compatible inference service"),
    "ask": ("inference.client", "ask one question about an image, streaming the answer"),
    "chat": ("inference.chat", "hold a conversation about an image with follow-up questions"),
    "download": ("inference.download", "download a model through a Hugging Face mirror, resumable and verified"),
    "plan": ("inference.planner", "estimate whether a model fits the GPU memory you have"),
    "bench": ("inference.bench", "load an OpenAI-compatible endpoint with image+text requests; latency and throughput"),
    "usecases": (
        "inference.usecases",
        "score a deployed endpoint on everyday use cases (receipts, charts, homework...)",
    ),
    "ops": (
        "inference.ops",
        "operate a deployed server over SSH: tunnel, status, logs, restart, gpu-watch, ask, usecases, smoke",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmkit", description="Serve and operate Llama 3.2 Vision.")
    parser.add_argument("--version", action="version", version=f"vlmkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen_command(sys.argv[1:])
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module_name).configure(sub)
    return parser


def _chosen_command(argv: list[str]) -> str | None:
    return next((arg for arg in argv if arg in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv[1:] = argv
    args = build_parser().parse_args()
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
