#!/usr/bin/env bash
# The GPU checks, on a GPU machine, from the repository root, with bundle/ built by
# tools/make_bundle.sh (no cargo needed here):
#
#   1. nvidia-smi                 device, driver, memory, clocks
#   2. engine kernels --check     NVRTC compiles every kernel for sm_90 (+ ptxas report)
#   3. bundle/tests/*             every test binary; tests/common adds the GPU to the
#                                 emulator when GpuDevice::open(0) works
#   4. bundle/benches/cuda_ops-*  criterion, short measurement
#   5. engine bench --device cuda --json
#   6. engine bench rl --device cuda --json
#                                 one whole RL step on the Qwen3-4B shape: 8 prompts x
#                                 8 samples of 256 + 512 tokens, then the training step
#                                 of layer 18; tokens/s and peak device memory
#   7. tools/torch_bench.py       the PyTorch side of the comparison
#
# Writes $OUT/report.json, $OUT/report.md and $OUT/logs.tar.gz (every step's full
# log). Every step runs even when an earlier one fails; each has a timeout and the
# whole run stays under $GPU_CHECK_BUDGET seconds (default 560, inside the device
# tool's 10 minutes). Exit status 0 when every step passed, 1 otherwise.
#
#   bash tools/gpu_check.sh                 # OUT defaults to /tmp/gpu_check
#   QUICK=1 bash tools/gpu_check.sh         # torch_bench.py --quick
#   ONLY=nvidia_smi,engine_bench_rl bash tools/gpu_check.sh
#                                           # only these steps (comma-separated
#                                           # names or globs: test_*); the others
#                                           # are reported as not selected
#
# With every step at its full limit the steps add up to more than the budget; the
# last ones get what is left (ONLY, or the T_* limits, to fit a session's needs).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." # the repository root (from tools/ or bundle/)
ROOT=$PWD
OUT=${OUT:-/tmp/gpu_check}
BUDGET=${GPU_CHECK_BUDGET:-560}
mkdir -p "$OUT"
WORK=$(mktemp -d)
START=$(date +%s)
: > "$WORK/steps"
notes=()

# Where things are looked for.
export ONELAYER_REPO=$ROOT
[ -d "$ROOT/tests/fixtures" ] || export ONELAYER_REPO=$ROOT/bundle # mirrors tests/fixtures
export ONELAYER_REQUIRE_NVRTC=1 CRITERION_HOME=$WORK/criterion PYTHONUNBUFFERED=1
if [ -z "${ONELAYER_CUDA_HOME:-}${ONELAYER_CUDA_WHEELS:-}${CUDA_HOME:-}${CUDA_PATH:-}" ] &&
  [ ! -f /usr/local/cuda/include/cuda_bf16.h ] && [ ! -d "$(cat bundle/BUILD_ROOT 2>/dev/null)/.tools/cuda" ]; then
  # No toolkit: PyTorch's nvidia-* wheels carry NVRTC and the headers.
  sp=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)
  [ -n "$sp" ] && export ONELAYER_CUDA_WHEELS=$sp && notes+=("ONELAYER_CUDA_WHEELS=$sp")
fi
# The test binaries have CARGO_BIN_EXE_engine (<build root>/target/release/engine)
# baked in; put the bundled engine there unless a real build is there (on the GPU
# machine the checkout may sit elsewhere and has no target/).
BR=$(cat bundle/BUILD_ROOT 2>/dev/null || true)
E=$BR/target/release/engine
if [ -n "$BR" ] && [ -x bundle/engine ] && { [ ! -e "$E" ] || [ -e "$E.from-bundle" ]; } &&
  ! cmp -s bundle/engine "$E"; then
  if mkdir -p "$BR/target/release" 2>/dev/null && cp -f bundle/engine "$E" 2>/dev/null; then
    touch "$E.from-bundle"
    notes+=("copied bundle/engine to $E (CARGO_BIN_EXE_engine of the tests)")
  else
    notes+=("could not place the engine at $E: the cli_errors tests will fail")
  fi
