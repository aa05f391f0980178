#!/usr/bin/env bash
# The GPU check (issue 28): at most ~8 minutes on one GPU, no network. Installs catdiff and its
# plugins from this working tree into the image's Python (which has torch), then runs
#   1. the tests that need CUDA (tests/test_gpu.py),
#   2. python -m benchmarks.speed --device cuda --quick --compile (MFU of the paper image backbone
#      and the digits backbone against the measured bf16 matmul peak; ours vs stock; eager vs
#      torch.compile),
#   3. python -m benchmarks.gpu_check (digits with precision=auto against fp32, and sampling
#      throughput of CATDM, MDLM and AR with its KV cache at batch 1 and 256, and the frontier's
#      timing: every method and sampler at 2, 4, 8 and 50 steps, batch 256),
# and prints one summary table last. Usage (from anywhere):  bash benchmarks/gpu_check.sh
# PYTHON picks the interpreter (default python3); GPU_CHECK_SECONDS the digits training time.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=$(mktemp -d)
SECONDS_EACH=${GPU_CHECK_SECONDS:-45}
status=()

step() {  # step NAME LIMIT_S CMD...: run with a time limit, keep its output, record its exit code
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$LOG/$name.log"
  local rc=${PIPESTATUS[0]}
  status+=("$name: exit $rc$([ "$rc" = 124 ] && echo ' (time limit)')")
}

# install without network: no dependencies (the image's torch etc.), no build isolation
if ! $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . \
      -e plugins/catdiff-vision -e plugins/catdiff-text -e plugins/catdiff-translate -e plugins/catdiff-tokens \
      >"$LOG/install.log" 2>&1; then
  echo "gpu_check: pip install failed (see $LOG/install.log); using the source tree with hand-made entry points"
  SITE="$LOG/site"; mkdir -p "$SITE"
  for p in vision text translate tokens; do  # what pip would write: the plugins' entry points
    info="$SITE/catdiff_$p-0.dist-info"; mkdir -p "$info"
    printf 'Metadata-Version: 2.1\nName: catdiff-%s\nVersion: 0\n' "$p" >"$info/METADATA"
    printf '[catdiff]\n%s = catdiff_%s.plugin\n' "$p" "$p" >"$info/entry_points.txt"
  done
  export PYTHONPATH="$PWD:$PWD/plugins/catdiff-vision:$PWD/plugins/catdiff-text:$PWD/plugins/catdiff-translate:$PWD/plugins/catdiff-tokens:$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('device:', torch.cuda.get_device_name())" || exit 1
missing=$($PY -c "import importlib.util as u; print(' '.join(m for m in ('pytest','sklearn','torch_fidelity','einops','pluggy','tqdm') if u.find_spec(m) is None))")
[ -n "$missing" ] && echo "gpu_check: not in this image: $missing (the parts that need them are skipped)"

step tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py
step speed 200 $PY -m benchmarks.speed --device cuda --quick --compile
step gpu_check 180 $PY -m benchmarks.gpu_check --device cuda --seconds "$SECONDS_EACH"

echo
echo "================ GPU check summary ================"
grep -h -E "passed|failed|error" "$LOG/tests.log" | tail -1
sed -n -e '/^\[summary\]/,/^$/p' -e '/^\[MFU/,/^$/p' -e '/^\[compile\]/,/^$/p' "$LOG/speed.log"
sed -n '/^\[gpu check\]/,$p' "$LOG/gpu_check.log"
printf '%s\n' "${status[@]}"
