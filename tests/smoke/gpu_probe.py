"""What the service needs of the GPU, checked from inside the unit's sandbox; prints one JSON line.

Run by tests/smoke/test_gpu.py with the service environment's interpreter, as the service user, in a
transient unit that has the service unit's sandbox properties (systemd-run). Each check is recorded
as {"ok": bool, ...} and never raises, so one failure does not hide the others.
"""

from __future__ import annotations

import ctypes
import json
import sys
import traceback


def check(name: str, results: dict, function) -> None:
    try:
        results[name] = {"ok": True, **(function() or {})}
    except Exception as error:  # noqa: BLE001 - recorded, not raised: the test names every failing check
        results[name] = {
            "ok": False,
            "error": f"{type(error).__name__}: {error}",
            "where": traceback.format_exc(limit=3)[-800:],
        }


def driver_cuda_version() -> int:
    """The newest CUDA version the loaded driver supports (cuDriverGetVersion), e.g. 13000."""
    libcuda = ctypes.CDLL("libcuda.so.1")
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        raise RuntimeError("cuDriverGetVersion failed")
    return version.value


def torch_sees_the_gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA {torch.version.cuda})")
    driver = driver_cuda_version()
    torch_major = int(torch.version.cuda.split(".")[0])
    if torch_major > driver // 1000:
        raise RuntimeError(
            f"torch is built for CUDA {torch.version.cuda}; the driver supports up to {driver // 1000}.{driver % 1000 // 10}"
        )
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver_cuda": driver,
        "devices": torch.cuda.device_count(),
        "name": torch.cuda.get_device_name(0),
    }


def bf16_matmul() -> dict:
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(256, 512, generator=generator)
    b = torch.randn(512, 128, generator=generator)
    got = (a.to("cuda", torch.bfloat16) @ b.to("cuda", torch.bfloat16)).float().cpu()
    error = ((got - a @ b).abs().max() / (a @ b).abs().max()).item()
    if error > 0.02:
        raise RuntimeError(f"relative error {error:.4f}")
    return {"relative_error": round(error, 5)}


def cudnn_conv2d() -> dict:
    """A bf16 conv2d through cuDNN, as Mllama's vision patch embedding does."""
    import torch

    if not torch.backends.cudnn.is_available():
        raise RuntimeError("torch.backends.cudnn is not available")
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 56, 56, generator=generator)
    weight = torch.randn(64, 3, 14, 14, generator=generator)
    want = torch.nn.functional.conv2d(image, weight, stride=14)
    with torch.backends.cudnn.flags(enabled=True):
        got = torch.nn.functional.conv2d(image.to("cuda", torch.bfloat16), weight.to("cuda", torch.bfloat16), stride=14)
    error = ((got.float().cpu() - want).abs().max() / want.abs().max()).item()
    if error > 0.03:
        raise RuntimeError(f"relative error {error:.4f}")
    return {"cudnn": torch.backends.cudnn.version(), "relative_error": round(error, 5)}


def bitsandbytes_4bit_forward() -> dict:
    import bitsandbytes
    import bitsandbytes.functional as bnb_functional
    import torch

    torch.manual_seed(0)
    layer = bitsandbytes.nn.Linear4bit(256, 128, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer = layer.to("cuda")
    inputs = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    got = layer(inputs).float()
    weight = bnb_functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    want = inputs.float() @ weight.t()
    error = ((got - want).abs().max() / want.abs().max()).item()
    if error > 0.03:
        raise RuntimeError(f"relative error {error:.4f}")
    return {"bitsandbytes": bitsandbytes.__version__, "relative_error": round(error, 5)}


def triton_kernel() -> dict:
    """Compile (gcc + Python.h for the launcher, ptxas for the kernel) and run one Triton kernel."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        tl.store(
            out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) + tl.load(y_ptr + offsets, mask=mask), mask=mask
        )

    x = torch.arange(1000, device="cuda", dtype=torch.float32)
    out = torch.empty_like(x)
    add[(triton.cdiv(1000, 256),)](x, x, out, 1000, BLOCK=256)
    if not torch.equal(out, 2 * x):
        raise RuntimeError("the kernel computed a wrong sum")
    return {"triton": triton.__version__}


def nf4_one_row_kernel() -> dict:
    """vlmkit's one-row NF4 kernel (4-bit decoding of one request), compiled by NVRTC in memory, against
    bitsandbytes' dequantized weight; without it the service decodes on slower kernels."""
    import bitsandbytes.functional as bnb_functional
    import torch

    from inference.backends.nf4_gemv import NF4OneRow

    torch.manual_seed(0)
    weight = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16) * 0.02
    packed, state = bnb_functional.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    inputs = torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)
    got = NF4OneRow(packed, state, rows=4).matmul(inputs).float()
    want = inputs.float() @ bnb_functional.dequantize_4bit(packed, state).float().t()
    error = ((got - want).abs().max() / want.abs().max()).item()
    if error > 0.03:
        raise RuntimeError(f"relative error {error:.4f}")
    return {"relative_error": round(error, 5)}


def main() -> int:
    results: dict = {}
    check("torch_sees_the_gpu", results, torch_sees_the_gpu)
    if results["torch_sees_the_gpu"]["ok"]:
        check("bf16_matmul", results, bf16_matmul)
        check("cudnn_conv2d", results, cudnn_conv2d)
        check("bitsandbytes_4bit_forward", results, bitsandbytes_4bit_forward)
        check("triton_kernel", results, triton_kernel)
        check("nf4_one_row_kernel", results, nf4_one_row_kernel)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
