"""A fused NF4 matrix multiply for few rows (decoding), in Triton.

bitsandbytes multiplies a 4-bit weight by a batch of a few rows either with its own kernels or, for
many H100 shapes (e.g. 4096×4096 at 8 rows), by dequantizing the whole weight to 16-bit and calling
cuBLAS: that writes and reads the weight again in 16-bit, four times the bytes of the 4-bit weight,
at every decoding step. This kernel reads each packed weight byte once, unpacks the two NF4 codes,
looks them up, scales them by their block's absmax (itself 8-bit, double-quantized, decoded on the
fly) and multiplies on the tensor cores, for up to `MAX_ROWS` rows.

The weight layout is bitsandbytes' own (row-major [N, K], two codes per byte, the first in the high
nibble; one absmax per 64 consecutive values), so the checkpoint and bitsandbytes' other paths
(prefill, CPU) are unchanged. Without a GPU the same kernel runs in Triton's interpreter
(TRITON_INTERPRET=1), which is how the tests check it on the CPU.
"""

from __future__ import annotations

import logging
import os

import torch

from inference.model_layout import NESTED_BLOCKSIZE, NF4_BLOCKSIZE

try:
    import triton
    import triton.language as tl
except ImportError:  # triton comes with CUDA builds of torch; CPU-only installs may lack it
    triton = None

log = logging.getLogger(__name__)

MAX_ROWS = 16
# The kernel walks K in whole BLOCK_K steps without a mask: every BLOCK_K it may use must divide K.
K_MULTIPLE = 256


