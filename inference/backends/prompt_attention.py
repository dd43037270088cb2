"""Which attention kernels the language model may use while it reads a prompt.

On an H100/H200 torch sends `scaled_dot_product_attention` to cuDNN's flash kernel, which builds an
execution plan for every input shape the first time it sees one. The vision encoder always has the same
shape (the processor pads every image to the model's largest number of tiles), so it pays once, at the
first request, and its attention is fastest there. The prompt's text layers have a new shape for every
new prompt length: on an H200 a length the process had not seen before made the 11B's prefill take
~130 ms longer (276 vs 150 ms, docs/lab/speed.md), which is most requests of a live service. For those
layers (a few dozen tokens), flash, memory-efficient and math kernels are as fast and plan nothing.
"""

from __future__ import annotations

import functools

from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

PROMPT_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attend_without_cudnn(language_model: nn.Module) -> None:
    """Run `language_model`'s forward with every attention backend but cuDNN's (the vision encoder keeps it).

    The backend flags are process-wide; the service runs the model on one thread, the engine's.
    """
    forward = language_model.forward

    @functools.wraps(forward)
    def forward_without_cudnn(*args, **kwargs):
        with sdpa_kernel(PROMPT_BACKENDS):
            return forward(*args, **kwargs)

    language_model.forward = forward_without_cudnn
