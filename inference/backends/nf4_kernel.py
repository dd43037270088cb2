"""A fused NF4 matrix multiply for few rows (decoding) and short prompts (prefill), in Triton.

bitsandbytes multiplies a 4-bit weight by a batch of a few rows either with its own kernels or, for
many H100 shapes (e.g. 4096×4096 at 8 rows), by dequantizing the whole weight to 16-bit and calling
cuBLAS: that writes and reads the weight again in 16-bit, four times the bytes of the 4-bit weight,
at every decoding step. This kernel reads each packed weight byte once, unpacks the two NF4 codes,
looks them up, multiplies on the tensor cores and scales each block's dot product by the block's absmax
(itself 8-bit, double-quantized, decoded on the fly), for up to `MAX_ROWS` rows. The rows are padded to a
power-of-two bucket (`rows_bucket`) and multiplied as one tile, so the weight is read once per product
whatever the row count. On CUDA with bfloat16
inputs the code book is looked up by byte permutes (nf4_decode_ptx.py: 8 codes in ~30 instructions);
elsewhere by bit tests (~45 instructions a code, which bound the kernel by arithmetic, not memory).

The weight layout is bitsandbytes' own (row-major [N, K], two codes per byte, the first in the high
nibble; one absmax per 64 consecutive values), so the checkpoint and bitsandbytes' other paths
(prefill, CPU) are unchanged. Without a GPU the same kernel runs in Triton's interpreter
(TRITON_INTERPRET=1), which is how the tests check it on the CPU.
"""

from __future__ import annotations

import logging
import os

import torch

from inference.backends import nf4_gemv, nf4_mma
from inference.backends.nf4_decode_ptx import decode_asm
from inference.backends.nf4_parts import NF4Parts, UnsupportedWeight
from inference.model_layout import NESTED_BLOCKSIZE

try:
    import triton
    import triton.language as tl
except ImportError:  # triton comes with CUDA builds of torch; CPU-only installs may lack it
    triton = None

log = logging.getLogger(__name__)

# The row tile of the kernel is a power of two from MIN_ROWS (tl.dot's smallest operand) to MAX_ROWS. The
# weight's bytes do not grow with the rows but the dot's work does: at 128 rows (90B gate/up: 60 GFLOP) it
# rivals the time to read the 4-bit weight, and the [ROWS, BLOCK_N] float32 tiles fill the registers. More
# rows (long prompts) stay with bitsandbytes, which dequantizes the weight once and multiplies with cuBLAS.
MIN_ROWS = 16
MAX_ROWS = 128
# The kernel walks K in whole steps of GROUPS blocks of 64 without a mask: every step it may use must divide K.
K_MULTIPLE = 256


def available() -> bool:
    return triton is not None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def rows_bucket(rows: int) -> int:
    """The kernel's row tile for up to MAX_ROWS rows of x: the smallest power of two from MIN_ROWS that holds them."""
    return max(MIN_ROWS, 1 << (rows - 1).bit_length())


