"""Where the model's modules go: on one GPU, or spread over several (docs/multi-gpu.md).

`resolve` turns the service's `gpus`, `placement` and `max_memory`, and the host's GPUs, into the
`device_map` (and `max_memory`) that transformers' `from_pretrained` takes; accelerate then puts
each module on its GPU and moves the activations from one GPU to the next.
`device_map_from_plan` turns the planner's per-GPU placement into a device_map of transformers 5
Mllama module paths: layer ranges per GPU, the vision encoder, projector and embeddings on the
first GPU, the final norm and lm_head on the last.

torch is imported only by the functions that ask CUDA.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from inference.backends.base import BackendUnavailable
from inference.planner import load_checkpoint, plan
from inference.planner.gpus import Gpu
from inference.planner.memory import GiB
from inference.planner.placement import GpuLoad

log = logging.getLogger(__name__)

# The planner's units (inference/planner/estimate.py) and the modules each stands for.
UNIT_MODULES = {
    "vision encoder + projector": ("model.vision_model", "model.multi_modal_projector"),
    "embeddings": ("model.language_model.embed_tokens", "model.language_model.rotary_emb"),
    "output head": ("model.language_model.norm", "lm_head"),
}
LAYER_MODULE = "model.language_model.layers.{}"

Device = int | str  # a CUDA index, or "cpu"


def device_map_from_plan(loads: Sequence[GpuLoad], devices: Sequence[Device]) -> dict[str, Device]:
    """Each planned unit's modules on `devices[i]`, the device standing for the planner's GPU i."""
    if len(loads) != len(devices):
        raise ValueError(f"the plan is for {len(loads)} GPUs, but {len(devices)} devices were given")
    device_map: dict[str, Device] = {}
    for load, device in zip(loads, devices):
        for unit in load.units:
            if unit.name.startswith("layer "):
                device_map[LAYER_MODULE.format(unit.name.split()[1])] = device
            else:
                device_map.update(dict.fromkeys(UNIT_MODULES[unit.name], device))
    return device_map


def planned_device_map(
    model_path: Path, gpus: Sequence[Gpu], devices: Sequence[Device], *, context: int = 0, bits: int | None = None
) -> dict[str, Device]:
    """The planner's placement of the checkpoint over `gpus` (context 0: the model's longest), as a device_map."""
    checkpoint = load_checkpoint(model_path)
    context = context or checkpoint.dims.max_position_embeddings
    result = plan(checkpoint, list(gpus), context=context, bits=bits)
    for load, device in zip(result.estimate.loads, devices):
        log.info(
            "planner: GPU %s gets %s (%.2f of %.2f GiB planned)",
            device,
            ", ".join(load.holds()) or "nothing",
            load.used / GiB,
            load.gpu.memory / GiB,
        )
    if not result.fits:
        log.warning(
            "the planner says %s does not fit these GPUs at a context of %d tokens (largest that fits: %s); "
            "placing it as planned anyway: lower max_context_tokens to be safe",
            model_path,
            context,
            result.max_context,
        )
    return device_map_from_plan(result.estimate.loads, devices)


def resolve(
    device: str,
    gpus: Sequence[int],
    placement: str,
    max_memory: dict[int, int | str],
    host: Sequence[Gpu],
    *,
    model_path: Path,
    context: int = 0,
    bits: int | None = None,
    free_memory: Callable[[int], int] | None = None,
) -> dict:
    """`from_pretrained`'s device_map (and max_memory) for this configuration on this host.

    `device` is "cpu" or "cuda" (already resolved); `host` the CUDA GPUs torch sees, by index;
    `free_memory(index)` the bytes free on a GPU (default: torch.cuda.mem_get_info).
    """
    asked = [
        name
        for name, value in (("gpus", gpus), ("placement", placement != "auto"), ("max_memory", max_memory))
        if value
    ]
    if device == "cpu":
        if asked:
            raise BackendUnavailable(
                f"{asked[0]}: spreads the model over GPUs, but it runs on the CPU here "
                "(torch sees no CUDA GPU); remove it, or run on a host with GPUs"
            )
        return {"device_map": "cpu"}
    field, chosen = (
        ("gpus", list(gpus))
        if gpus
        else (("max_memory", sorted(max_memory)) if placement == "max_memory" else ("gpus", list(range(len(host)))))
    )
    missing = [index for index in chosen if index >= len(host)]
    if missing:
        seen = f"GPUs 0-{len(host) - 1}" if len(host) > 1 else "GPU 0" if host else "no GPU"
        raise BackendUnavailable(
            f"{field}: GPU {missing[0]} does not exist: torch sees {seen} on this host "
            "(numbered after CUDA_VISIBLE_DEVICES)"
        )
    if placement == "max_memory":
        return {"device_map": "balanced", "max_memory": {index: max_memory[index] for index in chosen}}
    if len(chosen) == 1:
        return {"device_map": "cuda" if chosen == [0] else f"cuda:{chosen[0]}"}
    if placement == "planner":
        return {
            "device_map": planned_device_map(model_path, [host[i] for i in chosen], chosen, context=context, bits=bits)
        }
    free_memory = free_memory or cuda_free_memory
    return {"device_map": "balanced", "max_memory": {index: free_memory(index) for index in chosen}}


def cuda_gpus() -> list[Gpu]:
    """The CUDA GPUs torch sees, by index: name and total memory (creates no CUDA context)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        Gpu(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory)
        for i in range(torch.cuda.device_count())
    ]


def cuda_free_memory(index: int) -> int:
    import torch

    return torch.cuda.mem_get_info(index)[0]


def describe(device_map: dict[str, Device]) -> str:
    """'0: model.vision_model, ..., layers 0-31; 1: layers 32-66, ...' for the log."""
    by_device: dict[str, list[str]] = {}
    prefix = LAYER_MODULE.format("")
    for module, device in device_map.items():
        by_device.setdefault(str(device), []).append(module)
    parts = []
    for device, modules in by_device.items():
        layers = sorted(int(m[len(prefix) :]) for m in modules if m.startswith(prefix) and m[len(prefix) :].isdigit())
        named = [m for m in modules if not m.startswith(prefix)]
        span = [f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"] if layers else []
        parts.append(f"{device}: {', '.join(named + span)}")
    return "; ".join(parts)
