"""How bitsandbytes stores quantized weights, so a checkpoint's tensors can be derived from config.json.

The rules (bitsandbytes' serialisation as transformers writes it with save_pretrained):

4-bit (nf4/fp4), for each nn.Linear weight W of n elements not in the skip list:
- `W`: the packed weight, ceil(n/2) bytes (two 4-bit codes a byte; uint8 storage by default)
- `W.absmax`: one scale per block of 64 weights; uint8 when double-quantized, else float32
- `W.quant_map`: the 16-entry code book, float32
- `W.nested_absmax` (float32, one per 256 absmax values) and `W.nested_quant_map` (256 float32):
  double quantization only
- `W.quant_state.bitsandbytes__nf4`: the quant state's JSON as uint8 bytes
Biases, norms, embeddings and convolutions stay in the compute dtype.

8-bit (LLM.int8), for each nn.Linear weight W (out × in):
- `W`: int8, out × in;  `<module>.SCB`: float32 row scales (out);  `<module>.weight_format`: one byte

Skipped modules keep their 16-bit weights. transformers skips the output head (`lm_head`) unless
`llm_int8_skip_modules` names others; a name in the list skips every module whose name contains it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from math import ceil, prod

from inference.model_layout import NESTED_BLOCKSIZE, NF4_BLOCKSIZE
from inference.planner.tensors import Tensor, itemsize

DEFAULT_SKIP_MODULES = ("lm_head",)
# A float32 double-quantization offset as Python prints it is about this long: it only sizes the
# quant-state JSON (≈170 bytes a layer), so being off by a character or two changes nothing visible.
_TYPICAL_OFFSET = 0.05301666259765625


@dataclass(frozen=True)
class Quantization:
    """What the weights are stored as: 16-bit (none), bnb 8-bit, or bnb 4-bit."""

    bits: int  # 16, 8 or 4
    quant_type: str = "nf4"
    double_quant: bool = True
    storage: str = "U8"
    compute_dtype: str = "BF16"
    skip_modules: tuple[str, ...] = field(default=DEFAULT_SKIP_MODULES)

    @property
    def label(self) -> str:
        if self.bits == 4:
            return f"bnb {self.quant_type}{' + double quant' if self.double_quant else ''}"
        if self.bits == 8:
            return "bnb int8 (LLM.int8)"
        return "16-bit"

    @classmethod
    def from_config(cls, config: dict, dense_dtype: str) -> Quantization:
        """The quantization config.json declares (none means 16-bit weights)."""
        q = config.get("quantization_config") or {}
        if q.get("quant_method") != "bitsandbytes":
            if q:
                raise ValueError(
                    f"quantization {q.get('quant_method')!r} is not supported; the planner knows bitsandbytes"
                )
            return cls(bits=16, compute_dtype=dense_dtype)
        skip = tuple(q.get("llm_int8_skip_modules") or DEFAULT_SKIP_MODULES)
        if q.get("load_in_4bit") or q.get("_load_in_4bit"):
            return cls(
                bits=4,
                quant_type=q.get("bnb_4bit_quant_type", "fp4"),
                double_quant=bool(q.get("bnb_4bit_use_double_quant", False)),
                storage=_dtype(q.get("bnb_4bit_quant_storage", "uint8")),
                compute_dtype=_dtype(q.get("bnb_4bit_compute_dtype", "float32")),
                skip_modules=skip,
            )
        if q.get("load_in_8bit") or q.get("_load_in_8bit"):
            return cls(bits=8, skip_modules=skip, compute_dtype=dense_dtype)
        return cls(bits=16, compute_dtype=dense_dtype)

    @classmethod
    def requested(
        cls, bits: int, dense_dtype: str, skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES
    ) -> Quantization:
        """The quantization `--bits` asks for, as transformers' BitsAndBytesConfig would apply it."""
        if bits not in (4, 8, 16):
            raise ValueError("bits must be 16, 8 or 4")
        return cls(bits=bits, compute_dtype=dense_dtype, skip_modules=skip_modules)

    def skips(self, tensor_name: str) -> bool:
        # Tensor names here follow the published checkpoints (vision_model.…); transformers 5 writes
        # skip lists in its runtime paths (model.vision_model.…): compare without that prefix.
        module = tensor_name.rsplit(".", 1)[0]
        return any(key.removeprefix("model.") in module for key in self.skip_modules)

    def apply(self, dense: list[Tensor]) -> list[Tensor]:
        """The tensors of the checkpoint this quantization would write, given the dense ones."""
        if self.bits == 16:
            return list(dense)
        out: list[Tensor] = []
        for t in dense:
            if not t.linear or self.skips(t.name):
                out.append(t)
            elif self.bits == 4:
                out.extend(self._four_bit(t))
            else:
                out.extend(_eight_bit(t))
        return out

    def _four_bit(self, t: Tensor) -> list[Tensor]:
        n = prod(t.shape)
        packed = ceil(n / 2)
        storage_items = ceil(packed / itemsize(self.storage))
        blocks = ceil(n / NF4_BLOCKSIZE)
        out = [Tensor(t.name, self.storage, (storage_items, 1), storage_items * itemsize(self.storage))]
        if self.double_quant:
            nested = ceil(blocks / NESTED_BLOCKSIZE)
            out += [
                Tensor(t.name + ".absmax", "U8", (blocks,), blocks),
                Tensor(t.name + ".nested_absmax", "F32", (nested,), 4 * nested),
                Tensor(t.name + ".nested_quant_map", "F32", (256,), 4 * 256),
            ]
        else:
            out.append(Tensor(t.name + ".absmax", "F32", (blocks,), 4 * blocks))
        out.append(Tensor(t.name + ".quant_map", "F32", (16,), 4 * 16))
        state = len(self._quant_state_json(t.shape).encode())
        out.append(Tensor(f"{t.name}.quant_state.bitsandbytes__{self.quant_type}", "U8", (state,), state))
        return out

    def _quant_state_json(self, shape: tuple[int, ...]) -> str:
        state = {
            "quant_type": self.quant_type,
            "blocksize": NF4_BLOCKSIZE,
            "dtype": _TORCH_NAMES.get(self.compute_dtype, "bfloat16"),
            "shape": list(shape),
        }
        if self.double_quant:
            state.update(nested_blocksize=NESTED_BLOCKSIZE, nested_dtype="float32", nested_offset=_TYPICAL_OFFSET)
        return json.dumps(state)


def _eight_bit(t: Tensor) -> list[Tensor]:
    module = t.name.rsplit(".", 1)[0]
    rows = t.shape[0]
    return [
        Tensor(t.name, "I8", t.shape, prod(t.shape)),
        Tensor(module + ".SCB", "F32", (rows,), 4 * rows),
        Tensor(module + ".weight_format", "U8", (), 1),
    ]


_TORCH_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_CONFIG_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "uint8": "U8", "int8": "I8"}


def _dtype(name: str) -> str:
    return _CONFIG_NAMES.get(str(name).replace("torch.", ""), "BF16")


def stored_bits(tensors: list[Tensor]) -> int:
    """4 or 8 when the tensors are bitsandbytes-quantized, else the bits of the dtype of the largest float tensor."""
    names = {t.name for t in tensors}
    if any(".quant_state.bitsandbytes__" in n for n in names):
        return 4
    if any(n.endswith(".SCB") for n in names):
        return 8
    floats = [t for t in tensors if t.dtype in ("F32", "F16", "BF16", "F64")]
    largest = max(floats, key=lambda t: t.nbytes, default=None)
    return 8 * itemsize(largest.dtype) if largest else 16