fi

# step NAME TIMEOUT CMD...: run CMD with a timeout, log to $WORK/NAME.log, record it.
step() {
  local name=$1 limit=$2
  shift 2
  if [ -n "${ONLY:-}" ]; then
    local pat selected=""
    local IFS=,
    for pat in $ONLY; do
      # shellcheck disable=SC2053 # a glob on purpose
      [[ $name == $pat ]] && selected=1
    done
    unset IFS
    if [ -z "$selected" ]; then
      printf '%s\t%s\n' "$name" "$*" >> "$WORK/steps"
      echo "not selected (ONLY=$ONLY)" > "$WORK/$name.log"
      echo unselected > "$WORK/$name.rc"
      echo 0 > "$WORK/$name.secs"
      return
    fi
  fi
  local left=$((BUDGET - ($(date +%s) - START) - 5))
  [ "$limit" -gt "$left" ] && limit=$left
  printf '%s\t%s\n' "$name" "$*" >> "$WORK/steps"
  if [ "$limit" -lt 5 ]; then
    echo "skipped: no time left (its limit, or the ${BUDGET}s budget)" > "$WORK/$name.log"
    echo skipped > "$WORK/$name.rc"
    echo 0 > "$WORK/$name.secs"
    return
  fi
  echo "gpu_check: $name (timeout ${limit}s): $*" >&2
  local t0
  t0=$(date +%s%N)
  timeout -k 5 "$limit" "$@" > "$WORK/$name.log" 2>&1
  echo $? > "$WORK/$name.rc"
  awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f\n", (b - a) / 1e9 }' > "$WORK/$name.secs"
  echo "gpu_check: $name -> rc $(cat "$WORK/$name.rc")" >&2
}

step nvidia_smi "${T_SMI:-15}" bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv,noheader && nvidia-smi'
step kernels "${T_KERNELS:-45}" bundle/engine kernels --check --arch sm_90

