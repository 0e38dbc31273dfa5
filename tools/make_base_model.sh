#!/usr/bin/env bash
# Pretrain the built-in base model (assets/base/) from scratch with `engine sft`:
# a Qwen3-architecture model of 8 layers of width 128 (the built-in shape `base`,
# 1.6 M parameters, the arith task's 15-character vocabulary), every tensor trained
# (--train-layer all --train-embeddings), on generated three-term additions and
# subtractions of numbers below 100 with their worked solutions ("23+58-17=" ->
# "81-17=64"). Stopped at 500 steps, where its held-out greedy accuracy is partial
# (see docs/base-model.md), so that RL has room. Deterministic on the CPU: the
# same command gives the same weights.
#
#   bash tools/make_base_model.sh [RUN_DIR]      (about 3 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/base-pretrain}"
cargo build --release --quiet
rm -rf "$run"
./target/release/engine sft --model random:base --device cpu --seed 0 \
    --task arith --arith-terms 3 --arith-digits 2 --arith-ops +- \
    --train-layer all --train-embeddings \
    --steps 500 --batch-size 64 --lr 2e-3 --optimizer adamw --weight-decay 0 \
    --eval-every 50 --eval-size 200 --save-every 500 --out "$run"
mkdir -p assets/base
cp "$run/model/config.json" "$run/model/model.safetensors" assets/base/
cp "$run/metrics.jsonl" assets/base/pretrain-metrics.jsonl
echo "wrote assets/base (config.json, model.safetensors) from $run"
