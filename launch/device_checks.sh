#!/usr/bin/env bash
# The GPU figures of issues 10 and 11, as one script for one lent accelerator (docs/training.md
# "Profiling a step", docs/evaluation.md "Inference speed"): medq-profile of `base` in bf16 on
# packed synthetic rows (no data stack there), bench_inference of `base` in bf16, and the routing
# overhead of `base`. Each part has its own time limit, so one failure leaves the others' figures.
#
#   SIZE=base bash launch/device_checks.sh          # on the GPU machine, from the repo root
#   SIZE=tiny bash launch/device_checks.sh          # the same commands on a CPU, to check them
#
# Missing pure-Python packages travel as wheels in .whl/ (ml-collections on the GPU image).
set -u
SIZE=${SIZE:-base}
OUT=${OUT:-/tmp/device_checks}
PEAK=${PEAK_TFLOPS:-989}  # H100/H200 SXM dense bf16, datasheet
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
PY=${PY:-python3}
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) | tee "$OUT/machine.txt"
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/machine.txt"
timeout "${PROFILE_S:-270}" $PY -m launch.profile \
  --config="configs/medq_uni.py:size=$SIZE,stage=2" --config.train.precision=bf16 \
  --config.train.peak_tflops_per_device="$PEAK" --batches=synthetic --steps=10 --warmup=2 \
  --notrace --workdir=/tmp/device_checks_profile 2>&1 | tee "$OUT/profile_${SIZE}_bf16.txt"
timeout "${INFER_S:-180}" $PY -m launch.bench_inference --size="$SIZE" --dtype=bfloat16 \
  --repeats=2 2>&1 | tee "$OUT/bench_inference_${SIZE}_bf16.txt"
timeout "${ROUTING_S:-75}" $PY -m launch.bench_routing --config="configs/medq_uni.py:size=$SIZE" \
  --config.model.dtype=bfloat16 --batch=8 --und_len=768 --gen_len=512 --iters=10 2>&1 \
  | tee "$OUT/bench_routing_${SIZE}_bf16.txt"
