#!/usr/bin/env bash
# The test suite, as CI runs it (.ci/run), on a machine without a GPU.
# Everything it needs beyond the Rust toolchain is installed into .tools/ first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -f tools/install_cuda_wheels.sh ]; then
    # NVRTC and the CUDA headers from PyPI: the kernels compile-check with no GPU.
    eval "$(bash tools/install_cuda_wheels.sh)"
    export ONELAYER_REQUIRE_NVRTC=1
fi

cargo fmt --check
cargo test --all-targets --no-fail-fast "$@"

# The kernels on the host emulator again, built with AddressSanitizer: out-of-bounds
# indexing that a GPU would silently accept fails here (rebuilds only this crate).
ONELAYER_EMU_ASAN=1 cargo test --no-fail-fast --test emu_selftest --test emu_rmsnorm --test cuda_backend_ops --test cuda_train_ops --test cuda_attention_backward --test cuda_paged_attention "$@"
