#!/usr/bin/env bash
# One-shot check of ood_zoo on a GPU machine (H100/H200, ~8 minutes): everything goes to OUTDIR.
#
#   bash benchmarks/gpu_check.sh OUTDIR [--dry-run]
#
# Steps (each logs to OUTDIR, a failure is recorded and the next step still runs):
#   nvidia-smi   nvidia-smi -q                  -> nvidia-smi.txt
#   lscpu        lscpu                          -> lscpu.txt
#   build        setup.py build_ext --inplace (ood_zoo.ops._C and ood_zoo.ops._C_cuda,
#                TORCH_CUDA_ARCH_LIST 9.0, MAX_JOBS = cores)  -> build.log
#   import       which of ood_zoo.ops._C / _C_cuda load (both must, except in a dry run) -> import.log
#   pytest       pytest -m cuda on the test files with cuda-marked tests -> pytest-cuda.{log,xml}
#   bench        benchmarks/bench_gpu.py        -> bench_gpu.{json,md,log}
#   sanitizer    compute-sanitizer memcheck on benchmarks/sanitize_case.py -> sanitizer.log
# and summary.tsv / summary.json (step, status, seconds, exit code). Exits 1 if any step failed.
#
# --dry-run (CPU-only machines, CI): no build, the cuda tests skip, bench_gpu.py --dry-run (tiny
# shapes on the CPU), no sanitizer; the same files are written. Environment: PYTHON (default
# python, else python3), BENCH_ARGS (extra bench_gpu.py options, e.g. "--queries 4096"),
# GPU_CHECK_BUDGET (seconds for the whole run, default 470; each step's timeout is capped by it).
set -uo pipefail

usage() { echo "usage: bash benchmarks/gpu_check.sh OUTDIR [--dry-run]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
out="$1"
dry_run=0
if [[ $# -eq 2 ]]; then
  [[ "$2" == "--dry-run" ]] || usage
  dry_run=1
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$out" || exit 2
out="$(cd "$out" && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"
budget="${GPU_CHECK_BUDGET:-470}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root" || exit 2

summary="$out/summary.tsv"
printf 'step\tstatus\tseconds\trc\tlog\n' > "$summary"
failed=0

# run_step NAME LOG CAP CMD...: run CMD with stdout+stderr to LOG, under min(CAP, budget left).
run_step() {
  local name="$1" log="$2" cap="$3"
  shift 3
  local left=$((budget - SECONDS))
  local limit=$((cap < left ? cap : left))
  ((limit < 5)) && limit=5
  local start=$SECONDS rc status
  echo "== $name (timeout ${limit} s): $*" | tee "$out/$log"
  timeout --kill-after=10 "$limit" "$@" >> "$out/$log" 2>&1
  rc=$?
  if ((rc == 0)); then status=ok; else status=failed; failed=1; fi
  ((rc == 124)) && echo "== $name: timed out after ${limit} s" >> "$out/$log"
  echo "== $name: $status (rc $rc, $((SECONDS - start)) s)" | tee -a "$out/$log"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$rc" "$log" >> "$summary"
}

# skip_step NAME LOG REASON: record a step that does not apply here (not a failure).
skip_step() {
  echo "== $1: skipped ($3)" | tee "$out/$2"
  printf '%s\tskipped\t0\t0\t%s\n' "$1" "$2" >> "$summary"
}

echo "gpu_check: $(date -u +%FT%TZ), root $root, python $python, out $out, dry run $dry_run"

if command -v nvidia-smi > /dev/null; then
  run_step nvidia-smi nvidia-smi.txt 60 nvidia-smi -q
elif ((dry_run)); then
  skip_step nvidia-smi nvidia-smi.txt "nvidia-smi not found, dry run"
else
  run_step nvidia-smi nvidia-smi.txt 60 sh -c 'echo "nvidia-smi not found"; exit 1'
fi
run_step lscpu lscpu.txt 30 lscpu

if ((dry_run)); then
  skip_step build build.log "--dry-run: no extension build"
else
  run_step build build.log 300 env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    MAX_JOBS="${MAX_JOBS:-$(nproc 2> /dev/null || echo 4)}" "$python" setup.py build_ext --inplace
fi
# Which kernels load (on the GPU machine both extensions must).
run_step import import.log 60 "$python" -c "
import torch
from ood_zoo.ops import extension
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.is_available())
print('ood_zoo.ops._C:', extension.available(), extension.load_error())
print('ood_zoo.ops._C_cuda:', extension.cuda_available(), extension.cuda_load_error())
raise SystemExit(0 if $dry_run or extension.cuda_available() else 1)"

mapfile -t cuda_tests < <(grep -l 'mark\.cuda' tests/*.py)
run_step pytest pytest-cuda.log 180 "$python" -m pytest -m cuda -q --continue-on-collection-errors \
  --junitxml="$out/pytest-cuda.xml" "${cuda_tests[@]}"

bench_flags=(--out-dir "$out")
((dry_run)) && bench_flags+=(--dry-run)
# shellcheck disable=SC2206  # BENCH_ARGS is a list of options
bench_flags+=(${BENCH_ARGS:-})
run_step bench bench_gpu.log 300 "$python" benchmarks/bench_gpu.py "${bench_flags[@]}"

sanitizer="$(command -v compute-sanitizer || true)"
if [[ -z "$sanitizer" && -x /usr/local/cuda/bin/compute-sanitizer ]]; then
  sanitizer=/usr/local/cuda/bin/compute-sanitizer
fi
if ((dry_run)); then
  skip_step sanitizer sanitizer.log "--dry-run: compute-sanitizer needs a GPU"
elif [[ -z "$sanitizer" ]]; then
  skip_step sanitizer sanitizer.log "compute-sanitizer not found"
else
  run_step sanitizer sanitizer.log 180 "$sanitizer" --tool memcheck --leak-check no \
    --error-exitcode 1 "$python" benchmarks/sanitize_case.py
fi

# summary.json, by the first Python that runs (the one under test may be the failure).
summary_python="$python"
"$summary_python" -c '' 2> /dev/null || summary_python="$(command -v python3 || echo python3)"
"$summary_python" - "$summary" "$out/summary.json" "$dry_run" "$SECONDS" << 'PY'
import csv
import json
import sys

with open(sys.argv[1], newline="") as f:
    steps = list(csv.DictReader(f, delimiter="\t"))
record = {
    "dry_run": sys.argv[3] == "1",
    "seconds": int(sys.argv[4]),
    "failed": [s["step"] for s in steps if s["status"] == "failed"],
    "steps": steps,
}
with open(sys.argv[2], "w") as f:
    json.dump(record, f, indent=2)
    f.write("\n")
PY
echo "gpu_check: done in $SECONDS s; $(grep -c $'\tfailed\t' "$summary") failed step(s):"
column -t -s $'\t' "$summary" 2> /dev/null || cat "$summary"
exit "$failed"
