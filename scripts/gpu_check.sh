#!/usr/bin/env bash
# Runs the service's GPU checks on a CUDA machine (the `device` machine has no internet: the
# wheels it lacks travel in .whl/, see docs/lab/gpu-results.md). Writes logs to ${OUT:-.}/.
set -u -o pipefail
out=${OUT:-.}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
  python3 -c 'import bitsandbytes, unsloth; print("bitsandbytes", bitsandbytes.__version__, "unsloth", unsloth.__version__)' 2>&1 | tail -1
} | tee "$out/versions.txt"
python3 -m pytest tests/service/test_gpu_backends.py -m gpu -v -p no:cacheprovider 2>&1 | tee "$out/gpu-backends.log" | tail -25
for backend in transformers-bf16 transformers-4bit unsloth-4bit; do
  VLMKIT_TEST_BACKEND=$backend timeout 400 python3 -m pytest tests/service -q -x -p no:cacheprovider \
    --deselect tests/service/test_gpu_backends.py 2>&1 | tee "$out/suite-$backend.log" | tail -4
done
