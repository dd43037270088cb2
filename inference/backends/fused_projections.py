"""Projections that read the same input, multiplied as one: Q, K and V; the MLP's gate and up.

A decoding step with several rows pays for every 4-bit matrix product it launches (at 8 rows on an
H200, bitsandbytes multiplies the 90B's gate and up together in 431 µs, apart in 2 × 364 µs): one
product over the stacked weights replaces two or three.

Stacking is lossless for bitsandbytes NF4: a weight is stored row by row, two codes a byte, with one
absmax per 64 consecutive values, and 64 divides every row, so the blocks of the stacked weight are
the blocks of its parts, byte for byte. Double quantization (the absmax values themselves 8-bit, in
blocks of 256, with one offset per tensor) does not stack, since the parts' offsets differ: the stacked
weight keeps its absmax values as the float32 numbers bitsandbytes computes from the nested ones before
every use, which costs 3 bytes more per 64 weights (about 9% of the stacked weights' bytes).

The parts keep working for the model's own forward (the prefill): each becomes a view of its rows of the
stacked weight, so the memory is not held twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from inference.model_layout import NF4_BLOCKSIZE


class FusedProjection(nn.Module):
    """Several projections of one input as one product; `forward` returns their outputs in order."""

    def __init__(self, stacked: nn.Module, sizes: Sequence[int]) -> None:
        super().__init__()
        self.stacked = stacked
        self.sizes = list(sizes)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.stacked(hidden).split(self.sizes, dim=-1)


class SeparateProjections(nn.Module):
    """The same contract over unfused projections (16-bit weights, or weights that cannot be stacked)."""

    def __init__(self, parts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(part(hidden) for part in self.parts)


def stackable(parts: Sequence[nn.Module]) -> bool:
    """16-bit `nn.Linear` layers, or bitsandbytes NF4 layers, without bias, on one device, of one input size."""
    import bitsandbytes as bnb

    if all(type(part) is nn.Linear and part.bias is None for part in parts):
        weights = [part.weight for part in parts]
        return all(
            w.shape[1] == weights[0].shape[1] and w.dtype == weights[0].dtype and w.device == weights[0].device
            for w in weights
        )
    if not all(isinstance(part, bnb.nn.Linear4bit) and part.bias is None for part in parts):
        return False
    states = [part.weight.quant_state for part in parts]
    if any(
        state is None
        or state.quant_type != "nf4"
        or state.blocksize != NF4_BLOCKSIZE
        or getattr(state, "packing_format_for_cpu", False)
        for state in states
    ):
        return False  # packing_format_for_cpu: bitsandbytes re-laid the bytes out for its CPU kernel
    first = states[0]
    return all(
        state.shape[1] == first.shape[1]
        and state.dtype == first.dtype
        and part.weight.device == parts[0].weight.device
        and part.compute_dtype == parts[0].compute_dtype
        for part, state in zip(parts, states)
    )


def projections(parts: Sequence[nn.Module], fuse: bool) -> nn.Module:
    """One module computing `parts` on one input: stacked when asked and lossless, else one by one."""
    if not (fuse and stackable(parts)):
        return SeparateProjections(parts)
    if all(type(part) is nn.Linear for part in parts):
        return stack_linear(parts)
    return stack_nf4(parts)


@torch.no_grad()
def stack_linear(parts: Sequence[nn.Linear]) -> FusedProjection:
    """Stack 16-bit layers row-wise; rebind each part's weight to a view of its rows."""
    sizes = [part.out_features for part in parts]
    stacked = nn.Linear(parts[0].in_features, sum(sizes), bias=False, device="meta")
    stacked.weight = nn.Parameter(torch.cat([part.weight for part in parts]), requires_grad=False)
    for part, rows in zip(parts, stacked.weight.split(sizes)):
        part.weight = nn.Parameter(rows, requires_grad=False)
    return FusedProjection(stacked, sizes)


def float_absmax(state) -> torch.Tensor:
    """The absmax values bitsandbytes multiplies by, in float32 (from the nested statistics when nested)."""
    import bitsandbytes.functional as bnbf

    if not state.nested:
        return state.absmax.float().reshape(-1)
    absmax = bnbf.dequantize_blockwise(state.absmax, state.state2)
    absmax += state.offset
    return absmax.float().reshape(-1)


@torch.no_grad()
def stack_nf4(parts: Sequence[nn.Module]) -> FusedProjection:
    """Stack bitsandbytes NF4 layers row-wise; rebind each part to a view of its rows."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import QuantState

    states = [part.weight.quant_state for part in parts]
    in_features = states[0].shape[1]
    sizes = [state.shape[0] for state in states]
    packed = torch.cat([part.weight.data.reshape(-1) for part in parts]).reshape(-1, 1)
    absmax = torch.cat([float_absmax(state) for state in states])
    code, dtype = states[0].code, states[0].dtype

    def state_for(rows: int, absmax_rows: torch.Tensor) -> QuantState:
        return QuantState(
            absmax=absmax_rows,
            shape=torch.Size([rows, in_features]),
            code=code,
            blocksize=NF4_BLOCKSIZE,
            quant_type="nf4",
            dtype=dtype,
        )

    def params(data: torch.Tensor, state: QuantState, module: nn.Module) -> bnb.nn.Params4bit:
        return bnb.nn.Params4bit(
            data=data,
            requires_grad=False,
            quant_state=state,
            blocksize=NF4_BLOCKSIZE,
            compress_statistics=False,
            quant_type="nf4",
            quant_storage=data.dtype,
            module=module,
            bnb_quantized=True,
        )

    stacked = bnb.nn.Linear4bit(
        in_features,
        sum(sizes),
        bias=False,
        compute_dtype=parts[0].compute_dtype,
        compress_statistics=False,
        quant_type="nf4",
        quant_storage=packed.dtype,
        device="meta",
    )
    stacked.weight = params(packed, state_for(sum(sizes), absmax), stacked)
    row_bytes, row_blocks = in_features // 2, in_features // NF4_BLOCKSIZE
    start = 0
    for part, rows in zip(parts, sizes):
        part.weight = params(
            packed[start * row_bytes : (start + rows) * row_bytes],
            state_for(rows, absmax[start * row_blocks : (start + rows) * row_blocks]),
            part,
        )
        start += rows
    return FusedProjection(stacked, sizes)


class DecoderProjections(nn.Module):
    """The input projections of each language-model layer as a decoding step calls them: `attention[i]`
    gives a self-attention layer's query, key and value; `mlp[i]` every layer's gate and up."""

    def __init__(self, text_model: nn.Module, fuse: bool) -> None:
        super().__init__()
        cross = set(text_model.cross_attention_layers)
        self.attention = nn.ModuleDict()
        self.mlp = nn.ModuleDict()
        for index, layer in enumerate(text_model.layers):
            if index not in cross:
                attention = layer.self_attn
                self.attention[str(index)] = projections([attention.q_proj, attention.k_proj, attention.v_proj], fuse)
            self.mlp[str(index)] = projections([layer.mlp.gate_proj, layer.mlp.up_proj], fuse)

    def feed_forward(self, layer: nn.Module, index: int, normed: torch.Tensor) -> torch.Tensor:
        """Layer `index`'s MLP on `normed`, its gate and up multiplied through these projections."""
        gate, up = self.mlp[str(index)](normed)
        return layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)

    @property
    def fused(self) -> int:
        """How many of the projection groups are stacked."""
        return sum(isinstance(module, FusedProjection) for module in self.modules())
