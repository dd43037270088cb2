"""Group a checkpoint's tensor bytes by the parts of the model that hold them.

Parts: the vision encoder, the projector, the token embeddings, each decoder layer (self- or
cross-attention), and the output head (final norm + lm_head). Placement moves these parts
between GPUs as units, the way accelerate's device_map does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from inference.planner.mllama import MllamaDims
from inference.planner.tensors import Tensor

_LAYER = re.compile(r"^language_model\.model\.layers\.(\d+)\.")


@dataclass
class WeightGroups:
    vision: int = 0
    projector: int = 0
    embeddings: int = 0
    head: int = 0
    layers: dict[int, int] = field(default_factory=dict)
    other: int = 0  # tensors the planner does not recognise, or an index total it could not attribute

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.embeddings + self.head + sum(self.layers.values()) + self.other

    def layer_total(self, dims: MllamaDims, cross: bool) -> int:
        return sum(size for i, size in self.layers.items() if dims.is_cross_layer(i) == cross)

    @property
    def largest_layer(self) -> int:
        return max(self.layers.values(), default=0)


def group(tensors: list[Tensor]) -> WeightGroups:
    groups = WeightGroups()
    for t in tensors:
        name = t.name
        layer = _LAYER.match(name)
        if layer:
            index = int(layer.group(1))
            groups.layers[index] = groups.layers.get(index, 0) + t.nbytes
        elif name.startswith("vision_model."):
            groups.vision += t.nbytes
        elif name.startswith("multi_modal_projector."):
            groups.projector += t.nbytes
        elif "embed_tokens" in name:
            groups.embeddings += t.nbytes
        elif "lm_head" in name or name.startswith("language_model.model.norm."):
            groups.head += t.nbytes
        else:
            groups.other += t.nbytes
    return groups
