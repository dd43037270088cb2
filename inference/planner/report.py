"""The plan as text for a person (tables in GiB); `--json` prints `Plan.to_dict()` instead."""

from __future__ import annotations

from inference.planner.api import COMPONENT_LABELS, Plan
from inference.planner.memory import GiB


def gib(n: float) -> str:
    return f"{n / GiB:,.2f}"


def render_plan(plan: Plan) -> str:
    d = plan.to_dict()
    s = d["settings"]
    images = f"{s['images']} image{'s' if s['images'] != 1 else ''} ({s['image_tokens']:,} image tokens)"
    lines = [
        f"memory plan for {d['model']}",
        f"  weights   {s['quantization']}: {d['source']['weights']}",
        f"  source    {d['source']['detail']}",
        f"  serving   context {s['context']:,} tokens × batch {s['batch']}, {images}",
        f"  GPUs      {_gpu_summary(plan)}",
        "",
        f"  {'component':<48}{'GiB':>10}",
    ]
    for key, value in d["components"].items():
        if key == "weights_other" and value == 0:
            continue
        label = COMPONENT_LABELS[key]
        if key == "margin":
            label += f" ({s['margin_fraction']:.0%} of the allocations)"
        if key == "cuda_context":
            label += f" ({gib(s['cuda_context_bytes'])} GiB per GPU used)"
        lines.append(f"  {label:<48}{gib(value):>10}")
    lines.append(f"  {'-' * 58}")
    lines.append(f"  {'total':<48}{gib(d['total_bytes']):>10}")
    if len(plan.gpus) > 1:
        lines += ["", *_placement(plan)]
    lines += ["", *_verdict(plan)]
    return "\n".join(lines)


def _gpu_summary(plan: Plan) -> str:
    names: dict[str, int] = {}
    for g in plan.gpus:
        names[g.label] = names.get(g.label, 0) + 1
    return ", ".join(f"{count} × {label}" for label, count in names.items())


def _placement(plan: Plan) -> list[str]:
    header = f"  {'GPU':<4}{'capacity':>9}{'weights':>9}{'caches':>9}{'activ.':>9}{'context':>9}{'margin':>9}{'used':>9}{'free':>9}  holds"
    lines = ["  placement (GiB)", header]
    for load in plan.estimate.loads:
        cells = (
            load.gpu.memory,
            load.weights,
            load.cache,
            load.activations,
            load.cuda_context,
            load.margin,
            load.used,
            load.free,
        )
        holds = ", ".join(load.holds()) or "(nothing)"
        lines.append(f"  {load.index:<4}" + "".join(f"{gib(c):>9}" for c in cells) + f"  {holds}")
    return lines


def _verdict(plan: Plan) -> list[str]:
    e = plan.estimate
    lines = []
    if e.fits:
        lines.append(
            f"  FITS: {gib(e.total)} GiB needed, {gib(e.capacity)} GiB available ({gib(e.capacity - e.total)} GiB free)"
        )
    else:
        over = [f"GPU {load.index} over by {gib(-load.free)} GiB" for load in e.loads if not load.fits]
        lines.append(f"  DOES NOT FIT: {gib(e.total)} GiB needed, {gib(e.capacity)} GiB available ({'; '.join(over)})")
        if plan.suggestions:
            lines.append("  what would fit:")
            for i, s in enumerate(plan.suggestions):
                mark = "   <- smallest change" if i == 0 else ""
                lines.append(f"    - {s.description}: {gib(s.estimate.total)} GiB{mark}")
        else:
            lines.append("  nothing tried fits: fewer bits, up to 8 GPUs, a shorter context or a smaller batch")
    batch = e.serving.batch
    if plan.max_context is None:
        lines.append(f"  largest context that fits: none at batch {batch} (the rest does not fit even with 1 token)")
    else:
        limit = plan.estimator.dims.max_position_embeddings
        note = " (the model's limit)" if plan.max_context == limit else ""
        lines.append(f"  largest context that fits: {plan.max_context:,} tokens at batch {batch}{note}")
    return lines


def render_formula(result: dict) -> str:
    gpus = result["gpus"]
    gpu = max(gpus, key=lambda g: g["memory_bytes"])
    verdict = "FITS" if result["fits"] else "DOES NOT FIT"
    return "\n".join(
        [
            f"rule of thumb for {result['model'] or 'the given parameter count'}: M = (P × 4 bytes) / (32 / Q) × 1.2",
            f"  P = {result['parameters'] / 1e9:,.2f} B parameters ({result['parameters_source']}), Q = {result['settings']['bits']} bits",
            f"  M = {result['total_bytes'] / 1e9:,.1f} GB ({gib(result['total_bytes'])} GiB)",
            f"  {verdict}: needs {result['gpus_needed']} × {gpu['name']}; planned for {len(gpus)}",
        ]
    )
