"""`vlmkit usecases`: everyday use cases as a quality check of a deployed endpoint.

    vlmkit usecases --url http://127.0.0.1:8000/v1 [--threshold 0.8]   # scored, a real model
    vlmkit usecases --url ... --plumbing                               # answers arrive (tiny model)

The images are drawn here from --seed with a known ground truth (scenes.py), the questions and
their checks are in cases.py, the checks in checks.py. The API key comes from $VLMKIT_API_KEY
(or --api-key). Exit status: 0 when every answer arrived (and, scored, the total reaches the
threshold if one is set), 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

SCORED_MAX_TOKENS = 1024
PLUMBING_MAX_TOKENS = 16


def configure(parser: argparse.ArgumentParser) -> None:
    from inference.client import add_connection_arguments

    add_connection_arguments(parser)
    add_suite_arguments(parser)


def add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    from inference.usecases.cases import DEFAULT_SEED

    parser.add_argument(
        "--plumbing", action="store_true", help="check only that answers arrive (for a tiny or random model); no scores"
    )
    parser.add_argument(
        "--threshold",
        type=_fraction,
        default=None,
        help="fail (exit 1) when the total score is below this, 0-1 (scored mode)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"draws other receipts, charts, homework... (default {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="CASE",
        help="run only this case (repeatable): receipt, chart, homework, nutrition, tire-pressure",
    )
    parser.add_argument("--json", action="store_true", help="print the whole report (answers included) as JSON")
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the images and report.json (questions, answers, scores) into DIR",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one answer may take (default 600)")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("the threshold is a fraction between 0 and 1")
    return value


def run(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("VLMKIT_API_KEY") or "none"
    return run_suite(args, args.url, api_key)


def run_suite(args: argparse.Namespace, url: str, api_key: str, out=None) -> int:
    """Run the suite against url with the options in args; the exit status. Shared with `vlmkit ops usecases`."""
    import openai

    from inference.usecases.cases import build_cases
    from inference.usecases.runner import Report, describe_turn, evaluate, save, summary

    out = out or sys.stdout
    cases = build_cases(args.seed)
    if args.only:
        unknown = sorted(set(args.only) - {case.name for case in cases})
        if unknown:
            print(
                f"vlmkit usecases: no such case: {', '.join(unknown)} (cases: "
                f"{', '.join(case.name for case in cases)})",
                file=sys.stderr,
            )
            return 2
        cases = [case for case in cases if case.name in args.only]
    client = openai.OpenAI(base_url=url, api_key=api_key, max_retries=1, timeout=args.timeout)
    try:
        model = args.model or client.models.list().data[0].id
    except openai.APIStatusError as exc:
        print(f"vlmkit usecases: {url} answered {exc.status_code} to /models", file=sys.stderr)
        return 1
    except openai.APIError:
        print(f"vlmkit usecases: cannot reach the server at {url}", file=sys.stderr)
        return 1
    max_tokens = args.max_tokens or (PLUMBING_MAX_TOKENS if args.plumbing else SCORED_MAX_TOKENS)
    temperature = 0.0 if args.temperature is None else args.temperature
    report = Report(url, model, args.seed, args.plumbing, None if args.plumbing else args.threshold)
    if not args.json:
        mode = "plumbing" if args.plumbing else "scored"
        print(
            f"use cases against {url} (model {model}, seed {args.seed}, {mode}, max_tokens {max_tokens})",
            file=out,
            flush=True,
        )

    def progress(case, turn) -> None:
        if not args.json:
            print(describe_turn(case, turn, args.plumbing), file=out, flush=True)

    evaluate(client, model, cases, report, max_tokens, temperature, on_turn=progress)
    if args.save is not None:
        save(report, cases, args.save)
    if args.json:
        print(json.dumps(report.to_json(), indent=2), file=out)
    else:
        print(summary(report), file=out)
    return 0 if report.passed else 1
