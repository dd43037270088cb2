"""Llama 3.2 Vision through unsloth's FastVisionModel, as the reference manual deployment loaded it. CUDA only."""

from __future__ import annotations

import importlib
import logging
import os

import torch

from inference.backends.base import BackendUnavailable
from inference.backends.transformers_backend import TransformersBackend

log = logging.getLogger(__name__)


class UnslothBackend(TransformersBackend):
    name = "unsloth"

    def _load(self):
        if self.device != "cuda" or not torch.cuda.is_available():
            raise BackendUnavailable(
                "backend: unsloth needs a CUDA GPU (unsloth refuses vision models on the CPU); "
                "use backend: transformers on this host"
            )
        # unsloth forces a static cache in generate, which Mllama does not support.
        os.environ.setdefault("UNSLOTH_DISABLE_STATIC_GENERATION", "1")
        try:
            unsloth = importlib.import_module("unsloth")
        except ImportError as exc:
            raise BackendUnavailable(
                f"backend: unsloth is selected but the unsloth package cannot be imported ({exc}); "
                "install vlmkit[unsloth] or use backend: transformers"
            ) from exc
        model, processor = unsloth.FastVisionModel.from_pretrained(
            str(self.model_path),
            load_in_4bit=self.load_in_4bit,
            dtype=self.dtype,
            use_gradient_checkpointing="unsloth",
        )
        unsloth.FastVisionModel.for_inference(model)
        log.info("loaded %s with unsloth %s", self.model_path, getattr(unsloth, "__version__", "?"))
        return model, processor
