"""The exact method: weights from the checkpoint, plus caches, activations, context and margin, placed on GPUs.

`Estimator(checkpoint).estimate(gpus, serving, bits)` gives one `Estimate`; it is cheap, so the
verdict can ask it again with other bits, GPU counts, contexts and batches.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from math import prod

from inference.model_layout import UNQUANTIZED_MODULE_NAMES
from inference.planner import memory
from inference.planner.checkpoint import Checkpoint
from inference.planner.gpus import Gpu
from inference.planner.memory import Serving
from inference.planner.mllama import MllamaDims, dense_tensors, parameter_count
from inference.planner.placement import GpuLoad, Overheads, Unit, place
from inference.planner.quantization import Quantization, stored_bits
from inference.planner.tensors import Tensor, itemsize
from inference.planner.weights import WeightGroups, group

# (key, label) of each component, in report order
COMPONENTS = (
    ("weights_self_attention_layers", "weights: self-attention decoder layers"),
    ("weights_cross_attention_layers", "weights: cross-attention decoder layers"),
    ("weights_vision_encoder", "weights: vision encoder"),
    ("weights_projector", "weights: multi-modal projector"),
    ("weights_embeddings", "weights: token embeddings"),
    ("weights_output_head", "weights: final norm + lm_head"),
    ("weights_other", "weights: not attributed to a module"),
    ("kv_cache", "KV cache (self-attention layers)"),
    ("cross_attention_cache", "cross-attention cache (image tokens)"),
    ("activations", "activations (prefill peak)"),
    ("cuda_context", "CUDA context"),
    ("margin", "margin"),
)


@dataclass(frozen=True)
class Weights:
    groups: WeightGroups
    bits: int
    quantization: str  # e.g. "bnb nf4 + double quant" or "16-bit (BF16)"
    origin: str  # where the byte counts come from
    dequant_bytes: int  # one layer's weight in the compute dtype, needed at once when quantized


@dataclass
class Estimate:
    serving: Serving
    weights: Weights
    loads: list[GpuLoad]
    components: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def fits(self) -> bool:
        return all(load.fits for load in self.loads)

    @property
    def capacity(self) -> int:
        return sum(load.gpu.memory for load in self.loads)


class Estimator:
    def __init__(
        self,
        checkpoint: Checkpoint,
        cuda_context: int = memory.CUDA_CONTEXT_BYTES,
        margin_fraction: float = memory.MARGIN_FRACTION,
    ):
        self.checkpoint = checkpoint
        self.dims: MllamaDims = checkpoint.dims
        self.cuda_context = cuda_context
        self.margin_fraction = margin_fraction
        self._weights: dict[int, Weights] = {}

    @cached_property
    def stored_bits(self) -> int:
        return stored_bits(self.checkpoint.tensors)

    @cached_property
    def parameters(self) -> int:
        return parameter_count(self.dims)

    def weights(self, bits: int | None = None) -> Weights:
        """The weights as stored (bits None or equal to the stored bits), or as `bits` would store them."""
        bits = self.stored_bits if bits is None else bits
        if bits not in self._weights:
            self._weights[bits] = self._weights_for(bits)
        return self._weights[bits]

    def _weights_for(self, bits: int) -> Weights:
        dims, ckpt = self.dims, self.checkpoint
        declared = Quantization.from_config(ckpt.config, dims.dtype)
        largest_linear = max(t.nbytes for t in dense_tensors(dims) if t.linear and not declared.skips(t.name))
        if bits == self.stored_bits:
            groups = group(ckpt.tensors)
            if ckpt.index_total is not None and ckpt.source != "headers":
                groups.other += ckpt.index_total - groups.total  # the index's total is exact; keep it
            label = declared.label if bits in (4, 8) else f"16-bit ({dims.dtype})" if bits == 16 else f"{bits}-bit"
            origin = {
                "headers": "tensor bytes from the safetensors headers",
                "index": "tensor names from the index, sized from config.json; total from the index",
                "config": "tensor list derived from config.json",
            }[ckpt.source]
            return Weights(groups, bits, f"{label}, as stored", origin, largest_linear if bits < 16 else 0)
        if bits not in (4, 8, 16):
            raise ValueError(f"cannot plan for {bits}-bit weights: choose 16, 8 or 4")
        dense_dtype = dims.dtype if dims.dtype in ("BF16", "F16") else "BF16"
        dense = [t if t.dtype == dense_dtype else _as_dtype(t, dense_dtype) for t in dense_tensors(dims)]
        # A requested 4-bit quantization of a 16-bit checkpoint is planned the way `vlmkit serve` applies it.
        skip = UNQUANTIZED_MODULE_NAMES if declared.bits == 16 and bits == 4 else declared.skip_modules
        quantization = Quantization.requested(bits, dense_dtype, skip)
        label = quantization.label if bits < 16 else f"16-bit ({dense_dtype})"
        groups = group(quantization.apply(dense))
        dequant = max(t.nbytes for t in dense if t.linear and not quantization.skips(t.name)) if bits < 16 else 0
        return Weights(groups, bits, f"{label}, requested", "tensor list derived from config.json", dequant)

    def estimate(self, gpus: list[Gpu], serving: Serving, bits: int | None = None) -> Estimate:
        dims, w = self.dims, self.weights(bits)
        kv = memory.kv_cache_per_layer(dims, serving)
        cross = memory.cross_cache_per_layer(dims, serving)
        units = [
            Unit("vision encoder + projector", w.groups.vision + w.groups.projector),
            Unit("embeddings", w.groups.embeddings + w.groups.other),
        ]
        for i in range(dims.num_hidden_layers):
            cache = cross if dims.is_cross_layer(i) else kv
            units.append(Unit(f"layer {i}", w.groups.layers.get(i, 0), cache, runs_layers=True))
        units.append(Unit("output head", w.groups.head, runs_layers=True))
        overheads = Overheads(
            cuda_context=self.cuda_context,
            text_activations=memory.text_activations(dims, serving, w.dequant_bytes),
            vision_activations=memory.vision_activations(dims, serving),
            margin_fraction=self.margin_fraction,
        )
        loads = place(units, gpus, overheads)
        used = [load for load in loads if load.units]
        g = w.groups
        components = {
            "weights_self_attention_layers": g.layer_total(dims, cross=False),
            "weights_cross_attention_layers": g.layer_total(dims, cross=True),
            "weights_vision_encoder": g.vision,
            "weights_projector": g.projector,
            "weights_embeddings": g.embeddings,
            "weights_output_head": g.head,
            "weights_other": g.other,
            "kv_cache": kv * dims.self_attention_layers,
            "cross_attention_cache": cross * len(dims.cross_attention_layers),
            "activations": sum(load.activations for load in used),
            "cuda_context": sum(load.cuda_context for load in used),
            "margin": sum(load.margin for load in used),
        }
        return Estimate(serving, w, loads, components)


def _as_dtype(t: Tensor, dtype: str) -> Tensor:
    return replace(t, dtype=dtype, nbytes=prod(t.shape) * itemsize(dtype))
