"""Service configuration: one YAML file, every field overridable by a VLMKIT_ environment variable.

Precedence, highest first: VLMKIT_* environment variables, then the YAML file, then the defaults
below. `load_settings` turns validation errors into a ConfigError whose message names the field.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which field and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VLMKIT_", extra="forbid", validate_default=True)

    # The model
    model_path: Path = Field(
        Path("/var/lib/vlmkit/model"), description="Local checkpoint folder (config.json, weights, processor files)."
    )
    model_name: str = Field(
        "", description="Model id served in /v1/models and required in requests; empty means the folder's name."
    )
    backend: Literal["transformers", "unsloth"] = Field(
        "transformers", description="transformers (CPU or CUDA) or unsloth (CUDA only)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs; auto picks CUDA when present."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Compute dtype; auto is bfloat16 on CUDA and float32 on CPU."
    )
    load_in_4bit: bool = Field(
        False,
        description="Quantize to bitsandbytes nf4 while loading (vision tower, projector and lm_head stay unquantized). "
        "A checkpoint that is already bnb-4bit is loaded as such whatever this says.",
    )
    nf4_kernel: Literal["auto", "bitsandbytes", "triton"] = Field(
        "auto",
        description="How 4-bit (nf4) layers multiply inputs of up to 128 rows (decoding, short prefills): "
        "bitsandbytes' kernels, vlmkit's Triton kernel (CUDA and the triton package), or auto: on CUDA, the fastest "
        "for each layer shape and batch size of those two and, at one row in bfloat16, vlmkit's one-row CUDA kernel "
        "(compiled at run time with NVRTC), timed at first use (prefill: row count rounded up to 32, 64 or 128). "
        "Longer prefills always use bitsandbytes.",
    )
    nf4_tensor_cores: bool = Field(
        True,
        description="With nf4_kernel auto on CUDA: decoding's 1 to 8 rows of bfloat16 go to vlmkit's tensor-core NF4 "
        "kernel (compiled at run time with NVRTC; at one row only for layers of 4096 outputs or more). On the H200 "
        "it made decoding 6% (11B, one client) to 15% (11B, 8 clients) faster, 13% on the 90B (docs/lab/speed.md); "
        "false keeps the one-row and Triton kernels.",
    )
    fuse_projections: bool | Literal["auto"] = Field(
        "auto",
        description="In the static decoder, multiply each layer's query, key and value projections as one "
        "product, and its MLP's gate and up (lossless; 4-bit weights then keep their absmax values as float32, about "
        "9% more bytes for those layers: 3.4 GB for the 90B). auto: on (8% faster decoding for one client on the "
        "90B and 11B, 9% for 8 clients on the 11B).",
    )
    max_context_tokens: int = Field(
        0, ge=0, description="Prompt + completion token limit; 0 means the model's max_position_embeddings."
    )
    max_batch_size: int = Field(
        1,
        ge=1,
        le=64,
        description="Requests the static decoder runs together (continuous batching; needs "
        "static_cache_tokens); 1 decodes one request at a time. Each slot holds its own KV cache of "
        "static_cache_tokens tokens and its image's cross-attention cache.",
    )
    overlap_image_encoding: bool = Field(
        False,
        description="With max_batch_size > 1 on CUDA: a new request's image goes through the vision encoder on a "
        "second CUDA stream while the other requests go on decoding (its text prompt still pauses them briefly). "
        "Off by default: on the H200 the steps taken alongside the encoder were 3x slower and the total fell "
        "(docs/speed.md); without it the image is encoded between two decoding steps.",
    )
    image_cache_size: int = Field(
        8,
        ge=0,
        le=1024,
        description="How many recently seen images keep their processed pixels (CPU, ~15 MB each) and, in the static "
        "decoder, their vision encoder output (on the GPU: ~52 MB each for the 11B, ~105 MB for the 90B), so that a "
        "follow-up question about the same image (clients send it again every turn) skips the image processor and "
        "the vision encoder. Images are matched by a digest of their pixels. 0 keeps none, and a follow-up about "
        "an image then reads its whole prompt again (without a digest, its slot's keys and values cannot be matched).",
    )
    static_cache_tokens: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="Decode with vlmkit's static-cache decoder (a CUDA graph per token on GPUs) for "
        "requests up to this many prompt + answer tokens; 0 uses transformers' generate. The buffers are "
        "allocated at load time. auto: 4096 when the transformers backend has the model on one CUDA GPU (2-4x "
        "faster decoding, docs/speed.md), 2048 per slot when max_batch_size > 1, otherwise 0.",
    )

    # Several GPUs (docs/multi-gpu.md)
    gpus: list[int] = Field(
        [],
        description="CUDA device indices the model may use, as torch numbers them (after CUDA_VISIBLE_DEVICES); "
        "empty means every visible GPU when the model runs on CUDA.",
    )
    placement: Literal["auto", "planner", "max_memory"] = Field(
        "auto",
        description="How a model is spread over several GPUs: auto (accelerate's balanced device_map over "
        "the GPUs' free memory), planner (the layer ranges of vlmkit plan's per-GPU placement, for max_context_tokens), "
        "or max_memory (accelerate's balanced device_map within the caps in max_memory). On one GPU the model "
        "simply goes there.",
    )
    max_memory: dict[int, int | str] = Field(
        {},
        description="With placement: max_memory, the most each GPU may hold, in bytes or as accelerate reads "
        "sizes (70GiB = 70 x 2^30, 70GB = 70 x 10^9), e.g. {0: 70GiB, 1: 70GiB}; GPUs not named are not used.",
    )

    # HTTP
    host: str = Field("127.0.0.1", description="Bind address. Anything but loopback requires an API key.")
    port: int = Field(8000, ge=1, le=65535, description="Bind port.")
    api_key: SecretStr | None = Field(
        None, description="Bearer key clients must send. Prefer VLMKIT_API_KEY from an environment file to the YAML."
    )
    max_request_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above).")

    # Generation defaults and limits (those of the reference manual deployment: temperature 1.5, min_p 0.1, 2048 new tokens)
    default_max_tokens: int = Field(2048, ge=1, description="max_tokens when a request gives none.")
    max_tokens_cap: int = Field(4096, ge=1, description="Largest max_tokens a request may ask for (400 above).")
    default_temperature: float = Field(
        1.5, ge=0, le=2, allow_inf_nan=False, description="Temperature when a request gives none."
    )
    default_top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="top_p when a request gives none.")
    default_min_p: float = Field(0.1, ge=0, le=1, allow_inf_nan=False, description="min_p when a request gives none.")

    # Images
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest width × height accepted; checked from the header before decoding."
    )
    allow_remote_images: bool = Field(
        False,
        description="Fetch http(s) image URLs. Loopback, private, link-local and metadata addresses stay refused.",
    )
    remote_image_timeout_s: float = Field(10.0, gt=0, description="Timeout for fetching one remote image.")
    local_image_dir: Path | None = Field(
        None, description="If set, file:// image URLs may name files under this folder (and nowhere else)."
    )

    # Request shape (400 above; bounds the work done before a request is queued)
    max_messages: int = Field(512, ge=1, description="Most messages in one conversation.")
    max_content_parts: int = Field(64, ge=1, description="Most content parts (text and image) in one message.")
    max_stop_sequences: int = Field(4, ge=0, description="Most stop sequences in one request (OpenAI allows 4).")
    max_stop_chars: int = Field(256, ge=1, description="Longest stop sequence, in characters.")

    # Load
    max_queue: int = Field(16, ge=1, description="Requests waiting for the model beyond which new ones get 429.")
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with a 429.")
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        allow_inf_nan=False,
        description="On SIGTERM, how long in-flight requests may finish before "
        "they are cancelled, in seconds (fractions count); 0 cancels them at once.",
    )
    request_timeout_s: float = Field(
        600.0,
        gt=0,
        allow_inf_nan=False,
        description="Wall-clock limit of one request, from its arrival to its "
        "last token (waiting in the queue included); past it the generation is cancelled and the client gets 504.",
    )
    prepare_workers: int = Field(
        2,
        ge=1,
        description="Threads that fetch and decode images, apply the chat template and tokenize. Few, so a "
        "burst of large requests leaves the CPU to the HTTP side (health checks) and the model's worker.",
    )
    max_preparing: int = Field(
        16,
        ge=1,
        description="Requests being prepared or waiting for a preparation thread beyond which new ones "
        "get 429 at once.",
    )
    stuck_after_s: float = Field(
        300.0,
        gt=0,
        allow_inf_nan=False,
        description="Readiness answers 503 (stuck) while a generation has "
        "produced no token for this long (a long prefill counts: keep it well above the slowest prompt's).",
    )
    max_consecutive_failures: int = Field(
        5,
        ge=1,
        description="Readiness answers 503 (failing) after this many failed generations in a row, until "
        "one succeeds. Client mistakes do not count.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    @model_validator(mode="after")
    def _remote_bind_needs_key(self) -> Settings:
        if not _is_loopback(self.host) and not (self.api_key and self.api_key.get_secret_value()):
            raise ValueError(
                f"api_key: binding to {self.host!r} (not loopback) requires an API key; "
                "set VLMKIT_API_KEY or api_key in the config, or bind to 127.0.0.1"
            )
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("default_max_tokens: must not exceed max_tokens_cap")
        if self.max_batch_size > 1 and self.static_cache_tokens == 0:
            raise ValueError("max_batch_size: batching needs the static decoder; set static_cache_tokens too")
        self._check_placement()
        return self

    def _check_placement(self) -> None:
        """What the configuration alone can tell; the GPUs themselves are checked when the model loads."""
        if any(index < 0 for index in self.gpus) or len(set(self.gpus)) != len(self.gpus):
            raise ValueError(f"gpus: {self.gpus} must be distinct CUDA device indices (0, 1, ...)")
        bad_sizes = [f"{gpu}: {size}" for gpu, size in self.max_memory.items() if not _is_size(size)]
        if bad_sizes:
            raise ValueError(f"max_memory: cannot read {', '.join(bad_sizes)}; write bytes or e.g. 70GiB")
        if self.max_memory and self.placement != "max_memory":
            raise ValueError(f"max_memory: only used with placement: max_memory (placement is {self.placement})")
        if self.placement == "max_memory" and not self.max_memory:
            raise ValueError("max_memory: placement: max_memory needs a cap per GPU, e.g. {0: 70GiB, 1: 70GiB}")
        outside = sorted(set(self.max_memory) - set(self.gpus)) if self.gpus else []
        if outside:
            raise ValueError(f"max_memory: GPU {outside[0]} is not one of gpus {self.gpus}")
        asked = [
            name
            for name, value in (
                ("gpus", self.gpus),
                ("placement", self.placement != "auto"),
                ("max_memory", self.max_memory),
            )
            if value
        ]
        if asked and self.device == "cpu":
            raise ValueError(
                f"{asked[0]}: spreads the model over GPUs, but device is cpu; remove it or use device: cuda"
            )
        if asked and self.backend == "unsloth":
            raise ValueError(
                f"{asked[0]}: the unsloth backend loads the model onto one GPU; "
                "use backend: transformers to spread it over several"
            )

    @property
    def served_model_name(self) -> str:
        return self.model_name or self.model_path.name

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init_settings carries the YAML file's values: the environment overrides them.
        return env_settings, init_settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_SIZE = re.compile(r"^\d+(\.\d+)?\s?[KMG]i?B$")  # a capital B: accelerate reads "70Gb" as gigabits


def _is_size(size: int | str) -> bool:
    """A size accelerate's max_memory reads: bytes, or a number with KiB/MiB/GiB (2^10...) or KB/MB/GB (10^3...)."""
    return size > 0 if isinstance(size, int) else bool(_SIZE.match(size))


def load_settings(config_file: Path | None = None) -> Settings:
    """Read the YAML file (if any), apply VLMKIT_* overrides, validate."""
    values: dict = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {config_file} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping of field: value")
        values = loaded or {}
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if not field:
            lines.append(message)
        else:
            lines.append(f"{field}: {message}")
    return "invalid configuration: " + "; ".join(lines)
