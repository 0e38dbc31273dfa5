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

# The code sandbox runs model-written programs under bubblewrap when it works
# (tasks/sandbox.rs); on a CI box where we are root with apt, install it quietly.
# Never fatal: without it the sandbox uses unshare or its guards, and the tests that
# need a mechanism say they skip it.
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing bubblewrap for the code sandbox" >&2
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; }; } \
        >/dev/null 2>&1 || echo "could not install bubblewrap: the sandbox tests use what works" >&2
fi

cargo fmt --check
cargo test --all-targets --no-fail-fast "$@"

# The kernels on the host emulator again, built with AddressSanitizer: out-of-bounds
# indexing that a GPU would silently accept fails here (rebuilds only this crate).
ONELAYER_EMU_ASAN=1 cargo test --no-fail-fast --test emu_selftest --test emu_rmsnorm --test cuda_backend_ops --test cuda_train_ops --test cuda_attention_backward --test cuda_paged_attention "$@"
