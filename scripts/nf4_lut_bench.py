"""The byte-permute NF4 kernel (nf4_lut.py) against bitsandbytes and the bit-test Triton kernel, on one CUDA GPU.

Per linear shape of the 11B and 90B language models and 1, 8 and 16 rows: microseconds per call (CUDA graph of
20 calls, median of 10 replays), weight bytes read per second, and each result's largest difference from
x @ dequantize(W).T computed in float32, relative to the largest output. One JSON line per (shape, rows).

    python scripts/nf4_lut_bench.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cuda_timing import graph_time  # noqa: E402
from inference.backends.nf4_kernel import NF4Weight  # noqa: E402
from inference.backends.nf4_lut import nf4_lut_matmul  # noqa: E402

SHAPES = [
    ("11b", "q/o", 4096, 4096), ("11b", "k/v", 1024, 4096), ("11b", "gate/up", 14336, 4096),
    ("11b", "down", 4096, 14336), ("90b", "q/o", 8192, 8192), ("90b", "gate/up", 28672, 8192),
    ("90b", "down", 8192, 28672),
]


@torch.inference_mode()
def main() -> int:
    torch.manual_seed(0)
    only = sys.argv[1:]  # e.g. "check" to run one small shape
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    for model, layer, n, k in SHAPES[:1] if only else SHAPES:
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
        del weight
        dequantized = bnbf.dequantize_4bit(packed, state).float()
        bits = NF4Weight(packed, state)
        weight_bytes = packed.numel() + state.absmax.numel()
        for rows in (1, 8, 16):
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            exact = x.float() @ dequantized.T
            candidates = {
                "bitsandbytes": lambda: bnb.matmul_4bit(x, packed, quant_state=state),
                "triton_bits": lambda: bits.matmul(x),
                "triton_lut": lambda: nf4_lut_matmul(x, bits),
            }
            result = {"model": model, "layer": layer, "N": n, "K": k, "rows": rows}
            for name, fn in candidates.items():
                try:
                    error = float((fn().float() - exact).abs().max() / exact.abs().max())
                    seconds = graph_time(fn)
                except Exception as exc:  # noqa: BLE001 - report and go on to the next candidate
                    result[name] = {"error": f"{type(exc).__name__}: {str(exc)[:600]}"}
                    continue
                result[name] = {"us": round(seconds * 1e6, 1), "GBps": round(weight_bytes / seconds / 1e9),
                                "max_relative_difference": round(error, 5)}
            print(json.dumps(result), flush=True)
        del packed, state, bits, dequantized
    return 0


if __name__ == "__main__":
    sys.exit(main())
