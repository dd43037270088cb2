"""What vlmkit's NF4 kernels read of one bitsandbytes 4-bit weight, checked once for what they can compute.

bitsandbytes stores an NF4 weight W [N, K] row-major, two codes a byte (the first in the high nibble), with
one absmax per 64 consecutive codes; double quantization stores those absmax values as 8-bit codes of a
256-entry table, scaled per 256 blocks (`nested_absmax`) and shifted by `offset`. The offset is a tensor on
the GPU: it is read here, once, so that products need no host sync and can be captured in CUDA graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inference.model_layout import NESTED_BLOCKSIZE, NF4_BLOCKSIZE


class UnsupportedWeight(ValueError):
    pass


@dataclass(frozen=True)
class NF4Parts:
    packed: torch.Tensor
    nested: bool
    absmax: torch.Tensor  # uint8 codes when nested, else float32
    absmax_code: torch.Tensor  # the nested table (absmax itself when not nested: never read)
    nested_absmax: torch.Tensor
    offset: float
    out_features: int
    in_features: int

    @classmethod
    def of(cls, packed_weight: torch.Tensor, quant_state, k_multiple: int) -> NF4Parts:
        """The parts of a weight whose in_features are a multiple of `k_multiple` (the kernel's step along K)."""
        if quant_state.quant_type != "nf4":
            raise UnsupportedWeight(f"quant_type {quant_state.quant_type} (only nf4)")
        if quant_state.blocksize != NF4_BLOCKSIZE:
            raise UnsupportedWeight(f"blocksize {quant_state.blocksize} (only {NF4_BLOCKSIZE})")
        nested = bool(quant_state.nested)
        if nested and quant_state.state2.blocksize != NESTED_BLOCKSIZE:
            raise UnsupportedWeight(f"nested blocksize {quant_state.state2.blocksize} (only {NESTED_BLOCKSIZE})")
        out_features, in_features = (int(size) for size in quant_state.shape)
        if in_features % k_multiple:
            raise UnsupportedWeight(f"in_features {in_features} is not a multiple of {k_multiple}")
        return cls(
            packed=packed_weight,
            nested=nested,
            absmax=quant_state.absmax,
            absmax_code=quant_state.state2.code if nested else quant_state.absmax,
            nested_absmax=quant_state.state2.absmax if nested else quant_state.absmax,
            offset=float(quant_state.offset) if nested else 0.0,
            out_features=out_features,
            in_features=in_features,
        )

    def kernel_arguments(self) -> tuple:
        """The weight's arguments in the order every vlmkit NF4 kernel takes them."""
        return (self.packed, self.absmax, self.absmax_code, self.nested_absmax, self.offset)
