#!/usr/bin/env python3
"""Load a directory written by `engine export` with transformers, unchanged, and print
the log-probs of a token sequence as `engine score` prints them, so the two can be
compared (tests/rl_run.rs keeps the numbers this printed for the export in
`export_scores_like_transformers`).

    python tools/check_export.py EXPORT_DIR --ids 5,6,7,8

Needs torch and transformers (tools/requirements-fixtures.txt); CPU, float32 compute.
"""
import argparse
import json

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    args = ap.parse_args()
    ids = [int(x) for x in args.ids.split(",")]
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    out = [None] + [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    print(json.dumps({"ids": ids, "logprobs": out, "model_type": model.config.model_type}))


if __name__ == "__main__":
    main()
