"""CUDA C++ compiled at run time with NVRTC and launched on torch's current stream (so CUDA graphs capture it).

torch's CUDA wheels bring NVRTC (the `nvidia` packages) but no CUDA toolkit, and `torch.cuda._compile_kernel`
asks for the toolkit's headers (CUDA_HOME), so this module talks to NVRTC and the driver itself. Kernels
compiled here must not include headers: NVRTC's built-ins (vector types, intrinsics) are all they get.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Sequence

import torch


class RuntimeCompileError(RuntimeError):
    pass


def _nvrtc_library() -> ctypes.CDLL:
    """NVRTC of torch's CUDA major version: already loaded by torch, on the loader's path, or in the `nvidia`
    packages beside torch (any version where torch has no CUDA, which is enough to compile)."""
    major = (torch.version.cuda or "").split(".")[0]
    packages = os.path.dirname(os.path.dirname(torch.__file__))
    names = [f"libnvrtc.so.{major}"] if major else []
    names += sorted(glob.glob(os.path.join(packages, "nvidia", "*", "lib", f"libnvrtc.so.{major}*")))
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise RuntimeCompileError(f"no NVRTC library (tried {', '.join(names) or 'none found'})")


def _check_nvrtc(library: ctypes.CDLL, status: int, what: str) -> None:
    if status:
        library.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeCompileError(f"NVRTC {what}: {library.nvrtcGetErrorString(status).decode()}")


def _check_driver(library: ctypes.CDLL, status: int, what: str) -> None:
    if status:
        text = ctypes.c_char_p()
        library.cuGetErrorString(status, ctypes.byref(text))
        raise RuntimeCompileError(f"CUDA driver {what}: {(text.value or b'error %d' % status).decode()}")


def compile_cubin(source: str, name: str, architecture: str) -> bytes:
    """`source` compiled for `architecture` (e.g. "sm_90") into a cubin; the compiler's log in the error if it fails."""
    nvrtc = _nvrtc_library()
    program = ctypes.c_void_p()
    _check_nvrtc(
        nvrtc,
        nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), f"{name}.cu".encode(), 0, None, None),
        "create program",
    )
    try:
        options = [f"--gpu-architecture={architecture}".encode(), b"--std=c++17"]
        array = (ctypes.c_char_p * len(options))(*options)
        status = nvrtc.nvrtcCompileProgram(program, len(options), array)
        if status:
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(program, log)
            raise RuntimeCompileError(f"NVRTC could not compile {name}:\n{log.value.decode(errors='replace')}")
        size = ctypes.c_size_t()
        _check_nvrtc(nvrtc, nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size)), "cubin size")
        cubin = ctypes.create_string_buffer(size.value)
        _check_nvrtc(nvrtc, nvrtc.nvrtcGetCUBIN(program, cubin), "cubin")
        return cubin.raw
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


class Kernel:
    """One `extern "C" __global__` function of a cubin, launched with tensors (as pointers), ints and floats."""

    def __init__(self, cubin: bytes, name: str) -> None:
        torch.cuda.init()
        self._driver = ctypes.CDLL("libcuda.so.1")
        self._module = ctypes.c_void_p()
        self._cubin = ctypes.create_string_buffer(cubin)  # the driver reads it during the load only
        _check_driver(self._driver, self._driver.cuModuleLoadData(ctypes.byref(self._module), self._cubin), "load")
        self._function = ctypes.c_void_p()
        _check_driver(
            self._driver,
            self._driver.cuModuleGetFunction(ctypes.byref(self._function), self._module, name.encode()),
            f"function {name}",
        )

    def launch(self, grid: Sequence[int], block: Sequence[int], arguments: Sequence[object]) -> None:
        values = [_argument(value) for value in arguments]
        pointers = (ctypes.c_void_p * len(values))(*(ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in values))
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        _check_driver(
            self._driver,
            self._driver.cuLaunchKernel(self._function, *grid, *block, 0, stream, pointers, None),
            "launch",
        )


def _argument(value: object):
    if isinstance(value, torch.Tensor):
        return ctypes.c_void_p(value.data_ptr())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"kernel arguments are tensors, ints and floats, not {type(value).__name__}")
    return ctypes.c_int(value) if isinstance(value, int) else ctypes.c_float(value)


def architecture(device: torch.device | None = None) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"
