"""Llama 3.2 Vision through transformers: bf16/fp32, or bitsandbytes 4-bit, on CPU or CUDA."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jinja2
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoProcessor,
    BitsAndBytesConfig,
    MllamaForConditionalGeneration,
)
from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList
from transformers.generation.stopping_criteria import (
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer
from transformers.models.mllama.processing_mllama import (
    convert_sparse_cross_attention_mask_to_dense,
    get_cross_attention_token_mask,
)

from inference import model_layout
from inference.backends import decoder_kernels
from inference.backends.base import (
    Backend,
    BackendUnavailable,
    Decoding,
    GenerationResult,
    GpuMemory,
    PreparedPrompt,
    PromptError,
    PromptWork,
    SamplingError,
    SamplingParams,
)
from inference.backends.device_errors import device_failures_are_fatal, is_device_failure
from inference.backends.fused_projections import DecoderProjections
from inference.backends.prompt_attention import attend_without_cudnn
from inference.backends.prompt_tokens import chat_prompt_ids
from inference.backends.recent_images import RecentlyUsed, image_digest
from inference.backends.slot_contents import SlotContents
from inference.backends.static_decode import (
    BROKEN_DISTRIBUTION,
    OnTheWay,
    StaticDecoder,
    sample,
    sample_on_device,
    to_device,
)
from inference.backends.static_prefill import EncodedImage
from inference.backends.vision_encoder import encode_without_padding_mask
from inference.placement import cuda_gpus, describe, resolve

log = logging.getLogger(__name__)

# Kept in 16-bit when quantizing (model_layout says why); BitsAndBytesConfig wants a list.
UNQUANTIZED_MODULES = list(model_layout.UNQUANTIZED_MODULES)
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("device: cuda was asked for but torch sees no CUDA GPU; use device: cpu or auto")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


def is_prequantized(model_path: Path) -> bool:
    config = AutoConfig.from_pretrained(model_path)
    quantization = getattr(config, "quantization_config", None) or {}
    if not isinstance(quantization, dict):
        quantization = quantization.to_dict()
    return quantization.get("quant_method") == "bitsandbytes"


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(
        self,
        model_path: Path,
        device: str = "auto",
        dtype: str = "auto",
        load_in_4bit: bool = False,
        nf4_kernel: str = "auto",
        nf4_tensor_cores: bool = True,
        fuse_projections: bool | str = "auto",
        max_context_tokens: int = 0,
        static_cache_tokens: int | str = 0,
        max_batch_size: int = 1,
        overlap_image_encoding: bool = False,
        image_cache_size: int = 0,
        gpus: Sequence[int] = (),
        placement: str = "auto",
        max_memory: dict[int, int | str] | None = None,
        device_map: dict | None = None,
    ) -> None:
        """`gpus`, `placement`, `max_memory`: as in settings.py; `device_map`, when given, is used as it is.
        `image_cache_size`: how many recent images keep their processed pixels and (in the static decoder) their
        vision encoder output for follow-up questions (as settings.py says)."""
        self.model_path = Path(model_path)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.load_in_4bit = load_in_4bit
        self.max_context_tokens = max_context_tokens
        self.gpus, self.placement, self.max_memory = list(gpus), placement, max_memory or {}
        self.device_map = device_map
        self.model, self.processor = self._load()
        self.model.eval()
        if self.device == "cuda":
            attend_without_cudnn(self.model.model.language_model)
        # On every device: its output is HF's, and the CPU tests then run the encoder the GPU runs.
        encode_without_padding_mask(self.model.model.vision_model)
        self.gpu_indices = sorted({p.device.index for p in self.model.parameters() if p.device.type == "cuda"})
        if static_cache_tokens == "auto":
            static_cache_tokens = self._automatic_static_cache_tokens(max_batch_size)
        # Before the 4-bit kernels are chosen: they are chosen for the stacked layers too.
        self.projections = (
            DecoderProjections(
                self.model.model.language_model,
                fuse=fuse_projections in ("auto", True),
            )
            if static_cache_tokens
            else None
        )
        self.nf4_kernel = self._choose_nf4_kernel(nf4_kernel, nf4_tensor_cores)
        self.tokenizer = self.processor.tokenizer
        self._context_length = max_context_tokens or self.model.config.text_config.max_position_embeddings
        self.end_of_turn_ids = self._end_of_turn_ids()
        # A model spread over GPUs takes its token ids where the embeddings are and its image where the vision
        # encoder is (model.device is just the first parameter's device).
        self.input_device = self.model.get_input_embeddings().weight.device
        vision = next(
            parameter
            for name, parameter in self.model.named_parameters()
            if "vision_model" in name and parameter.is_floating_point()
        )
        self.vision_dtype, self.vision_device = vision.dtype, vision.device
        if static_cache_tokens and len(self.gpu_indices) > 1:
            raise BackendUnavailable(
                f"static_cache_tokens: the static decoder runs on one GPU, but the model is "
                f"spread over GPUs {self.gpu_indices}; set it to 0"
            )
        self.decoder = (
            StaticDecoder(
                self.model,
                min(static_cache_tokens, self._context_length),
                use_cuda_graph=self.device == "cuda",
                slots=max_batch_size,
                projections=self.projections,
                fused_kernels=self.device == "cuda" and decoder_kernels.available(),
                overlap_image_encoding=overlap_image_encoding,
                image_cache_size=image_cache_size,
            )
            if static_cache_tokens
            else None
        )
        # The processor's output of recent images: (pixel inputs, tile count) by digest.
        self._recent_pixels: RecentlyUsed[tuple[dict, list]] = RecentlyUsed(image_cache_size)
        self._images_generated = 0  # images encoded inside transformers' generate
        self._slot_contents: dict[int, SlotContents] = {}  # what the slots of ended requests still hold
        self._tokens_reused = 0
        if self.decoder is not None:
            started = time.monotonic()
            self.decoder.prompt.warm_up()
            log.info("prompt graphs and vision encoder warmed up in %.1f s", time.monotonic() - started)
        # Masked out of the decoder's logits (on its device) until a request's min_new_tokens are out.
        self.end_of_turn_tensor = torch.tensor(
            self.end_of_turn_ids, device=self.decoder.device if self.decoder else "cpu"
        )
        self._in_flight: _Step | None = None  # the decoding step whose tokens `advance` delivers next

    def _automatic_static_cache_tokens(self, max_batch_size: int) -> int:
        """static_cache_tokens: auto. The decoder is what makes GPU decoding fast; it needs the model on one GPU,
        and it is not used with unsloth's patched modules, which it was not tested with."""
        if max_batch_size > 1:
            return 2048
        if self.device == "cuda" and len(self.gpu_indices) == 1 and self.name == "transformers":
            return 4096
        return 0

    def _choose_nf4_kernel(self, wanted: str, tensor_cores: bool) -> str:
        """Give the 4-bit layers the Triton kernel where asked and possible; return what they decode with."""
        from inference.backends import nf4_kernel

        if wanted == "bitsandbytes" or not any(type(m).__name__ == "Linear4bit" for m in self.model.modules()):
            return "bitsandbytes"
        if self.device != "cuda" or not nf4_kernel.available():
            if wanted == "triton":
                raise BackendUnavailable(
                    "nf4_kernel: triton needs a CUDA GPU and the triton package; use nf4_kernel: auto or bitsandbytes"
                )
            return "bitsandbytes"
        layers = torch.nn.ModuleList([self.model] + ([self.projections] if self.projections is not None else []))
        count = nf4_kernel.use_triton_kernel(layers, always=wanted == "triton", tensor_cores=tensor_cores)
        log.info("nf4_kernel: %s for %d 4-bit layers", wanted, count)
        return wanted if count else "bitsandbytes"

    def _load(self):
        prequantized = is_prequantized(self.model_path)
        placement = (
            {"device_map": self.device_map}
            if self.device_map is not None
            else resolve(
                self.device,
                self.gpus,
                self.placement,
                self.max_memory,
                cuda_gpus() if self.device == "cuda" else [],
                model_path=self.model_path,
                context=self.max_context_tokens,
                bits=4 if self.load_in_4bit and not prequantized else None,
            )
        )
        kwargs: dict = {"dtype": self.dtype, **placement}
        if prequantized:
            log.info("loading %s: the checkpoint is already bitsandbytes 4-bit", self.model_path)
        elif self.load_in_4bit:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
                llm_int8_skip_modules=UNQUANTIZED_MODULES,
            )
        model = MllamaForConditionalGeneration.from_pretrained(self.model_path, **kwargs)
        if isinstance(getattr(model, "hf_device_map", None), dict) and len(set(model.hf_device_map.values())) > 1:
            log.info("the model is spread over devices: %s", describe(model.hf_device_map))
        processor = AutoProcessor.from_pretrained(self.model_path)
        return model, processor

    @property
    def slots(self) -> int:
        return self.decoder.slots if self.decoder is not None else 1

    @property
    def context_length(self) -> int:
        """The most prompt + answer tokens one request may have: a slot's length when requests are batched
        (they decode only in the static decoder's slots), else the model's context (see _decodes_in_slot)."""
        if self.slots > 1:
            return self.decoder.max_tokens
        return self._context_length

    def _decodes_in_slot(self, prompt: PreparedPrompt, params: SamplingParams) -> bool:
        """The one place that decides how a request decodes: in the static decoder's slot when the slot
        holds it; else with transformers' generate, which only a backend of one slot uses (in a batch the
        others would wait for its whole answer); else it is refused."""
        if self.decoder is not None and self.decoder.fits(prompt.prompt_tokens, params.max_new_tokens):
            return True
        if self.slots > 1:
            raise PromptError(
                f"a batch slot holds {self.decoder.max_tokens} tokens; this request needs "
                f"{prompt.prompt_tokens} + {params.max_new_tokens}"
            )
        return False

    def gpu_memory(self) -> list[GpuMemory]:
        return [
            GpuMemory(
                index=index,
                name=torch.cuda.get_device_name(index),
                memory_allocated_bytes=torch.cuda.memory_allocated(index),
                memory_total_bytes=torch.cuda.get_device_properties(index).total_memory,
            )
            for index in self.gpu_indices
        ]

    def _end_of_turn_ids(self) -> list[int]:
        configured = self.model.generation_config.eos_token_id
        ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
        return sorted(ids)

    def prepare(self, messages: list[dict], image: Image.Image | None) -> PreparedPrompt:
        """Client text stays text (prompt_tokens.py); any failure here is the request's, a PromptError."""
        try:
            return self._prepare(messages, image)
        except PromptError:
            raise
        except jinja2.TemplateError as exc:
            raise PromptError(f"the chat template refused this conversation: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - one odd input must not become a 500; logged for the operator
            log.warning("a prompt could not be prepared", exc_info=True)
            raise PromptError(f"the conversation could not be turned into a prompt ({type(exc).__name__})") from None

    def _prepare(self, messages: list[dict], image: Image.Image | None) -> PreparedPrompt:
        ids = chat_prompt_ids(self.tokenizer, self._render, messages)
        image_token_id = self.processor.image_token_id
        if ids.count(image_token_id) != (1 if image is not None else 0):
            raise PromptError("the prompt's image markers do not match the images sent")
        inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        key = None
        if image is not None:
            key = image_digest(image) if self._recent_pixels.capacity else None
            pixels, num_tiles = self._pixels(image, key)
            mask = convert_sparse_cross_attention_mask_to_dense(
                [get_cross_attention_token_mask(ids, image_token_id)],
                num_tiles=num_tiles,
                max_num_tiles=self.processor.image_processor.max_image_tiles,
                length=len(ids),
            )
            inputs.update(pixels, cross_attention_mask=torch.from_numpy(mask))
        return PreparedPrompt(inputs=inputs, prompt_tokens=len(ids), image_key=key)

    def _pixels(self, image: Image.Image, key: str | None) -> tuple[dict, list]:
        """The image processor's tensors for `image` and its tile count; kept under `key`, taken from there."""
        processed = self._recent_pixels.get(key) if key is not None else None
        if processed is None:
            pixels = dict(self.processor.image_processor(images=[[image]], return_tensors="pt"))
            processed = pixels, pixels.pop("num_tiles")
            if key is not None:
                self._recent_pixels.put(key, processed)
        return processed

    def prompt_work(self) -> PromptWork:
        prompt = self.decoder.prompt if self.decoder is not None else None
        return PromptWork(
            images_encoded=self._images_generated + (prompt.images_encoded if prompt else 0),
            images_reused=prompt.recent.hits if prompt else 0,
            tokens_reused=self._tokens_reused,
        )

    def _render(self, messages: list[dict]) -> str:
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.inference_mode()
    def begin(
        self,
        prompt: PreparedPrompt,
        params: SamplingParams,
        slot: int,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> _Request:
        """Prefill the request into `slot` and pick its first token; `advance` decodes the rest. A request
        that goes to transformers' generate (_decodes_in_slot) is decoded whole here: generate owns its
        loop, and the backend then has this one slot, so no other request waits on it. In a batch, an image
        request's prompt is read later, by `advance` (_reads_prompt_later)."""
        in_slot = self._decodes_in_slot(prompt, params)
        request = _Request(
            slot,
            prompt,
            params,
            _TextStreamer(self.tokenizer, on_text),
            should_stop,
            self._generator(params) if in_slot else None,
        )
        held = self._slot_contents.pop(slot, None) if in_slot else None  # the slot is written from here on
        with device_failures_are_fatal():
            inputs = self._on_model_devices(prompt.inputs)
            reuse = self._reusable(held, prompt)
            if not in_slot:
                self._generate(inputs, request)
            elif self._reads_prompt_later(inputs) and not reuse:
                # The tile mask stays on the CPU, where the vision encoder reads it without waiting for the GPU.
                request.unread = _UnreadPrompt(
                    {**inputs, "aspect_ratio_mask": prompt.inputs["aspect_ratio_mask"]}, prompt.image_key
                )
            else:
                image = None
                if "pixel_values" in inputs and not reuse:  # with reuse, the slot holds the image's keys and values
                    image = self.decoder.prompt.encode(inputs, prompt.image_key)
                self._read_prompt(request, inputs, image, reuse)
        return request

    def choose_slot(self, prompt: PreparedPrompt, free: list[int]) -> int:
        """The free slot that holds the most of the prompt's first tokens (its conversation's last turn); among
        equals, one that holds no other conversation's, then the one freed last."""
        if self.decoder is None:
            return free[-1]

        def preference(position: int) -> tuple[int, bool, int]:
            slot = free[position]
            return self._reusable(self._slot_contents.get(slot), prompt), slot not in self._slot_contents, position

        return free[max(range(len(free)), key=preference)]

    def _reusable(self, held: SlotContents | None, prompt: PreparedPrompt) -> int:
        """How many of the prompt's first tokens to take from what its slot holds (slot_contents.py). An image
        is matched by its digest: without one (image_cache_size 0), nothing is taken."""
        if held is None or not _image_matchable(prompt):
            return 0
        return held.reusable(prompt.inputs["input_ids"][0].tolist(), prompt.image_key)

    def _reads_prompt_later(self, inputs: dict[str, torch.Tensor]) -> bool:
        """In a batch, an image request's prompt (one StaticPrefill takes) is read by `advance`: its image
        goes through the vision encoder between decoding steps of the other slots (or, with
        overlap_image_encoding on CUDA, alongside them), and its text layers once the image is done. (Not one
        whose slot holds its image and first tokens: that is read at once, without the encoder.)"""
        return self.slots > 1 and "pixel_values" in inputs and self.decoder.prompt.takes(inputs["input_ids"].shape[1])

    def _read_prompt(
        self, request: _Request, inputs: dict[str, torch.Tensor], image: EncodedImage | None = None, reuse: int = 0
    ) -> None:
        """Prefill the request's slot (all but the first `reuse` tokens, which it holds) and pick its first token."""
        request.streamer.put(inputs["input_ids"])  # the prompt, as generate hands it over first
        logits = self.decoder.prefill(inputs, request.slot, image, reuse)
        request.prompt_read = True
        self._tokens_reused += reuse
        self._choose(request, logits[0])

    def _on_model_devices(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        moved = {name: tensor.to(self.input_device) for name, tensor in inputs.items()}
        if "pixel_values" in moved:
            moved["pixel_values"] = moved["pixel_values"].to(self.vision_device, self.vision_dtype)
        return moved

    def _generator(self, params: SamplingParams) -> torch.Generator | None:
        """A random source for this request alone: a seed never touches torch's global generator."""
        if params.seed is None:
            return None
        return torch.Generator(device=self.decoder.device).manual_seed(params.seed)

    @torch.inference_mode()
    def advance(self, requests: list[_Request]) -> None:
        """Read the prompts whose images are done; queue one decoding step for every request with a prompt read
        (each in its own slot of the static decoder), its tokens picked on the device; deliver the tokens of
        the step queued before, while the new one runs; then start the next image. A token thus arrives one
        advance after its step is queued, and the host's work between steps (text, events, the next launch)
        overlaps the device's. When no request is decoding yet, this waits for an image rather than return
        with nothing done."""
        unread = [request for request in requests if request.unread is not None]
        with device_failures_are_fatal():
            if unread:
                self._read_encoded_prompts(unread, wait=all(request.unread is not None for request in requests))
            decoding = [request for request in requests if request.unread is None and request.wants_a_step]
            launched = self._launch_step(decoding) if decoding else None
            delivered, self._in_flight = self._in_flight, launched
            if delivered is not None:
                self._deliver(delivered)
            self._encode_next_image(unread)

    def _read_encoded_prompts(self, unread: list[_Request], wait: bool) -> None:
        """Read the prompts of the requests whose images are done (or, when `wait`, still being encoded: one at
        most is); a request stopped meanwhile ends with nothing read."""
        if wait and all(request.unread.image is None for request in unread):
            self._encode_next_image(unread)
        for request in unread:
            if request.finished:
                continue
            if request.should_stop():
                request.unread = None
                self._end(request)
                continue
            image = request.unread.image
            if image is not None and (wait or image.ready()):
                inputs, request.unread = request.unread.inputs, None
                self._alone(request, functools.partial(self._read_prompt, request, inputs, image))

    def _encode_next_image(self, unread: list[_Request]) -> None:
        """Start the first waiting image through the vision encoder, unless one still is: one at a time, in
        order of arrival (one image's activations in memory at a time, and the first to come is read first)."""
        waiting = [request for request in unread if request.unread is not None and not request.finished]
        if any(request.unread.image is not None and not request.unread.image.ready() for request in waiting):
            return
        for request in waiting:
            if request.unread.image is None:
                self._alone(request, functools.partial(request.unread.start, self.decoder.prompt.encode))
                if not request.finished:
                    return

    def _launch_step(self, requests: list[_Request]) -> _Step:
        """Queue one decoding step for these requests and the picking of their next tokens, on the device: the
        picks become the next step's input tokens there, and start their way to the host. Nothing waits."""
        known = {request.slot: request.last_token for request in requests if not request.in_flight}
        if known:  # a request whose last token the host has (its first, or one taken before a pause)
            self.decoder.set_tokens(known)
        logits = self.decoder.step()
        # The end of the turn is held back until min_new_tokens, counting the tokens still on their way.
        held_back = [r.slot for r in requests if r.produced + r.in_flight < r.params.min_new_tokens]
        if held_back:  # every slot (one request alone, a full batch) needs no index tensor on the device
            rows = slice(None) if len(held_back) == self.decoder.slots else to_device(held_back, logits.device)[:, None]
            logits[rows, self.end_of_turn_tensor] = float("-inf")
        picks = logits.argmax(-1)
        usable = torch.ones_like(picks)
        for request in requests:
            if not request.params.greedy:
                params = request.params
                token, fine = sample_on_device(
                    logits[request.slot], params.temperature, params.top_p, params.min_p, request.generator
                )
                picks[request.slot], usable[request.slot] = token[0], fine[0]
        self.decoder.token.copy_(picks.view(-1, 1))
        step = _Step(requests, OnTheWay(torch.stack([picks, usable])))
        for request in requests:
            request.in_flight += 1
        return step

    def _deliver(self, step: _Step) -> None:
        """Give each request of a queued step its token (waiting for that step alone); one that ended meanwhile
        (its turn over at the token before) gets nothing."""
        tokens, usable = step.picks.values()
        for request in step.requests:
            request.in_flight -= 1
            if request.finished:
                continue
            if usable[request.slot]:
                self._alone(request, functools.partial(self._take, request, tokens[request.slot]))
            else:
                request.error = SamplingError(BROKEN_DISTRIBUTION)

    @staticmethod
    def _alone(request: _Request, work: Callable[[], None]) -> None:
        """Do some of one request's work; an error of its own ends it alone (a device failure ends them all)."""
        try:
            work()
        except Exception as error:
            if is_device_failure(error):
                raise
            request.error = error

    def _choose(self, request: _Request, logits: torch.Tensor) -> None:
        if request.produced < request.params.min_new_tokens:
            logits[self.end_of_turn_tensor] = float("-inf")
        self._take(request, self._sample(request, logits))

    @staticmethod
    def _sample(request: _Request, logits: torch.Tensor) -> int:
        params = request.params
        return sample(logits, params.temperature, params.top_p, params.min_p, request.generator)

    def _take(self, request: _Request, token: int) -> None:
        request.streamer.put(torch.tensor([token]))
        request.produced += 1
        request.last_token = token
        if token in self.end_of_turn_ids or request.produced >= request.params.max_new_tokens or request.should_stop():
            self._end(request)

    def _end(self, request: _Request) -> None:
        """The answer is over: send its last text and say why it ended (the token limit, unless the turn did);
        remember what its slot holds."""
        if request.prompt_read:
            self._remember(request)
        request.streamer.flush()
        tokens = request.streamer.token_ids
        ended_turn = bool(tokens) and tokens[-1] in self.end_of_turn_ids
        reached_limit = len(tokens) >= request.params.max_new_tokens
        request.result = GenerationResult(
            finish_reason="length" if reached_limit and not ended_turn else "stop", completion_tokens=len(tokens)
        )

    def _remember(self, request: _Request) -> None:
        """What the ended request's slot holds: its prompt and its answer but the last token (slot_contents.py).
        An image prompt without a digest is not remembered: its image could not be matched."""
        prompt = request.prompt
        if not _image_matchable(prompt):
            return
        held = prompt.inputs["input_ids"][0].tolist() + request.streamer.token_ids[:-1]
        self._slot_contents[request.slot] = SlotContents(tuple(held), prompt.image_key)

    def _generate(self, inputs: dict, request: _Request) -> None:
        """The whole answer with transformers' generate, where the static decoder cannot take the request."""
        params = request.params
        sampling = (
            {"do_sample": False}
            if params.greedy
            else {
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "min_p": params.min_p,
                "logits_processor": LogitsProcessorList([_RefuseUnsampleable()]),
            }
        )
        if "pixel_values" in inputs:
            self._images_generated += 1
        # generate samples from torch's global generator: a seed applies inside a fork of it, restored after.
        cuda_devices = self.gpu_indices if params.seed is not None else []
        with torch.random.fork_rng(devices=cuda_devices, enabled=params.seed is not None):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            self.model.generate(
                **inputs,
                **sampling,
                max_new_tokens=params.max_new_tokens,
                min_new_tokens=params.min_new_tokens,
                eos_token_id=self.end_of_turn_ids,
                pad_token_id=self.end_of_turn_ids[0],
                streamer=request.streamer,
                stopping_criteria=StoppingCriteriaList([_StopWhen(request.should_stop)]),
            )
        self._end(request)


def _image_matchable(prompt: PreparedPrompt) -> bool:
    """Whether a slot's keys and values can be matched to the prompt's image: it has none, or a digest."""
    return "pixel_values" not in prompt.inputs or prompt.image_key is not None


class _Request(Decoding):
    """One request decoding in a slot: its text so far, how many tokens it has, and its last one."""

    def __init__(
        self,
        slot: int,
        prompt: PreparedPrompt,
        params: SamplingParams,
        streamer: _TextStreamer,
        should_stop: Callable[[], bool],
        generator: torch.Generator | None,
    ) -> None:
        super().__init__(slot)
        self.prompt = prompt
        self.prompt_read = False  # prefilled into its slot of the static decoder
        self.params = params
        self.streamer = streamer
        self.should_stop = should_stop
        self.generator = generator
        self.produced = 0
        self.last_token = 0
        self.in_flight = 0  # tokens of steps queued and not yet delivered
        self.unread: _UnreadPrompt | None = None  # a prompt `advance` is still to read

    @property
    def wants_a_step(self) -> bool:
        """Unfinished, and its last token not already on its way (the steps queued do not reach its limit)."""
        return not self.finished and self.produced + self.in_flight < self.params.max_new_tokens


class _Step:
    """A queued decoding step: the requests it decodes, and their picked tokens (and whether each request's
    distribution was usable) on their way to the host, one row each: tokens, then usable, one column a slot."""

    def __init__(self, requests: list[_Request], picks: OnTheWay) -> None:
        self.requests = requests
        self.picks = picks


class _UnreadPrompt:
    """A begun request's prompt on the model's devices (its tile mask on the CPU), and its image once started
    through the encoder."""

    def __init__(self, inputs: dict[str, torch.Tensor], image_key: str | None) -> None:
        self.inputs = inputs
        self.image_key = image_key
        self.image: EncodedImage | None = None

    def start(self, encode: Callable[[dict, str | None], EncodedImage]) -> None:
        self.image = encode(self.inputs, self.image_key)


class _RefuseUnsampleable(LogitsProcessor):
    """Last in generate's chain: a distribution with NaN or inf raises SamplingError before torch.multinomial
    sees it (on CUDA its device-side assert would end every later CUDA call in the process)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not torch.isfinite(scores.softmax(-1)).all():
            raise SamplingError("the model's next-token probabilities contain NaN or infinite values")
        return scores


class _StopWhen(StoppingCriteria):
    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


class _TextStreamer(BaseStreamer):
    """Receives token ids from generate and hands out text deltas, never special tokens or half characters.

    Each step decodes only the tokens since the last settled point plus the few before it (their text is
    subtracted), not the whole answer: decoding everything every token costs O(n²) and, with several
    requests batched, holds the decoding thread between steps.
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.token_ids: list[int] = []
        self._context_start = 0  # tokens decoded again only as context for the new ones
        self._settled = 0  # tokens whose text has been sent
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # generate first hands over the prompt
            self._seen_prompt = True
            return
        self.token_ids.extend(value.reshape(-1).tolist())
        self._emit(final=False)

    def end(self) -> None:
        pass

    def flush(self) -> None:
        self._emit(final=True)

    def _decode(self, start: int, end: int | None = None) -> str:
        return self.tokenizer.decode(self.token_ids[start:end], skip_special_tokens=True)

    def _emit(self, final: bool) -> None:
        context = self._decode(self._context_start, self._settled)
        text = self._decode(self._context_start)
        if text.endswith("\ufffd") and not final:
            return
        # A merge may change the context's own characters: send only what lies past the common prefix.
        common = (
            len(context)
            if text.startswith(context)
            else next((i for i, (a, b) in enumerate(zip(text, context)) if a != b), min(len(text), len(context)))
        )
        delta = text[max(common, len(context)) :]
        if not delta:
            return
        self._context_start, self._settled = self._settled, len(self.token_ids)
        self.on_text(delta)
