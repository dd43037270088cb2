"""The fused NF4 kernel against bitsandbytes on one CUDA GPU, layer by layer.

For every distinct linear shape of the Llama 3.2 Vision 11B and 90B language models (random
weights, quantized by bitsandbytes to nf4 with double quantization, as the service does), and for
1, 8 and 16 rows (decoding: one request, a batch) and 32, 64 and 128 (a short prompt's prefill, one row
bucket of the Triton kernel each): the time of bitsandbytes' matmul_4bit (as its
dispatch chooses), of bitsandbytes' fused kernel called directly, and of vlmkit's Triton kernel (each
captured in a CUDA graph of 20 calls, median of 10 replays), the
effective read bandwidth (4-bit weight bytes / time) and the largest difference between the two
results relative to the largest output. One JSON line per (shape, rows).

    PYTHONPATH=. python scripts/nf4_kernel_bench.py
"""

from __future__ import annotations

import json
import sys

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import torch
from bitsandbytes.backends.cuda.ops import _gemm_4bit_kernel_impl

from cuda_timing import graph_time
from inference.backends.nf4_kernel import NF4Weight

# (model, layer, out_features N, in_features K)
SHAPES = [
    ("11b", "q_proj/o_proj", 4096, 4096),
    ("11b", "k_proj/v_proj", 1024, 4096),
    ("11b", "gate_proj/up_proj", 14336, 4096),
    ("11b", "down_proj", 4096, 14336),
    ("90b", "q_proj/o_proj", 8192, 8192),
    ("90b", "k_proj/v_proj", 1024, 8192),
    ("90b", "gate_proj/up_proj", 28672, 8192),
    ("90b", "down_proj", 8192, 28672),
]
ROWS = (1, 8, 16, 32, 64, 128)


def bitsandbytes_fused(x, packed, state):
    return _gemm_4bit_kernel_impl(
        x,
        packed,
        state.shape,
        state.state2.absmax,
        state.blocksize,
        state.quant_type,
        absmax_8bit=state.absmax,
        absmax_code=state.state2.code,
        absmax_offset=state.offset,
    )


def kernels(x, packed, state, fused):
    """The three ways to multiply `x` by one 4-bit weight, each a call without arguments."""
    return {
        "bitsandbytes": lambda: bnb.matmul_4bit(x, packed, quant_state=state),
        # bitsandbytes' own fused kernel, which its H100 heuristic often passes over for dequantize + cuBLAS
        "bitsandbytes_fused": lambda: bitsandbytes_fused(x, packed, state),
        "triton": lambda: fused.matmul(x),
    }


@torch.inference_mode()
def main() -> int:
    torch.manual_seed(0)
    print(
        json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "bitsandbytes": bnb.__version__})
    )
    for model, layer, n, k in SHAPES:
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
        del weight
        fused = NF4Weight(packed, state)
        weight_bytes = packed.numel() + state.absmax.numel()
        for rows in ROWS:
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            candidates = kernels(x, packed, state, fused)
            expected = candidates["bitsandbytes"]().float()
            result = {"model": model, "layer": layer, "N": n, "K": k, "rows": rows}
            for name, fn in candidates.items():
                error = float((fn().float() - expected).abs().max() / expected.abs().max())
                seconds = graph_time(fn)
                result[name] = {
                    "us": round(seconds * 1e6, 1),
                    "GBps": round(weight_bytes / seconds / 1e9),
                    "max_relative_difference": round(error, 5),
                }
            print(json.dumps(result), flush=True)
        del packed, state, fused, candidates
    return 0


if __name__ == "__main__":
    sys.exit(main())
