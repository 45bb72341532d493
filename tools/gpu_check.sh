#!/usr/bin/env bash
# The GPU check: on a GPU host, through ../shared/gpu/run.sh:
#     bash .gpu/b/run.sh -- bash tools/gpu_check.sh
# runs recipes/resnet50_gpu.yaml cold with -j <cores> (GPU_CHECK_JOBS), then the gpu-marked tests, then prints a
# compact summary (per-step status and time, verify errors, the benchmark with device and
# provider, TVM tuned vs untuned). Logs and reports go to $OUT. Every phase has a timeout; the
# total stays under ~9 minutes (GPU_CHECK_RECIPE_S, GPU_CHECK_TESTS_S change the limits).
# Without a GPU it stops at once with one line.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu/out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
RECIPE=${GPU_CHECK_RECIPE:-recipes/resnet50_gpu.yaml}
RECIPE_S=${GPU_CHECK_RECIPE_S:-420}
TESTS_S=${GPU_CHECK_TESTS_S:-120}
# every core: the tune's search threads and nvcc builder processes are its slots less one
JOBS=${GPU_CHECK_JOBS:-$(nproc)}
t0=$(date +%s)
note() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or failing): nothing to check"
  exit 2
fi
why=$(timeout 60 "$PY" -c '
import torch, tvm
assert torch.cuda.is_available(), "torch sees no GPU (a CPU-only torch?)"
assert tvm.cuda(0).exist, "TVM sees no GPU (libcudart on LD_LIBRARY_PATH? a TVM built with CUDA?)"
print("gpu-ok")
' 2>&1 | tail -n 1)
if [ "$why" != gpu-ok ]; then echo "gpu_check: ${why:-python3 with torch and tvm did not start}"; exit 2; fi
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm \
  --format=csv,noheader | tee "$OUT/gpu.txt"

# cold: a fresh cache and build directory of this check's own
work=$(mktemp -d /tmp/gpu_check.XXXXXX)
export BUILDGRAPH_CACHE_DIR="$work/cache" BUILDGRAPH_BUILD_DIR="$work/build"
name=$(sed -n 's/^name: *//p' "$RECIPE" | head -n 1)
note "recipe $RECIPE (-j $JOBS, cold, at most ${RECIPE_S}s)"
timeout -k 10 "$RECIPE_S" "$PY" -m buildgraph run "$RECIPE" -j "$JOBS" --keep-going \
  > "$OUT/recipe.log" 2>&1
rc_recipe=$?
[ $rc_recipe -eq 124 ] && echo "gpu_check: the recipe ran past ${RECIPE_S}s and was stopped"
note "recipe rc=$rc_recipe"
tail -n 25 "$OUT/recipe.log"

note "gpu tests (at most ${TESTS_S}s)"
# the files holding gpu tests, the runtimes' and TVM's first (the host lacks some test-only packages: a module
# that cannot be collected must not stop the others)
files=$( (ls tests/test_gpu_runtimes.py tests/test_tvm_gpu.py; grep -l "mark.gpu" tests/test_*.py) 2>/dev/null | awk '!seen[$0]++')
timeout -k 10 "$TESTS_S" "$PY" -m pytest -m gpu --run-gpu $files -q -rs -p no:cacheprovider \
  --continue-on-collection-errors > "$OUT/pytest.log" 2>&1
rc_tests=$?
[ $rc_tests -eq 124 ] && echo "gpu_check: the gpu tests ran past ${TESTS_S}s and were stopped"
note "gpu tests rc=$rc_tests"
grep -E "passed|failed|error|skipped" "$OUT/pytest.log" | tail -n 12

build="$BUILDGRAPH_BUILD_DIR/$name"
mkdir -p "$OUT/build"
( cd "$build" 2>/dev/null && find . \( -name '*.json' -size -2M -o -name '*.log' -size -4M \) \
    -print | tar cf - -T - ) | tar xf - -C "$OUT/build" 2>/dev/null
note "summary"
"$PY" tools/gpu_summary.py "$build" | tee "$OUT/summary.txt"
rm -rf "$work"
note "done: recipe rc=$rc_recipe, gpu tests rc=$rc_tests"
[ $rc_recipe -eq 0 ] && [ $rc_tests -eq 0 ]
