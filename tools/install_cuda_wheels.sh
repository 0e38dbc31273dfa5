#!/usr/bin/env bash
# Install the CUDA pieces the engine needs without a CUDA toolkit, from PyPI
# wheels, into a local folder (default: .tools/cuda at the repository root):
#
#   nvidia-cuda-nvrtc    libnvrtc.so.13 (+ builtins): compiles kernels/ at run time
#   nvidia-cuda-runtime  include/cuda_bf16.h etc.: headers NVRTC does not carry
#   nvidia-cuda-nvcc     bin/ptxas: register / spill reports in `engine kernels --check`
#
# Versions are pinned to CUDA 13.0 to match the target machines (driver 580,
# CUDA 13.0). NVRTC emits CUBIN (SASS), so the driver never JITs our PTX.
#
# Usage: tools/install_cuda_wheels.sh [--with-cublas] [DIR]   (CUDA 13, default)
#        CUDA_MAJOR=12 tools/install_cuda_wheels.sh [...]      (the -cu12 wheels)
# --with-cublas also installs nvidia-cublas (libcublas + libcublasLt, ~600 MB),
# for running on a GPU machine that has a driver but no CUDA toolkit.
# Idempotent: does nothing when DIR already holds the pinned versions.
# Prints the environment variables to export (eval "$(tools/install_cuda_wheels.sh)").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CUBLAS=0
if [ "${1:-}" = "--with-cublas" ]; then CUBLAS=1; shift; fi
DIR="${1:-$ROOT/.tools/cuda}"
MAJOR="${CUDA_MAJOR:-13}"
PY="${PYTHON:-python3}"

if [ "$MAJOR" = 13 ]; then
  PKGS=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvcc==13.0.88)
  [ "$CUBLAS" = 1 ] && PKGS+=(nvidia-cublas==13.0.2.14)
elif [ "$MAJOR" = 12 ]; then
  PKGS=(nvidia-cuda-nvrtc-cu12==12.8.93 nvidia-cuda-runtime-cu12==12.8.90 nvidia-cuda-nvcc-cu12==12.8.93)
  [ "$CUBLAS" = 1 ] && PKGS+=(nvidia-cublas-cu12==12.8.4.1)
else
  echo "install_cuda_wheels.sh: CUDA_MAJOR must be 12 or 13 (got $MAJOR)" >&2
  exit 2
fi

STAMP="$DIR/.onelayer-wheels"
WANT="${PKGS[*]}"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  : # already installed
else
  mkdir -p "$DIR"
  "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --upgrade --target "$DIR" "${PKGS[@]}" >&2
  printf '%s' "$WANT" > "$STAMP"
fi

# Report what the engine will find (it searches these layouts itself; the
# variables below only make the choice explicit and serve other tools).
NVRTC="$(find "$DIR/nvidia" -name "libnvrtc.so.$MAJOR*" -not -name '*builtins*' 2>/dev/null | head -n1)"
BF16="$(find "$DIR/nvidia" -name cuda_bf16.h 2>/dev/null | head -n1)"
PTXAS="$(find "$DIR/nvidia" -name ptxas -type f 2>/dev/null | head -n1)"
if [ -z "$NVRTC" ] || [ -z "$BF16" ]; then
  echo "install_cuda_wheels.sh: libnvrtc or cuda_bf16.h missing under $DIR/nvidia (remove $STAMP and retry)" >&2
  exit 1
fi
[ -n "$PTXAS" ] && chmod +x "$PTXAS" || true

echo "export ONELAYER_CUDA_WHEELS=$DIR"
# No LD_LIBRARY_PATH needed: the engine loads libnvrtc (and its builtins) by full path.
echo "# nvrtc: $NVRTC"
echo "# headers: $(dirname "$BF16")"
[ -n "$PTXAS" ] && echo "# ptxas: $PTXAS" || true