if triton is not None:
    _DECODE_PTX = tl.constexpr(decode_asm())
    _NESTED_BLOCKSIZE = tl.constexpr(NESTED_BLOCKSIZE)

    @triton.jit
    def _pick(q, bit: tl.constexpr, when_set, when_clear):
        return tl.where((q & bit) != 0, when_set, when_clear)

    @triton.jit
    def _nf4_value(q):
        """The NF4 code book (bitsandbytes' get_4bit_type("nf4")) looked up by bit tests, in registers: twice as
        fast on an H100 as loading it from memory, where every code is a gathered load."""
        q1 = _pick(q, 1, 0.0, -0.09105003625154495)
        high = _pick(
            q,
            4,
            _pick(q, 2, _pick(q, 1, 1.0, 0.7229568362236023), _pick(q, 1, 0.5626170039176941, 0.44070982933044434)),
            _pick(
                q,
                2,
                _pick(q, 1, 0.33791524171829224, 0.24611230194568634),
                _pick(q, 1, 0.16093020141124725, 0.07958029955625534),
            ),
        )
        low = _pick(
            q,
            4,
            _pick(q, 2, q1, _pick(q, 1, -0.18477343022823334, -0.28444138169288635)),
            _pick(q, 2, _pick(q, 1, -0.39491748809814453, -0.5250730514526367), _pick(q, 1, -0.6961928009986877, -1.0)),
        )
        return _pick(q, 8, high, low)

    @triton.jit
    def _decode_by_permutes(packed):
        """uint8 codes -> (first codes' values, second codes' values) in bfloat16, by PTX byte permutes."""
        return tl.inline_asm_elementwise(
            _DECODE_PTX, "=r,=r,=r,=r,r", [packed], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4
        )

    @triton.jit
    def _nf4_matmul_kernel(
        x_ptr,
        weight_ptr,
        absmax_ptr,
        absmax_code_ptr,
        nested_absmax_ptr,
        absmax_offset,
        out_ptr,
        M,
        N,
        K,
        ROW_BYTES,
        NESTED: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK_N: tl.constexpr,
        GROUPS: tl.constexpr,
        SPLIT_K: tl.constexpr,
        PERMUTES: tl.constexpr,
        DOT_FP32: tl.constexpr,
    ):
        """out[M, N] (+)= x[M, K] @ W.T. A step takes GROUPS blocks of 64 codes along K (32 bytes a row each, loaded
        as 16-byte vectors); a block's dot product is scaled by the block's absmax after the tensor-core dot."""
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
                if PERMUTES:
                    first, second = _decode_by_permutes(packed)
                else:
                    first = _nf4_value((packed >> 4).to(tl.int32))
                    second = _nf4_value((packed & 15).to(tl.int32))
                block = rows * blocks_per_row + offset // 32
                if NESTED:
                    quantized = tl.load(absmax_ptr + block, mask=row_ok, other=0).to(tl.int32)
                    scale = (
                        tl.load(absmax_code_ptr + quantized)
                        * tl.load(nested_absmax_ptr + block // _NESTED_BLOCKSIZE, mask=row_ok, other=0)
                        + absmax_offset
                    )
                else:
                    scale = tl.load(absmax_ptr + block, mask=row_ok, other=0)
                x = tl.load(x_ptr + m[:, None] * K + 2 * offset + columns[None, :], mask=m_ok[:, None], other=0)
                x_even, x_odd = tl.split(tl.reshape(x, (ROWS, 32, 2)))
                if DOT_FP32:
                    first, second = first.to(tl.float32), second.to(tl.float32)
                    x_even, x_odd = x_even.to(tl.float32), x_odd.to(tl.float32)
                else:
                    first, second = first.to(x_ptr.dtype.element_ty), second.to(x_ptr.dtype.element_ty)
                part = tl.dot(x_even, tl.trans(first))
                part = tl.dot(x_odd, tl.trans(second), part)
                accumulator += part * scale[None, :]
        target = out_ptr + m[:, None] * N + rows[None, :]
        ok = m_ok[:, None] & row_ok[None, :]
        if SPLIT_K == 1:
            tl.store(target, accumulator, mask=ok)
        else:
            tl.atomic_add(target, accumulator, mask=ok)

    def _configs(block_ns, split_ks, warps, groups=(2,)):
        return [
            triton.Config({"BLOCK_N": block_n, "GROUPS": group, "SPLIT_K": split_k}, num_warps=warp, num_stages=3)
            for block_n in block_ns
            for group in groups
            for split_k in split_ks
            for warp in warps
        ]

    # A few configurations a bucket: each is compiled and timed at first use in a live service. Decoding's
    # bucket keeps the set measured on the H100 and H200. Larger buckets: a program reads 4 * ROWS / BLOCK_N
    # bytes of x (from L2) per weight byte, so they favour wide tiles; the two [ROWS, BLOCK_N] float32 tiles
    # (accumulator and a block's dot) take 2 * ROWS * BLOCK_N / (32 * warps) registers a thread, so the widest
    # tiles get 8 warps. Split-K keeps the narrow shapes (k/v, 11B q/o) on all SMs.
    _CONFIGS_BY_BUCKET = {
        16: _configs((32, 64, 128), (1, 2, 4), (4,), groups=(2, 4)),
        32: _configs((32, 64, 128), (1, 2, 4), (4,)),
        64: _configs((64, 128), (1, 2, 4), (4,)) + _configs((128,), (1, 2, 4), (8,)),
        128: _configs((64,), (1, 2, 4), (4, 8)) + _configs((128,), (1, 2, 4), (8,)),
    }
    # Tuned once per (bucket, shape, dtype), not per row count: every row count in a bucket runs the same tile
    # (M only masks), so a new prompt length never tunes again. Remembered in Triton's cache.
    _TUNED_KERNELS = {
        bucket: triton.autotune(
            configs,
            key=["N", "K", "NESTED", "ROWS", "PERMUTES"],
            reset_to_zero=["out_ptr"],
            warmup=5,
            rep=20,
            cache_results=True,
        )(_nf4_matmul_kernel)
        for bucket, configs in _CONFIGS_BY_BUCKET.items()
    }

# What the interpreter runs: one fixed configuration (autotuning times kernels on a GPU), and its dots in
# float32 (its bfloat16 dot returns garbage; the GPU multiplies in x's dtype).
INTERPRETER_CONFIG = {"BLOCK_N": 16, "GROUPS": 2, "SPLIT_K": 2}


class NF4Weight:
    """One bitsandbytes NF4 weight W [N, K], ready for `x @ W.T` on up to MAX_ROWS rows of x."""

    def __init__(self, packed_weight: torch.Tensor, quant_state) -> None:
        self.parts = NF4Parts.of(packed_weight, quant_state, K_MULTIPLE)
        self.out_features, self.in_features = self.parts.out_features, self.parts.in_features

    def matmul(self, x: torch.Tensor, config: dict | None = None) -> torch.Tensor:
        """x [..., K] @ W.T in x's dtype. `config` (BLOCK_N, GROUPS, SPLIT_K) skips autotuning."""
        n, k = self.out_features, self.in_features
        rows = x.reshape(-1, k).contiguous()
        m = rows.shape[0]
        if m > MAX_ROWS:
            raise ValueError(f"NF4Weight.matmul takes at most {MAX_ROWS} rows, got {m}")
        bucket = rows_bucket(m)
        out = torch.zeros(m, n, dtype=torch.float32, device=x.device)
        arguments = (rows, *self.parts.kernel_arguments(), out, m, n, k, k // 2)
        # The byte-permute decoder is PTX (CUDA only) and gives bfloat16; otherwise the code book by bit tests.
        permutes = not interpreted() and x.dtype == torch.bfloat16
        if interpreted() or config is not None:
            config = config or INTERPRETER_CONFIG
            grid = (triton.cdiv(n, config["BLOCK_N"]), config["SPLIT_K"])
            _nf4_matmul_kernel[grid](
                *arguments,
                NESTED=self.parts.nested,
                ROWS=bucket,
                PERMUTES=permutes,
                DOT_FP32=interpreted() or x.dtype == torch.float32,
                **config,
            )
        else:

            def grid(meta):
                return (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

            _TUNED_KERNELS[bucket][grid](
                *arguments, NESTED=self.parts.nested, ROWS=bucket, PERMUTES=permutes, DOT_FP32=x.dtype == torch.float32
            )
        return out.to(x.dtype).reshape(*x.shape[:-1], n)


def use_triton_kernel(model: torch.nn.Module, always: bool = False, tensor_cores: bool = False) -> int:
    """Give `model`'s NF4 layers the Triton kernel for inputs of up to MAX_ROWS rows; return how many layers can use it.

    With `always`, every such input takes it. Otherwise each weight shape is timed on every kernel that can
    take the input once per `timing_key` (row count up to MIN_ROWS, row bucket above), at its first use outside
    a CUDA graph capture, and the fastest serves that key from then on: at more rows mostly the Triton
    kernel, where bitsandbytes often dequantizes the weight to 16-bit and calls cuBLAS. One row in
    bfloat16 takes the CUDA one-row kernel (nf4_gemv.py) untimed, if it compiles and runs; with
    `tensor_cores`, 1 to 8 rows take the tensor-core kernel (nf4_mma.py) as `decoding_kernels` says. Layers the
    kernels do not handle, and inputs of more than MAX_ROWS rows (long prompts, where dequantizing once is
    the cheaper way), keep bitsandbytes' own forward.
    """
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit) or module.weight.device.type != "cuda":
            continue
        state = module.weight.quant_state
        try:
            weight = NF4Weight(module.weight.data, state)
        except UnsupportedWeight:
            continue
        try:
            one_row = nf4_gemv.NF4OneRow(module.weight.data, state)
        except UnsupportedWeight:
            one_row = None
        few_rows = None
        if tensor_cores:
            try:
                few_rows = nf4_mma.NF4FewRows(module.weight.data, state)
            except UnsupportedWeight:
                pass
        module.forward = _forward_choosing_kernel(module, weight, one_row, module.forward, always, few_rows)
        count += 1
    return count


def timing_key(out_features: int, in_features: int, rows: int) -> tuple[int, int, int]:
    """Which inputs of a weight share one timing of the kernels.

    Up to MIN_ROWS rows (decoding's batch sizes), each row count: bitsandbytes' own dispatch changes within
    them (gemv at one row, its SIMT kernel at a few, then mma or dequantize + cuBLAS). Above, one timing per
    row bucket: the Triton kernel does the same work for every row count in a bucket (M only masks), so a
    new prompt length never times again.
    """
    return (out_features, in_features, rows if rows <= MIN_ROWS else rows_bucket(rows))


# timing_key -> the name of the fastest kernel for it
_FASTEST: dict[tuple[int, int, int], str] = {}


def decoding_kernels(out_features: int, rows: int) -> tuple[str, ...]:
    """vlmkit's CUDA kernels for `rows` rows of bfloat16 x, in the order they are tried (untimed: on one weight,
    timed calls read it from the L2 cache, where their lead over bitsandbytes and Triton, measured reading
    weights from memory as decoding does, can vanish). On the H200 the tensor-core kernel was 1.05-1.76x
    faster than the Triton kernel at 8 rows on every 11B and 90B shape, and at one row up to 25% faster than
    the one-row kernel on the larger shapes; the one-row kernel wins on narrow ones (k/v: 1024 outputs)."""
    if rows > nf4_mma.MAX_ROWS:
        return ()
    if rows == 1:
        return ("few_rows", "one_row") if out_features >= 4096 else ("one_row", "few_rows")
    return ("few_rows",)


def _forward_choosing_kernel(
    module: torch.nn.Module,
    weight: NF4Weight,
    one_row: nf4_gemv.NF4OneRow | None,
    bitsandbytes_forward,
    always: bool,
    few_rows: nf4_mma.NF4FewRows | None = None,
):
    def with_bias(out: torch.Tensor) -> torch.Tensor:
        return out if module.bias is None else out + module.bias.to(out.dtype)

    forwards = {
        "bitsandbytes": bitsandbytes_forward,
        "triton": lambda x: with_bias(weight.matmul(x)),
        "one_row": lambda x: with_bias(one_row.matmul(x)),
        "few_rows": lambda x: with_bias(few_rows.matmul(x)),
    }
    present = {"one_row": one_row is not None, "few_rows": few_rows is not None}

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > MAX_ROWS:
            return bitsandbytes_forward(x)
        if always:
            return forwards["triton"](x)
        key = timing_key(weight.out_features, weight.in_features, rows)
        fastest = _FASTEST.get(key)
        if fastest is None:
            if torch.cuda.is_current_stream_capturing():
                return bitsandbytes_forward(x)
            decoding = decoding_kernels(weight.out_features, rows) if x.dtype == torch.bfloat16 else ()
            runs = next((name for name in decoding if present[name] and _runs(name, forwards, x)), None)
            if runs is not None:
                fastest = _FASTEST[key] = runs
            else:
                candidates = {name: forwards[name] for name in ("triton", "bitsandbytes")}
                fastest = _FASTEST[key] = _fastest(candidates, x)
        return forwards[fastest](x)

    return forward


def _runs(name: str, forwards: dict, x: torch.Tensor) -> bool:
    try:
        forwards[name](x)
        return True
    except Exception as error:  # noqa: BLE001 - e.g. no NVRTC on this host: the others serve
        _leave_out(name, error)
        return False


def _leave_out(name: str, error: Exception) -> None:
    log.warning("nf4_kernel auto: the %s kernel failed (%s: %s); it is left out", name, type(error).__name__, error)


def _fastest(forwards: dict, x: torch.Tensor) -> str:
    """The name of the fastest of `forwards` on x; one that fails is logged and left out (bitsandbytes, last,
    is the one that always works and is not timed if it alone is left)."""
    seconds = {}
    for name, forward in forwards.items():
        if name == "bitsandbytes" and not seconds:
            return name
        try:
            seconds[name] = _seconds(forward, x)
        except Exception as error:  # noqa: BLE001 - e.g. no C compiler for Triton: keep serving
            _leave_out(name, error)
    return min(seconds, key=seconds.get)


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
