"""vlmkit's one-row CUDA NF4 kernel gives bitsandbytes' results for bitsandbytes' own 4-bit weights.

Without a GPU, NVRTC (the nvidia-cuda-nvrtc package, installed with vlmkit[test]) still compiles every
configuration the service can launch, for Hopper and Ampere, so a change that breaks the CUDA source fails
here; on a GPU (marker gpu) the kernel runs against `x @ dequantize(W).T`, eagerly and in a CUDA graph.
"""

from __future__ import annotations

import pytest
import torch

from inference.backends import nf4_gemv, runtime_cuda


def nvrtc_or_skip() -> None:
    try:
        runtime_cuda._nvrtc_library()
    except runtime_cuda.RuntimeCompileError as error:
        pytest.skip(f"needs NVRTC (pip install nvidia-cuda-nvrtc): {error}")


@pytest.mark.parametrize("architecture", ["sm_90", "sm_80"])
def test_every_configuration_compiles(architecture):
    nvrtc_or_skip()
    for rows in nf4_gemv.ROW_CHOICES:
        for nested in (True, False):
            for decode in (True, False):
                name = f"k{rows}{int(nested)}{int(decode)}"
                source = nf4_gemv.kernel_source(name, rows, nf4_gemv.WARPS, nested, decode)
                assert runtime_cuda.compile_cubin(source, name, architecture).startswith(b"\x7fELF")


def test_a_compile_error_carries_the_compilers_message():
    nvrtc_or_skip()
    source = 'extern "C" __global__ void broken() { undefined_name = 1; }'
    with pytest.raises(runtime_cuda.RuntimeCompileError, match="undefined_name"):
        runtime_cuda.compile_cubin(source, "broken", "sm_90")


def test_weights_and_inputs_it_cannot_take_are_refused():
    import bitsandbytes.functional as bnbf

    for in_features, kwargs, message in (
        (256, {"quant_type": "fp4", "blocksize": 64}, "fp4"),
        (256, {"quant_type": "nf4", "blocksize": 128}, "blocksize 128"),
        (96, {"quant_type": "nf4", "blocksize": 64}, "in_features 96 is not a multiple of 64"),
    ):
        packed, state = bnbf.quantize_4bit(torch.randn(64, in_features), **kwargs)
        with pytest.raises(nf4_gemv.UnsupportedWeight, match=message):
            nf4_gemv.NF4OneRow(packed, state)
    packed, state = bnbf.quantize_4bit(torch.randn(64, 256), blocksize=64, quant_type="nf4")
    weight = nf4_gemv.NF4OneRow(packed, state)
    for x in (torch.randn(2, 256, dtype=torch.bfloat16), torch.randn(1, 256)):
        with pytest.raises(ValueError, match="one bfloat16 row of 256 values"):
            weight.matmul(x)


@pytest.mark.gpu
def test_kernel_matches_dequantized_weights_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import bitsandbytes.functional as bnbf

    torch.manual_seed(0)
    # 250 rows: not a multiple of any block's rows; 768 columns: fewer 16-byte pieces than a block has lanes
    for nested in (True, False):
        for out_features, in_features in ((250, 768), (1024, 4096), (6144, 4096), (4096, 14336)):
            weight = torch.randn(out_features, in_features, device="cuda", dtype=torch.bfloat16) * 0.02
            packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=nested, quant_type="nf4")
            x = torch.randn(1, 1, in_features, device="cuda", dtype=torch.bfloat16)
            expected = x.float() @ bnbf.dequantize_4bit(packed, state).float().T
            for rows in (*nf4_gemv.ROW_CHOICES, None):
                got = nf4_gemv.NF4OneRow(packed, state, rows).matmul(x)
                assert got.shape == (1, 1, out_features) and got.dtype == torch.bfloat16
                # float32 sums, one rounding to bfloat16 (2^-8 relative) at the end
                error = float((got.float() - expected).abs().max() / expected.abs().max())
                assert error < 8e-3, (nested, out_features, in_features, rows, error)


@pytest.mark.gpu
def test_kernel_replays_in_a_cuda_graph_with_new_inputs():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import bitsandbytes.functional as bnbf

    torch.manual_seed(0)
    weight = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) * 0.02
    packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    kernel = nf4_gemv.NF4OneRow(packed, state)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    kernel.matmul(x)  # tunes its block shape outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel.matmul(x)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.testing.assert_close(out, kernel.matmul(x), rtol=0, atol=0)
