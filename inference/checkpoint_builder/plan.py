"""What a checkpoint will hold, before anything is allocated: its config and the name, shape, fill and
storage of every weight tensor."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from inference.checkpoint_builder.config_files import model_config
from inference.checkpoint_builder.nf4 import NF4_QUANTIZATION_CONFIG, QUANTIZATIONS, planned_nf4_entries
from inference.checkpoint_builder.safetensors_file import SAFETENSORS_DTYPES, StoredTensor
from inference.checkpoint_builder.shapes import SHAPES
from inference.model_layout import UNQUANTIZED_MODULES, published_name

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    fill: str  # "normal", "ones" or "zeros"
    quantized: bool = False  # stored as bitsandbytes nf4

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class CheckpointPlan:
    shape_name: str
    config: dict
    tensors: list[TensorSpec]
    dtype: torch.dtype
    quantize: str | None = None

    @property
    def parameter_count(self) -> int:
        return sum(tensor.numel for tensor in self.tensors)

    @property
    def quantized_parameter_count(self) -> int:
        return sum(tensor.numel for tensor in self.tensors if tensor.quantized)

    @property
    def weight_bytes(self) -> int:
        """What the weight files hold; for 4-bit an upper bound: quant states' JSON counted at its longest."""
        return sum(stored_bytes(tensor, self.dtype) for tensor in self.tensors)

    def summary(self) -> str:
        dtype_name = str(self.dtype).removeprefix("torch.")
        if self.quantize:
            return (
                f"{self.shape_name}: {self.parameter_count:,} parameters "
                f"({self.quantized_parameter_count:,} in {self.quantize}), "
                f"{self.weight_bytes / 1e9:.2f} GB of {self.quantize} and {dtype_name} weights"
            )
        return (
            f"{self.shape_name}: {self.parameter_count:,} parameters, "
            f"{self.weight_bytes / 1e9:.2f} GB of {dtype_name} weights"
        )


def plan_checkpoint(
    shape_name: str, dtype: str | None = None, text_layers: int | None = None, quantize: str | None = None
) -> CheckpointPlan:
    """The config and the name, shape and fill of every weight tensor, without allocating any."""
    shape = SHAPES[shape_name]
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, not {quantize!r}")
    dtype_name = dtype or ("bfloat16" if quantize else shape.default_dtype)
    if dtype_name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype_name!r}")
    if quantize and dtype_name != "bfloat16":
        raise ValueError(f"--quantize {quantize} keeps the unquantized weights in bfloat16, not {dtype_name}")
    layer_count = shape.text["num_hidden_layers"]
    if text_layers is not None and not 1 <= text_layers <= layer_count:
        raise ValueError(f"text_layers must be between 1 and {layer_count}")
    config = model_config(shape, dtype_name, text_layers)
    if quantize:
        config["quantization_config"] = copy.deepcopy(NF4_QUANTIZATION_CONFIG)
    specs = tensor_specs(config, quantize is not None)
    return CheckpointPlan(shape_name, config, specs, DTYPES[dtype_name], quantize)


def tensor_specs(config: dict, quantize: bool = False) -> list[TensorSpec]:
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    # MllamaConfig rewrites the rope dicts it is given; keep the plan's config as written.
    with torch.device("meta"):
        model = MllamaForConditionalGeneration(MllamaConfig(**copy.deepcopy(config)))
    specs = []
    for module_name, module in model.named_modules():
        is_norm = "Norm" in type(module).__name__
        quantized_module = quantize and is_quantized_module(module_name, module)
        for name, param in module.named_parameters(prefix=module_name, recurse=False):
            fill = initial_fill(name, is_norm)
            quantized = quantized_module and name.endswith(".weight")
            specs.append(TensorSpec(file_name(name), tuple(param.shape), fill, quantized))
    return specs


def is_quantized_module(module_name: str, module: torch.nn.Module) -> bool:
    """transformers 5's rule: every nn.Linear, unless a skipped name starts or ends its path."""
    skipped = any(
        module_name == skip or module_name.startswith(skip + ".") or module_name.endswith(skip)
        for skip in UNQUANTIZED_MODULES
    )
    return type(module) is torch.nn.Linear and not skipped


def file_name(name: str) -> str:
    """The published name a parameter is stored under."""
    published = published_name(name)
    if published is None:
        raise ValueError(f"no published name for {name}")
    return published


def initial_fill(name: str, is_norm: bool) -> str:
    if name.endswith(".bias"):
        return "zeros"
    return "ones" if is_norm else "normal"


def planned_entries(tensor: TensorSpec, dtype: torch.dtype) -> list[StoredTensor]:
    """What a file holds for `tensor`, in the order written."""
    if tensor.quantized:
        return planned_nf4_entries(tensor.name, tensor.shape, tensor.numel)
    return [StoredTensor(tensor.name, SAFETENSORS_DTYPES[dtype], tensor.shape)]


def stored_bytes(tensor: TensorSpec, dtype: torch.dtype) -> int:
    return sum(entry.nbytes for entry in planned_entries(tensor, dtype))
