"""`vlmkit bench` reports against the memory-bandwidth bound measured on this GPU in the same run.

A decoding step reads every weight of the language model and its output head once, for all the requests
it decodes together (the token embeddings only by the row of each token; the KV cache of a short answer is
small beside the weights, and left out). So one request cannot decode faster than bandwidth / bytes per
token, and c requests together not faster than c times that. The bytes are those of the checkpoint as
stored (4-bit codes and their absmax values for an NF4 build), read from its safetensors headers; the
bandwidth is that of a read-only reduction over a buffer far larger than the L2 cache.

    python3 scripts/bound_report.py --checkpoint /tmp/q/11b $OUT/bench-11b-nf4-auto-static.json ...
    python3 scripts/bound_report.py --checkpoint DIR --bandwidth-tbs 4.3 REPORT.json   (no GPU needed)

One markdown row per report level: per-request decode p50 and total output against their bounds.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

# Read once per token by a decoding step: everything of the language model but the token embeddings.
READ_PER_TOKEN_PREFIX = "language_model."
NOT_READ_PER_TOKEN = ("language_model.model.embed_tokens.",)


def bytes_per_token(checkpoint: Path) -> int:
    """Bytes of the tensors a decoding step reads, from the headers of the checkpoint's safetensors files."""
    total = 0
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"{checkpoint}: no .safetensors files")
    for path in files:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
        for name, entry in header.items():
            if name == "__metadata__" or not name.startswith(READ_PER_TOKEN_PREFIX):
                continue
            if name.startswith(NOT_READ_PER_TOKEN):
                continue
            start, end = entry["data_offsets"]
            total += end - start
    return total


def measured_bandwidth(gibibytes: int = 8, repeats: int = 10) -> float:
    """Bytes per second a read-only reduction reaches over `gibibytes` on the current CUDA GPU (median)."""
    import statistics

    import torch

    buffer = torch.ones(gibibytes << 29, dtype=torch.float16, device="cuda")  # 2 bytes each
    buffer.sum(dtype=torch.float32)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        buffer.sum(dtype=torch.float32)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return buffer.numel() * buffer.element_size() / statistics.median(times)


def rows(report: dict, name: str, bound_per_request: float) -> list[str]:
    """One markdown row per level of a `vlmkit bench` report."""
    lines = []
    for level in report["levels"]:
        clients = level["concurrency"]
        decode = level["decode_tok_per_s"]["p50"]
        total = level["output_tok_per_s"]
        lines.append(
            f"| {name} | {clients} | {level['ttft_s']['p50'] * 1000:.0f} ms | "
            + (f"{decode:.1f} ({decode / bound_per_request:.0%})" if decode is not None else "-")
            + f" | {total:.1f} ({total / (clients * bound_per_request):.0%}) | {bound_per_request:.1f} |"
        )
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint the reports' server served")
    parser.add_argument("--bandwidth-tbs", type=float, help="TB/s to use instead of measuring on this GPU")
    parser.add_argument("reports", type=Path, nargs="+", help="vlmkit bench --json files")
    args = parser.parse_args(argv)
    bandwidth = args.bandwidth_tbs * 1e12 if args.bandwidth_tbs else measured_bandwidth()
    read = bytes_per_token(args.checkpoint)
    bound = bandwidth / read
    print(
        f"bandwidth {bandwidth / 1e12:.2f} TB/s ({'given' if args.bandwidth_tbs else 'measured'}), "
        f"{read / 1e9:.2f} GB read a step: at most {bound:.1f} tok/s per request, clients x that in total"
    )
    print("| report | clients | TTFT p50 | decode tok/s per request p50 (of bound) | total tok/s (of bound) | bound |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in args.reports:
        report = json.loads(path.read_text())
        for line in rows(report, path.stem.removeprefix("bench-"), bound):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
