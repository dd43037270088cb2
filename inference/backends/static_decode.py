"""Decoding for Mllama in a static KV cache of one or more slots, replayed as one CUDA graph per token.

Why: transformers' `generate` spends most of each token in Python and kernel launches (the GPU waits),
and its own static cache, the route to compiled decoding, fails for Mllama (the cross-attention mask
is checked against the static cache's length). Here the prompt (and image) go through the model once,
into preallocated buffers (static_prefill.py; long prompts through its own forward, then copied); each
new token then runs one fixed sequence of kernels over those buffers, written with the model's own
modules, which a CUDA graph captures once and replays. On the CPU the same step runs eagerly (tests
compare it with `generate`).

The image's cross-attention keys and values are computed once at prefill and have a fixed size
(max tiles × patches per tile), so one graph serves every image request and another every text-only
request.

The buffers have a batch dimension of `slots` (one for a server that decodes one request at a time):
requests are prefilled one by one into free slots and then decode together, one token each per step,
each at its own position (continuous batching). The weights are then read once per step for all of them.

The backend picks each step's tokens on the device and writes them into `token` for the next step
(`sample_on_device`), and reads them back with `OnTheWay` while that next step runs.

On CUDA the step's element-wise work (norms, residual adds, rotary and the cache update, SiLU) can run as
the fused Triton kernels of decoder_kernels.py (`fused_kernels`): in a replayed graph that work costs by
its number of kernels, and a layer's thirty-odd element-wise kernels become four. The eager step stays as
it was, for the CPU and for hosts where the kernels do not compile.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache
from transformers.models.mllama.modeling_mllama import _prepare_cross_attention_mask, apply_rotary_pos_emb

from inference.backends.base import GREEDY_BELOW_TEMPERATURE, SamplingError
from inference.backends.decoder_kernels import add_rms_norm, rms_norm, rotary_and_store, silu_mul
from inference.backends.fused_projections import DecoderProjections
from inference.backends.static_prefill import BUCKETS, IMAGE_INPUTS, EncodedImage, StaticPrefill

log = logging.getLogger(__name__)


class StaticDecoder:
    def __init__(
        self,
        model,
        max_tokens: int,
        use_cuda_graph: bool,
        slots: int = 1,
        projections: DecoderProjections | None = None,
        fused_kernels: bool = False,
        prompt_buckets: tuple[int, ...] = BUCKETS,
        overlap_image_encoding: bool = False,
        image_cache_size: int = 0,
    ) -> None:
        """`fused_kernels`: run the step's element-wise work as decoder_kernels' Triton kernels (CUDA); if they
        fail to compile or run here, a warning says so and the step stays eager. `prompt_buckets`: the prompt
        lengths StaticPrefill pads to (none: every prompt through transformers). `overlap_image_encoding`: on
        CUDA, images started with `prompt.encode` go through the vision encoder on a stream of their own.
        `image_cache_size`: how many images' encoder output `prompt.encode` keeps for follow-up questions."""
        self.model = model
        self.max_tokens = max_tokens
        self.use_cuda_graph = use_cuda_graph
        self.slots = slots
        text = model.model.language_model
        self.text = text
        self.layers = list(text.layers)
        self.projections = projections or DecoderProjections(text, fuse=False)
        self.cross_layers = set(text.cross_attention_layers)
        config = text.config
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.image_tokens = model.model.vision_model.num_patches * model.config.vision_config.max_num_tiles
        parameter = model.get_input_embeddings().weight
        self.device, self.dtype = parameter.device, parameter.dtype
        self.silu = config.hidden_act == "silu"
        self._allocate()
        self._graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        self.fused_kernels = fused_kernels and self._fused_step_runs()
        self.prompt = StaticPrefill(self, prompt_buckets, overlap_image_encoding, image_cache_size)

    def _allocate(self) -> None:
        def buffer(length: int) -> torch.Tensor:
            return torch.zeros(self.slots, self.kv_heads, length, self.head_dim, dtype=self.dtype, device=self.device)

        self.keys = {
            i: buffer(self.image_tokens if i in self.cross_layers else self.max_tokens) for i in range(len(self.layers))
        }
        self.values = {
            i: buffer(self.image_tokens if i in self.cross_layers else self.max_tokens) for i in range(len(self.layers))
        }
        self.token = torch.zeros(self.slots, 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(self.slots, dtype=torch.long, device=self.device)
        self.cross_mask = torch.zeros(self.slots, 1, 1, self.image_tokens, dtype=self.dtype, device=self.device)
        self.cross_row = torch.zeros(self.slots, 1, 1, 1, dtype=self.dtype, device=self.device)
        self.positions = torch.arange(self.max_tokens, device=self.device)
        self.logits: torch.Tensor | None = None
        # One slot skips the cross-attention layers for text-only requests; a batch always runs them,
        # with the text-only slots' contribution zeroed by cross_row.
        self.run_cross = self.slots > 1

    def fits(self, prompt_tokens: int, new_tokens: int) -> bool:
        return prompt_tokens + new_tokens <= self.max_tokens

    @torch.inference_mode()
    def prefill(self, inputs: dict, slot: int = 0, image: EncodedImage | None = None, reuse: int = 0) -> torch.Tensor:
        """Run one prompt through the model into `slot`; keep its caches; return the last position's logits.

        The one rule for the path: prompts StaticPrefill takes go through it, longer ones through transformers.
        `image`: the prompt's image, started with `prompt.encode`; without it, the image is encoded here.
        `reuse`: how many of the prompt's first tokens the slot already holds keys and values for, with the
        prompt's image's (its last request's prompt and answer began so): only the rest is read.
        """
        length = inputs["input_ids"].shape[1]
        has_image = "pixel_values" in inputs
        if not 0 <= reuse < length:
            raise ValueError(f"reuse: 0 to {length - 1} of the prompt's {length} tokens, got {reuse}")
        if self.prompt.takes(length - reuse, continued=reuse > 0):
            logits = self.prompt.prefill(inputs, slot, image, reuse)
        else:
            if has_image and not reuse:
                image = image or self.prompt.encode(inputs)
            logits = self._prefill_through_transformers(inputs, slot, has_image, image, reuse)
        if self.slots == 1:
            self.run_cross = has_image
        if has_image:
            mask, row = _prepare_cross_attention_mask(
                inputs["cross_attention_mask"][:, -1:],
                num_vision_tokens=self.model.model.vision_model.num_patches,
                dtype=self.dtype,
            )
            self.cross_mask[slot].copy_(mask[0])
            self.cross_row[slot].copy_(row[0])
        else:
            self.cross_mask[slot].zero_()
            self.cross_row[slot].zero_()
        self.position[slot] = length
        return logits

    def _prefill_through_transformers(
        self, inputs: dict, slot: int, has_image: bool, image: EncodedImage | None, reuse: int
    ) -> torch.Tensor:
        """The model's own forward with a DynamicCache, whose keys and values are then copied into `slot`. The
        image goes in as its encoder output (the cross-attention states the model would compute from it), or,
        with `reuse`, as the keys and values the slot holds for it; the cache then starts with the slot's
        first `reuse` positions, and the forward reads only the tokens after them."""
        cache = DynamicCache(config=self.model.config)
        if reuse:
            for i in range(len(self.layers)):
                if i not in self.cross_layers:
                    cache.update(
                        self.keys[i][slot : slot + 1, :, :reuse], self.values[i][slot : slot + 1, :, :reuse], i
                    )
                elif has_image:
                    cache.update(self.keys[i][slot : slot + 1], self.values[i][slot : slot + 1], i)
        text_inputs = {name: tensor for name, tensor in inputs.items() if name not in IMAGE_INPUTS}
        text_inputs["input_ids"] = inputs["input_ids"][:, reuse:]
        states = {"cross_attention_states": image.states()} if image is not None else {}
        output = self.model(**text_inputs, **states, past_key_values=cache, use_cache=True, logits_to_keep=1)
        length = inputs["input_ids"].shape[1]
        for i in range(len(self.layers)):
            layer = cache.layers[i]
            if i in self.cross_layers:
                if image is not None:
                    self.keys[i][slot].copy_(layer.keys[0])
                    self.values[i][slot].copy_(layer.values[0])
            else:
                self.keys[i][slot, :, reuse:length].copy_(layer.keys[0, :, reuse:])
                self.values[i][slot, :, reuse:length].copy_(layer.values[0, :, reuse:])
        return output.logits[:, -1].float()

    @torch.inference_mode()
    def step(self, tokens: list[int] | None = None) -> torch.Tensor:
        """Logits (one row a slot) for the next positions after `tokens`, which go at the current ones; without
        `tokens`, after those the token buffer holds (`set_tokens`, or written there on the device)."""
        if tokens is not None:
            self.token.copy_(torch.tensor(tokens, dtype=torch.long).view(self.slots, 1))
        if self.use_cuda_graph:
            graph = self._graphs.get(self.run_cross) or self._capture()
            graph.replay()
            logits = self.logits
        else:
            logits = self._forward_one()
        self.position.add_(1).clamp_(max=self.max_tokens - 1)  # idle slots must not run off the buffer
        return logits

    def set_tokens(self, by_slot: dict[int, int]) -> None:
        """Put these slots' next input tokens in the token buffer, without waiting for the device."""
        slots, tokens = (to_device(list(values), self.device) for values in zip(*by_slot.items(), strict=True))
        self.token[slots, 0] = tokens

    def _capture(self) -> torch.cuda.CUDAGraph:
        saved = {i: (self.keys[i].clone(), self.values[i].clone()) for i in self.keys if i not in self.cross_layers}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and allocations outside the capture
                self._forward_one()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._forward_one()
        for i, (keys, values) in saved.items():  # warm-up wrote the current position: undo
            self.keys[i].copy_(keys)
            self.values[i].copy_(values)
        self._graphs[self.run_cross] = graph
        return graph

    def _forward_one(self) -> torch.Tensor:
        return self._fused_step() if self.fused_kernels else self._eager_step()

    def _fused_step_runs(self) -> bool:
        """Run the fused step once, cross-attention layers included (this compiles its kernels); False, with a
        warning, if it fails. The caches it wrote are zeroed again, as allocated."""
        run_cross, self.run_cross = self.run_cross, True
        try:
            with torch.inference_mode():
                self._fused_step()
        except Exception as error:  # noqa: BLE001 - e.g. no C compiler for Triton's launcher: keep serving
            log.warning(
                "fused decoder kernels failed (%s: %s); the static decoder runs its element-wise work eagerly",
                type(error).__name__,
                error,
            )
            return False
        finally:
            self.run_cross = run_cross
            with torch.inference_mode():
                for buffer in (*self.keys.values(), *self.values.values()):
                    buffer.zero_()
        return True

    def _visible(self) -> torch.Tensor:
        visible = torch.where(self.positions[None, :] <= self.position[:, None], 0.0, float("-inf"))
        return visible.to(self.dtype).view(self.slots, 1, 1, -1)

    def _eager_step(self) -> torch.Tensor:
        hidden = self.text.embed_tokens(self.token)
        cos, sin = self.text.rotary_emb(hidden, self.position.view(self.slots, 1))
        visible = self._visible()
        for index, layer in enumerate(self.layers):
            if index in self.cross_layers:
                if self.run_cross:
                    hidden = self._cross_layer(layer, index, hidden)
            else:
                hidden = self._self_layer(layer, index, hidden, cos, sin, visible)
        hidden = self.text.norm(hidden)
        return self.model.lm_head(hidden)[:, -1].float()

    def _self_layer(self, layer, index: int, hidden, cos, sin, visible):
        normed = layer.input_layernorm(hidden)
        query, key, value = (
            projected.view(self.slots, 1, -1, self.head_dim).transpose(1, 2)
            for projected in self.projections.attention[str(index)](normed)
        )
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        where = self.position.view(self.slots, 1, 1, 1).expand(-1, self.kv_heads, 1, self.head_dim)
        self.keys[index].scatter_(2, where, key)
        self.values[index].scatter_(2, where, value)
        hidden = hidden + self._self_attention(layer.self_attn, index, query, visible)
        return hidden + self.projections.feed_forward(layer, index, layer.post_attention_layernorm(hidden))

    def _cross_layer(self, layer, index: int, hidden):
        attention = layer.cross_attn
        normed = layer.input_layernorm(hidden)
        query = attention.q_norm(attention.q_proj(normed).view(self.slots, 1, -1, self.head_dim).transpose(1, 2))
        hidden = hidden + layer.cross_attn_attn_gate.tanh() * self._cross_attention(attention, index, query)
        mlp = self.projections.feed_forward(layer, index, layer.post_attention_layernorm(hidden)) * self.cross_row[:, 0]
        return hidden + layer.cross_attn_mlp_gate.tanh() * mlp

    def _self_attention(self, attention, index: int, query, visible):
        out = F.scaled_dot_product_attention(
            query, self.keys[index], self.values[index], attn_mask=visible, scale=attention.scaling, enable_gqa=True
        )
        return attention.o_proj(out.transpose(1, 2).reshape(self.slots, 1, -1))

    def _cross_attention(self, attention, index: int, query):
        out = F.scaled_dot_product_attention(
            query,
            self.keys[index],
            self.values[index],
            attn_mask=self.cross_mask,
            scale=attention.scaling,
            enable_gqa=True,
        )
        return attention.o_proj(out.transpose(1, 2).reshape(self.slots, 1, -1)) * self.cross_row[:, 0]

    # The fused step: the same arithmetic as the eager one. Each layer returns (hidden, delta), its last
    # residual add left for the next norm to fuse (the next layer's input norm, or the final norm).

    def _fused_step(self) -> torch.Tensor:
        hidden = self.text.embed_tokens(self.token)
        cos, sin = self.text.rotary_emb(hidden, self.position.view(self.slots, 1))
        visible = self._visible()
        delta = None
        for index, layer in enumerate(self.layers):
            if index in self.cross_layers:
                if self.run_cross:
                    hidden, delta = self._fused_cross_layer(layer, index, hidden, delta)
            else:
                hidden, delta = self._fused_self_layer(layer, index, hidden, delta, cos, sin, visible)
        _, normed = _fused_norm(hidden, delta, self.text.norm)
        return self.model.lm_head(normed)[:, -1].float()

    def _fused_self_layer(self, layer, index: int, hidden, delta, cos, sin, visible):
        hidden, normed = _fused_norm(hidden, delta, layer.input_layernorm)
        query, key, value = self.projections.attention[str(index)](normed)
        query = rotary_and_store(query, key, value, cos, sin, self.keys[index], self.values[index], self.position)
        attended = self._self_attention(layer.self_attn, index, query, visible)
        hidden, normed = _fused_norm(hidden, attended, layer.post_attention_layernorm)
        return hidden, self._fused_mlp(layer, index, normed)

    def _fused_mlp(self, layer, index: int, normed):
        gate, up = self.projections.mlp[str(index)](normed)
        return layer.mlp.down_proj(silu_mul(gate, up) if self.silu else layer.mlp.act_fn(gate) * up)

    def _fused_cross_layer(self, layer, index: int, hidden, delta):
        attention = layer.cross_attn
        hidden, normed = _fused_norm(hidden, delta, layer.input_layernorm)
        query = attention.q_proj(normed).view(self.slots, 1, -1, self.head_dim)
        query = rms_norm(query, attention.q_norm.weight, attention.q_norm.variance_epsilon).transpose(1, 2)
        attended = layer.cross_attn_attn_gate.tanh() * self._cross_attention(attention, index, query)
        hidden, normed = _fused_norm(hidden, attended, layer.post_attention_layernorm)
        mlp = self._fused_mlp(layer, index, normed) * self.cross_row[:, 0]
        return hidden, layer.cross_attn_mlp_gate.tanh() * mlp


def _fused_norm(hidden, delta, norm) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden + delta, norm(hidden + delta)) in one kernel; without a delta, (hidden, norm(hidden))."""
    if delta is None:
        return hidden, rms_norm(hidden, norm.weight, norm.variance_epsilon)
    return add_rms_norm(hidden, delta, norm.weight, norm.variance_epsilon)


def to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """A few integers on `device`, copied without waiting for the work queued there (pinned on CUDA)."""
    tensor = torch.tensor(values, dtype=torch.long)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class OnTheWay:
    """A small device tensor on its way to the host: the copy is queued now, and `values` waits for it alone,
    not for what the device was given after it."""

    def __init__(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
        else:
            self._host, self._copied = tensor, None

    def values(self) -> list:
        if self._copied is not None:
            self._copied.synchronize()
        return self._host.tolist()


BROKEN_DISTRIBUTION = "the model's next-token probabilities contain NaN or infinite values"


def sample(
    logits: torch.Tensor, temperature: float, top_p: float, min_p: float, generator: torch.Generator | None = None
) -> int:
    """Pick the next token as transformers' warpers would: temperature, then top-p, then min-p.

    Temperatures below GREEDY_BELOW_TEMPERATURE pick the most likely token. A distribution with NaN or inf
    raises SamplingError without reaching torch.multinomial, whose device-side assert on CUDA would take
    the whole process's GPU context with it.
    """
    token, usable = sample_on_device(logits, temperature, top_p, min_p, generator)
    # The token and the verdict come back to the host together, in one sync.
    token, usable = torch.cat([token.view(1), usable.view(1).long()]).tolist()
    if not usable:
        raise SamplingError(BROKEN_DISTRIBUTION)
    return token


def sample_on_device(
    logits: torch.Tensor, temperature: float, top_p: float, min_p: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample` without waiting for the device: the token, and whether the distribution was usable (if not,
    the token is meaningless and the request must fail with SamplingError), both as tensors on the device."""
    if temperature < GREEDY_BELOW_TEMPERATURE:
        return logits.argmax(-1).view(1), torch.ones(1, dtype=torch.bool, device=logits.device)
    logits = logits / temperature
    if top_p < 1.0:
        ordered, order = logits.sort(descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if min_p > 0:
        probabilities = logits.softmax(-1)
        logits = logits.masked_fill(probabilities < min_p * probabilities.max(-1, keepdim=True).values, float("-inf"))
    probabilities = logits.softmax(-1)
    usable = torch.isfinite(probabilities).all()
    # multinomial gets a harmless stand-in when the distribution is broken, and the verdict goes with the token.
    probabilities = torch.where(usable, probabilities, torch.ones_like(probabilities))
    return torch.multinomial(probabilities, 1, generator=generator).view(1), usable.view(1)
