"""A prompt's text layers run straight into a static decoder's slot, replayed as one CUDA graph per padded length.

Why: on an H200 the 11B's prefill (4-tile image, ~40 tokens) took ~148 ms, ~90 ms of it on the GPU. The
vision encoder keeps the GPU busy with large kernels; the language model over a few dozen tokens does not:
its layers' small kernels are launched one by one from Python through transformers' forward and its
DynamicCache, and the GPU waits. Here the vision encoder and projector still run as transformers runs them,
outside any graph; the text layers run with the model's own modules over fixed buffers, as the decode step
does, and write their keys and values directly into the slot.

A prompt is padded to the next of a few lengths (`BUCKETS`), one graph each (and each with or without the
image), captured at its first use. Padding goes after the real tokens, so causal attention keeps the real
ones exact; the padding's keys and values land at positions past the prompt, which the decode step masks
until it writes its own tokens there. On the CPU the same code runs eagerly.

With several slots, a new request's image can go through the vision encoder on a CUDA stream of its own
(`encode`, `overlap_image_encoding`) while the other slots go on decoding on the current stream; its text
layers then run as above, once the image is done.

`encode` keeps the encoder's output of the last few images it was given a key for (recent_images.py): a
follow-up question about the same image reuses it instead of running the encoder again.

A prompt whose first tokens the slot already holds (`reuse`: the conversation's last turn, slot_contents.py)
is read from there on, by graphs of their own: its rows go at positions `start`, `start` + 1, ... of the slot,
attend to everything the slot holds before them, and its cross-attention layers read the image's keys and
values the slot holds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel
from transformers.models.mllama.modeling_mllama import (
    _prepare_cross_attention_mask,
    apply_rotary_pos_emb,
    repeat_kv,
)

from inference.backends.prompt_attention import PROMPT_BACKENDS
from inference.backends.recent_images import RecentlyUsed

if TYPE_CHECKING:
    from inference.backends.static_decode import StaticDecoder

log = logging.getLogger(__name__)

# Prompt lengths with a graph of their own; longer prompts go through transformers' forward.
BUCKETS = (16, 32, 64, 128, 256)
# What the vision encoder reads of a prompt's inputs.
IMAGE_INPUTS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")


class EncodedImage:
    """A prompt's image through the vision encoder and projector: its cross-attention states. When they are
    computed on another CUDA stream, `done` is recorded there at the end of that work."""

    def __init__(self, states: torch.Tensor, done: torch.cuda.Event | None = None) -> None:
        self._states = states
        self._done = done

    def ready(self) -> bool:
        """Whether the work has ended (never waits)."""
        return self._done is None or self._done.query()

    def states(self) -> torch.Tensor:
        """The states, for work queued on the current stream from now on (which waits for them)."""
        if self._done is not None:
            stream = torch.cuda.current_stream(self._states.device)
            stream.wait_event(self._done)
            self._states.record_stream(stream)  # freed by this request, reused only after that work
        return self._states


class StaticPrefill:
    """Prefills one request at a time into a slot of `decoder`; `prefills` counts the prompts it took,
    `images_encoded` the images it ran through the vision encoder for them (warm-up aside), and `recent` holds
    the encoder's output of the last `image_cache_size` images given a key (`recent.hits`: those reused)."""

    def __init__(
        self,
        decoder: StaticDecoder,
        buckets: tuple[int, ...] = BUCKETS,
        overlap_image_encoding: bool = False,
        image_cache_size: int = 0,
    ) -> None:
        """`overlap_image_encoding`: on CUDA, `encode` works on a stream of its own."""
        self.decoder = decoder
        self.buckets = tuple(sorted(bucket for bucket in buckets if bucket <= decoder.max_tokens))
        self.prefills = 0
        self.images_encoded = 0
        self.recent: RecentlyUsed[EncodedImage] = RecentlyUsed(image_cache_size)
        self._graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        longest = self.buckets[-1] if self.buckets else 0
        hidden = decoder.text.config.hidden_size
        device, dtype, image_tokens = decoder.device, decoder.dtype, decoder.image_tokens
        # The graphs' inputs: each graph reads the first `bucket` rows.
        self.token_ids = torch.zeros(1, longest, dtype=torch.long, device=device)
        self.last = torch.zeros(1, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.start = torch.zeros(1, dtype=torch.long, device=device)  # where a continued prompt's first row goes
        self.continues = True  # whether continued prompts come here (their graphs could be captured)
        self._kv_heads = torch.arange(decoder.kv_heads, device=device).view(1, -1, 1)
        self.image_states = torch.zeros(1, image_tokens if longest else 0, hidden, dtype=dtype, device=device)
        self.cross_mask = torch.zeros(1, 1, longest, image_tokens, dtype=dtype, device=device)
        self.cross_row = torch.zeros(1, 1, longest, 1, dtype=dtype, device=device)
        self.encoder_stream = torch.cuda.Stream(device) if overlap_image_encoding and device.type == "cuda" else None

    @torch.inference_mode()
    def warm_up(self) -> None:
        """On CUDA, before the first request: capture every bucket's graphs (with and without the image, whole
        and continued) and run the vision encoder once for every number of tiles an image may cover. Otherwise
        the first prompt of a
        bucket pays for tuning and timing the 4-bit kernels at its row count, two warm-ups and the capture (5.5 s
        for the 11B on an H200), and the first image of a tile count for cuDNN's plan of its attention (~0.1 s);
        with several clients every running answer waits for it. (On the encoder's own stream, when there is
        one: its first use there gets that stream its libraries' workspaces.) The captures write slot 0, which
        no request holds yet: a prefill writes everything of a slot that its decoding reads.

        If a capture fails here, a warning says so and every prompt goes through transformers' forward, as before
        this module: slower to the first token, but serving. If only a continued graph fails, only continued
        prompts do."""
        if not self.decoder.use_cuda_graph:
            return
        vision = self.decoder.model.config.vision_config
        for tiles in range(1, vision.max_num_tiles + 1):
            self._start_encoding(self._blank_image(tiles)).states()
        try:
            self._capture_every_bucket(continued=False)
        except Exception as error:  # noqa: BLE001 - a capture this GPU or driver refuses must not stop the service
            log.warning(
                "capturing the prompt graphs failed (%s: %s); prompts go through transformers' forward",
                type(error).__name__,
                error,
            )
            self.buckets = ()
            self._graphs.clear()
            return
        try:
            self._capture_every_bucket(continued=True)
        except Exception as error:  # noqa: BLE001 - as above, for the continued prompts alone
            log.warning(
                "capturing the continued prompt graphs failed (%s: %s); follow-ups go through transformers' forward",
                type(error).__name__,
                error,
            )
            self.continues = False
            self._graphs = {key: graph for key, graph in self._graphs.items() if not key[2]}

    def _capture_every_bucket(self, continued: bool) -> None:
        for bucket in self.buckets:
            for has_image in (True, False):
                if (bucket, has_image, continued) not in self._graphs:
                    self._capture(bucket, has_image, continued)

    def _blank_image(self, tiles: int) -> dict:
        """The vision encoder's inputs for a blank image covering `tiles` tiles."""
        vision = self.decoder.model.config.vision_config
        layout = next(i for i, (high, wide) in enumerate(vision.supported_aspect_ratios) if high * wide == tiles)
        parameter = next(self.decoder.model.model.vision_model.parameters())
        size, most = vision.image_size, vision.max_num_tiles
        return {
            "pixel_values": torch.zeros(
                1, 1, most, vision.num_channels, size, size, dtype=parameter.dtype, device=parameter.device
            ),
            "aspect_ratio_ids": torch.tensor([[layout + 1]], device=parameter.device),
            "aspect_ratio_mask": (torch.arange(most, device=parameter.device) < tiles).long().view(1, 1, most),
        }

    def takes(self, prompt_tokens: int, continued: bool = False) -> bool:
        """The rule: a prompt (`continued`: the new tokens of one its slot holds the start of) goes here when a
        bucket holds it (buckets longer than the slot were dropped), a continued one only if its graphs could be
        captured."""
        return self.bucket_for(prompt_tokens) is not None and (self.continues or not continued)

    def bucket_for(self, prompt_tokens: int) -> int | None:
        return next((bucket for bucket in self.buckets if prompt_tokens <= bucket), None)

    @property
    def graphs(self) -> int:
        """How many graphs have been captured (one per bucket, with or without the image)."""
        return len(self._graphs)

    @torch.inference_mode()
    def encode(self, inputs: dict, key: str | None = None) -> EncodedImage:
        """The prompt's image through the vision encoder and projector: kept from an earlier prompt whose image
        had the same `key` (its digest), or started now; then kept under `key`."""
        image = self.recent.get(key) if key is not None else None
        if image is None:
            image = self._start_encoding(inputs)
            self.images_encoded += 1
            if key is not None:
                self.recent.put(key, image)
        return image

    def _start_encoding(self, inputs: dict) -> EncodedImage:
        """Start the vision encoder on the prompt's image: on the encoder stream when there is one (what the
        current stream runs meanwhile goes on alongside), else here and now. With `aspect_ratio_mask` on the
        CPU, starting it never waits for the GPU."""
        if self.encoder_stream is None:
            return EncodedImage(self._encode_image(inputs))
        self.encoder_stream.wait_stream(torch.cuda.current_stream(self.encoder_stream.device))  # inputs copied there
        with torch.cuda.stream(self.encoder_stream):
            for name in IMAGE_INPUTS:
                if inputs[name].is_cuda:
                    inputs[name].record_stream(self.encoder_stream)  # may be freed before this stream is done
            states = self._encode_image(inputs)
            done = torch.cuda.Event()
            done.record()
        return EncodedImage(states, done)

    @torch.inference_mode()
    def prefill(self, inputs: dict, slot: int, image: EncodedImage | None = None, reuse: int = 0) -> torch.Tensor:
        """Write the prompt's keys and values (and the image's) into `slot`; return the last token's logits.
        `image`: the prompt's image from `encode`, if it was started before; else it is encoded here.
        `reuse`: the slot holds the keys and values of the prompt's first `reuse` tokens and of its image; only
        the tokens after them are read (a bucket must hold those)."""
        length = inputs["input_ids"].shape[1]
        bucket = self.bucket_for(length - reuse)
        has_image, continued = "pixel_values" in inputs, reuse > 0
        self._load(inputs, slot, has_image, image, reuse)
        if self.decoder.use_cuda_graph:
            key = (bucket, has_image, continued)
            graph, logits = self._graphs.get(key) or self._capture(*key)
            graph.replay()
            logits = logits.clone()  # the graph's output is overwritten by its next replay
        else:
            logits = self._forward(bucket, has_image, continued)
        self.prefills += 1
        return logits

    def _load(self, inputs: dict, slot: int, has_image: bool, image: EncodedImage | None, reuse: int) -> None:
        read = inputs["input_ids"].shape[1] - reuse
        self.token_ids.zero_()
        self.token_ids[:, :read].copy_(inputs["input_ids"][:, reuse:])
        self.last.fill_(read - 1)
        self.slot.fill_(slot)
        self.start.fill_(reuse)
        if not has_image:
            return
        if not reuse:
            self.image_states.copy_((image or self.encode(inputs)).states())
        mask, row = _prepare_cross_attention_mask(
            inputs["cross_attention_mask"],
            num_vision_tokens=self.decoder.model.model.vision_model.num_patches,
            dtype=self.decoder.dtype,
        )
        self.cross_mask.zero_()
        self.cross_row.zero_()
        self.cross_mask[:, :, :read].copy_(mask[:, :, reuse:])
        self.cross_row[:, :, :read].copy_(row[:, :, reuse:])

    def _encode_image(self, inputs: dict) -> torch.Tensor:
        """The cross-attention states, as MllamaModel computes them: vision encoder, then projector."""
        model = self.decoder.model.model
        vision = model.vision_model(
            pixel_values=inputs["pixel_values"],
            aspect_ratio_ids=inputs["aspect_ratio_ids"],
            aspect_ratio_mask=inputs["aspect_ratio_mask"],
        )
        return model.multi_modal_projector(vision.last_hidden_state).reshape(1, -1, model.hidden_size)

    def _capture(self, bucket: int, has_image: bool, continued: bool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            # Kernels are compiled, tuned and chosen for these shapes here, never during the capture. The
            # warm-up writes the slot being prefilled, as the replay then does.
            for _ in range(2):
                self._forward(bucket, has_image, continued)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._forward(bucket, has_image, continued)
        self._graphs[(bucket, has_image, continued)] = graph, logits
        return graph, logits

    def _forward(self, bucket: int, has_image: bool, continued: bool) -> torch.Tensor:
        decoder = self.decoder
        positions = decoder.positions[:bucket]
        if continued:  # its rows go from `start` on; padding rows past the buffer's end stay at its last position
            positions = (positions + self.start).clamp(max=decoder.max_tokens - 1)
        with sdpa_kernel(PROMPT_BACKENDS):
            hidden = decoder.text.embed_tokens(self.token_ids[:, :bucket])
            cos, sin = decoder.text.rotary_emb(hidden, positions[None])
            for index, layer in enumerate(decoder.layers):
                if index not in decoder.cross_layers:
                    hidden = self._self_layer(layer, index, hidden, cos, sin, positions if continued else None)
                elif has_image:
                    hidden = self._cross_layer(layer, index, hidden, continued)
        last = decoder.text.norm(hidden.index_select(1, self.last))
        return decoder.model.lm_head(last)[:, -1].float()

    def _heads(self, projected: torch.Tensor) -> torch.Tensor:
        return projected.view(1, projected.shape[1], -1, self.decoder.head_dim).transpose(1, 2)

    def _keep(self, index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write keys and values of positions [0, n) into the slot's buffers of layer `index`."""
        n = keys.shape[2]
        self.decoder.keys[index][:, :, :n].index_copy_(0, self.slot, keys)
        self.decoder.values[index][:, :, :n].index_copy_(0, self.slot, values)

    def _keep_at(self, index: int, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write keys and values of `positions` into the slot's buffers of layer `index`."""
        where = (self.slot.view(1, 1, 1), self._kv_heads, positions.view(1, 1, -1))
        self.decoder.keys[index].index_put_(where, keys)
        self.decoder.values[index].index_put_(where, values)

    def _self_layer(self, layer, index: int, hidden, cos, sin, positions: torch.Tensor | None):
        """`positions`: a continued prompt's, whose rows attend to everything the slot holds before them too."""
        attention = layer.self_attn
        normed = layer.input_layernorm(hidden)
        query, key, value = (self._heads(p) for p in self.decoder.projections.attention[str(index)](normed))
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if positions is None:
            self._keep(index, key, value)
            out = F.scaled_dot_product_attention(
                query, key, value, is_causal=True, scale=attention.scaling, enable_gqa=True
            )
        else:
            self._keep_at(index, positions, key, value)
            repeats = attention.num_key_value_groups
            visible = self.decoder.positions[None, :] <= positions[:, None]
            out = F.scaled_dot_product_attention(
                query,
                repeat_kv(self.decoder.keys[index].index_select(0, self.slot), repeats),
                repeat_kv(self.decoder.values[index].index_select(0, self.slot), repeats),
                attn_mask=visible[None, None],
                scale=attention.scaling,
            )
        hidden = hidden + attention.o_proj(out.transpose(1, 2).flatten(2))
        return hidden + self.decoder.projections.feed_forward(layer, index, layer.post_attention_layernorm(hidden))

    def _cross_layer(self, layer, index: int, hidden, continued: bool):
        """MllamaCrossAttentionDecoderLayer: rows before the image attend to all of it (their mask is
        zeroed), and only the MLP's output is masked for them. `continued`: the slot holds the image's keys and
        values."""
        attention = layer.cross_attn
        if continued:
            key = self.decoder.keys[index].index_select(0, self.slot)
            value = self.decoder.values[index].index_select(0, self.slot)
        else:
            key = attention.k_norm(self._heads(attention.k_proj(self.image_states)))
            value = self._heads(attention.v_proj(self.image_states))
            self._keep(index, key, value)
        bucket = hidden.shape[1]
        query = attention.q_norm(self._heads(attention.q_proj(layer.input_layernorm(hidden))))
        # With a mask, torch's GQA attention falls back to its math kernel: transformers repeats the heads instead.
        repeats = attention.num_key_value_groups
        out = F.scaled_dot_product_attention(
            query,
            repeat_kv(key, repeats),
            repeat_kv(value, repeats),
            attn_mask=self.cross_mask[:, :, :bucket],
            scale=attention.scaling,
        )
        hidden = hidden + layer.cross_attn_attn_gate.tanh() * attention.o_proj(out.transpose(1, 2).flatten(2))
        mlp = self.cross_row[:, 0, :bucket] * self.decoder.projections.feed_forward(
            layer, index, layer.post_attention_layernorm(hidden)
        )
        return hidden + layer.cross_attn_mlp_gate.tanh() * mlp
