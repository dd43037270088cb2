"""GPU memory planner for Llama 3.2 Vision (Mllama): will a checkpoint fit, and if not, what would.

The `vlmkit plan` command (configure/run) and the Python API (plan, breakdown, formula).
Modules, one job each:
  tensors       safetensors headers and tensor names
  mllama        dimensions and tensor list from config.json
  quantization  how bitsandbytes stores 4-bit and 8-bit weights
  checkpoint    what a local folder holds (headers, index or config);  hub: the same through HF_ENDPOINT
  weights       tensor bytes grouped by module
  memory        caches, activations, CUDA context, margin
  gpus          GPU sizes and nvidia-smi
  placement     the model spread over GPUs
  estimate      all of it for one setting;  verdict: fits, suggestions, largest context
  formula       the common rule of thumb
  api, report, cli
"""

from inference.planner.api import breakdown, formula, load_checkpoint, plan
from inference.planner.cli import configure, run

__all__ = ["breakdown", "configure", "formula", "load_checkpoint", "plan", "run"]