def available() -> bool:
    return triton is not None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _pick(q, bit: tl.constexpr, when_set, when_clear):
        return tl.where((q & bit) != 0, when_set, when_clear)

    @triton.jit
    def _nf4_value(q):
        """The NF4 code book (bitsandbytes' get_4bit_type("nf4")) looked up by bit tests, in registers: twice as
        fast on an H100 as loading it from memory, where every code is a gathered load."""
        q1 = _pick(q, 1, 0.0, -0.09105003625154495)
        high = _pick(q, 4,
                     _pick(q, 2, _pick(q, 1, 1.0, 0.7229568362236023), _pick(q, 1, 0.5626170039176941, 0.44070982933044434)),
                     _pick(q, 2, _pick(q, 1, 0.33791524171829224, 0.24611230194568634),
                           _pick(q, 1, 0.16093020141124725, 0.07958029955625534)))
        low = _pick(q, 4,
                    _pick(q, 2, q1, _pick(q, 1, -0.18477343022823334, -0.28444138169288635)),
                    _pick(q, 2, _pick(q, 1, -0.39491748809814453, -0.5250730514526367),
                          _pick(q, 1, -0.6961928009986877, -1.0)))
        return _pick(q, 8, high, low)

    @triton.jit
    def _nf4_matmul_kernel(
        x_ptr, weight_ptr, absmax_ptr, absmax_code_ptr, nested_absmax_ptr, absmax_offset,
        out_ptr, M, N, K,
        NESTED: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr, DOT_FP32: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        half: tl.constexpr = BLOCK_K // 2
        groups: tl.constexpr = BLOCK_K // 64
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        m = tl.arange(0, ROWS)
        m_ok = m < M
        pairs = tl.arange(0, half)
        group_ids = tl.arange(0, groups)
        accumulator = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
        blocks_per_row = K // 64
        for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
            packed = tl.load(weight_ptr + (rows[:, None] * K + k0) // 2 + pairs[None, :],
                             mask=row_ok[:, None], other=0)
            high = _nf4_value((packed >> 4).to(tl.int32))
            low = _nf4_value((packed & 15).to(tl.int32))
            block = rows[:, None] * blocks_per_row + k0 // 64 + group_ids[None, :]
            if NESTED:
                quantized = tl.load(absmax_ptr + block, mask=row_ok[:, None], other=0).to(tl.int32)
                scale = tl.load(absmax_code_ptr + quantized) * tl.load(nested_absmax_ptr + block // 256,
                                                                        mask=row_ok[:, None], other=0)
                scale = scale + absmax_offset
            else:
                scale = tl.load(absmax_ptr + block, mask=row_ok[:, None], other=0)
            scale = tl.reshape(tl.broadcast_to(scale[:, :, None], (BLOCK_N, groups, 32)), (BLOCK_N, half))
            columns = k0 + 2 * pairs
            x_even = tl.load(x_ptr + m[:, None] * K + columns[None, :], mask=m_ok[:, None], other=0)
            x_odd = tl.load(x_ptr + m[:, None] * K + columns[None, :] + 1, mask=m_ok[:, None], other=0)
            if DOT_FP32:
                high, low = high * scale, low * scale
                x_even, x_odd = x_even.to(tl.float32), x_odd.to(tl.float32)
            else:
                high = (high * scale).to(x_ptr.dtype.element_ty)
                low = (low * scale).to(x_ptr.dtype.element_ty)
            accumulator += tl.dot(x_even, tl.trans(high))
            accumulator += tl.dot(x_odd, tl.trans(low))
        target = out_ptr + m[:, None] * N + rows[None, :]
        ok = m_ok[:, None] & row_ok[None, :]
        if SPLIT_K == 1:
            tl.store(target, accumulator, mask=ok)
        else:
            tl.atomic_add(target, accumulator, mask=ok)

    _CONFIGS = [
        triton.Config({"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split_k}, num_warps=4, num_stages=stages)
        for block_n in (16, 32, 64)
        for block_k in (128, 256)
        for split_k in (1, 2, 4)
        for stages in (2, 3)
    ]
    # Tuned once per shape (a few seconds each, at the first decoding step) and remembered in Triton's cache.
    _tuned_kernel = triton.autotune(_CONFIGS, key=["M", "N", "K", "NESTED", "ROWS"], reset_to_zero=["out_ptr"],
                                    warmup=5, rep=20, cache_results=True)(_nf4_matmul_kernel)

# What the interpreter runs: one fixed configuration (autotuning times kernels on a GPU), and its dots in
# float32 (its bfloat16 dot returns garbage; the GPU multiplies in x's dtype).
INTERPRETER_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 128, "SPLIT_K": 2}


class UnsupportedWeight(ValueError):
    pass


def check_supported(quant_state) -> None:
    """Raise UnsupportedWeight unless the kernel handles this bitsandbytes 4-bit weight."""
    if quant_state.quant_type != "nf4":
        raise UnsupportedWeight(f"quant_type {quant_state.quant_type} (only nf4)")
    if quant_state.blocksize != NF4_BLOCKSIZE:
        raise UnsupportedWeight(f"blocksize {quant_state.blocksize} (only {NF4_BLOCKSIZE})")
    if quant_state.nested and quant_state.state2.blocksize != NESTED_BLOCKSIZE:
        raise UnsupportedWeight(f"nested blocksize {quant_state.state2.blocksize} (only {NESTED_BLOCKSIZE})")
    if quant_state.shape[1] % K_MULTIPLE:
        raise UnsupportedWeight(f"in_features {quant_state.shape[1]} is not a multiple of {K_MULTIPLE}")


class NF4Weight:
    """One bitsandbytes NF4 weight W [N, K], ready for `x @ W.T` on up to MAX_ROWS rows of x.

    Everything that would need a host sync (the double-quantization offset) is read here, once, so
    `matmul` can run inside a CUDA graph capture.
    """

    def __init__(self, packed_weight: torch.Tensor, quant_state) -> None:
        check_supported(quant_state)
        self.out_features, self.in_features = (int(size) for size in quant_state.shape)
        self.packed = packed_weight
        self.nested = bool(quant_state.nested)
        self.absmax = quant_state.absmax
        self.absmax_code = quant_state.state2.code if self.nested else self.absmax
        self.nested_absmax = quant_state.state2.absmax if self.nested else self.absmax
        self.offset = float(quant_state.offset) if self.nested else 0.0

    def matmul(self, x: torch.Tensor, config: dict | None = None) -> torch.Tensor:
        """x [..., K] @ W.T in x's dtype. `config` (BLOCK_N, BLOCK_K, SPLIT_K) skips autotuning."""
        n, k = self.out_features, self.in_features
        rows = x.reshape(-1, k).contiguous()
        m = rows.shape[0]
        if m > MAX_ROWS:
            raise ValueError(f"NF4Weight.matmul takes at most {MAX_ROWS} rows, got {m}")
        out = torch.zeros(m, n, dtype=torch.float32, device=x.device)
        arguments = (rows, self.packed, self.absmax, self.absmax_code, self.nested_absmax, self.offset,
                     out, m, n, k)
        if interpreted() or config is not None:
            config = config or INTERPRETER_CONFIG
            grid = (triton.cdiv(n, config["BLOCK_N"]), config["SPLIT_K"])
            _nf4_matmul_kernel[grid](*arguments, NESTED=self.nested, ROWS=MAX_ROWS,
                                     DOT_FP32=interpreted() or x.dtype == torch.float32, **config)
        else:
            def grid(meta):
                return (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])
            _tuned_kernel[grid](*arguments, NESTED=self.nested, ROWS=MAX_ROWS, DOT_FP32=x.dtype == torch.float32)
        return out.to(x.dtype).reshape(*x.shape[:-1], n)


def use_triton_kernel(model: torch.nn.Module, always: bool = False) -> int:
    """Give `model`'s NF4 layers the Triton kernel for few-row inputs; return how many layers can use it.

    With `always`, every input of up to MAX_ROWS rows takes it. Otherwise each (weight shape, rows)
    is timed once on both kernels at its first use outside a CUDA graph capture, and the faster one
    serves it from then on: bitsandbytes wins at one row (its gemv reaches ~1.1 TB/s on an H100), the
    Triton kernel on some shapes at eight, where bitsandbytes dequantizes to 16-bit and calls cuBLAS.
    Layers the kernel does not handle, and inputs of more than MAX_ROWS rows (prefill), keep
    bitsandbytes' own forward.
    """
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit) or module.weight.device.type != "cuda":
            continue
        try:
            weight = NF4Weight(module.weight.data, module.weight.quant_state)
        except UnsupportedWeight:
            continue
        module.forward = _forward_choosing_kernel(module, weight, module.forward, always)
        count += 1
    return count


