"""Tell an accelerator failure (the process's GPU context is lost) from an error of one request.

After a device-side assert, an illegal memory access or an uncorrectable ECC error, every later CUDA call
in the process fails; only a new process gets a working context. torch raises these as AcceleratorError
(older versions: RuntimeError), recognisable by CUDA's own error text. Out-of-memory is not among them:
the context survives it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from inference.backends.base import DeviceFailure

_FATAL_TEXT = (
    "CUDA error",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "CUDNN_STATUS_EXECUTION_FAILED",
    "device-side assert",
    "illegal memory access",
    "ECC error",
)


def is_device_failure(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return False
    if isinstance(error, torch.AcceleratorError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _FATAL_TEXT)


@contextlib.contextmanager
def device_failures_are_fatal() -> Iterator[None]:
    """Re-raise an accelerator failure as DeviceFailure, which the engine treats as the end of the process."""
    try:
        yield
    except DeviceFailure:
        raise
    except Exception as error:
        if is_device_failure(error):
            raise DeviceFailure(str(error)) from error
        raise
