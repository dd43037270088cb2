"""`vlmkit plan MODEL`: will the model fit the GPUs, and if not, what would.

Exit status: 0 fits, 1 does not fit, 2 the plan could not be made (bad arguments, unreadable
checkpoint, unreachable mirror, no GPU for --from-host). With --json the result (or
{"error": ...}) is printed as one JSON object on stdout in every case.
"""

from __future__ import annotations

import argparse
import json
import sys

from inference.planner import api, report
from inference.planner.checkpoint import CheckpointError
from inference.planner.formula import parameter_count
from inference.planner.gpus import GpuError, from_host, parse_gpus

FITS, DOES_NOT_FIT, ERROR = 0, 1, 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="checkpoint folder, or repo id read through HF_ENDPOINT (config, index and headers only)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--gpu", metavar="SIZE", help="one GPU of SIZE (80GB = 80 GiB, as GPUs are labelled; or 81559MiB)"
    )
    where.add_argument("--gpus", metavar="LIST", help="several GPUs: 2x80GB, or 80GB,48GB")
    where.add_argument("--from-host", action="store_true", help="the GPUs nvidia-smi reports on this machine")
    parser.add_argument(
        "--context",
        type=_positive,
        default=8192,
        metavar="N",
        help="tokens per sequence, prompt and answer together (default 8192)",
    )
    parser.add_argument("--batch", type=_positive, default=1, metavar="N", help="sequences served at once (default 1)")
    parser.add_argument("--images", type=_count, default=1, metavar="N", help="images per sequence (default 1)")
    parser.add_argument(
        "--bits", type=int, choices=(16, 8, 4), help="plan for weights in these bits (default: as stored)"
    )
    parser.add_argument(
        "--method",
        choices=("exact", "formula"),
        default=None,
        help="exact (default): from the checkpoint; formula: the common rule of thumb "
        "(the default when --params is given)",
    )
    parser.add_argument(
        "--params",
        type=_parameters,
        metavar="P",
        help="the formula's parameter count instead of counting it (90B, 11b, 90e9; "
        "a bare number below 10000 is billions, as the formula writes P = 90)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=api.memory.MARGIN_FRACTION * 100,
        metavar="PCT",
        help="share of the allocations kept free (default 5)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (the preflight's contract)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.params is not None and args.method == "exact":
            raise ValueError(
                "--params is the formula's P: use it with --method formula (the exact method "
                "counts the parameters from the checkpoint)"
            )
        gpus = _gpus(args)
        if args.method == "formula" or args.params is not None:
            result = api.formula(args.model, gpus, bits=args.bits or 16, parameters=args.params)
            _emit(args, result, report.render_formula(result))
            return FITS if result["fits"] else DOES_NOT_FIT
        plan = api.plan(
            args.model,
            gpus,
            context=args.context,
            batch=args.batch,
            images=args.images,
            bits=args.bits,
            margin_fraction=args.margin / 100,
        )
    except (CheckpointError, GpuError, ValueError) as exc:
        if args.json:
            print(json.dumps({"schema": api.SCHEMA, "error": str(exc)}))
        else:
            print(f"vlmkit plan: {exc}", file=sys.stderr)
        return ERROR
    _emit(args, plan.to_dict(), report.render_plan(plan))
    return FITS if plan.fits else DOES_NOT_FIT


def _gpus(args):
    if args.from_host:
        return from_host()
    if args.gpus:
        return parse_gpus(args.gpus)
    return parse_gpus(args.gpu or api.DEFAULT_GPUS)


def _emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _parameters(text: str) -> float:
    try:
        return parameter_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
