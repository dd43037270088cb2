"""GPU memory besides the weights: caches, activations, CUDA context, margin.

Every figure is for serving with transformers' `generate` (dynamic cache, sdpa attention) and
is documented, with its reasoning, in docs/planner.md. All sizes are bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from inference.planner.mllama import MllamaDims

GiB = 1024**3

# What a CUDA process costs before the first tensor: the context, loaded kernels (torch, cuBLAS,
# bitsandbytes) and the driver's per-process reservations. The reference manual deployment measured 1-2 GB; we take the
# middle, per GPU the process uses.
CUDA_CONTEXT_BYTES = int(1.5 * GiB)
# PyTorch's caching allocator rounds blocks, fragments, and the dynamic cache grows by copying one
# layer at a time: keep this share of everything allocated free.
MARGIN_FRACTION = 0.05
CACHE_ITEM_BYTES = 2  # keys and values are cached in the compute dtype (bf16/fp16)
ACTIVATION_ITEM_BYTES = 2


@dataclass(frozen=True)
class Serving:
    """What is served at once: context per sequence, sequences per batch, images per sequence."""

    context: int = 8192
    batch: int = 1
    images: int = 1

    def __post_init__(self):
        if self.context < 1 or self.batch < 1 or self.images < 0:
            raise ValueError("context and batch must be at least 1, images at least 0")


def kv_cache_per_layer(dims: MllamaDims, serving: Serving) -> int:
    """Keys and values of one self-attention layer for the whole context of every sequence."""
    return 2 * dims.num_key_value_heads * dims.head_dim * CACHE_ITEM_BYTES * serving.context * serving.batch


def cross_cache_per_layer(dims: MllamaDims, serving: Serving) -> int:
    """Keys and values one cross-attention layer keeps for the image tokens (computed once, at prefill)."""
    tokens = dims.image_tokens * serving.images
    return 2 * dims.num_key_value_heads * dims.head_dim * CACHE_ITEM_BYTES * tokens * serving.batch


def vision_activations(dims: MllamaDims, serving: Serving) -> int:
    """Peak of the vision encoder on the largest image (all tiles), for every image of the batch.

    The encoder keeps every layer's output until it has picked the intermediate layers and builds a
    (tokens × tokens) attention mask; on top of those it holds either one layer's working set (the
    MLP's fc1 and GELU outputs beside q, k, v and the attention output) or, at the end, the stacked
    intermediate layers and their concatenation with the last one (vision_output_dim wide).
    """
    if serving.images == 0:
        return 0
    tokens = dims.max_num_tiles * (ceil(dims.patches_per_tile / 8) * 8)  # each tile padded to a multiple of 8
    hv, iv = dims.vision_hidden_size, dims.vision_intermediate_size
    kept = (dims.vision_layers + dims.vision_global_layers) * tokens * hv
    mask = tokens * tokens
    working = tokens * (2 * iv + 4 * hv)
    output = 2 * dims.image_tokens * dims.vision_output_dim
    return (kept + mask + max(working, output)) * ACTIVATION_ITEM_BYTES * serving.batch * serving.images


def text_activations(dims: MllamaDims, serving: Serving, dequant_bytes: int) -> int:
    """Peak of one decoder layer during prefill of a prompt that fills the context.

    Held on every GPU that runs decoder layers: the residual stream and its normalised copy, the
    larger of the MLP's working set (gate, up and their product) and attention's (q, k and v
    expanded to all heads, output), the cross-attention mask against the image tokens, the
    projected image states every cross-attention layer reads, a boolean attention mask when
    sequences are padded (batch > 1), the last-token logits, and, for quantized weights, one
    layer's weight dequantized to the compute dtype.
    """
    b, n = serving.batch, serving.context
    h, i = dims.hidden_size, dims.intermediate_size
    attention = 4 * dims.num_attention_heads * dims.head_dim
    stream = b * n * (2 * h + max(3 * i, attention)) * ACTIVATION_ITEM_BYTES
    image_tokens = dims.image_tokens * serving.images
    cross_mask = b * n * image_tokens * ACTIVATION_ITEM_BYTES
    image_states = b * image_tokens * h * ACTIVATION_ITEM_BYTES
    padding_mask = b * n * n if b > 1 else 0
    logits = b * dims.vocab_size * (ACTIVATION_ITEM_BYTES + 4)
    return stream + cross_mask + image_states + padding_mask + logits + dequant_bytes


def margin(allocated: int, fraction: float = MARGIN_FRACTION) -> int:
    return int(allocated * fraction)
