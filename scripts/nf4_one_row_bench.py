"""One row times an NF4 weight on one CUDA GPU: bitsandbytes, the Triton kernel and the CUDA one-row kernel.

For every distinct linear shape of the Llama 3.2 Vision 11B and 90B language models (random weights
quantized by bitsandbytes to nf4 with double quantization, as the service does): the largest difference
of each kernel from x @ dequantize(W).T in float32 (relative to the largest output), and its time per
call. The weights are cycled through enough copies (≥ 256 MB) that every call reads its weight from
memory, not from the 50 MB L2 cache, as a decoding step does. The one-row kernel is timed in several
block shapes, and once without its arithmetic (`loads`: what the memory allows with the same loads).
One JSON line per shape.

    PYTHONPATH=.:scripts python scripts/nf4_one_row_bench.py [--shapes 11b|90b|all]
"""

from __future__ import annotations

import argparse
import json
import sys

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import torch

from cuda_timing import cycled_time
from inference.backends.nf4_gemv import WARPS, NF4OneRow
from inference.backends.nf4_kernel import NF4Weight
from inference.backends.nf4_mma import NF4FewRows
from nf4_kernel_bench import SHAPES as LAYER_SHAPES

# nf4_kernel_bench's layers, and the 11B's stacked q/k/v (fuse_projections)
SHAPES = [*LAYER_SHAPES[:2], ("11b", "q/k/v stacked", 6144, 4096), *LAYER_SHAPES[2:]]
BYTES_CYCLED = 256 << 20
MMA_SHAPES = ((4, 2, 4), (4, 2, 6), (4, 4, 4), (8, 2, 3), (8, 1, 4), (2, 4, 8))
# The tensor-core kernel's byte-permute addressing (nf4_mma.kernel_source), in the service's shape and one other.
MMA_BYTE_PERMUTE_SHAPES = ((8, 1, 4), (8, 2, 3))


def candidates(x: torch.Tensor):
    """(name, weight -> call without arguments, whether its result is checked) for every kernel and variant."""

    def one_row(rows=None, warps=WARPS, decode=True):
        def make(packed, state):
            kernel = NF4OneRow(packed, state, rows, warps)
            return lambda: kernel.matmul(x, decode=decode)

        return make

    def triton(packed, state):
        kernel = NF4Weight(packed, state)
        return lambda: kernel.matmul(x)

    def mma(warps, unroll, ctas, byte_permute=False):
        def make(packed, state):
            kernel = NF4FewRows(packed, state, warps, unroll, ctas, byte_permute)
            return lambda: kernel.matmul(x)

        return make

    yield "bitsandbytes", lambda p, s: lambda: bnb.matmul_4bit(x, p, quant_state=s), True
    yield "triton", triton, True
    if x.shape[0] == 1:
        yield "one_row", one_row(), True
        yield "one_row_loads", one_row(rows=4, decode=False), False
    for warps, unroll, ctas in MMA_SHAPES:
        yield f"mma_w{warps}_u{unroll}_c{ctas}", mma(warps, unroll, ctas), True
    for warps, unroll, ctas in MMA_BYTE_PERMUTE_SHAPES:
        yield f"mma_w{warps}_u{unroll}_c{ctas}_prmt", mma(warps, unroll, ctas, byte_permute=True), True


def measure(calls: list, expected: torch.Tensor | None) -> dict:
    """Largest difference from `expected` relative to its largest value, and time per call."""
    try:
        entry = {}
        if expected is not None:
            difference = (calls[0]().float() - expected).abs().max() / expected.abs().max()
            entry["max_relative_difference"] = round(float(difference), 5)
        seconds = cycled_time(calls)
        entry["us"] = round(seconds * 1e6, 2)
        entry["seconds"] = seconds
        return entry
    except Exception as error:  # noqa: BLE001 - report and go on to the next candidate
        return {"error": f"{type(error).__name__}: {error}"[:400]}


@torch.inference_mode()
def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="all", choices=("11b", "90b", "all"))
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "bitsandbytes": bnb.__version__})
    )
    for model, layer, n, k in SHAPES:
        if args.shapes not in ("all", model):
            continue
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
        del weight
        weight_bytes = packed.numel() + state.absmax.numel()
        copies = max(1, min(32, BYTES_CYCLED // weight_bytes))
        weights = [(packed.clone(), state) for _ in range(copies)]
        for rows in args.rows:
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            expected = x.float() @ bnbf.dequantize_4bit(packed, state).float().T
            result = {"model": model, "layer": layer, "N": n, "K": k, "rows": rows, "copies": copies}
            for name, make, check in candidates(x):
                result[name] = measure([make(p, s) for p, s in weights], expected if check else None)
            for entry in result.values():
                if isinstance(entry, dict) and "seconds" in entry:
                    entry["GBps"] = round(weight_bytes / entry.pop("seconds") / 1e9)
            print(json.dumps(result), flush=True)
        weights.clear()
        del packed, state
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
