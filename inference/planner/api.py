"""The planner's Python API: `plan(...)` for a verdict, `breakdown(...)` for the numbers alone.

    from inference.planner import plan, breakdown
    result = plan("unsloth/Llama-3.2-90B-Vision-Instruct-bnb-4bit", gpus="80GB", context=8192)
    result.fits, result.estimate.total, result.to_dict()
    breakdown("/models/tiny", context=2048, batch=1)["torch_allocated"]   # compare with torch's peak

`to_dict()` is what `vlmkit plan --json` prints: the contract the Ansible preflight reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from inference.planner import memory
from inference.planner.checkpoint import Checkpoint, CheckpointError, inspect_folder
from inference.planner.estimate import COMPONENTS, Estimate, Estimator
from inference.planner.formula import formula_bytes, gpus_needed
from inference.planner.gpus import Gpu, parse_gpus
from inference.planner.hub import inspect_repo, looks_like_repo_id
from inference.planner.memory import Serving
from inference.planner.verdict import Suggestion, max_context, suggestions

SCHEMA = "vlmkit.plan/1"
DEFAULT_GPUS = "80GB"  # the usual rented server: one 80 GB GPU


def load_checkpoint(model: str | Path) -> Checkpoint:
    """A local checkpoint folder, or else a repo id read through HF_ENDPOINT (config, index, headers only)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return inspect_folder(path, str(model))
    if looks_like_repo_id(str(model)):
        return inspect_repo(str(model))
    raise CheckpointError(f"{model}: neither a checkpoint folder nor a repo id (owner/name)")


@dataclass
class Plan:
    checkpoint: Checkpoint
    estimator: Estimator
    gpus: list[Gpu]
    estimate: Estimate
    max_context: int | None
    suggestions: list[Suggestion] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.estimate.fits

    @property
    def recommendation(self) -> Suggestion | None:
        return self.suggestions[0] if self.suggestions else None

    def to_dict(self) -> dict:
        e, s, w = self.estimate, self.estimate.serving, self.estimate.weights
        dims = self.estimator.dims
        return {
            "schema": SCHEMA,
            "method": "exact",
            "model": self.checkpoint.name,
            "source": {"kind": self.checkpoint.source, "detail": self.checkpoint.detail, "weights": w.origin},
            "parameters": self.estimator.parameters,
            "settings": {
                "context": s.context,
                "batch": s.batch,
                "images": s.images,
                "image_tokens": dims.image_tokens * s.images,
                "bits": w.bits,
                "quantization": w.quantization,
                "margin_fraction": self.estimator.margin_fraction,
                "cuda_context_bytes": self.estimator.cuda_context,
            },
            "gpus": [{"index": i, "name": g.name, "memory_bytes": g.memory} for i, g in enumerate(self.gpus)],
            "components": dict(e.components),
            "weights_bytes": sum(v for k, v in e.components.items() if k.startswith("weights_")),
            "total_bytes": e.total,
            "capacity_bytes": e.capacity,
            "fits": e.fits,
            "placement": [_load_dict(load) for load in e.loads],
            "max_context": self.max_context,
            "model_max_context": dims.max_position_embeddings,
            "suggestions": [_suggestion_dict(x) for x in self.suggestions],
            "recommendation": _suggestion_dict(self.recommendation) if self.recommendation else None,
        }


def _load_dict(load) -> dict:
    return {
        "gpu": load.index,
        "name": load.gpu.name,
        "capacity_bytes": load.gpu.memory,
        "used_bytes": load.used,
        "free_bytes": load.free,
        "fits": load.fits,
        "weights_bytes": load.weights,
        "cache_bytes": load.cache,
        "activations_bytes": load.activations,
        "cuda_context_bytes": load.cuda_context,
        "margin_bytes": load.margin,
        "holds": load.holds(),
    }


def _suggestion_dict(s: Suggestion) -> dict:
    return {
        "change": s.change,
        "value": s.value,
        "total_bytes": s.estimate.total,
        "fits": s.estimate.fits,
        "description": s.description,
    }


