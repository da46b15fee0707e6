#!/usr/bin/env bash
# One prepared GPU check (< 5 minutes on one H100/H200-class GPU):
# CHIP's perturbation sweep at full size (224 px, 2048 masks per image, 8 images per call) in float32 and
# bfloat16 on ResNet-50 layer3 / layer4 and VGG-16 features.29 (its last conv's ReLU), against the plain
# batched tail forward, printing images/s and achieved TFLOP/s against the card's measured matmul peak.
# The table is also appended to benchmarks/RESULTS.md (section "perturb_throughput gpu.sh"); then the class-level
# fit's throughput (benchmarks/class_fit.py, section "class_fit gpu.sh").
#
#   bash benchmarks/gpu.sh            # on the GPU machine (needs jax with CUDA)
#   bash benchmarks/gpu.sh --quick    # tiny sizes; runs on CPU to test this script's path
#
# Environment: PYTHON (default: .venv/bin/python if present, else python), GPU_BENCH_TIMEOUT (seconds, 280).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  py=.venv/bin/python
else
  py=python
fi
budget="${GPU_BENCH_TIMEOUT:-280}"
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

echo "== machine"
(nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || echo "no nvidia-smi") | sed 's/^/   /'
"$py" - <<'EOF'
import jax
print("   jax", jax.__version__, "backend", jax.default_backend(), jax.devices())
EOF
backend=$("$py" -c 'import jax; print(jax.default_backend())')
if [[ "$backend" == "cpu" && "$quick" == 0 ]]; then
  echo "no accelerator visible to jax; run with --quick to test the script on CPU" >&2
  exit 2
fi

if [[ "$quick" == 1 ]]; then
  # the same code path at toy sizes (one case, a few masks) so that CI / a CPU session can exercise it
  args=(--cases resnet50:layer4 --batch 1 --masks 64 --chunk 32 --reps 1 --matmul-size 512
        --dtype both --tflops --skip-in-jit --label "gpu.sh --quick" --no-write)
else
  # 8 images × 2048 masks = 16384 tail evaluations per call; chunk 32 masks × 8 images = 256 per step
  # budget: ~6 (case, dtype) pairs × (compile ≈ 20 s + 4 × 3 timed sweeps) ≈ 3–4 min; --skip-in-jit saves a compile each
  args=(--cases resnet50:layer3,resnet50:layer4,vgg16:features.29 --batch 8 --masks 2048 --chunk 32 --reps 3
        --matmul-size 8192 --dtype both --tflops --skip-in-jit --label "gpu.sh")
fi

echo "== perturb_throughput ${args[*]}"
# XLA_PYTHON_CLIENT_PREALLOCATE=false: report only what the sweep needs; the timeout keeps the whole check bounded.
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$budget" "$py" -m benchmarks.perturb_throughput "${args[@]}"

# class-level fit throughput (ClassStatsAccumulator.add vs the plain batched tail) at ResNet-50 layer4 / layer3,
# float32 and bfloat16, and its cost per 10^6 perturbed networks (section "class_fit gpu.sh" of RESULTS.md)
if [[ "$quick" == 1 ]]; then
  fit_args=(--quick --skip-loader --cases resnet50:layer4 --dtype both --no-write --label "class_fit gpu.sh --quick")
else
  fit_args=(--skip-loader --cases resnet50:layer4,resnet50:layer3 --dtype both --masks 2048 --batch 8 --chunk 256
            --reps 3 --label "class_fit gpu.sh")
fi
echo "== class_fit ${fit_args[*]}"
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$budget" "$py" -m benchmarks.class_fit "${fit_args[@]}"
echo "== done"
