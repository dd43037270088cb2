"""Mllama (Llama 3.2 Vision) dimensions and tensor list, from config.json alone.

`MllamaDims.from_config` reads the numbers that decide memory; `dense_tensors` lists every
tensor of the checkpoint with its shape, named as the Hub checkpoints name them
(`language_model.model.layers.3.cross_attn.q_proj.weight`, `vision_model.…`,
`multi_modal_projector.…`, `language_model.lm_head.weight`), the layout transformers still
writes with `save_pretrained`. The defaults are transformers' MllamaConfig defaults, which
are the 11B model's values.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from inference.planner.tensors import Tensor, dtype_from_config, itemsize


@dataclass(frozen=True)
class MllamaDims:
    # text model
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    cross_attention_layers: tuple[int, ...]
    max_position_embeddings: int
    # vision model
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_layers: int
    vision_global_layers: int
    vision_heads: int
    vision_output_dim: int
    image_size: int
    patch_size: int
    num_channels: int
    max_num_tiles: int
    num_aspect_ratios: int
    dtype: str  # safetensors dtype name of the unquantized weights, e.g. "BF16"

    @classmethod
    def from_config(cls, config: dict) -> MllamaDims:
        model_type = config.get("model_type")
        if model_type != "mllama":
            raise ValueError(
                f"config.json has model_type {model_type!r}; the planner knows Mllama (Llama 3.2 Vision) only"
            )
        text = config.get("text_config") or {}
        vision = config.get("vision_config") or {}
        layers = int(text.get("num_hidden_layers", 40))
        cross = text.get("cross_attention_layers")
        if cross is None:
            cross = [3, 8, 13, 18, 23, 28, 33, 38]
        aspect_ratios = vision.get("supported_aspect_ratios") or [
            [1, 1],
            [1, 2],
            [1, 3],
            [1, 4],
            [2, 1],
            [2, 2],
            [3, 1],
            [4, 1],
        ]
        return cls(
            vocab_size=int(text.get("vocab_size", 128256)),
            hidden_size=int(text.get("hidden_size", 4096)),
            intermediate_size=int(text.get("intermediate_size", 14336)),
            num_hidden_layers=layers,
            num_attention_heads=int(text.get("num_attention_heads", 32)),
            num_key_value_heads=int(text.get("num_key_value_heads", 8)),
            cross_attention_layers=tuple(sorted(int(i) for i in cross)),
            max_position_embeddings=int(text.get("max_position_embeddings", 131072)),
            vision_hidden_size=int(vision.get("hidden_size", 1280)),
            vision_intermediate_size=int(vision.get("intermediate_size", 5120)),
            vision_layers=int(vision.get("num_hidden_layers", 32)),
            vision_global_layers=int(vision.get("num_global_layers", 8)),
            vision_heads=int(vision.get("attention_heads", vision.get("num_attention_heads", 16))),
            vision_output_dim=int(vision.get("vision_output_dim", 7680)),
            image_size=_side(vision.get("image_size", 448)),
            patch_size=_side(vision.get("patch_size", 14)),
            num_channels=int(vision.get("num_channels", 3)),
            max_num_tiles=int(vision.get("max_num_tiles", 4)),
            num_aspect_ratios=len(aspect_ratios),
            dtype=dtype_from_config(config),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def self_attention_layers(self) -> int:
        return self.num_hidden_layers - len(self.cross_attention_layers)

    def is_cross_layer(self, index: int) -> bool:
        return index in self.cross_attention_layers

    @property
    def patches_per_tile(self) -> int:
        """Patches of one tile plus its class token (1601 for 560-pixel tiles of 14-pixel patches)."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def image_tokens(self) -> int:
        """Vision tokens one image contributes to the cross-attention cache (all tiles, even padded ones)."""
        return self.max_num_tiles * self.patches_per_tile


