"""`vlmkit bench`: load an OpenAI-compatible endpoint with image+text requests and report latency and throughput.

Exit status: 0 every measured request succeeded; 1 some failed, or the run stopped (server
unreachable, refused the warm-up, interrupted); 2 bad arguments or images. The table goes to
stdout, progress and errors to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
from collections import Counter
from pathlib import Path

from inference import __version__
from inference.bench import client as bench_client
from inference.bench import report as bench_report
from inference.bench import workload as bench_workload
from inference.bench.load import run_level, warm_up
from inference.bench.stats import summarize_level

DEFAULT_URL = "http://127.0.0.1:8000/v1"
OK, FAILED, USAGE = 0, 1, 2

EPILOG = """\
metrics (docs/bench.md): TTFT = request sent -> first content chunk; ITL = gaps between content
chunks; decode tok/s per request = (completion_tokens - 1) / (last chunk - first chunk); total
tok/s = completion tokens of a level / its wall time. Token counts are the server's usage.

example (a GPU server, answers of exactly 128 tokens):
  VLMKIT_API_KEY=... vlmkit bench --url http://127.0.0.1:8000/v1 --fixed-output --max-tokens 128 \\
      --concurrency 1,8 --requests 32 --json bench.json --plot bench.png
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--url",
        default=os.environ.get("VLMKIT_URL", DEFAULT_URL),
        help=f"the server's OpenAI base URL (default {DEFAULT_URL}, or $VLMKIT_URL); "
        "the API key is read from $VLMKIT_API_KEY",
    )
    parser.add_argument("--model", help="model id (default: the server's only model, from /models)")
    parser.add_argument(
        "--concurrency",
        type=_levels,
        default=[1, 2, 4, 8],
        metavar="N,N,...",
        help="concurrent clients, one measurement per level (default 1,2,4,8)",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--requests", type=_positive_int, metavar="N", help="requests per level, shared by its clients (default 16)"
    )
    amount.add_argument(
        "--duration",
        type=_positive_float,
        metavar="S",
        help="seconds per level instead: clients start requests until then, and those in flight finish",
    )
    parser.add_argument(
        "--max-tokens", type=_positive_int, default=128, metavar="N", help="longest answer, in tokens (default 128)"
    )
    parser.add_argument(
        "--fixed-output",
        action="store_true",
        help="every answer exactly --max-tokens long (sends min_tokens, vLLM's extension, which vlmkit serve supports)",
    )
    parser.add_argument(
        "--image-size",
        type=_size,
        default=(1120, 1120),
        metavar="WxH",
        help="size of the generated images (default 1120x1120: four 560x560 tiles)",
    )
    parser.add_argument(
        "--images",
        type=_positive_int,
        default=4,
        metavar="N",
        help="how many different images to generate (default 4); each is sent again and again, which a server that "
        "keeps recent images (vlmkit serve's image_cache_size) answers faster: for figures on new images only, turn "
        "that off or send at least as many images as requests",
    )
    parser.add_argument(
        "--image-dir",
        type=Path,
        metavar="DIR",
        help="send the image files in this folder as they are, instead of generated ones",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="question to ask (repeatable; default: eleven everyday questions about images)",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_int,
        default=1,
        metavar="N",
        help="requests sent one by one before measuring, not counted (default 1)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the generated images, and request i is sent with seed + i (default 0)",
    )
    parser.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (default: the server's)")
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=600.0,
        metavar="S",
        help="give up on a request after this many seconds (default 600)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="write the whole report, every request included, as JSON"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="write a PNG of latency and throughput against concurrency (needs matplotlib)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="send nothing: print the table (and write --plot) from a report saved with --json, "
        "e.g. on a machine that has matplotlib",
    )


def run(args: argparse.Namespace) -> int:
    if args.plot is not None and not bench_report.plot_available():
        return _usage(
            "--plot needs matplotlib, which is not installed here: `pip install matplotlib` "
            "(into the same environment as vlmkit), or leave out --plot"
        )
    for path in (args.json, args.plot):
        if path is not None and not path.resolve().parent.is_dir():
            return _usage(f"cannot write {path}: no folder {path.resolve().parent}")
    if args.from_json is not None:
        return _from_json(args)
    try:
        workload = bench_workload.build(args.image_dir, args.images, args.image_size, args.prompt, args.seed)
    except (bench_workload.WorkloadError, OSError) as exc:
        return _usage(str(exc))

    report = new_report(args, workload)
    try:
        asyncio.run(_bench(args, workload, report))
    except KeyboardInterrupt:
        report["aborted"] = "interrupted"
    if report["levels"]:
        print(bench_report.render_table(report))
    if args.json is not None:
        bench_report.write_json(report, args.json)
    if args.plot is not None and report["levels"]:
        bench_report.plot(report, args.plot)
    if report["aborted"]:
        _say(f"stopped: {report['aborted']}")
        return FAILED
    errors = report["totals"]["errors"]
    if errors:
        _say(f"{errors} of {report['totals']['requests']} requests failed")
        return FAILED
    return OK


