"""vlmkit's tensor-core NF4 kernel for 1 to 8 rows gives bitsandbytes' results for its own 4-bit weights.

Without a GPU, NVRTC (the nvidia-cuda-nvrtc package, installed with vlmkit[test]) compiles every configuration
for Hopper and Ampere, and the table the kernel looks codes up in is checked against the NF4 code book; on a
GPU (marker gpu) the kernel runs against `x @ dequantize(W).T`, eagerly and in a CUDA graph.
"""

from __future__ import annotations

import struct

import pytest
import torch

from inference.backends import nf4_mma, runtime_cuda
from inference.backends.nf4_decode_ptx import NF4_CODE_BOOK


def bfloat16_value(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


@pytest.mark.parametrize("architecture", ["sm_90", "sm_80"])
def test_every_configuration_compiles(architecture):
    try:
        runtime_cuda._nvrtc_library()
    except runtime_cuda.RuntimeCompileError as error:
        pytest.skip(f"needs NVRTC (pip install nvidia-cuda-nvrtc): {error}")
    for nested in (True, False):
        name = f"k{int(nested)}"
        assert (
            runtime_cuda.compile_cubin(nf4_mma.kernel_source(name, 8, nested, 1), name, architecture)[:4] == b"\x7fELF"
        )


def test_table_gives_each_bytes_two_codes_first_code_low_for_every_lane():
    table = nf4_mma.lane_table()
    assert len(table) == 256 * 32
    for byte in (0x00, 0x0F, 0xF0, 0x7A, 0xFF):
        for lane in (0, 13, 31):
            pair = table[byte * 32 + lane]
            assert bfloat16_value(pair & 0xFFFF) == pytest.approx(NF4_CODE_BOOK[byte >> 4], rel=4e-3)
            assert bfloat16_value(pair >> 16) == pytest.approx(NF4_CODE_BOOK[byte & 15], rel=4e-3)


def test_weights_and_inputs_it_cannot_take_are_refused():
    import bitsandbytes.functional as bnbf

    for in_features, kwargs, message in (
        (256, {"quant_type": "fp4", "blocksize": 64}, "fp4"),
        (256, {"quant_type": "nf4", "blocksize": 128}, "blocksize 128"),
        (192, {"quant_type": "nf4", "blocksize": 64}, "in_features 192 is not a multiple of 128"),
    ):
        packed, state = bnbf.quantize_4bit(torch.randn(64, in_features), **kwargs)
        with pytest.raises(nf4_mma.UnsupportedWeight, match=message):
            nf4_mma.NF4FewRows(packed, state)
    packed, state = bnbf.quantize_4bit(torch.randn(64, 256), blocksize=64, quant_type="nf4")
    weight = nf4_mma.NF4FewRows(packed, state)
    for x in (
        torch.randn(9, 256, dtype=torch.bfloat16),
        torch.randn(1, 256),
        torch.randn(1, 128, dtype=torch.bfloat16),
    ):
        with pytest.raises(ValueError, match="1 to 8 bfloat16 rows of 256 values"):
            weight.matmul(x)


@pytest.mark.gpu
def test_kernel_matches_dequantized_weights_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import bitsandbytes.functional as bnbf

    torch.manual_seed(0)
    # 250 outputs: not a multiple of a warp's 16 rows; 768 inputs: fewer steps along K than a block has warps
    for nested in (True, False):
        for out_features, in_features in ((250, 768), (1024, 4096), (6144, 4096), (4096, 14336)):
            weight = torch.randn(out_features, in_features, device="cuda", dtype=torch.bfloat16) * 0.02
            packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=nested, quant_type="nf4")
            dequantized = bnbf.dequantize_4bit(packed, state).float()
            for rows in (1, 3, 8):
                x = torch.randn(rows, 1, in_features, device="cuda", dtype=torch.bfloat16)
                got = nf4_mma.NF4FewRows(packed, state).matmul(x)
                expected = x.float() @ dequantized.T
                assert got.shape == (rows, 1, out_features) and got.dtype == torch.bfloat16
                # bfloat16 dequantized values (as bitsandbytes' dequantize), float32 sums, bfloat16 out
                error = float((got.float() - expected).abs().max() / expected.abs().max())
                assert error < 1e-2, (nested, out_features, in_features, rows, error)


@pytest.mark.gpu
def test_kernel_replays_in_a_cuda_graph_with_new_inputs():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import bitsandbytes.functional as bnbf

    torch.manual_seed(0)
    weight = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) * 0.02
    packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    kernel = nf4_mma.NF4FewRows(packed, state)
    x = torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16)
    kernel.matmul(x)  # compiles and loads outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel.matmul(x)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.testing.assert_close(out, kernel.matmul(x), rtol=0, atol=0)
