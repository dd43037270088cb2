"""`vlmkit download`: fetch a model repository through a Hugging Face mirror.

Resumable, verified against the repo's hashes, and idempotent: a rerun on a complete folder
reports "unchanged" in seconds. Built on huggingface_hub; imports neither torch nor
transformers. Exit codes are listed in `inference.download.errors.ExitCode`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict
from pathlib import Path

from inference.download.errors import DownloadError, ExitCode, Interrupted, UsageError

EPILOG = """\
exit codes: 0 done (downloaded, unchanged or repaired), 1 other failure, 2 usage,
3 repo not found, 4 gated or unauthorized, 5 revision not found,
6 endpoint unreachable after retries, 7 not enough disk space, 8 verification failed.

example (mainland China):
  HF_ENDPOINT=https://hf-mirror.com vlmkit download \\
      unsloth/Llama-3.2-90B-Vision-Instruct-bnb-4bit --local-dir /data/models/llama-90b-bnb4
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "repo", metavar="REPO", help="model repository, e.g. unsloth/Llama-3.2-90B-Vision-Instruct-bnb-4bit"
    )
    parser.add_argument("--local-dir", required=True, type=Path, metavar="DIR", help="folder the files go to")
    parser.add_argument("--revision", default="main", metavar="REV", help="branch, tag or commit sha (default: main)")
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="hub or mirror URL (default: $HF_ENDPOINT, else https://huggingface.co); "
        "with any endpoint but the official hub, Xet is disabled so every byte goes through it",
    )
    parser.add_argument(
        "--include", action="append", default=[], metavar="PATTERN", help="only files matching this glob (repeatable)"
    )
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="PATTERN", help="skip files matching this glob (repeatable)"
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding a Hugging Face token (default: $HF_TOKEN; the token is never printed)",
    )
    parser.add_argument("--verify", action="store_true", help="hash every file again, even if verified before")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object with the outcome on stdout; human lines go to stderr"
    )
    parser.add_argument(
        "--max-workers", type=_positive_int, default=4, metavar="N", help="files transferred at once (default: 4)"
    )
    parser.add_argument(
        "--retries",
        type=_non_negative_int,
        default=8,
        metavar="N",
        help="retries of a request that keeps failing without progress (default: 8)",
    )
    parser.add_argument(
        "--retry-time",
        type=_positive_float,
        default=600.0,
        metavar="SECONDS",
        help="give up when a request has failed without progress for this long (default: 600)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="connect and read timeout of each request (default: 30)",
    )
    parser.add_argument(
        "--reserve",
        type=parse_size,
        default=parse_size("1GiB"),
        metavar="SIZE",
        help="free space to leave on the disk after the download, e.g. 1GiB, 500MB, 0 (default: 1GiB)",
    )
    parser.add_argument(
        "--progress-interval",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (default: 30)",
    )


def run(args: argparse.Namespace) -> int:
    from inference.download.core import Console, Options, default_bar, run_download
    from inference.download.hubenv import HubSettings, endpoint_credentials, read_token, resolve_endpoint

    human = sys.stderr if args.json else sys.stdout
    console = Console(human, sys.stderr, endpoint_credentials(args.endpoint or os.environ.get("HF_ENDPOINT", "")))
    try:
        token, warnings = read_token(args.token_file)
        settings = HubSettings(endpoint=resolve_endpoint(args.endpoint), timeout=args.timeout, token=token)
        console = Console(human, sys.stderr, settings.secrets)
        for warning in warnings:
            console.warn(warning)
        options = Options(
            repo=args.repo,
            local_dir=args.local_dir.expanduser().resolve(),
            revision=args.revision,
            include=args.include,
            exclude=args.exclude,
            verify=args.verify,
            max_workers=args.max_workers,
            retries=args.retries,
            retry_time=args.retry_time,
            reserve=args.reserve,
            progress_interval=args.progress_interval,
            bar=default_bar(),
        )
        result = run_download(options, settings, console)
    except KeyboardInterrupt:
        return _fail(console, args, Interrupted("interrupted"))
    except DownloadError as exc:
        return _fail(console, args, exc)
    except Exception as exc:  # noqa: BLE001 - last resort: a message, not a traceback with a token in it
        return _fail(console, args, DownloadError(f"unexpected {type(exc).__name__}: {exc}"))
    console.info(
        f"{result.status}: {result.repo}@{result.sha[:12]} in {result.local_dir} "
        f"({result.files} files, {_gib(result.bytes)}; {len(result.fetched)} fetched) in {result.elapsed_s:.1f}s"
    )
    if args.json:
        print(console.redact(json.dumps(asdict(result))), flush=True)
    return ExitCode.OK


def _fail(console, args, exc: DownloadError) -> int:
    console.err.write(console.redact(f"error: {exc}") + "\n")
    if args.json:
        print(
            console.redact(
                json.dumps(
                    {
                        "status": "error",
                        "error": exc.kind,
                        "exit_code": int(exc.code),
                        "message": console.redact(str(exc)),
                        "repo": args.repo,
                    }
                )
            ),
            flush=True,
        )
    return int(exc.code)


def _gib(n: int) -> str:
    from inference.download.progress import human_bytes

    return human_bytes(n)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower().removesuffix("b") if match else None
    if not match or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 0, 500MB, 1GiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


__all__ = ["configure", "run", "ExitCode", "UsageError", "parse_size"]
