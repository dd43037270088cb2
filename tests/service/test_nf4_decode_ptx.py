"""The byte-permute NF4 decoder (inference/backends/nf4_decode_ptx.py): its PTX, run instruction by instruction
here by a small interpreter of the seven instructions it uses, gives every code's bfloat16 value.

The kernel itself runs only on CUDA (tests/service/test_nf4_kernel.py and scripts/nf4_kernel_bench.py
check it against bitsandbytes there); this checks the part no compiler can: the byte arithmetic.
"""

from __future__ import annotations

import re

import pytest
import torch

from inference.backends.nf4_decode_ptx import NF4_CODE_BOOK, decode_asm

MASK32 = 0xFFFFFFFF


def prmt(a: int, b: int, selector: int) -> int:
    """PTX prmt.b32 in its default mode: byte i of the result is byte (selector nibble i & 7) of b:a, or with
    the nibble's bit 3 set, that byte's top bit copied to all eight bits."""
    source = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    result = 0
    for i in range(4):
        nibble = (selector >> (4 * i)) & 0xF
        byte = source[nibble & 7]
        if nibble & 8:
            byte = 0xFF if byte & 0x80 else 0
        result |= byte << (8 * i)
    return result


def lop3(a: int, b: int, c: int, table: int) -> int:
    result = 0
    for bit in range(32):
        index = ((a >> bit) & 1) << 2 | ((b >> bit) & 1) << 1 | (c >> bit) & 1
        result |= ((table >> index) & 1) << bit
    return result


def run_ptx(asm: str, packed: int) -> list[int]:
    """Run the decoder's PTX on one 32-bit input register; return its four output registers."""
    registers = {"$4": packed}

    def value(operand: str) -> int:
        return int(operand, 0) if operand[0].isdigit() else registers[operand]

    for line in asm.splitlines():
        instruction = re.match(r"(\w+)\.b32 (.+);$", line.strip())
        if instruction is None:
            assert line.strip() in ("{", "}") or line.strip().startswith(".reg"), line
            continue
        op, operands = instruction.group(1), [o.strip() for o in instruction.group(2).split(",")]
        target, inputs = operands[0], [value(o) for o in operands[1:]]
        registers[target] = (
            MASK32
            & {
                "mov": lambda: inputs[0],
                "shr": lambda: inputs[0] >> inputs[1],
                "shl": lambda: inputs[0] << inputs[1],
                "and": lambda: inputs[0] & inputs[1],
                "or": lambda: inputs[0] | inputs[1],
                "prmt": lambda: prmt(*inputs),
                "lop3": lambda: lop3(*inputs),
            }[op]()
        )
    return [registers[f"${i}"] for i in range(4)]


def bfloat16_bits(values: list[float]) -> list[int]:
    return [bits & 0xFFFF for bits in torch.tensor(values).to(torch.bfloat16).view(torch.int16).tolist()]


@pytest.mark.parametrize("position", range(4))
def test_every_code_in_every_byte_position_decodes_to_its_bfloat16_value(position):
    expected = bfloat16_bits(list(NF4_CODE_BOOK))
    asm = decode_asm()
    for byte in range(256):
        neighbours = [(byte * 37 + 11 * i) & 0xFF for i in range(4)]  # the other bytes must not leak in
        neighbours[position] = byte
        packed = sum(b << (8 * i) for i, b in enumerate(neighbours))
        first_pair_low, first_pair_high, second_pair_low, second_pair_high = run_ptx(asm, packed)
        first = [first_pair_low & 0xFFFF, first_pair_low >> 16, first_pair_high & 0xFFFF, first_pair_high >> 16]
        second = [second_pair_low & 0xFFFF, second_pair_low >> 16, second_pair_high & 0xFFFF, second_pair_high >> 16]
        # bitsandbytes packs the first of two codes in the high nibble
        assert first == [expected[b >> 4] for b in neighbours], byte
        assert second == [expected[b & 15] for b in neighbours], byte


def test_the_code_book_is_bitsandbytes_nf4():
    bnbf = pytest.importorskip("bitsandbytes.functional")
    assert torch.equal(bnbf.get_4bit_type("nf4", device="cpu").float(), torch.tensor(NF4_CODE_BOOK))
