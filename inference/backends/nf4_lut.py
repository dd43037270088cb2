"""NF4 decoding by byte permutes: eight 4-bit codes to eight bfloat16 values in about 30 instructions.

The NF4 code book has 16 entries. A bfloat16 is two bytes, so the code book is two 16-byte tables (the
high bytes and the low bytes of the 16 values), four 32-bit registers each. PTX's `prmt` picks 4 bytes
out of 8 by 3-bit selectors: two `prmt` look 4 codes up in the entries 0-7 and 8-15 of one table, and a
`lop3` keeps, byte by byte, the one the code's fourth bit asks for (its mask comes from `prmt`'s
sign-replicate mode, which copies a byte's top bit, where bitsandbytes puts the first code's fourth bit).
Selecting code-book entries by bit tests costs about 45 instructions per value, which left the Triton
kernel bound by arithmetic at a quarter of the memory's speed.

Only for CUDA (inline PTX); Triton's interpreter cannot run it.
"""

from __future__ import annotations

NF4_CODE_BOOK = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def bfloat16_bits(value: float) -> int:
    """The 16 bits of `value` rounded to bfloat16 (to nearest, ties to even), as torch rounds it."""
    import struct

    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def byte_tables() -> tuple[list[int], list[int]]:
    """The code book's high and low bytes as four 32-bit words each (entries 0-3, 4-7, 8-11, 12-15)."""
    bits = [bfloat16_bits(value) for value in NF4_CODE_BOOK]

    def words(plane: list[int]) -> list[int]:
        return [plane[i] | plane[i + 1] << 8 | plane[i + 2] << 16 | plane[i + 3] << 24 for i in range(0, 16, 4)]

    return words([b >> 8 for b in bits]), words([b & 0xFF for b in bits])


def decode_asm() -> str:
    """PTX for one invocation: $4 holds 4 packed bytes (8 codes, bitsandbytes' order: the first in the high
    nibble); $0,$1 get the 4 first codes' values (bfloat16 pairs), $2,$3 the 4 second codes' values."""
    high, low = byte_tables()
    tables = "".join(f"mov.b32 th{i}, {high[i]:#010x};\nmov.b32 tl{i}, {low[i]:#010x};\n" for i in range(4))

    def lookup(result: str, table: str, selectors: str, mask: str) -> str:
        return (f"prmt.b32 a0, {table}0, {table}1, {selectors};\n"
                f"prmt.b32 a1, {table}2, {table}3, {selectors};\n"
                f"lop3.b32 {result}, a1, a0, {mask}, 0xE4;\n")  # (a1 & mask) | (a0 & ~mask)

    return (
        "{\n"
        ".reg .b32 th<4>, tl<4>, s4, s8, t0, t1, sel1, sel2, mask1, mask2, a0, a1, h1, l1, h2, l2;\n"
        + tables +
        "shr.b32 s4, $4, 4;\n"
        "shr.b32 s8, $4, 8;\n"
        # selectors of the first codes (high nibbles), bit 3 cleared, packed as 4 nibbles
        "and.b32 t0, s4, 0x07070707;\n"
        "and.b32 t1, s8, 0x70707070;\n"
        "or.b32 t0, t0, t1;\n"
        "prmt.b32 sel1, t0, 0, 0x0020;\n"
        # selectors of the second codes (low nibbles)
        "and.b32 t0, $4, 0x07070707;\n"
        "and.b32 t1, s4, 0x70707070;\n"
        "or.b32 t0, t0, t1;\n"
        "prmt.b32 sel2, t0, 0, 0x0020;\n"
        # 0xFF in each byte whose code has bit 3 set: sign-replicate the byte holding that bit at its top
        "prmt.b32 mask1, $4, 0, 0xBA98;\n"
        "shl.b32 t0, $4, 4;\n"
        "prmt.b32 mask2, t0, 0, 0xBA98;\n"
        + lookup("h1", "th", "sel1", "mask1") + lookup("l1", "tl", "sel1", "mask1")
        + lookup("h2", "th", "sel2", "mask2") + lookup("l2", "tl", "sel2", "mask2") +
        "prmt.b32 $0, l1, h1, 0x5140;\n"
        "prmt.b32 $1, l1, h1, 0x7362;\n"
        "prmt.b32 $2, l2, h2, 0x5140;\n"
        "prmt.b32 $3, l2, h2, 0x7362;\n"
        "}"
    )


