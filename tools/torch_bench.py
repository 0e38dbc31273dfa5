#!/usr/bin/env python3
"""PyTorch side of the engine-vs-PyTorch comparison (DESIGN.md section 8).

Builds a Qwen3-4B-shaped model with random weights (transformers' Qwen3ForCausalLM,
bf16, SDPA attention) and measures:

  prefill     forward of batch x prompt tokens, no grad (last-token logits, as
              generate does, and full logits)
  generate    HF generate, greedy, with cache: decode tokens/s
  train_step  single-layer GRPO-style step: only layer 18 requires grad; forward
              with full logits, completion log-probs by log_softmax + gather,
              loss = -(advantage * logp).mean(), backward, AdamW on layer 18;
              gradient checkpointing off first, then on, then smaller batches
              on out-of-memory (every attempt is recorded)
  sdpa        scaled_dot_product_attention alone, causal, bf16, fwd and fwd+bwd

Prints one JSON object (and writes it to --out). Each section that fails records
its error and the others still run.

  python3 tools/torch_bench.py                      # the full sizes, on the GPU
  python3 tools/torch_bench.py --quick              # 4 layers, small batches
  python3 tools/torch_bench.py --quick --device cpu # tiny shapes: a syntax check
"""

import argparse
import gc
import json
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F


def shapes(args):
    """Model config kwargs and run sizes for the chosen mode."""
    if args.device == "cpu":  # a 4B model on the CPU is not a benchmark: tiny shapes
        model = dict(vocab_size=1000, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16)
        run = dict(batch=2, prompt=16, new_tokens=8, completion=16,
                   sdpa_t=256, sdpa_heads=4, sdpa_kv_heads=2, iters=2)
    else:
        model = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                     num_hidden_layers=4 if args.quick else 36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128)
        run = dict(batch=16, prompt=512, new_tokens=128, completion=1024,
                   sdpa_t=4096, sdpa_heads=32, sdpa_kv_heads=8, iters=5)
        if args.quick:
            run.update(batch=4, prompt=128, new_tokens=32, completion=256,
                       sdpa_t=1024, iters=3)
    model.update(max_position_embeddings=40960, rms_norm_eps=1e-6,
                 rope_theta=1e6, tie_word_embeddings=True)
    run["train_layer"] = 18 if model["num_hidden_layers"] == 36 else model["num_hidden_layers"] // 2
    return model, run


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, warmup=1, iters=3):
    """Mean seconds per call of fn after warm-up."""
    for _ in range(warmup):
        fn()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(dev)
    return (time.perf_counter() - t0) / iters


def is_oom(e):
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def free(dev):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def build_model(cfg_kwargs, dev):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(**cfg_kwargs, attn_implementation="sdpa", dtype="bfloat16",
                      bos_token_id=0, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with dev:  # initialise directly on the device
            model = Qwen3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.to(device=dev, dtype=torch.bfloat16).eval()
    model.requires_grad_(False)
    return model


def bench_prefill(model, run, dev, vocab):
    b, p = run["batch"], run["prompt"]
    ids = torch.randint(2, vocab, (b, p), device=dev)
    out = {"batch": b, "prompt": p}
    with torch.no_grad():
        t = timed(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), dev,
                  iters=run["iters"])
        out["last_logits_s"] = t
        out["tokens_per_s"] = b * p / t
        t = timed(lambda: model(input_ids=ids, use_cache=False), dev, iters=run["iters"])
        out["full_logits_s"] = t
        out["full_logits_tokens_per_s"] = b * p / t
    return out


def bench_generate(model, run, dev, vocab):
    b, p, n = run["batch"], run["prompt"], run["new_tokens"]
    ids = torch.randint(2, vocab, (b, p), device=dev)
    mask = torch.ones_like(ids)

    def gen(k):
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=k,
                              min_new_tokens=k, do_sample=False, use_cache=True,
                              pad_token_id=0, eos_token_id=1,
                              temperature=None, top_p=None, top_k=None)

    with torch.no_grad():
        assert gen(n).shape == (b, p + n), "generate stopped early"
        t1 = timed(lambda: gen(1), dev, warmup=0, iters=2)
        tn = timed(lambda: gen(n), dev, warmup=0, iters=2)
    return {"batch": b, "prompt": p, "new_tokens": n, "generate_s": tn,
            "prefill_plus_one_s": t1,
            "tokens_per_s": b * n / tn,
            "decode_tokens_per_s": b * (n - 1) / max(tn - t1, 1e-9)}


