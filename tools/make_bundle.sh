#!/usr/bin/env bash
# Build, on this machine (no GPU needed), everything tools/gpu_check.sh runs on a GPU
# machine, into bundle/ (ignored by git), stripped to fit the 64 MiB the device tool
# carries together with the working tree:
#
#   bundle/engine                  the release binary
#   bundle/tests/<name>-<hash>     every test executable of `cargo test --release`
#                                  (lib and bin unit tests, tests/*.rs)
#   bundle/tests/fixtures/         a copy of tests/fixtures
#   bundle/benches/<name>-<hash>   the criterion bench executables (cpu_ops, cuda_ops)
#   bundle/gpu_check.sh, bundle/torch_bench.py
#   bundle/BUILD_ROOT              the CARGO_MANIFEST_DIR baked into the binaries
#   bundle/MANIFEST.txt            commit, date, toolchain, files and sizes
#
# Fixtures: the test binaries look for tests/fixtures under $ONELAYER_REPO, else under
# the baked CARGO_MANIFEST_DIR when it holds them, else under the current directory
# (tests/common/mod.rs). gpu_check.sh runs from the repository root and sets
# ONELAYER_REPO to it (or to bundle/, which mirrors the layout).
#
# Usage: bash tools/make_bundle.sh [cargo flags, e.g. --no-default-features --features cuda-12]
set -euo pipefail
cd "$(dirname "$0")/.."
B=bundle
LIMIT=$((64 * 1024 * 1024))

executables() { # $1 = tests | benches; cargo's JSON messages on stdin
  python3 -c '
import json, sys
want = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if want == "tests" and m["profile"]["test"]:
        print(m["executable"])
    elif want == "benches" and "bench" in m["target"]["kind"]:
        print(m["executable"])
' "$1"
}

echo "make_bundle: cargo build --release $*" >&2
cargo build --release "$@"
echo "make_bundle: cargo test --release --no-run $*" >&2
TESTS=$(cargo test --release --no-run --message-format=json "$@" | executables tests)
echo "make_bundle: cargo bench --no-run $*" >&2
BENCHES=$(cargo bench --no-run --message-format=json "$@" | executables benches)

rm -rf "$B"
mkdir -p "$B/tests" "$B/benches"
cp target/release/engine "$B/engine"
for f in $TESTS; do cp "$f" "$B/tests/"; done
for f in $BENCHES; do cp "$f" "$B/benches/"; done
strip --strip-all "$B/engine" "$B"/tests/* "$B"/benches/*
cp -r tests/fixtures "$B/tests/fixtures"
cp tools/gpu_check.sh tools/torch_bench.py "$B/"
pwd > "$B/BUILD_ROOT"

# The stripped binaries still start.
"$B/engine" --version >/dev/null
for f in "$B"/tests/* "$B"/benches/*; do
  [ -f "$f" ] && [ -x "$f" ] || continue
  "$f" --list >/dev/null 2>&1 || { echo "make_bundle: $f --list failed" >&2; exit 1; }
done

{
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(rustc --version)"
  echo "cargo flags: ${*:-(default features)}"
  echo "build root: $(pwd)"
  (cd "$B" && find . -type f ! -path './tests/fixtures/*' -printf '%s\t%p\n' | sort -k2)
} > "$B/MANIFEST.txt"

SIZE=$(du -sb "$B" | cut -f1)
TREE=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -n1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "make_bundle: $B/ is $(mib "$SIZE") ($(ls "$B"/tests | grep -vc '^fixtures$') test binaries, $(ls "$B"/benches | wc -l) benches); with the working tree ($(mib "$TREE")) $(mib $((SIZE + TREE))) of the 64 MiB carried"
if [ $((SIZE + TREE)) -gt "$LIMIT" ]; then
  echo "make_bundle: too big to carry (limit 64 MiB with the working tree)" >&2
  exit 1
fi
echo "next: device run with carry=[\"bundle\"] and the command: bash tools/gpu_check.sh" >&2
