"""Model backends behind one declared interface (base.Backend)."""

from __future__ import annotations

from inference.backends.base import (
    Backend,
    BackendUnavailable,
    Decoding,
    DeviceFailure,
    GenerationResult,
    GpuMemory,
    PreparedPrompt,
    PromptError,
    PromptWork,
    SamplingError,
    SamplingParams,
)
from inference.settings import Settings

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Decoding",
    "DeviceFailure",
    "GenerationResult",
    "GpuMemory",
    "PromptWork",
    "PreparedPrompt",
    "PromptError",
    "SamplingError",
    "SamplingParams",
    "load_backend",
]


def load_backend(settings: Settings) -> Backend:
    """Load the configured model; imports torch and the backend's libraries only now."""
    if settings.backend == "unsloth":
        from inference.backends.unsloth_backend import UnslothBackend as backend_class
    else:
        from inference.backends.transformers_backend import TransformersBackend as backend_class
    return backend_class(
        settings.model_path,
        device=settings.device,
        dtype=settings.dtype,
        load_in_4bit=settings.load_in_4bit,
        nf4_kernel=settings.nf4_kernel,
        nf4_tensor_cores=settings.nf4_tensor_cores,
        fuse_projections=settings.fuse_projections,
        max_context_tokens=settings.max_context_tokens,
        static_cache_tokens=settings.static_cache_tokens,
        max_batch_size=settings.max_batch_size,
        overlap_image_encoding=settings.overlap_image_encoding,
        image_cache_size=settings.image_cache_size,
        gpus=settings.gpus,
        placement=settings.placement,
        max_memory=settings.max_memory,
    )
