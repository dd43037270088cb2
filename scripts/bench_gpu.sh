#!/usr/bin/env bash
# Serve a real-shape random-weight checkpoint on this CUDA machine and measure it through HTTP with
# `vlmkit bench`: for each weight format, plain generate against the static-cache decoder.
# Usage: bash scripts/bench_gpu.sh [shape] [requests-per-level]    (results in ${OUT:-.}/bench-*.json)
# ENGINES picks what to compare (default "generate static"): generate = transformers' generate,
# static = the static-cache decoder one request at a time, batch8 = the same with 8 requests batched.
# FORMATS (default "bf16 nf4") picks the weight formats, NF4_KERNEL (auto, bitsandbytes, triton) the 4-bit kernel,
# FUSE (auto, true, false) whether the static decoder stacks Q/K/V and gate/up, OVERLAP (true, false) overlap_image_encoding, TENSOR_CORES (true, false) nf4_tensor_cores, CONCURRENCY (default 1,8) the client counts, WARMUP (default 2) the warm-up requests, BUILD_ARGS (default --dtype bfloat16) how the checkpoint is built,
# IMAGE_CACHE (default 0) image_cache_size: the bench sends its 4 images again and again, so the figures are for new
# images only with none kept; IMAGE_CACHE=8 WARMUP=4 measures follow-up questions (every image already seen):
#   FORMATS=nf4 ENGINES=static BUILD_ARGS="--quantize nf4 --device cuda" bash scripts/bench_gpu.sh 90b 4
set -u -o pipefail
shape=${1:-11b}
requests=${2:-6}
out=${OUT:-.}
work=${WORK:-/tmp/vlmkit-bench}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLMKIT_API_KEY=bench-key
mkdir -p "$work"
[ -f "$work/$shape/config.json" ] || python3 -m inference.checkpoint_builder --shape "$shape" --output "$work/$shape" ${BUILD_ARGS:---dtype bfloat16} >/dev/null
for format in ${FORMATS:-bf16 nf4}; do
  for engine in ${ENGINES:-generate static}; do
    case $engine in generate) cache=0 batch=1 ;; static) cache=4096 batch=1 ;; batch8) cache=2048 batch=8 ;; esac
    name="$shape-$format-$engine"; [ "$format" = nf4 ] && name="$shape-$format-${NF4_KERNEL:-auto}-$engine"
    [ -n "${FUSE:-}" ] && name="$name-fuse-$FUSE"
    [ -n "${OVERLAP:-}" ] && name="$name-overlap-$OVERLAP"
    [ -n "${TENSOR_CORES:-}" ] && name="$name-tc-$TENSOR_CORES"
    [ -n "${IMAGE_CACHE:-}" ] && name="$name-images-$IMAGE_CACHE"
    cat > "$work/$name.yaml" <<YAML
model_path: $work/$shape
model_name: $shape
fuse_projections: ${FUSE:-auto}
overlap_image_encoding: ${OVERLAP:-false}
nf4_tensor_cores: ${TENSOR_CORES:-true}
image_cache_size: ${IMAGE_CACHE:-0}
device: cuda
dtype: bfloat16
load_in_4bit: $([ "$format" = nf4 ] && echo true || echo false)
nf4_kernel: ${NF4_KERNEL:-auto}
static_cache_tokens: $cache
max_batch_size: $batch
max_queue: 64
max_tokens_cap: 1024
default_max_tokens: 128
port: 8123
YAML
    python3 -m inference.cli serve --config "$work/$name.yaml" > "$work/$name.log" 2>&1 &
    server=$!
    for _ in $(seq 600); do kill -0 "$server" 2>/dev/null || { tail -5 "$work/$name.log"; break; }; python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8123/health/ready", timeout=5)' 2>/dev/null && break; sleep 0.5; done
    python3 -m inference.cli bench --url http://127.0.0.1:8123/v1 --fixed-output --max-tokens 128 \
      --concurrency "${CONCURRENCY:-1,8}" --requests "$requests" --warmup "${WARMUP:-2}" --temperature 0 --json "$out/bench-$name.json" \
      2>&1 | tail -4 | sed "s/^/$name  /"
    python3 -c 'import os, urllib.request; print(urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:8123/health/ready", headers={"Authorization": "Bearer " + os.environ["VLMKIT_API_KEY"]}), timeout=5).read().decode())' > "$out/ready-$name.json" 2>/dev/null
    kill -TERM "$server"; wait "$server"
  done
done
