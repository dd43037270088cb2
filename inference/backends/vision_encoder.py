"""The Mllama vision encoder with unmasked attention: transformers' output, without its padding mask.

transformers' MllamaVisionModel (like Meta's reference code) pads each tile's patch tokens to a multiple
of 8 and gives every attention layer an additive mask over all tiles' tokens. That mask is the outer
product of "this token is padding or lies in a tile the image does not cover" with itself: it hides a key
from a query only when both are such tokens. So the image's real tokens attend to every token, the padding
and the uncovered tiles' tokens included, and those other tokens attend to the real ones only. The padding
therefore changes the real tokens' features and cannot be dropped. The mask keeps torch off its
unmasked (flash) attention kernels; this encoder computes the same attention as two unmasked ones: the
real tokens' queries against every key, and the other queries against the real tokens' keys. It orders
each image's tokens real ones first, so both are slices, runs the model's own layers' weights over them,
and puts HF's order back at the end: its output is HF's, every token of every tile, up to floating-point
rounding. Each number of covered tiles gives the attention new shapes, which cuDNN plans at first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.mllama.modeling_mllama import (
    MllamaVisionAttention,
    MllamaVisionEncoder,
    MllamaVisionEncoderLayer,
    MllamaVisionModel,
)

# transformers pads each tile's tokens to a multiple of this.
TOKEN_MULTIPLE = 8


@dataclass(frozen=True)
class RealTokensFirst:
    """Each image's tokens reordered so that its real tokens (real patches and class token of the tiles
    it covers) come first. `order[i]` lists HF's token positions in the new order; `restore` undoes it."""

    order: torch.Tensor
    restore: torch.Tensor
    real_counts: tuple[int, ...]

    @classmethod
    def of(
        cls, aspect_ratio_mask: torch.Tensor, real_per_tile: int, tokens_per_tile: int, device: torch.device
    ) -> RealTokensFirst:
        """`aspect_ratio_mask`: [images, tiles], 1 where the image covers the tile; the order is made on `device`.
        The counts come from the mask where it is: a mask on the CPU costs no wait for the GPU."""
        covered = aspect_ratio_mask.bool()
        real_counts = tuple(int(tiles) * real_per_tile for tiles in covered.sum(dim=1).tolist())
        real_in_tile = torch.arange(tokens_per_tile, device=device) < real_per_tile
        is_real = (covered.to(device)[:, :, None] & real_in_tile).flatten(1)
        order = torch.argsort((~is_real).to(torch.uint8), dim=1, stable=True)
        return cls(order, torch.argsort(order, dim=1), real_counts)

    def apply(self, tokens: torch.Tensor) -> torch.Tensor:
        return _gather_tokens(tokens, self.order)

    def undo(self, tokens: torch.Tensor) -> torch.Tensor:
        return _gather_tokens(tokens, self.restore)


