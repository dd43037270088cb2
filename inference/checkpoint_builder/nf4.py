"""bitsandbytes 4-bit (NF4, double quantization) as transformers saves it: the service's
BitsAndBytesConfig (inference/backends/transformers_backend.py) as transformers 5.17 writes it into
config.json, and each weight as bitsandbytes' Linear4bit stores it."""

from __future__ import annotations

import json

import torch

from inference.checkpoint_builder.safetensors_file import SAFETENSORS_DTYPES, StoredTensor
from inference.model_layout import NESTED_BLOCKSIZE, NF4_BLOCKSIZE, UNQUANTIZED_MODULES

QUANTIZATIONS = ("nf4",)
FLOAT_REPR_MAX_LENGTH = 24  # len(repr(-1.2345678901234567e-308))
NF4_QUANTIZATION_CONFIG = {
    "_load_in_4bit": True,
    "_load_in_8bit": False,
    "bnb_4bit_compute_dtype": "bfloat16",
    "bnb_4bit_quant_storage": "uint8",
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "llm_int8_enable_fp32_cpu_offload": False,
    "llm_int8_has_fp16_weight": False,
    "llm_int8_skip_modules": list(UNQUANTIZED_MODULES),
    "llm_int8_threshold": 6.0,
    "load_in_4bit": True,
    "load_in_8bit": False,
    "quant_method": "bitsandbytes",
}


def planned_nf4_entries(name: str, shape: tuple[int, ...], numel: int) -> list[StoredTensor]:
    """What Linear4bit stores for a weight: the packed weight, then its QuantState.as_dict(packed=True).
    The quant state's JSON length is not known before quantizing, so it is planned at its longest."""
    blocks = -(-numel // NF4_BLOCKSIZE)
    return [
        StoredTensor(name, "U8", (-(-numel // 2), 1)),  # two 4-bit codes a byte
        StoredTensor(f"{name}.absmax", "U8", (blocks,)),
        StoredTensor(f"{name}.quant_map", "F32", (16,)),
        StoredTensor(f"{name}.nested_absmax", "F32", (-(-blocks // NESTED_BLOCKSIZE),)),
        StoredTensor(f"{name}.nested_quant_map", "F32", (256,)),  # the absmax values' 8-bit code book
        StoredTensor(f"{name}.quant_state.bitsandbytes__nf4", "U8", (quant_state_max_length(shape),)),
    ]


def quant_state_max_length(shape: tuple[int, ...]) -> int:
    """bitsandbytes packs the quant state's non-tensor fields as JSON; only the nested offset, a float,
    varies in length between tensors of one shape."""
    fields = {
        "quant_type": "nf4",
        "blocksize": NF4_BLOCKSIZE,
        "dtype": "bfloat16",
        "shape": list(shape),
        "nested_blocksize": NESTED_BLOCKSIZE,
        "nested_dtype": "float32",
        "nested_offset": 0.0,
    }
    return len(json.dumps(fields)) - len(repr(0.0)) + FLOAT_REPR_MAX_LENGTH


def quantize_nf4(name: str, weight: torch.Tensor) -> list[tuple[StoredTensor, torch.Tensor]]:
    """The weight as bitsandbytes' Linear4bit saves it (see Linear4bit._save_to_state_dict)."""
    from bitsandbytes.functional import quantize_4bit

    packed, quant_state = quantize_4bit(
        weight, blocksize=NF4_BLOCKSIZE, compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8
    )
    parts = {name: packed}
    parts.update({f"{name}.{key}": value for key, value in quant_state.as_dict(packed=True).items()})
    return [
        (StoredTensor(part, SAFETENSORS_DTYPES[value.dtype], tuple(value.shape)), value)
        for part, value in parts.items()
    ]


def check_planned(planned: list[StoredTensor], written: list[StoredTensor]) -> None:
    """bitsandbytes stored what was planned; the quant state's JSON may be shorter than planned."""

    def fits(plan: StoredTensor, entry: StoredTensor) -> bool:
        if (plan.name, plan.dtype) != (entry.name, entry.dtype):
            return False
        if plan.name.endswith(".quant_state.bitsandbytes__nf4"):
            return len(entry.shape) == 1 and entry.shape[0] <= plan.shape[0]
        return plan.shape == entry.shape

    if len(planned) != len(written) or not all(map(fits, planned, written)):
        raise RuntimeError(f"bitsandbytes stored {written}, not the planned {planned}")