def set_checkpointing(model, on):
    """transformers >= 5.2x names it activation checkpointing; older, gradient."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def train_attempt(model, run, dev, vocab, batch, ckpt):
    layer = model.model.layers[run["train_layer"]]
    params = list(layer.parameters())
    model.requires_grad_(False)
    for q in params:
        q.requires_grad_(True)
    set_checkpointing(model, ckpt)
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-6)
    p, c = run["prompt"], run["completion"]
    ids = torch.randint(2, vocab, (batch, p + c), device=dev)
    adv = torch.randn(batch, 1, device=dev)
    target = ids[:, p:]

    def step():
        logits = model(input_ids=ids, use_cache=False).logits  # [B, P + C, V]
        lp = torch.log_softmax(logits[:, p - 1:-1, :].float(), dim=-1)
        logp = lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        loss = -(adv * logp).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        t = timed(step, dev, warmup=1, iters=max(2, run["iters"] - 2))
        out = {"batch": batch, "prompt": p, "completion": c,
               "train_layer": run["train_layer"], "gradient_checkpointing": ckpt,
               "trained_params": sum(q.numel() for q in params),
               "step_s": t, "tokens_per_s": batch * (p + c) / t,
               "completion_tokens_per_s": batch * c / t}
        if dev.type == "cuda":
            out["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
            out["max_memory_allocated_gib"] = out["max_memory_allocated_bytes"] / 2**30
        return out
    finally:
        del opt
        for q in params:
            q.grad = None
            q.requires_grad_(False)
        set_checkpointing(model, False)
        model.eval()


def bench_train(model, run, dev, vocab):
    attempts, plan = [], [(run["batch"], False), (run["batch"], True)]
    b = run["batch"] // 2
    while b >= 1:
        plan.append((b, True))
        b //= 2
    for batch, ckpt in plan:
        free(dev)
        try:
            res = train_attempt(model, run, dev, vocab, batch, ckpt)
            attempts.append({"batch": batch, "gradient_checkpointing": ckpt, "status": "ok"})
            res["attempts"] = attempts
            res["full_batch"] = batch == run["batch"]
            return res
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            attempts.append({"batch": batch, "gradient_checkpointing": ckpt,
                             "status": "oom", "error": str(e).splitlines()[0][:300]})
    return {"status": "oom at every batch", "attempts": attempts}


def bench_sdpa(run, dev):
    t, h, hk, d = run["sdpa_t"], run["sdpa_heads"], run["sdpa_kv_heads"], 128
    q = torch.randn(1, h, t, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, hk, t, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, hk, t, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(1, h, t, d, device=dev, dtype=torch.bfloat16)
    gqa = hk != h

    def fwd():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    def fwd_bwd():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        q.grad = k.grad = v.grad = None
        o.backward(do)

    flops = 4 * t * t * h * d / 2  # causal forward
    iters = 20 if dev.type == "cuda" else 2
    tf = timed(fwd, dev, warmup=3, iters=iters)
    tfb = timed(fwd_bwd, dev, warmup=3, iters=iters)
    return {"T": t, "heads": h, "kv_heads": hk, "head_dim": d, "causal": True,
            "fwd_s": tf, "fwd_tflops": flops / tf / 1e12,
            "fwd_bwd_s": tfb, "fwd_bwd_tflops": 3.5 * flops / tfb / 1e12,
            "bwd_tflops": 2.5 * flops / max(tfb - tf, 1e-12) / 1e12,
            "flops_note": "fwd = 4*T^2*heads*head_dim/2 (causal); bwd = 2.5 x fwd"}


def write(report, path):
    text = json.dumps(report, indent=1, default=str)
    if path:
        with open(path + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(path + ".tmp", path)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 layers, small batches")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", default="prefill,generate,train_step,sdpa",
                    help="comma-separated sections to run")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", 0)
    cfg, run = shapes(args)
    import transformers

    report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "quick": args.quick, "config": cfg, "run": run, "errors": {}}
    only = set(args.only.split(","))
    t0 = time.perf_counter()

    def section(name, fn):
        try:
            free(dev)
            report[name] = fn()
        except Exception:  # noqa: BLE001
            report["errors"][name] = traceback.format_exc()[-2000:]
        print(f"torch_bench: {name} done at {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        write(report, args.out)  # what is done so far survives a timeout

    if "sdpa" in only:  # first: cheap, and needs no model
        section("sdpa", lambda: bench_sdpa(run, dev))
    model = None
    if only & {"prefill", "generate", "train_step"}:
        try:
            t1 = time.perf_counter()
            model = build_model(cfg, dev)
            report["params"] = sum(q.numel() for q in model.parameters())
            report["build_s"] = time.perf_counter() - t1
        except Exception:  # noqa: BLE001
            report["errors"]["build"] = traceback.format_exc()[-2000:]
    vocab = cfg["vocab_size"]
    for name, fn in [("prefill", lambda: bench_prefill(model, run, dev, vocab)),
                     ("generate", lambda: bench_generate(model, run, dev, vocab)),
                     ("train_step", lambda: bench_train(model, run, dev, vocab))]:
        if name in only and model is not None:
            section(name, fn)
    report["total_s"] = time.perf_counter() - t0
    print(write(report, args.out))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