def _gather_tokens(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """tokens: [images, tokens, features]; positions: [images, tokens]."""
    return torch.gather(tokens, 1, positions[:, :, None].expand(-1, -1, tokens.shape[-1]))


def attend(attention: MllamaVisionAttention, hidden: torch.Tensor, real_counts: tuple[int, ...]) -> torch.Tensor:
    """HF's masked self-attention over `hidden` (each image's real tokens first), as unmasked attention.

    Not through MllamaVisionAttention.forward: given no mask, transformers' SDPA path makes it causal.
    """
    images, tokens, _ = hidden.shape

    def heads(projection: torch.nn.Module) -> torch.Tensor:
        return projection(hidden).view(images, tokens, attention.num_heads, attention.head_dim).transpose(1, 2)

    query, key, value = heads(attention.q_proj), heads(attention.k_proj), heads(attention.v_proj)
    per_image = []
    for image, real in enumerate(real_counts):
        q, k, v = query[image : image + 1], key[image : image + 1], value[image : image + 1]
        parts = [F.scaled_dot_product_attention(q[:, :, :real], k, v, scale=attention.scaling)]
        if real < tokens:
            parts.append(
                F.scaled_dot_product_attention(q[:, :, real:], k[:, :, :real], v[:, :, :real], scale=attention.scaling)
            )
        per_image.append(torch.cat(parts, dim=2))
    attended = torch.cat(per_image).transpose(1, 2).reshape(images, tokens, -1)
    return attention.o_proj(attended)


def encoder_layer(layer: MllamaVisionEncoderLayer, hidden: torch.Tensor, real_counts: tuple[int, ...]) -> torch.Tensor:
    """MllamaVisionEncoderLayer.forward with `attend` for its attention."""
    attended = attend(layer.self_attn, layer.input_layernorm(hidden), real_counts)
    if layer.is_gated:
        attended = layer.gate_attn.tanh() * attended
    hidden = hidden + attended
    fed = layer.mlp(layer.post_attention_layernorm(hidden))
    if layer.is_gated:
        fed = layer.gate_ffn.tanh() * fed
    return hidden + fed


def encode(
    encoder: MllamaVisionEncoder, hidden: torch.Tensor, real_counts: tuple[int, ...], keep: Sequence[int] = ()
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """MllamaVisionEncoder.forward's last hidden state, and the outputs of the layers numbered in `keep`."""
    kept = {}
    for number, layer in enumerate(encoder.layers):
        hidden = encoder_layer(layer, hidden, real_counts)
        if number in keep:
            kept[number] = hidden
    return hidden, kept


def forward_without_padding_mask(
    model: MllamaVisionModel,
    pixel_values: torch.Tensor,
    aspect_ratio_ids: torch.Tensor,
    aspect_ratio_mask: torch.Tensor,
) -> BaseModelOutput:
    """MllamaVisionModel.forward (transformers 5.x) with `attend` in place of its masked attention.

    pixel_values: [batch, images, tiles, channels, height, width]; aspect_ratio_ids: [batch, images];
    aspect_ratio_mask: [batch, images, tiles], on any device (on the CPU, nothing here waits for the GPU).
    Every image must cover at least one tile.
    """
    batch_size, num_images, num_tiles, channels, height, width = pixel_values.shape
    images = batch_size * num_images
    device, dtype = model.patch_embedding.weight.device, model.patch_embedding.weight.dtype
    aspect_ratio_ids = aspect_ratio_ids.reshape(images, -1).to(device)

    patches = model.patch_embedding(pixel_values.reshape(-1, channels, height, width).to(device, dtype))
    hidden = patches.flatten(2).transpose(1, 2)
    _, num_patches, dim = hidden.shape
    hidden = model.pre_tile_positional_embedding(hidden.reshape(images, num_tiles, num_patches, dim), aspect_ratio_ids)
    hidden = model.apply_class_embedding(hidden.reshape(images * num_tiles, num_patches, dim))
    num_patches += 1
    hidden = model.gated_positional_embedding(hidden.reshape(images, num_tiles, num_patches, dim), aspect_ratio_ids)
    hidden = model.layernorm_pre(hidden)

    # The padding tokens start as zeros, as in HF: the real tokens attend to them.
    padded = -(-num_patches // TOKEN_MULTIPLE) * TOKEN_MULTIPLE
    hidden = F.pad(hidden, (0, 0, 0, padded - num_patches))
    tokens = RealTokensFirst.of(aspect_ratio_mask.reshape(images, num_tiles), num_patches, padded, device)

    hidden, local_states = encode(
        model.transformer,
        tokens.apply(hidden.reshape(images, -1, dim)),
        tokens.real_counts,
        keep=model.intermediate_layers_indices,
    )
    hidden = model.layernorm_post(tokens.undo(hidden))
    hidden = model.post_tile_positional_embedding(hidden.reshape(images, num_tiles, padded, dim), aspect_ratio_ids)
    hidden, _ = encode(model.global_transformer, tokens.apply(hidden.reshape(images, -1, dim)), tokens.real_counts)

    def unpadded(states: torch.Tensor) -> torch.Tensor:
        states = tokens.undo(states).reshape(images, num_tiles, padded, -1)[:, :, :num_patches]
        return states.reshape(batch_size, num_images, num_tiles, num_patches, -1)

    # HF's output: the last state, then the chosen local layers' states interleaved feature by feature.
    intermediate = torch.stack([local_states[i] for i in model.intermediate_layers_indices], dim=-1)
    return BaseModelOutput(last_hidden_state=torch.cat([unpadded(hidden), unpadded(intermediate.flatten(2))], dim=-1))


class ForwardWithoutPaddingMask:
    """A MllamaVisionModel's forward once `encode_without_padding_mask` has replaced it.

    It runs `forward_without_padding_mask`, and `hf_forward` (the forward it replaced) for what that does not
    take: images that cover no tile (an all-zero aspect_ratio_mask row, which the processor never makes: HF's
    mask then covers every pair of tokens) and callers asking for more than the last hidden state.
    """

    def __init__(self, model: MllamaVisionModel) -> None:
        self.model = model
        self.hf_forward = model.forward

    def __call__(self, pixel_values, aspect_ratio_ids, aspect_ratio_mask, **kwargs) -> BaseModelOutput:
        tiles_covered = aspect_ratio_mask.reshape(-1, aspect_ratio_mask.shape[-1]).any(dim=-1)
        if kwargs or not bool(tiles_covered.all()):
            return self.hf_forward(pixel_values, aspect_ratio_ids, aspect_ratio_mask.to(pixel_values.device), **kwargs)
        return forward_without_padding_mask(self.model, pixel_values, aspect_ratio_ids, aspect_ratio_mask)


def encode_without_padding_mask(model: MllamaVisionModel) -> None:
    """Give `model` the forward of `ForwardWithoutPaddingMask`."""
    model.forward = ForwardWithoutPaddingMask(model)
