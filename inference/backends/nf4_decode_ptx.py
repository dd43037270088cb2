"""NF4 decoding by byte permutes: eight 4-bit codes to eight bfloat16 values in about 30 instructions.

The NF4 code book has 16 entries. A bfloat16 is two bytes, so the code book is two 16-byte tables (the
high bytes and the low bytes of the 16 values), four 32-bit registers each. PTX's `prmt` picks 4 bytes
out of 8 by 3-bit selectors: two `prmt` look 4 codes up in the entries 0-7 and 8-15 of one table, and a
`lop3` keeps, byte by byte, the one the code's fourth bit asks for (its mask comes from `prmt`'s
sign-replicate mode, which copies a byte's top bit, where bitsandbytes puts the first code's fourth bit).
Selecting code-book entries by bit tests costs about 45 instructions per value, which left the Triton
kernel bound by arithmetic at a quarter of the memory's speed.

Used by nf4_kernel.py on CUDA through Triton's inline assembly; Triton's interpreter cannot run PTX, so
tests/service/test_nf4_decode_ptx.py runs this text in a small interpreter of its seven instructions.
"""

from __future__ import annotations

NF4_CODE_BOOK = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
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
        return (
            f"prmt.b32 a0, {table}0, {table}1, {selectors};\n"
            f"prmt.b32 a1, {table}2, {table}3, {selectors};\n"
            f"lop3.b32 {result}, a1, a0, {mask}, 0xE4;\n"
        )  # (a1 & mask) | (a0 & ~mask)

    return (
        "{\n"
        ".reg .b32 th<4>, tl<4>, s4, s8, t0, t1, sel1, sel2, mask1, mask2, a0, a1, h1, l1, h2, l2;\n"
        + tables
        + "shr.b32 s4, $4, 4;\n"
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
        + lookup("h1", "th", "sel1", "mask1")
        + lookup("l1", "tl", "sel1", "mask1")
        + lookup("h2", "th", "sel2", "mask2")
        + lookup("l2", "tl", "sel2", "mask2")
        + "prmt.b32 $0, l1, h1, 0x5140;\n"
        "prmt.b32 $1, l1, h1, 0x7362;\n"
        "prmt.b32 $2, l2, h2, 0x5140;\n"
        "prmt.b32 $3, l2, h2, 0x7362;\n"
        "}"
    )
