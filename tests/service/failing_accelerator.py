"""`vlmkit serve` on a stand-in for a GPU that has failed: once loaded, every forward pass of the model raises
what torch raises after a device-side assert (AcceleratorError with CUDA's message). The rest is the real
server. The real thing is checked on the GPU machine (docs/gpu-results.md).

    python -m tests.service.failing_accelerator serve --config FILE
"""

from __future__ import annotations

import sys

import torch
from transformers import MllamaForConditionalGeneration

from inference import cli


def _failed_device(*args, **kwargs):
    raise torch.AcceleratorError("CUDA error: device-side assert triggered\n"
                                 "CUDA kernel errors might be asynchronously reported at some other API call")


if __name__ == "__main__":
    MllamaForConditionalGeneration.forward = _failed_device
    sys.exit(cli.main())
