"""How Llama 3.2 Vision checkpoints are laid out: what the service, the planner and the checkpoint
builder must agree on.

- bitsandbytes 4-bit: one absmax per NF4_BLOCKSIZE weights; with double quantization the absmax values
  are quantized again, in blocks of NESTED_BLOCKSIZE.
- The modules kept in 16-bit when the service quantizes (and that a pre-quantized build leaves alone):
  UNQUANTIZED_MODULES as transformers 5 names them (it matches skip names as prefixes of the module
  path, so the full paths it is), UNQUANTIZED_MODULE_NAMES without transformers 5's `model.` prefix.
- Tensor names: transformers 5 names modules differently from the published checkpoints;
  PUBLISHED_NAME_PREFIXES maps one onto the other, and files use the published names.
"""

from __future__ import annotations

NF4_BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256

# Small, and quality-sensitive.
UNQUANTIZED_MODULES: tuple[str, ...] = ("model.vision_model", "model.multi_modal_projector", "lm_head")
UNQUANTIZED_MODULE_NAMES: tuple[str, ...] = tuple(path.removeprefix("model.") for path in UNQUANTIZED_MODULES)

# (transformers 5 prefix, published prefix), the first that matches applies.
PUBLISHED_NAME_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_model.", "vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)


def published_name(name: str) -> str | None:
    """The published checkpoints' name for a transformers 5 parameter name; None if no prefix matches."""
    for current, published in PUBLISHED_NAME_PREFIXES:
        if name.startswith(current):
            return published + name.removeprefix(current)
    return None
