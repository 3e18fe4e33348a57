#!/usr/bin/env bash
# Time the UCE / RECE closed-form edit on a random-init SD 1.4-shaped UNet (32 attn2 K/V matrices) on a GPU.
# Run from the repo root on the device machine. Needs torch (any CUDA build) and diffusers: the lead carries
# diffusers wheels in .whl/. Writes $OUT/uce_edit_gpu.json (and the CPU-shaped Linear-only variant for comparison).
# Expected wall time: < 2 minutes (UNet init on the GPU ~10 s, timings ~seconds).
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ! python -c "import diffusers" 2>/dev/null; then
  pip install --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=${PYTHONPATH:-}:.
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 200 python benchmarks/speed/uce_edit.py --device cuda --full-unet --repeats 5 | tee "$OUT/uce_edit_gpu.json"
timeout 100 python benchmarks/speed/uce_edit.py --device cuda --repeats 5 | tee "$OUT/uce_edit_gpu_linear_only.json"
