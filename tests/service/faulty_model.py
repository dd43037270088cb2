"""`vlmkit serve` on a stand-in for a model that goes wrong once loaded; everything else is the real server.

VLMKIT_TEST_FAULT picks what every forward pass of the model does:
- device-error: raises what torch raises after a device-side assert (AcceleratorError with CUDA's text),
  a stand-in for a failed GPU (the real thing is checked on the GPU machine);
- error: raises an ordinary RuntimeError, as a bug in a backend would;
- hang: never returns, as a wedged GPU kernel would.

    VLMKIT_TEST_FAULT=hang python -m tests.service.faulty_model serve --config FILE
"""

from __future__ import annotations

import os
import sys
import threading

import torch
from transformers import MllamaForConditionalGeneration

from inference import cli


def device_error(*args, **kwargs):
    raise torch.AcceleratorError("CUDA error: device-side assert triggered\n"
                                 "CUDA kernel errors might be asynchronously reported at some other API call")


def error(*args, **kwargs):
    raise RuntimeError("the stand-in model failed")


def hang(*args, **kwargs):
    threading.Event().wait()


FAULTS = {"device-error": device_error, "error": error, "hang": hang}

if __name__ == "__main__":
    MllamaForConditionalGeneration.forward = FAULTS[os.environ["VLMKIT_TEST_FAULT"]]
    sys.exit(cli.main())
