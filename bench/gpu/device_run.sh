#!/usr/bin/env bash
# GPU benchmark of onnxplain, one command, from the repository root:
#
#     OUT=/some/dir bash bench/gpu/device_run.sh
#
# 1. installs onnxruntime-gpu (wheel parts in $ORTGPU: part-* and WHEEL_NAME), the pure-Python wheels in
#    .whl/ (zennit, captum, efficientnet-lite-pytorch, tqdm, click) and onnxplain itself into $SITE;
# 2. sanity checks (bench/gpu/sanity.py): CUDA provider present, compiled methods on CUDA vs ORT CPU vs
#    PyTorch float64, IO binding with torch CUDA tensors, node placement, float16 vs float32;
# 3. the benchmark harness (bench/run_all.py --device cuda) within what is left of $TOTAL_S: batch 64
#    first (then 8, 1), VGG16, ResNet-50, EfficientNet-Lite0, MobileNetV2, ORT forward + 8 methods
#    (+ float16 for 3), Zennit and Captum on the same GPU; results written after every job;
# 4. copies JSON, Markdown, PNG and the log into $OUT (<= 8 files).
# Optional, between 2 and 3: PROFILE=1 runs bench/gpu/profile_cuda.py (ResNet-50 batch 64: where the GPU time
# of gradient and lrp.epsilon_plus_flat goes, ORT node profile + CUPTI kernels, cuDNN/NHWC/CUDA-graph variants;
# ~90 s of jobs plus the export; writes profile_cuda.{json,md}); PROFILE=only runs it and skips the harness.
#
# Variables: OUT (required), TOTAL_S (wall-clock budget of this script, default 300; it may overrun by ~40 s), DEVICE (cuda; "cpu"
# for a dry run without a GPU), PY (python3), SITE (/tmp/site), ORTGPU (/tmp/ortgpu; absent: keep the
# installed onnxruntime), BENCH_ARGS (extra run_all.py arguments, e.g. "--models resnet50 --batches 8"),
# PROFILE (unset/0, 1 or only), PROFILE_ARGS (extra profile_cuda.py arguments, e.g. "--budget-s 60"),
# PROFILE_S (its timeout, default 240).
set -u
: "${OUT:?set OUT to an output folder}"
TOTAL_S=${TOTAL_S:-300}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
ORTGPU=${ORTGPU:-/tmp/ortgpu}
BENCH_ARGS=${BENCH_ARGS:-}
PROFILE=${PROFILE:-0}
PROFILE_ARGS=${PROFILE_ARGS:-}
PROFILE_S=${PROFILE_S:-240}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/device_run.log"
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
echo "== $(date -u +%FT%TZ) device_run.sh: DEVICE=$DEVICE TOTAL_S=$TOTAL_S PY=$PY SITE=$SITE"

# ---- 1. install ----------------------------------------------------------------------------------
mkdir -p "$SITE"
if [ -f "$ORTGPU/WHEEL_NAME" ]; then
  W=/tmp/$(cat "$ORTGPU/WHEEL_NAME")
  cat "$ORTGPU"/part-* > "$W" && $PY -m pip install -q --no-index --no-deps --target "$SITE" "$W" \
    || echo "!! onnxruntime wheel install failed"
else
  echo "-- no $ORTGPU/WHEEL_NAME: keeping the installed onnxruntime"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || echo "!! .whl install failed"
else
  echo "!! no .whl/ folder: Zennit/Captum/EfficientNet-Lite peers will be missing"
fi
if ! $PY -m pip install -q --no-deps --no-build-isolation --target "$SITE" . ; then
  echo "-- pip install . failed (no setuptools?): linking the package folders instead"
  mkdir -p "$SITE/onnxplain"
  for f in onnxplain/*; do ln -sfn "$PWD/$f" "$SITE/onnxplain/"; done
  for d in compiler rules runtime; do ln -sfn "$PWD/$d" "$SITE/onnxplain/$d"; done
fi
(cd /tmp && $PY -) <<'EOF'
import importlib, sys
for m in ("onnxruntime", "onnx", "numpy", "torch", "torchvision", "zennit", "captum", "efficientnet_lite_pytorch",
          "matplotlib", "pynvml", "onnxplain"):
    try:
        mod = importlib.import_module(m)
        print(f"   {m} {getattr(mod, '__version__', '?')} ({getattr(mod, '__file__', '?')})")
    except Exception as exc:
        print(f"   {m}: NOT importable ({exc})")
import onnxruntime as ort
print("   providers:", ort.get_available_providers())
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
echo "== install done at $(elapsed) s"

# ---- 2. sanity --------------------------------------------------------------------------------------
timeout 120 $PY bench/gpu/sanity.py --device "$DEVICE" --out "$OUT" || echo "!! sanity checks failed or timed out (see above)"
echo "== sanity done at $(elapsed) s"

# ---- 2b. optional CUDA profile (PROFILE=1 or only) ---------------------------------------------------
if [ "$PROFILE" != "0" ]; then
  timeout "$PROFILE_S" $PY bench/gpu/profile_cuda.py --device "$DEVICE" --out "$OUT" $PROFILE_ARGS \
    || echo "!! profile_cuda.py failed or timed out (partial profile_cuda.json/.md kept)"
  echo "== profile done at $(elapsed) s"
fi
if [ "$PROFILE" = "only" ]; then
  ls -la "$OUT"
  echo "== $(date -u +%FT%TZ) device_run.sh finished (PROFILE=only) in $(elapsed) s"
  exit 0
fi

# ---- 3. benchmark harness ---------------------------------------------------------------------------
LEFT=$(( TOTAL_S - $(elapsed) - 25 ))
if [ "$LEFT" -lt 30 ]; then LEFT=30; fi
echo "== harness budget $LEFT s"
PREC=float32,float16
timeout $(( LEFT + 40 )) $PY bench/run_all.py --device "$DEVICE" --budget-s "$LEFT" --precisions "$PREC" \
  --models resnet50,vgg16,efficientnet_lite0,mobilenet_v2 --out-dir "$OUT" --tag "" $BENCH_ARGS || echo "!! run_all.py exited with an error (partial results kept)"
echo "== harness done at $(elapsed) s"

# ---- 4. results ---------------------------------------------------------------------------------------
ls -la "$OUT"
echo "== $(date -u +%FT%TZ) device_run.sh finished in $(elapsed) s"
