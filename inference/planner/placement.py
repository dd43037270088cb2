"""Spread the model over one or more GPUs, in model order, the way accelerate's device_map does.

Units go in order: vision encoder + projector, token embeddings, decoder layers 0..N-1 (each
with its cache), output head. Each GPU that holds units also pays the CUDA context, the
activation peak of the layers it runs (the first GPU runs the vision encoder too), and the
margin. The split aims at equal shares of each GPU's room; if that overflows a GPU it packs each
GPU full in turn; if that overflows too, the plan does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.planner.gpus import Gpu


@dataclass(frozen=True)
class Unit:
    name: str
    weights: int
    cache: int = 0
    runs_layers: bool = False

    @property
    def size(self) -> int:
        return self.weights + self.cache


@dataclass
class GpuLoad:
    index: int
    gpu: Gpu
    units: list[Unit] = field(default_factory=list)
    activations: int = 0
    cuda_context: int = 0
    margin: int = 0

    @property
    def weights(self) -> int:
        return sum(u.weights for u in self.units)

    @property
    def cache(self) -> int:
        return sum(u.cache for u in self.units)

    @property
    def used(self) -> int:
        return self.weights + self.cache + self.activations + self.cuda_context + self.margin

    @property
    def free(self) -> int:
        return self.gpu.memory - self.used

    @property
    def fits(self) -> bool:
        return self.used <= self.gpu.memory

    def holds(self) -> list[str]:
        """Unit names, with runs of decoder layers written as ranges."""
        out: list[str] = []
        run: list[int] = []
        for unit in self.units:
            if unit.name.startswith("layer "):
                run.append(int(unit.name.split()[1]))
                continue
            _flush(run, out)
            out.append(unit.name)
        _flush(run, out)
        return out


def _flush(run: list[int], out: list[str]) -> None:
    if run:
        out.append(f"layer {run[0]}" if len(run) == 1 else f"layers {run[0]}-{run[-1]}")
        run.clear()


@dataclass(frozen=True)
class Overheads:
    cuda_context: int
    text_activations: int
    vision_activations: int
    margin_fraction: float


def place(units: list[Unit], gpus: list[Gpu], overheads: Overheads) -> list[GpuLoad]:
    balanced = _assign(units, gpus, overheads, _balanced_split(units, gpus, overheads))
    if all(load.fits for load in balanced):
        return balanced
    packed = _assign(units, gpus, overheads, _packed_split(units, gpus, overheads))
    return packed if all(load.fits for load in packed) else balanced


def _room(index: int, gpu: Gpu, o: Overheads) -> float:
    """Bytes of units a GPU can take once context, activations and margin are paid."""
    activations = max(o.text_activations, o.vision_activations) if index == 0 else o.text_activations
    return (gpu.memory - o.cuda_context) / (1 + o.margin_fraction) - activations


def _balanced_split(units: list[Unit], gpus: list[Gpu], o: Overheads) -> list[int]:
    rooms = [max(_room(i, g, o), 1.0) for i, g in enumerate(gpus)]
    total = sum(u.size for u in units)
    bounds, acc = [], 0.0
    for room in rooms:
        acc += total * room / sum(rooms)
        bounds.append(acc)
    owners, before = [], 0
    for unit in units:
        middle = before + unit.size / 2
        owners.append(next((i for i, bound in enumerate(bounds) if middle <= bound), len(gpus) - 1))
        before += unit.size
    return owners


def _packed_split(units: list[Unit], gpus: list[Gpu], o: Overheads) -> list[int]:
    owners, gpu, filled = [], 0, 0
    for unit in units:
        while gpu < len(gpus) - 1 and filled > 0 and filled + unit.size > _room(gpu, gpus[gpu], o):
            gpu, filled = gpu + 1, 0
        owners.append(gpu)
        filled += unit.size
    return owners


def _assign(units: list[Unit], gpus: list[Gpu], o: Overheads, owners: list[int]) -> list[GpuLoad]:
    loads = [GpuLoad(i, g) for i, g in enumerate(gpus)]
    for unit, owner in zip(units, owners):
        loads[owner].units.append(unit)
    for load in loads:
        if not load.units:
            continue
        text = o.text_activations if any(u.runs_layers for u in load.units) else 0
        load.activations = max(text, o.vision_activations) if load.index == 0 else text
        load.cuda_context = o.cuda_context
        load.margin = int((load.weights + load.cache + load.activations) * o.margin_fraction)
    return loads