try:
    import triton
    import triton.language as tl
except ImportError:  # triton comes with CUDA builds of torch
    triton = None

if triton is not None:
    _DECODE = tl.constexpr(decode_asm())

    @triton.jit
    def _decode(packed):
        """uint8 [R, C] of packed codes -> (first codes' values, second codes' values), bfloat16 [R, C] each."""
        return tl.inline_asm_elementwise(_DECODE, "=r,=r,=r,=r,r", [packed], dtype=(tl.bfloat16, tl.bfloat16),
                                         is_pure=True, pack=4)

    @triton.jit
    def _nf4_lut_matmul_kernel(
        x_ptr, weight_ptr, absmax_ptr, absmax_code_ptr, nested_absmax_ptr, absmax_offset,
        out_ptr, M, N, K, ROW_BYTES,
        NESTED: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr,
        SPLIT_K: tl.constexpr,
    ):
        """out[M, N] (+)= x[M, K] @ W.T for an NF4 W [N, K] (bitsandbytes' layout, blocks of 64). Each step takes
        GROUPS blocks of 64 along K; a block's dot product is scaled by its absmax after the tensor-core dot."""
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
        # Byte offsets along a row: each block of 64 values is 32 bytes, loaded as two 16-byte vectors.
        for start in range(pid_k * 32 * GROUPS, ROW_BYTES, 32 * GROUPS * SPLIT_K):
            for g in tl.static_range(GROUPS):
                offset = start + 32 * g
                packed = tl.load(weight_ptr + rows[:, None] * ROW_BYTES + offset + pairs[None, :],
                                 mask=row_ok[:, None], other=0)
                first, second = _decode(packed)
                block = rows * blocks_per_row + offset // 32
                if NESTED:
                    quantized = tl.load(absmax_ptr + block, mask=row_ok, other=0).to(tl.int32)
                    scale = tl.load(absmax_code_ptr + quantized) * tl.load(nested_absmax_ptr + block // 256,
                                                                            mask=row_ok, other=0) + absmax_offset
                else:
                    scale = tl.load(absmax_ptr + block, mask=row_ok, other=0)
                x = tl.load(x_ptr + m[:, None] * K + 2 * offset + columns[None, :], mask=m_ok[:, None], other=0)
                x_even, x_odd = tl.split(tl.reshape(x, (ROWS, 32, 2)))
                part = tl.dot(x_even, tl.trans(first))
                part = tl.dot(x_odd, tl.trans(second), part)
                accumulator += part * scale[None, :]
        target = out_ptr + m[:, None] * N + rows[None, :]
        ok = m_ok[:, None] & row_ok[None, :]
        if SPLIT_K == 1:
            tl.store(target, accumulator, mask=ok)
        else:
            tl.atomic_add(target, accumulator, mask=ok)

    _CONFIGS = [
        triton.Config({"BLOCK_N": block_n, "GROUPS": groups, "SPLIT_K": split_k}, num_warps=warps, num_stages=stages)
        for block_n in (32, 64, 128)
        for groups in (2, 4)
        for split_k in (1, 2, 4)
        for warps in (4,)
        for stages in (3,)
    ]
    _tuned = triton.autotune(_CONFIGS, key=["M", "N", "K", "NESTED", "ROWS"], reset_to_zero=["out_ptr"],
                             warmup=5, rep=20, cache_results=True)(_nf4_lut_matmul_kernel)


def nf4_lut_matmul(x, weight) -> "torch.Tensor":
    """x [..., K] (bfloat16) @ W.T for an `nf4_kernel.NF4Weight` W, by the byte-permute decoder."""
    import torch

    n, k = weight.out_features, weight.in_features
    rows = x.reshape(-1, k).contiguous()
    m = rows.shape[0]
    out = torch.zeros(m, n, dtype=torch.float32, device=x.device)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    _tuned[grid](rows, weight.packed, weight.absmax, weight.absmax_code, weight.nested_absmax, weight.offset,
                 out, m, n, k, k // 2, NESTED=weight.nested, ROWS=16)
    return out.to(x.dtype).reshape(*x.shape[:-1], n)
