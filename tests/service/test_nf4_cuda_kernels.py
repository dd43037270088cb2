"""vlmkit's CUDA NF4 kernels (nf4_gemv: one row; nf4_mma: 1-8 rows on the tensor cores) give bitsandbytes'
results for bitsandbytes' own 4-bit weights.

Without a GPU, NVRTC (the nvidia-cuda-nvrtc package, installed with vlmkit[test]) still compiles every
configuration the kernels can launch, for Hopper and Ampere, so a change that breaks the CUDA source fails
here; on a GPU (marker gpu) each kernel runs against `x @ dequantize(W).T`, eagerly and in a CUDA graph.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
import torch

from inference.backends import nf4_gemv, nf4_mma, runtime_cuda
from inference.backends.nf4_decode_ptx import NF4_CODE_BOOK
from inference.backends.nf4_parts import UnsupportedWeight


@dataclass(frozen=True)
class Kernel:
    variants: tuple  # (packed, state) -> object with matmul(x): each configuration the service can pick, or try
    rows: tuple[int, ...]  # rows of x it takes
    k_multiple: int
    wrong_input: str  # what it says about an input it cannot take


KERNELS = {
    "one_row": Kernel(
        tuple(lambda p, s, r=rows: nf4_gemv.NF4OneRow(p, s, r) for rows in (*nf4_gemv.ROW_CHOICES, None)),
        (1,),
        64,
        "one bfloat16 row of 256 values",
    ),
    "tensor_cores": Kernel(
        (nf4_mma.NF4FewRows, lambda p, s: nf4_mma.NF4FewRows(p, s, byte_permute=True)),
        (1, 3, 8),
        128,
        "1 to 8 bfloat16 rows of 256 values",
    ),
}


def sources() -> list[tuple[str, str]]:
    """(name, CUDA source) of every configuration of both kernels."""
    found = []
    for nested in (True, False):
        for rows in nf4_gemv.ROW_CHOICES:
            for decode in (True, False):
                name = f"gemv{rows}{int(nested)}{int(decode)}"
                found.append((name, nf4_gemv.kernel_source(name, rows, nf4_gemv.WARPS, nested, decode)))
        for byte_permute in (False, True):
            name = f"mma{int(nested)}{int(byte_permute)}"
            found.append((name, nf4_mma.kernel_source(name, 8, nested, 1, byte_permute)))
    return found


def nvrtc_or_skip() -> None:
    try:
        runtime_cuda._nvrtc_library()
    except runtime_cuda.RuntimeCompileError as error:
        pytest.skip(f"needs NVRTC (pip install nvidia-cuda-nvrtc): {error}")


@pytest.mark.parametrize("architecture", ["sm_90", "sm_80"])
def test_every_configuration_compiles(architecture):
    nvrtc_or_skip()
    for name, source in sources():
        assert runtime_cuda.compile_cubin(source, name, architecture).startswith(b"\x7fELF"), name


def test_a_compile_error_carries_the_compilers_message():
    nvrtc_or_skip()
    source = 'extern "C" __global__ void broken() { undefined_name = 1; }'
    with pytest.raises(runtime_cuda.RuntimeCompileError, match="undefined_name"):
        runtime_cuda.compile_cubin(source, "broken", "sm_90")


def test_tensor_core_table_gives_each_bytes_two_codes_first_code_low_for_every_lane():
    def bfloat16_value(bits: int) -> float:
        return struct.unpack("<f", struct.pack("<I", bits << 16))[0]

    table = nf4_mma.lane_table()
    assert len(table) == 256 * 32
    for byte in (0x00, 0x0F, 0xF0, 0x7A, 0xFF):
        for lane in (0, 13, 31):
            pair = table[byte * 32 + lane]
            assert bfloat16_value(pair & 0xFFFF) == pytest.approx(NF4_CODE_BOOK[byte >> 4], rel=4e-3)
            assert bfloat16_value(pair >> 16) == pytest.approx(NF4_CODE_BOOK[byte & 15], rel=4e-3)


@pytest.mark.parametrize("name", KERNELS)
def test_weights_and_inputs_it_cannot_take_are_refused(name):
    import bitsandbytes.functional as bnbf

    kernel = KERNELS[name]
    odd = kernel.k_multiple + 32
    for in_features, kwargs, message in (
        (256, {"quant_type": "fp4", "blocksize": 64}, "quant_type fp4"),
        (256, {"quant_type": "nf4", "blocksize": 128}, "blocksize 128"),
        (odd, {"quant_type": "nf4", "blocksize": 64}, f"in_features {odd} is not a multiple of {kernel.k_multiple}"),
    ):
        packed, state = bnbf.quantize_4bit(torch.randn(64, in_features), **kwargs)
        with pytest.raises(UnsupportedWeight, match=message):
            kernel.variants[0](packed, state)
    packed, state = bnbf.quantize_4bit(torch.randn(64, 256), blocksize=64, quant_type="nf4")
    weight = kernel.variants[0](packed, state)
    too_many = max(kernel.rows) + 1
    for x in (
        torch.randn(too_many, 256, dtype=torch.bfloat16),
        torch.randn(1, 256),
        torch.randn(1, 128, dtype=torch.bfloat16),
    ):
        with pytest.raises(ValueError, match=kernel.wrong_input):
            weight.matmul(x)


@pytest.mark.gpu
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_matches_dequantized_weights_on_cuda(name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import bitsandbytes.functional as bnbf

    kernel = KERNELS[name]
    torch.manual_seed(0)
    # 250 outputs: not a multiple of any block's rows; 768 inputs: fewer pieces along K than a block has lanes
    for nested in (True, False):
        for out_features, in_features in ((250, 768), (1024, 4096), (6144, 4096), (4096, 14336)):
            weight = torch.randn(out_features, in_features, device="cuda", dtype=torch.bfloat16) * 0.02
            packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=nested, quant_type="nf4")
            dequantized = bnbf.dequantize_4bit(packed, state).float()
            for rows in kernel.rows:
                x = torch.randn(rows, 1, in_features, device="cuda", dtype=torch.bfloat16)
                expected = x.float() @ dequantized.T
                for variant in kernel.variants:
                    got = variant(packed, state).matmul(x)
                    assert got.shape == (rows, 1, out_features) and got.dtype == torch.bfloat16
                    # float32 sums of exact products (one-row) or of bfloat16 dequantized values (tensor
                    # cores, as bitsandbytes' dequantize gives them), one rounding to bfloat16 at the end
                    error = float((got.float() - expected).abs().max() / expected.abs().max())
                    assert error < 1e-2, (name, nested, out_features, in_features, rows, error)


@pytest.mark.gpu
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_replays_in_a_cuda_graph_with_new_inputs(name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import bitsandbytes.functional as bnbf

    kind = KERNELS[name]
    torch.manual_seed(0)
    weight = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) * 0.02
    packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    kernel = kind.variants[-1](packed, state)
    x = torch.randn(max(kind.rows), 4096, device="cuda", dtype=torch.bfloat16)
    kernel.matmul(x)  # compiles, loads and picks its block shape outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel.matmul(x)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.testing.assert_close(out, kernel.matmul(x), rtol=0, atol=0)


@pytest.mark.gpu
def test_byte_permute_addressing_gives_the_tensor_core_kernels_output_bit_for_bit():
    """It changes how a byte's table address is computed, not what is read or summed."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import bitsandbytes.functional as bnbf

    torch.manual_seed(0)
    for nested in (True, False):
        weight = torch.randn(6144, 4096, device="cuda", dtype=torch.bfloat16) * 0.02
        packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=nested, quant_type="nf4")
        x = torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16)
        plain = nf4_mma.NF4FewRows(packed, state).matmul(x)
        permuted = nf4_mma.NF4FewRows(packed, state, byte_permute=True).matmul(x)
        assert torch.equal(plain, permuted), nested