def _gpus(gpus: str | list[Gpu] | None) -> list[Gpu]:
    if gpus is None:
        return parse_gpus(DEFAULT_GPUS)
    return parse_gpus(gpus) if isinstance(gpus, str) else list(gpus)


def _checkpoint(model: str | Path | Checkpoint) -> Checkpoint:
    return model if isinstance(model, Checkpoint) else load_checkpoint(model)


def plan(
    model: str | Path | Checkpoint,
    gpus: str | list[Gpu] | None = None,
    *,
    context: int = 8192,
    batch: int = 1,
    images: int = 1,
    bits: int | None = None,
    margin_fraction: float = memory.MARGIN_FRACTION,
    cuda_context: int = memory.CUDA_CONTEXT_BYTES,
) -> Plan:
    """Estimate, verdict, suggestions and the largest context, for `model` on `gpus` (default one 80 GB GPU)."""
    if not 0 <= margin_fraction < 1:
        raise ValueError("the margin must be at least 0% and below 100%")
    checkpoint = _checkpoint(model)
    estimator = Estimator(checkpoint, cuda_context=cuda_context, margin_fraction=margin_fraction)
    gpu_list = _gpus(gpus)
    serving = Serving(context=context, batch=batch, images=images)
    estimate = estimator.estimate(gpu_list, serving, bits)
    advice = [] if estimate.fits else suggestions(estimator, gpu_list, serving, bits)
    return Plan(checkpoint, estimator, gpu_list, estimate, max_context(estimator, gpu_list, serving, bits), advice)


def breakdown(
    model: str | Path | Checkpoint, *, context: int = 8192, batch: int = 1, images: int = 1, bits: int | None = None
) -> dict[str, int]:
    """The components for one GPU as plain numbers (bytes).

    `torch_allocated` (weights + caches + activations) is what `torch.cuda.max_memory_allocated()`
    should approach after a prefill of `context` tokens; `total` adds the CUDA context and the
    margin, which torch's allocator statistics do not see.
    """
    estimator = Estimator(_checkpoint(model))
    unlimited = [Gpu("unlimited", 1 << 62)]
    estimate = estimator.estimate(unlimited, Serving(context=context, batch=batch, images=images), bits)
    numbers = dict(estimate.components)
    numbers["weights"] = sum(v for k, v in numbers.items() if k.startswith("weights_"))
    numbers["torch_allocated"] = (
        numbers["weights"] + numbers["kv_cache"] + numbers["cross_attention_cache"] + numbers["activations"]
    )
    numbers["total"] = estimate.total
    numbers["parameters"] = estimator.parameters
    return numbers


def formula(
    model: str | Path | Checkpoint | None,
    gpus: str | list[Gpu] | None = None,
    *,
    bits: int = 16,
    parameters: float | None = None,
) -> dict:
    """The rule of thumb for the model's parameter count (or `parameters`), with the GPUs it says are needed."""
    if parameters is None:
        if model is None:
            raise ValueError("give a model or a parameter count")
        checkpoint = _checkpoint(model)
        parameters = Estimator(checkpoint).parameters
        name, source = checkpoint.name, "counted from config.json"
    else:
        name, source = (str(model) if model is not None else None), "given"
    gpu_list = _gpus(gpus)
    total = formula_bytes(parameters, bits)
    needed = gpus_needed(total, max(g.memory for g in gpu_list))
    return {
        "schema": SCHEMA,
        "method": "formula",
        "model": name,
        "parameters": int(parameters),
        "parameters_source": source,
        "settings": {"bits": bits, "overhead": 1.2},
        "gpus": [{"index": i, "name": g.name, "memory_bytes": g.memory} for i, g in enumerate(gpu_list)],
        "total_bytes": int(round(total)),
        "capacity_bytes": sum(g.memory for g in gpu_list),
        "gpus_needed": needed,
        "fits": needed <= len(gpu_list) and total <= sum(g.memory for g in gpu_list),
    }


COMPONENT_LABELS = dict(COMPONENTS)