# (out_features, in_features, rows) -> True when the Triton kernel was the faster one
_TRITON_FASTER: dict[tuple[int, int, int], bool] = {}


def _forward_choosing_kernel(module: torch.nn.Module, weight: NF4Weight, bitsandbytes_forward, always: bool):
    def triton_forward(x: torch.Tensor) -> torch.Tensor:
        out = weight.matmul(x)
        return out if module.bias is None else out + module.bias.to(out.dtype)

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > MAX_ROWS:
            return bitsandbytes_forward(x)
        if always:
            return triton_forward(x)
        if rows == 1:  # bitsandbytes' gemv is 3-6x faster than this kernel at one row (docs/lab/speed.md)
            return bitsandbytes_forward(x)
        key = (weight.out_features, weight.in_features, rows)
        faster = _TRITON_FASTER.get(key)
        if faster is None:
            if torch.cuda.is_current_stream_capturing():
                return bitsandbytes_forward(x)
            faster = _TRITON_FASTER[key] = _triton_is_faster(triton_forward, bitsandbytes_forward, x)
        return triton_forward(x) if faster else bitsandbytes_forward(x)
    return forward


def _triton_is_faster(triton_forward, bitsandbytes_forward, x: torch.Tensor) -> bool:
    try:
        triton_seconds = _seconds(triton_forward, x)
    except Exception as error:  # noqa: BLE001 - e.g. no C compiler for Triton's launcher: keep serving
        log.warning("nf4_kernel auto: the Triton kernel failed (%s: %s); bitsandbytes serves these layers",
                    type(error).__name__, error)
        return False
    return triton_seconds < _seconds(bitsandbytes_forward, x)


def _seconds(fn, x: torch.Tensor, repeats: int = 20) -> float:
    for _ in range(3):  # compile, tune, warm caches
        fn(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn(x)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats
