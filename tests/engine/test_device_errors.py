"""Which exceptions mean the accelerator is lost for this process (so it must exit), and which do not."""

from __future__ import annotations

import pytest
import torch

from inference.backends import DeviceFailure
from inference.backends.device_errors import device_failures_are_fatal, is_device_failure


@pytest.mark.parametrize(
    "error",
    [
        torch.AcceleratorError("CUDA error: device-side assert triggered"),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("CUDA error: uncorrectable ECC error encountered"),
        RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx(...)`"),
    ],
    ids=["accelerator-error", "illegal-access", "ecc", "cublas"],
)
def test_cuda_errors_are_device_failures(error):
    assert is_device_failure(error)
    with pytest.raises(DeviceFailure):
        with device_failures_are_fatal():
            raise error


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("probability tensor contains either `inf`, `nan` or element < 0"),
        ValueError("CUDA error"),  # not an error torch raises
    ],
    ids=["out-of-memory", "cpu-sampling", "value-error"],
)
def test_other_errors_are_not(error):
    assert not is_device_failure(error)
    with pytest.raises(type(error)):
        with device_failures_are_fatal():
            raise error
