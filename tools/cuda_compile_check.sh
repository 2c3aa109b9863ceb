#!/usr/bin/env bash
# Compile-check the CUDA sources on a machine without a GPU (and with a CPU-only torch).
#
#   1. every csrc/cuda/*.cu (pure CUDA, no torch headers): nvcc -c for sm_90, about 1-5 s each;
#   2. the torch glue csrc/cuda/*.cpp: g++ -fsyntax-only against torch's headers, with a shim for
#      the generated c10/cuda/impl/cuda_cmake_macros.h that CPU wheels lack (feasibility.md §3).
#
# Neither links nor runs anything: that needs a GPU machine (pip install --no-build-isolation -e .
# there builds ood_zoo.ops._C_cuda). Exits non-zero if any file fails, 0 with a message if nvcc is
# absent. Environment: NVCC, CXX, PYTHON, GENCODE (default arch=compute_90,code=sm_90),
# OOD_ZOO_SKIP_GLUE_CHECK=1 to skip step 2.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$nvcc" && -x /usr/local/cuda/bin/nvcc ]]; then
  nvcc=/usr/local/cuda/bin/nvcc
fi
if [[ -z "$nvcc" ]]; then
  echo "cuda_compile_check: skipped (nvcc not found; set NVCC=/path/to/nvcc)"
  exit 0
fi
gencode="${GENCODE:-arch=compute_90,code=sm_90}"
# The toolkit's headers, for the host-compiled glue (nvcc itself may be a wrapper script).
cuda_include=""
for dir in "${CUDA_HOME:-}" "$(dirname "$(readlink -f "$nvcc")")/.." /usr/local/cuda; do
  if [[ -n "$dir" && -f "$dir/include/cuda_runtime.h" ]]; then
    cuda_include="$(cd "$dir/include" && pwd)"
    break
  fi
done
if [[ -z "$cuda_include" ]]; then
  cuda_include="$("$nvcc" --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ INCLUDES="-I\([^"]*\)".*/\1/p' | head -n 1)"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0

echo "cuda_compile_check: $("$nvcc" --version | tail -n 1) (-gencode $gencode)"
shopt -s nullglob
for src in "$root"/csrc/cuda/*.cu; do
  start=$SECONDS
  if "$nvcc" -std=c++17 -O3 -c -gencode "$gencode" -I"$root/csrc" "$src" \
      -o "$tmp/$(basename "$src").o"; then
    echo "  ok    ${src#"$root"/} ($((SECONDS - start)) s)"
  else
    echo "  FAIL  ${src#"$root"/}"
    status=1
  fi
done

glue=("$root"/csrc/cuda/*.cpp)
if [[ "${OOD_ZOO_SKIP_GLUE_CHECK:-0}" == "1" || ${#glue[@]} -eq 0 ]]; then
  echo "  glue check skipped"
  exit "$status"
fi
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
if ! includes="$("$python" - <<'PY' 2>/dev/null
import sysconfig
from torch.utils.cpp_extension import include_paths
print(" ".join(["-I" + p for p in include_paths()] + ["-I" + sysconfig.get_paths()["include"]]))
PY
)"; then
  echo "  glue check skipped (torch not importable by $python)"
  exit "$status"
fi
# The CPU wheel lacks this generated header; one define stands in for it (compile check only).
mkdir -p "$tmp/shim/c10/cuda/impl"
echo "#define C10_CUDA_BUILD_SHARED_LIBS" > "$tmp/shim/c10/cuda/impl/cuda_cmake_macros.h"
for src in "${glue[@]}"; do
  start=$SECONDS
  # shellcheck disable=SC2086  # $includes is a list of -I flags
  if "${CXX:-g++}" -std=c++20 -fsyntax-only -I"$tmp/shim" $includes -I"$cuda_include" \
      -I"$root/csrc" "$src"; then
    echo "  ok    ${src#"$root"/} (syntax only, $((SECONDS - start)) s)"
  else
    echo "  FAIL  ${src#"$root"/}"
    status=1
  fi
done
exit "$status"
