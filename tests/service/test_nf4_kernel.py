"""vlmkit's Triton NF4 kernel gives bitsandbytes' results for bitsandbytes' own 4-bit weights.

On the CPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported,
hence a subprocess), with its dot products in float32; on a GPU (marker gpu) it runs compiled, in
bfloat16, against bitsandbytes' CUDA matmul.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the Triton kernel needs the triton package (installed with vlmkit[test])")
REPO = Path(__file__).resolve().parents[2]

INTERPRETED_CHECK = textwrap.dedent("""
    import json, torch, bitsandbytes.functional as bnbf
    from inference.backends.nf4_kernel import NF4Weight, UnsupportedWeight, MAX_ROWS, interpreted
    assert interpreted()
    torch.manual_seed(0)
    results = []
    for nested in (True, False):
        # 250 x 768: 3000 absmax blocks, not a multiple of the nested blocksize (256), so the last nested block is
        # partial. Rows: decoding's row tile (up to 16), then prefill's (tiles of 32, 64 and 128 rows, M masking each)
        for out_features, in_features, rows, dtype in ((250, 768, 1, torch.float32), (96, 512, 5, torch.bfloat16),
                                                      (64, 1024, 16, torch.float32), (48, 256, 17, torch.bfloat16),
                                                      (64, 512, 33, torch.float32), (40, 256, 100, torch.bfloat16),
                                                      (32, 256, MAX_ROWS, torch.float32)):
            weight = torch.randn(out_features, in_features) * 0.02
            packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=nested, quant_type="nf4")
            x = torch.randn(2, rows, in_features).to(dtype)[:1]  # a leading batch dim, as the model passes it
            expected = x.float() @ bnbf.dequantize_4bit(packed, state).float().T
            got = NF4Weight(packed, state).matmul(x)
            results.append({"nested": nested, "rows": rows, "dtype": str(dtype), "shape": list(got.shape),
                            "out_dtype": str(got.dtype),
                            "error": float((got.float() - expected).abs().max() / expected.abs().max())})
    packed, state = bnbf.quantize_4bit(torch.randn(64, 256), blocksize=64, quant_type="nf4")
    try:
        NF4Weight(packed, state).matmul(torch.randn(MAX_ROWS + 1, 256))
        too_many = "accepted"
    except ValueError as error:
        too_many = str(error)
    refused = []
    for in_features, kwargs in ((256, {"quant_type": "fp4", "blocksize": 64}),
                                (256, {"quant_type": "nf4", "blocksize": 128}),
                                (192, {"quant_type": "nf4", "blocksize": 64})):
        packed, state = bnbf.quantize_4bit(torch.randn(64, in_features), **kwargs)
        try:
            NF4Weight(packed, state)
            refused.append("accepted")
        except UnsupportedWeight as error:
            refused.append(str(error))
    print(json.dumps({"results": results, "too_many": too_many, "refused": refused}))