def _side(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def dense_tensors(dims: MllamaDims) -> list[Tensor]:
    """Every tensor of an unquantized Mllama checkpoint, in the model's dtype."""
    out: list[Tensor] = []

    def add(name: str, shape: tuple[int, ...], linear: bool = False) -> None:
        out.append(Tensor(name, dims.dtype, shape, prod(shape) * itemsize(dims.dtype), linear=linear))

    _vision(dims, add)
    h, v = dims.hidden_size, dims.vision_output_dim
    add("multi_modal_projector.weight", (h, v), linear=True)
    add("multi_modal_projector.bias", (h,))
    _text(dims, add)
    return out


def _vision(d: MllamaDims, add) -> None:
    p = "vision_model."
    hv, iv = d.vision_hidden_size, d.vision_intermediate_size
    rows = d.num_aspect_ratios + 1  # id 0 is the padding ratio
    add(p + "patch_embedding.weight", (hv, d.num_channels, d.patch_size, d.patch_size))
    add(p + "class_embedding", (hv,))
    add(p + "gated_positional_embedding.embedding", (d.patches_per_tile, hv))
    add(p + "gated_positional_embedding.gate", (1,))
    add(p + "gated_positional_embedding.tile_embedding.weight", (rows, d.max_num_tiles * d.patches_per_tile * hv))
    for which in ("pre", "post"):
        add(p + f"{which}_tile_positional_embedding.embedding.weight", (rows, d.max_num_tiles * hv))
        add(p + f"{which}_tile_positional_embedding.gate", (1,))
    for norm in ("layernorm_pre", "layernorm_post"):
        add(p + f"{norm}.weight", (hv,))
        add(p + f"{norm}.bias", (hv,))
    head_dim = hv // d.vision_heads
    for stack, count, gated in (
        ("transformer", d.vision_layers, False),
        ("global_transformer", d.vision_global_layers, True),
    ):
        for i in range(count):
            lp = f"{p}{stack}.layers.{i}."
            for proj in ("q_proj", "k_proj", "v_proj"):
                add(lp + f"self_attn.{proj}.weight", (d.vision_heads * head_dim, hv), linear=True)
            add(lp + "self_attn.o_proj.weight", (hv, d.vision_heads * head_dim), linear=True)
            add(lp + "mlp.fc1.weight", (iv, hv), linear=True)
            add(lp + "mlp.fc1.bias", (iv,))
            add(lp + "mlp.fc2.weight", (hv, iv), linear=True)
            add(lp + "mlp.fc2.bias", (hv,))
            for norm in ("input_layernorm", "post_attention_layernorm"):
                add(lp + f"{norm}.weight", (hv,))
                add(lp + f"{norm}.bias", (hv,))
            if gated:
                add(lp + "gate_attn", (1,))
                add(lp + "gate_ffn", (1,))


def _text(d: MllamaDims, add) -> None:
    p = "language_model.model."
    h, i_size, hd = d.hidden_size, d.intermediate_size, d.head_dim
    q_out, kv_out = d.num_attention_heads * hd, d.num_key_value_heads * hd
    add(p + "embed_tokens.weight", (d.vocab_size + 8, h))  # 8 extra rows: the image token and padding
    for i in range(d.num_hidden_layers):
        lp = f"{p}layers.{i}."
        attn = lp + ("cross_attn." if d.is_cross_layer(i) else "self_attn.")
        add(attn + "q_proj.weight", (q_out, h), linear=True)
        add(attn + "k_proj.weight", (kv_out, h), linear=True)
        add(attn + "v_proj.weight", (kv_out, h), linear=True)
        add(attn + "o_proj.weight", (h, q_out), linear=True)
        if d.is_cross_layer(i):
            add(attn + "q_norm.weight", (hd,))
            add(attn + "k_norm.weight", (hd,))
            add(lp + "cross_attn_attn_gate", (1,))
            add(lp + "cross_attn_mlp_gate", (1,))
        add(lp + "mlp.gate_proj.weight", (i_size, h), linear=True)
        add(lp + "mlp.up_proj.weight", (i_size, h), linear=True)
        add(lp + "mlp.down_proj.weight", (h, i_size), linear=True)
        add(lp + "input_layernorm.weight", (h,))
        add(lp + "post_attention_layernorm.weight", (h,))
    add(p + "norm.weight", (h,))
    add("language_model.lm_head.weight", (d.vocab_size, h), linear=True)


def parameter_count(dims: MllamaDims) -> int:
    """Parameters of the model, counted before any quantization."""
    return sum(prod(t.shape) for t in dense_tensors(dims))
