"""`vlmkit serve` on a stand-in for a model that goes wrong once loaded; everything else is the real server.

VLMKIT_TEST_FAULT picks what every forward pass of the model does:
- device-error: raises what torch raises after a device-side assert (AcceleratorError with CUDA's text),
  a stand-in for a failed GPU (the real thing is checked on the GPU machine);
- cuda-assert: on a CUDA GPU, makes a real device-side assert (an out-of-range index on the device), after
  which every CUDA call in the process fails: the GPU machine's check that the process ends and systemd
  brings it back (scripts/gpu_host/run.sh cuda-fault);
- error: raises an ordinary RuntimeError, as a bug in a backend would;
- hang: never returns, as a wedged GPU kernel would;
- hold-prepare: the model is fine, but preparing a prompt first creates the file $VLMKIT_TEST_HOLD.entered,
  then waits while the file $VLMKIT_TEST_HOLD exists (a request held in preparation, as a huge image is).

    VLMKIT_TEST_FAULT=hang python -m tests.service.faulty_model serve --config FILE
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import torch
from transformers import MllamaForConditionalGeneration

from inference import cli
from inference.backends.transformers_backend import TransformersBackend


def device_error(*args, **kwargs):
    raise torch.AcceleratorError(
        "CUDA error: device-side assert triggered\n"
        "CUDA kernel errors might be asynchronously reported at some other API call"
    )


def cuda_assert(*args, **kwargs):
    table = torch.zeros(4, device="cuda")
    table[torch.tensor([1 << 20], device="cuda")].item()  # out of bounds: the kernel's assert fires


def error(*args, **kwargs):
    raise RuntimeError("the stand-in model failed")


def hang(*args, **kwargs):
    threading.Event().wait()


def hold_prepare() -> None:
    hold = Path(os.environ["VLMKIT_TEST_HOLD"])
    prepare = TransformersBackend.prepare

    def held(self, messages, image):
        Path(f"{hold}.entered").touch()
        while hold.exists():
            time.sleep(0.05)
        return prepare(self, messages, image)

    TransformersBackend.prepare = held


FORWARD_FAULTS = {"device-error": device_error, "cuda-assert": cuda_assert, "error": error, "hang": hang}

if __name__ == "__main__":
    fault = os.environ["VLMKIT_TEST_FAULT"]
    if fault == "hold-prepare":
        hold_prepare()
    else:
        MllamaForConditionalGeneration.forward = FORWARD_FAULTS[fault]
    sys.exit(cli.main())
