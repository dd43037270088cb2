"""Random-weight Llama 3.2 Vision checkpoints of the published shapes, built offline and
deterministically, for tests and GPU measurements: `python -m inference.checkpoint_builder --help`.

    shapes           the 11B, 90B and tiny architectures, and where their token ids sit
    config_files     config.json and the other JSON files; the chat template (chat_template.jinja)
    tokenizer        the byte-level BPE tokenizer with Llama 3.2's special tokens
    plan             every tensor's name, shape, fill and storage, before anything is allocated
    nf4              bitsandbytes 4-bit as transformers saves it
    safetensors_file the safetensors format: entries, header, shard names
    weights          the random weights, streamed into safetensors files
    build            the whole folder
    cli              the command line
"""

from inference.checkpoint_builder.build import InsufficientSpaceError, build_checkpoint
from inference.checkpoint_builder.plan import CheckpointPlan, plan_checkpoint

__all__ = ["CheckpointPlan", "InsufficientSpaceError", "build_checkpoint", "plan_checkpoint"]