def _from_json(args: argparse.Namespace) -> int:
    try:
        report = json.loads(args.from_json.read_text())
    except (OSError, ValueError) as exc:
        return _usage(f"cannot read {args.from_json}: {exc}")
    if not isinstance(report, dict) or report.get("schema") != bench_report.SCHEMA:
        return _usage(f"{args.from_json} is not a vlmkit bench report ({bench_report.SCHEMA})")
    if not report["levels"]:
        return _usage(f"{args.from_json} has no measured levels (stopped: {report.get('aborted')})")
    print(bench_report.render_table(report))
    if args.plot is not None:
        bench_report.plot(report, args.plot)
    return OK


def new_report(args: argparse.Namespace, workload: bench_workload.Workload) -> dict:
    return {
        "schema": bench_report.SCHEMA,
        "vlmkit_version": __version__,
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "url": args.url,
            "model": args.model,
            "concurrency": args.concurrency,
            "requests_per_level": None if args.duration else (args.requests or 16),
            "duration_s": args.duration,
            "max_tokens": args.max_tokens,
            "fixed_output": args.fixed_output,
            "temperature": args.temperature,
            "seed": args.seed,
            "warmup": args.warmup,
            "timeout_s": args.timeout,
        },
        "workload": workload.describe(),
        "warmup": {"requests": 0, "errors": 0, "errors_by_kind": {}},
        "levels": [],
        "totals": {"requests": 0, "completed": 0, "errors": 0, "completion_tokens": 0},
        "aborted": None,
    }


async def _bench(args: argparse.Namespace, workload: bench_workload.Workload, report: dict) -> None:
    """Fill `report` as the run goes, so an interrupted run still reports the levels it finished."""
    config = report["config"]
    api_key = os.environ.get("VLMKIT_API_KEY") or "none"
    client = bench_client.make_client(args.url, api_key, args.timeout, max(args.concurrency))
    async with client:
        if config["model"] is None:
            try:
                config["model"] = await bench_client.served_model(client)
            except Exception as exc:  # noqa: BLE001 - classify() names any failure in the report
                kind, message = bench_client.classify(exc)
                report["aborted"] = f"could not list the server's models at {args.url} ({kind}: {message})"
                return
        options = bench_client.RequestOptions(
            model=config["model"],
            max_tokens=args.max_tokens,
            fixed_output=args.fixed_output,
            temperature=args.temperature,
            seed=args.seed,
        )
        if args.warmup:
            _say(f"warming up: {args.warmup} request{'s' if args.warmup != 1 else ''}")
            results = await warm_up(client, workload, options, args.warmup)
            failed = [r for r in results if not r.ok]
            report["warmup"] = {
                "requests": len(results),
                "errors": len(failed),
                "errors_by_kind": dict(Counter(r.error_kind for r in failed)),
            }
            if len(failed) == len(results):
                first = failed[0]
                report["aborted"] = f"every warm-up request failed ({first.error_kind}: {first.error})"
                return
        for concurrency in args.concurrency:
            amount = f"{args.duration:g} s" if args.duration else f"{config['requests_per_level']} requests"
            _say(f"concurrency {concurrency}: {amount} ...")
            level = await run_level(
                client,
                workload,
                options,
                concurrency,
                requests=None if args.duration else config["requests_per_level"],
                duration=args.duration,
            )
            summary = summarize_level(level)
            report["levels"].append(summary)
            totals = report["totals"]
            for key in ("requests", "completed", "errors", "completion_tokens"):
                totals[key] += summary[key]
            _say(
                f"concurrency {concurrency}: {summary['completed']} completed, {summary['errors']} errors, "
                f"{summary['wall_s']:.1f} s"
            )


def _say(message: str) -> None:
    print(f"vlmkit bench: {message}", file=sys.stderr, flush=True)


def _usage(message: str) -> int:
    _say(message)
    return USAGE


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers like 1,2,4,8") from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more levels of at least 1, like 1,2,4,8")
    return sorted(set(levels))


def _size(text: str) -> tuple[int, int]:
    try:
        return bench_workload.parse_size(text)
    except bench_workload.WorkloadError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value
