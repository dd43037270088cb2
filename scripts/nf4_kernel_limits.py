"""What bounds vlmkit's NF4 kernel on this GPU: its tuning space, its decoding, or its memory pipeline.

For two 90B shapes at 1 and 8 rows, microseconds per call (CUDA graph of 20 calls, median of 10 replays)
and weight bytes read per second of:
  tuned      the kernel as the service launches it (autotuned over its configurations);
  best_wide  the best of a wider sweep of tile sizes, steps, splits, warps and pipeline stages;
  no_decode  the same loads, tiles and dots with the code-book lookup replaced by a plain conversion of
             the packed bytes (wrong values, same memory traffic): the bound if decoding were free;
  copy       torch copying the packed weight (reads and writes it: the memory's own speed).

    PYTHONPATH=. python scripts/nf4_kernel_limits.py
"""

from __future__ import annotations

import itertools
import json
import sys

import bitsandbytes.functional as bnbf
import torch
import triton
import triton.language as tl

from cuda_timing import graph_time
from inference.backends import nf4_kernel
from inference.backends.nf4_kernel import NF4Weight, rows_bucket

SHAPES = [("90b", "gate/up", 28672, 8192), ("90b", "q/o", 8192, 8192)]


@triton.jit
def _no_decode_kernel(
    x_ptr,
    weight_ptr,
    absmax_ptr,
    out_ptr,
    M,
    N,
    K,
    ROW_BYTES,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUPS: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    m = tl.arange(0, ROWS)
    m_ok = m < M
    pairs = tl.arange(0, 32)
    columns = tl.arange(0, 64)
    accumulator = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
    blocks_per_row = ROW_BYTES // 32
    for start in range(pid_k * 32 * GROUPS, ROW_BYTES, 32 * GROUPS * SPLIT_K):
        for g in tl.static_range(GROUPS):
            offset = start + 32 * g
            packed = tl.load(
                weight_ptr + rows[:, None] * ROW_BYTES + offset + pairs[None, :], mask=row_ok[:, None], other=0
            )
            first = packed.to(tl.bfloat16)
            second = (packed & 15).to(tl.bfloat16)
            scale = tl.load(absmax_ptr + rows * blocks_per_row + offset // 32, mask=row_ok, other=0).to(tl.float32)
            x = tl.load(x_ptr + m[:, None] * K + 2 * offset + columns[None, :], mask=m_ok[:, None], other=0)
            x_even, x_odd = tl.split(tl.reshape(x, (ROWS, 32, 2)))
            part = tl.dot(x_even, tl.trans(first))
            part = tl.dot(x_odd, tl.trans(second), part)
            accumulator += part * scale[None, :]
    tl.atomic_add(out_ptr + m[:, None] * N + rows[None, :], accumulator, mask=m_ok[:, None] & row_ok[None, :])


def launch(weight: NF4Weight, x: torch.Tensor, config: dict, warps: int, stages: int, no_decode: bool = False):
    n, k = weight.out_features, weight.in_features
    out = torch.zeros(x.shape[0], n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, config["BLOCK_N"]), config["SPLIT_K"])
    if no_decode:
        _no_decode_kernel[grid](
            x,
            weight.parts.packed,
            weight.parts.absmax,
            out,
            x.shape[0],
            n,
            k,
            k // 2,
            ROWS=rows_bucket(x.shape[0]),
            num_warps=warps,
            num_stages=stages,
            **config,
        )
    else:
        nf4_kernel._nf4_matmul_kernel[grid](
            x,
            *weight.parts.kernel_arguments(),
            out,
            x.shape[0],
            n,
            k,
            k // 2,
            NESTED=weight.parts.nested,
            ROWS=rows_bucket(x.shape[0]),
            PERMUTES=True,
            DOT_FP32=False,
            num_warps=warps,
            num_stages=stages,
            **config,
        )
    return out


@torch.inference_mode()
def main() -> int:
    torch.manual_seed(0)
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    sweep = [
        ({"BLOCK_N": n, "GROUPS": g, "SPLIT_K": s}, w, st)
        for n, g, s, w, st in itertools.product((64, 128), (4, 8), (1, 4), (4, 8), (3, 4))
    ]
    for model, layer, n, k in SHAPES:
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
        del weight
        nf4 = NF4Weight(packed, state)
        weight_bytes = packed.numel() + state.absmax.numel()
        copy = graph_time(lambda: packed.clone())
        for rows in (1, 8):
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            result = {
                "model": model,
                "layer": layer,
                "N": n,
                "K": k,
                "rows": rows,
                "copy": {"us": round(copy * 1e6, 1), "GBps_read": round(weight_bytes / copy / 1e9)},
            }
            seconds = graph_time(lambda: nf4.matmul(x))
            result["tuned"] = {"us": round(seconds * 1e6, 1), "GBps": round(weight_bytes / seconds / 1e9)}
            for name, no_decode in (("best_wide", False), ("no_decode", True)):
                best = None
                for config, warps, stages in sweep:
                    try:
                        seconds = graph_time(lambda: launch(nf4, x, config, warps, stages, no_decode), replays=3)
                    except Exception:  # noqa: BLE001 - a configuration that does not fit (shared memory): skip it
                        continue
                    if best is None or seconds < best[0]:
                        best = (seconds, config, warps, stages)
                result[name] = {
                    "us": round(best[0] * 1e6, 1),
                    "GBps": round(weight_bytes / best[0] / 1e9),
                    "config": best[1],
                    "warps": best[2],
                    "stages": best[3],
                }
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