tests_left=${T_TESTS:-150}
for t in bundle/tests/*; do
  [ -f "$t" ] && [ -x "$t" ] || continue
  name=test_$(basename "$t" | sed 's/-[0-9a-f]\{16\}$//')
  t0=$(date +%s)
  step "$name" "$((tests_left > 120 ? 120 : tests_left))" "$t"
  tests_left=$((tests_left - ($(date +%s) - t0)))
done

bench=$(ls bundle/benches/cuda_ops-* 2>/dev/null | head -n1)
step criterion "${T_CRITERION:-110}" "${bench:-bundle/benches/cuda_ops-MISSING}" --bench \
  --warm-up-time 0.5 --measurement-time 1 --sample-size 10 --noplot
step engine_bench "${T_ENGINE_BENCH:-70}" bundle/engine bench --device cuda --json
step engine_bench_rl "${T_ENGINE_BENCH_RL:-100}" bundle/engine bench rl --device cuda --json
TB=tools/torch_bench.py
[ -f "$TB" ] || TB=bundle/torch_bench.py
step torch_bench "${T_TORCH:-150}" python3 "$TB" --out "$WORK/torch.json" ${QUICK:+--quick}

# ---- the report ------------------------------------------------------------------
printf '%s\n' "${notes[@]}" > "$WORK/notes"
python3 - "$WORK" "$OUT" "$ROOT" "$START" <<'PY'
import glob, json, os, re, sys, time
work, out, root, start = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def read(p, default=""):
    try:
        with open(p, errors="replace") as f:
            return f.read()
    except OSError:
        return default

def tail(text, n=40):
    return "\n".join(text.rstrip().splitlines()[-n:])

def last_json(text):
    """The whole text as JSON, else the last line that parses as a JSON object."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    dec = json.JSONDecoder()
    for i in [m.start() for m in re.finditer(r"(?m)^\{", text)][::-1]:
        try:
            return dec.raw_decode(text[i:])[0]
        except ValueError:
            continue
    return None

def criterion(home):
    rows = []
    for bj in sorted(glob.glob(os.path.join(home, "**", "new", "benchmark.json"), recursive=True)):
        try:
            b = json.load(open(bj))
            est = json.load(open(os.path.join(os.path.dirname(bj), "estimates.json")))
        except (OSError, ValueError):
            continue
        ns = est["mean"]["point_estimate"]
        row = {"id": b.get("full_id") or b.get("title"), "mean_us": ns / 1e3}
        thr = b.get("throughput") or {}
        for kind in ("Bytes", "BytesDecimal"):
            if kind in thr:
                row["GB_per_s"] = thr[kind] / ns
                row["pct_of_3TB_per_s"] = 100 * thr[kind] / ns / 3000
        if "Elements" in thr:
            row["TFLOP_per_s"] = thr["Elements"] / ns / 1e3
        rows.append(row)
    return rows

steps, md_rows = [], []
for line in read(os.path.join(work, "steps")).splitlines():
    name, cmd = line.split("\t", 1)
    rc = read(os.path.join(work, name + ".rc"), "?").strip()
    log = read(os.path.join(work, name + ".log"))
    secs = read(os.path.join(work, name + ".secs"), "0").strip()
    status = {"0": "ok", "124": "timeout", "137": "timeout", "skipped": "skipped",
              "unselected": "not selected"}.get(rc, "fail")
    s = {"name": name, "command": cmd, "status": status, "rc": rc,
         "seconds": round(float(secs or 0), 1)}
    key = {}
    if name == "nvidia_smi":
        key["gpu"] = log.splitlines()[0].strip() if log.strip() else ""
    elif name == "kernels":
        m = re.findall(r"(?m)^ok: .*$", log)
        key["summary"] = m[-1] if m else tail(log, 1)
    elif name.startswith("test_"):
        tot = {"passed": 0, "failed": 0, "ignored": 0}
        for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", log):
            for k, v in zip(("passed", "failed", "ignored"), m.groups()):
                tot[k] += int(v)
        key.update(tot)
        key["failed_tests"] = re.findall(r"(?m)^test (\S+) \.\.\. FAILED", log)
        key["gpu_unavailable"] = "no GPU test" in log  # tests/common::cuda_backends
    elif name == "criterion":
        key["benchmarks"] = criterion(os.environ.get("CRITERION_HOME", os.path.join(work, "criterion")))
        m = re.search(r"(?m)^cuda_ops: no GPU.*$", log)
        if m:
            key["note"] = m.group(0)
            if status == "ok":
                s["status"] = status = "fail"  # nothing was measured
    elif name in ("engine_bench", "engine_bench_rl"):
        key["result"] = last_json(log)
    elif name == "torch_bench":
        t = last_json(read(os.path.join(work, "torch.json"))) or last_json(log) or {}
        key["result"] = t
        if t.get("errors") and status == "ok":
            s["status"] = status = "fail"
    s["key"] = key
    if status not in ("ok", "not selected"):
        s["log_tail"] = tail(log)
    steps.append(s)

smi = next((s["key"].get("gpu") for s in steps if s["name"] == "nvidia_smi" and s["status"] == "ok"), None)
manifest = read(os.path.join(root, "bundle", "MANIFEST.txt"))
report = {
    "device": smi or "no GPU (nvidia-smi failed)",
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": os.uname().nodename,
    "bundle": manifest.splitlines()[:4],
    "seconds": int(time.time()) - start,
    "notes": [n for n in read(os.path.join(work, "notes")).splitlines() if n],
    "passed": all(s["status"] in ("ok", "not selected") for s in steps),
    "steps": steps,
}
with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=1, default=str)

def fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)

md = [f"# GPU check: {report['device']}", "",
      f"{report['date']} on {report['host']}, {report['seconds']} s; "
      f"{'all steps passed' if report['passed'] else 'FAILURES below'}", ""]
md += [f"- {l}" for l in report["bundle"] + report["notes"]]
md += ["", "| step | status | s | key numbers |", "|---|---|---|---|"]
for s in steps:
    k = s["key"]
    if s["name"].startswith("test_"):
        txt = f"{k['passed']} passed, {k['failed']} failed, {k['ignored']} ignored" + (
            " (GPU not opened: emulator only)" if k["gpu_unavailable"] else "")
        if k["failed_tests"]:
            txt += ": " + ", ".join(k["failed_tests"][:8])
    elif s["name"] == "criterion":
        txt = f"{len(k['benchmarks'])} benchmarks" + (f" ({k['note']})" if "note" in k else "")
    elif s["name"] in ("engine_bench", "engine_bench_rl", "torch_bench"):
        txt = "see below" if k.get("result") else ""
    else:
        txt = next(iter(k.values()), "") if k else ""
    md.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {str(txt).replace('|', '/')} |")
crit = next((s for s in steps if s["name"] == "criterion"), None)
if crit and crit["key"]["benchmarks"]:
    md += ["", "## Criterion (cuda_ops)", "", "| benchmark | mean µs | GB/s | % of 3.0 TB/s | TFLOP/s |",
           "|---|---|---|---|---|"]
    for r in crit["key"]["benchmarks"]:
        md.append(f"| {r['id']} | {r['mean_us']:.1f} | {fmt(r.get('GB_per_s', ''))} | "
                  f"{fmt(r.get('pct_of_3TB_per_s', ''))} | {fmt(r.get('TFLOP_per_s', ''))} |")
tb = next((s["key"].get("result") for s in steps if s["name"] == "torch_bench"), None) or {}
if tb:
    md += ["", "## PyTorch (transformers, SDPA)", ""]
    for sec, keys in [("prefill", ["batch", "prompt", "tokens_per_s", "full_logits_tokens_per_s"]),
                      ("generate", ["batch", "prompt", "new_tokens", "tokens_per_s", "decode_tokens_per_s"]),
                      ("train_step", ["batch", "gradient_checkpointing", "step_s", "tokens_per_s",
                                      "max_memory_allocated_gib", "full_batch"]),
                      ("sdpa", ["T", "heads", "kv_heads", "fwd_tflops", "bwd_tflops", "fwd_bwd_tflops"])]:
        if sec in tb:
            md.append(f"- {sec}: " + ", ".join(f"{k} {fmt(tb[sec].get(k))}" for k in keys if k in tb[sec]))
    for sec, err in (tb.get("errors") or {}).items():
        md.append(f"- {sec}: ERROR {err.strip().splitlines()[-1] if err.strip() else ''}")
for bench, title in (("engine_bench", "engine bench"), ("engine_bench_rl", "engine bench rl")):
    eb = next((s["key"].get("result") for s in steps if s["name"] == bench), None)
    if eb:
        md += ["", f"## {title}", "", "```json", json.dumps(eb, indent=1)[:4000], "```"]
fails = [s for s in steps if s["status"] not in ("ok", "not selected")]
if fails:
    md += ["", "## Failures"]
    for s in fails:
        md += ["", f"### {s['name']} ({s['status']}, rc {s['rc']})", "", f"`{s['command']}`", "",
               "```", s.get("log_tail", ""), "```"]
with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(md) + "\n")
print("\n".join(md[:60 + len(steps)]))
sys.exit(0 if report["passed"] else 1)
PY
rc=$?
cp "$WORK/torch.json" "$WORK/torch_bench.json" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$WORK" --exclude=criterion . 2>/dev/null
rm -rf "$WORK"
echo "gpu_check: $OUT/report.json, $OUT/report.md, $OUT/logs.tar.gz" >&2
exit $rc
