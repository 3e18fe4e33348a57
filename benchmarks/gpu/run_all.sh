#!/usr/bin/env bash
# One GPU session for every device figure the issues ask for (run from the repo root on the lent machine):
#   train speed (issue 3), evaluation speed (issue 4), closed-form edit timing + TinyShapes training (issue 5).
# The machine has torch/transformers/accelerate but not diffusers: wheels travel in .whl/ (see .library docs).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
run() {  # name, timeout, command...
  local name=$1 t=$2; shift 2
  echo "=== $name"; timeout "$t" "$@" 2>&1 | tee "$OUT/$name.log" | tail -40
}
[ -f benchmarks/speed/train_speed.py ] && run train_speed_lm 150 python3 benchmarks/speed/train_speed.py --shape lm --out "$OUT/train_speed_lm.json"
[ -f benchmarks/speed/train_speed.py ] && run train_speed_tofu 120 python3 benchmarks/speed/train_speed.py --shape tofu --out "$OUT/train_speed_tofu.json"
[ -f benchmarks/speed/eval_speed.py ] && run eval_speed 180 python3 benchmarks/speed/eval_speed.py --json "$OUT/eval_speed.json"
[ -f benchmarks/gpu/diffusion_gpu.sh ] && run diffusion_gpu 150 bash benchmarks/gpu/diffusion_gpu.sh
echo done