""")


@pytest.fixture(scope="module")
def interpreted_run() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", INTERPRETED_CHECK], env=env, capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_interpreted_kernel_matches_bitsandbytes_dequantized_weights(interpreted_run):
    for result in interpreted_run["results"]:
        # float32 in, float32 out: only summation order differs; bfloat16 out: its rounding (2^-8)
        tolerance = 1e-5 if result["dtype"] == "torch.float32" else 8e-3
        assert result["error"] < tolerance, result
        assert result["out_dtype"] == result["dtype"], result
        assert result["shape"][:-1] == [1, result["rows"]], result


def test_kernel_refuses_what_it_cannot_compute(interpreted_run):
    assert "at most 128 rows, got 129" in interpreted_run["too_many"]
    assert "quant_type fp4" in interpreted_run["refused"][0]
    assert "blocksize 128" in interpreted_run["refused"][1]
    assert "in_features 192 is not a multiple of 256" in interpreted_run["refused"][2]


@pytest.mark.gpu
def test_compiled_kernel_matches_bitsandbytes_on_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    from inference.backends.nf4_kernel import NF4Weight

    torch.manual_seed(0)
    fixed = {"BLOCK_N": 32, "GROUPS": 2, "SPLIT_K": 2}  # correctness needs no tuning (each config compiles)
    for out_features, in_features in ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)):
        weight = torch.randn(out_features, in_features, device="cuda", dtype=torch.bfloat16) * 0.02
        packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
        for rows in (1, 3, 8, 16, 17, 32, 64, 100, 128):
            x = torch.randn(rows, in_features, device="cuda", dtype=torch.bfloat16)
            expected = bnb.matmul_4bit(x, packed, quant_state=state).float()
            got = NF4Weight(packed, state).matmul(x, config=fixed).float()
            assert float((got - expected).abs().max() / expected.abs().max()) < 2e-2, (out_features, in_features, rows)
    for rows in (8, 40, 128):  # the autotuned launch the service uses, in decoding's bucket and two of prefill's
        x = torch.randn(rows, in_features, device="cuda", dtype=torch.bfloat16)
        expected = bnb.matmul_4bit(x, packed, quant_state=state).float()
        tuned = NF4Weight(packed, state).matmul(x).float()
        assert float((tuned - expected).abs().max() / expected.abs().max()) < 2e-2, rows


def test_auto_times_once_per_row_bucket_above_decoding_sizes():
    """A prompt of a new length must not time the two kernels again (each timing stalls the service)."""
    from inference.backends.nf4_kernel import MAX_ROWS, timing_key

    assert timing_key(4096, 14336, 40) == timing_key(4096, 14336, 50) == timing_key(4096, 14336, 64)
    assert timing_key(4096, 14336, 17) == timing_key(4096, 14336, 32) != timing_key(4096, 14336, 33)
    assert len({timing_key(4096, 14336, rows) for rows in range(17, MAX_ROWS + 1)}) == 3
    # decoding's batch sizes stay timed one by one: bitsandbytes' own dispatch changes between them
    assert len({timing_key(4096, 14336, rows) for rows in range(1, 17)}) == 16
    assert timing_key(4096, 14336, 40) != timing_key(14336, 4096, 40)


def test_auto_keeps_serving_on_what_works_when_a_kernel_fails(caplog):
    """A host without what Triton needs at run time (a C compiler, say), or without NVRTC, must keep serving."""
    from inference.backends import nf4_kernel

    def broken(message):
        def forward(x):
            raise RuntimeError(message)

        return forward

    def bitsandbytes_forward(x):
        raise AssertionError("not timed: every other kernel failed, so bitsandbytes serves without a timing")

    forwards = {"one_row": broken("no NVRTC library"), "triton": broken("Failed to find C compiler")}
    assert nf4_kernel._fastest({**forwards, "bitsandbytes": bitsandbytes_forward}, object()) == "bitsandbytes"
    assert "the one_row kernel failed (RuntimeError: no NVRTC library)" in caplog.text
    assert "the triton kernel failed (RuntimeError: Failed to find C compiler)" in caplog.text


def test_one_row_goes_to_the_one_row_kernel_untimed_and_to_what_works_if_it_fails(caplog, monkeypatch):
    """Decoding one request takes the CUDA one-row kernel without a timing; a host where it cannot run keeps
    serving on the others (here Triton fails too, so bitsandbytes)."""
    import torch

    from inference.backends import nf4_kernel

    class Weight:
        def __init__(self, out_features):
            self.out_features, self.in_features = out_features, 64

        def matmul(self, x):
            raise RuntimeError("Failed to find C compiler")

    class OneRow:
        def __init__(self, works):
            self.works = works

        def matmul(self, x):
            if not self.works:
                raise RuntimeError("no NVRTC library")
            return torch.full((*x.shape[:-1], 3), 7.0, dtype=x.dtype)

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # CPU-only torch: no CUDA to ask
    module = torch.nn.Module()
    module.bias = None
    row = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    working = nf4_kernel._forward_choosing_kernel(module, Weight(90001), OneRow(True), lambda x: None, always=False)
    assert torch.equal(working(row), torch.full((1, 1, 3), 7.0, dtype=torch.bfloat16))
    assert nf4_kernel._FASTEST[(90001, 64, 1)] == "one_row"

    def bitsandbytes_forward(x):
        return torch.zeros(*x.shape[:-1], 3, dtype=x.dtype)

    failing = nf4_kernel._forward_choosing_kernel(module, Weight(90002), OneRow(False), bitsandbytes_forward, False)
    assert torch.equal(failing(row), torch.zeros(1, 1, 3, dtype=torch.bfloat16))
    assert nf4_kernel._FASTEST[(90002, 64, 1)] == "bitsandbytes"
    assert "the one_row kernel failed (RuntimeError: no NVRTC library)" in caplog.text


def test_the_tensor_core_kernel_takes_decodings_rows_when_asked_and_the_others_serve_if_it_fails(caplog, monkeypatch):
    """With nf4_tensor_cores, 2 to 8 rows (and one row of a wide weight) go to the tensor-core kernel untimed;
    without it, or where it cannot run, the kernels serve as before."""
    import torch

    from inference.backends import nf4_kernel

    assert nf4_kernel.decoding_kernels(4096, 1) == ("few_rows", "one_row")
    assert nf4_kernel.decoding_kernels(1024, 1) == ("one_row", "few_rows")
    assert nf4_kernel.decoding_kernels(1024, 8) == ("few_rows",)
    assert nf4_kernel.decoding_kernels(4096, 9) == ()

    class StandInKernel:
        """Stands in for a kernel: a product filled with `value`, or the failure of a host without NVRTC."""

        def __init__(self, value, out_features=None):
            self.value, self.out_features, self.in_features = value, out_features, 64

        def matmul(self, x):
            if self.value is None:
                raise RuntimeError("no NVRTC library")
            return torch.full((*x.shape[:-1], 3), self.value, dtype=x.dtype)

    def bitsandbytes_forward(x):
        return torch.zeros(*x.shape[:-1], 3, dtype=x.dtype)

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # CPU-only torch: no CUDA to ask
    module = torch.nn.Module()
    module.bias = None
    rows = torch.randn(4, 1, 64, dtype=torch.bfloat16)
    one = rows[:1]

    def choosing(out_features, few_rows):
        triton = StandInKernel(None, out_features)  # fails: only the CUDA kernels or bitsandbytes can serve
        return nf4_kernel._forward_choosing_kernel(
            module, triton, StandInKernel(1.0), bitsandbytes_forward, False, few_rows=few_rows
        )

    wide = choosing(90101, StandInKernel(2.0))
    assert float(wide(rows)[0, 0, 0]) == 2.0 and nf4_kernel._FASTEST[(90101, 64, 4)] == "few_rows"
    assert float(wide(one)[0, 0, 0]) == 2.0 and nf4_kernel._FASTEST[(90101, 64, 1)] == "few_rows"
    narrow = choosing(1024 + 7, StandInKernel(2.0))
    assert float(narrow(one)[0, 0, 0]) == 1.0 and nf4_kernel._FASTEST[(1031, 64, 1)] == "one_row"
    off = choosing(90102, None)
    assert float(off(rows)[0, 0, 0]) == 0.0 and nf4_kernel._FASTEST[(90102, 64, 4)] == "bitsandbytes"
    assert float(off(one)[0, 0, 0]) == 1.0 and nf4_kernel._FASTEST[(90102, 64, 1)] == "one_row"
    failing = choosing(90103, StandInKernel(None))
    assert float(failing(one)[0, 0, 0]) == 1.0 and nf4_kernel._FASTEST[(90103, 64, 1)] == "one_row"
    assert float(failing(rows)[0, 0, 0]) == 0.0 and nf4_kernel._FASTEST[(90103, 64, 4)] == "bitsandbytes"
    assert "the few_rows kernel failed (RuntimeError: no NVRTC library)" in caplog.text
