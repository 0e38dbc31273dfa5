#!/usr/bin/env python3
"""Generate the whole-training-step reference fixtures under tests/fixtures/train/.

For the committed fixture models `qwen3-gqa2-tied` (3 layers, Qwen3, q/k norms)
and `qwen2-gqa4-bias-tied` (2 layers, Qwen2, q/k/v biases) this loads the model
with transformers (float32, CPU, eager attention), marks ONLY the parameters of
the trained decoder layers `requires_grad=True`, computes the GRPO / Dr. GRPO
loss of DESIGN.md section 5 (verl conventions) over a small set of rollouts,
calls `loss.backward()`, and writes per case (tests/fixtures/train/<case>/):

  case.json             the settings (model, train layers, algo, loss, optimizer)
                        and facts about the data (advantages, clip counts, ...)
  rollouts.jsonl        {"group", "prompt_ids", "completion_ids", "reward"
                        [, "old_logprobs"] [, "ref_logprobs"]} per line
  expected.safetensors  loss [1], logp [completion tokens], grad.<hf name>,
                        and for the optimizer cases param.<hf name> after the
                        step(s) and grad_norm [steps] (pre-clip global norm)

Cases whose reference would be byte-identical to another case's point at it
instead of duplicating megabytes of gradients: case.json's "rollouts" and
"expected" are paths relative to the case folder. The five "which layers"
cases share one expected file computed with every layer trained; the script
checks that training only the case's own layers gives the same gradients.

Deterministic: fixed seeds, single-threaded deterministic torch; re-running
reproduces the same files. Usage (from the repo root):
    .tools/venv/bin/python tools/make_train_fixtures.py
(venv from tools/requirements-fixtures.txt, see tests/fixtures/README.md).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "train"

TOK_VOCAB = 357  # ids drawn from the tokenizer's vocabulary (specials included)
GRPO_EPS = 1e-6
RATIO_LIMIT = 20.0
# AdamW elements whose step-1 gradient is below this fraction of the tensor's RMS
# gradient: their update is decided by rounding (see optimizer_cases).
ADAMW_WELL_CONDITIONED = 1e-2


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def load_model(name: str, dtype=torch.float32):
    m = AutoModelForCausalLM.from_pretrained(FIXTURES / name, dtype=dtype, attn_implementation="eager")
    m.eval()  # no dropout (the configs have attention_dropout 0 anyway)
    return m


def set_trainable(model, layers: list[int]) -> list[str]:
    """requires_grad only on the listed decoder layers; returns their HF names."""
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    for l in layers:
        for p in model.model.layers[l].parameters():
            p.requires_grad_(True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    want_prefixes = tuple(f"model.layers.{l}." for l in layers)
    assert names and all(n.startswith(want_prefixes) for n in names), names
    return names


def parse_layers(spec: str, n: int) -> list[int]:
    if spec == "all":
        return list(range(n))
    out: set[int] = set()
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    assert all(0 <= l < n for l in out)
    return sorted(out)


# --------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------

def make_rollouts(seed: int, groups: list[list[float]], interleave: bool = False) -> list[dict]:
    """One random prompt (3-8 ids) per group, one random completion (1-9 ids) per
    reward. Completion lengths cycle through a shuffled 1..9 so both extremes occur."""
    rng = random.Random(seed)
    lens = list(range(1, 10))
    rng.shuffle(lens)
    per_group = []
    k = 0
    for g, rewards in enumerate(groups):
        prompt = [rng.randrange(TOK_VOCAB) for _ in range(rng.randint(3, 8))]
        recs = []
        for r in rewards:
            c = lens[k % len(lens)]
            k += 1
            recs.append({"group": g, "prompt_ids": prompt,
                         "completion_ids": [rng.randrange(TOK_VOCAB) for _ in range(c)],
                         "reward": r})
        per_group.append(recs)
    if not interleave:
        return [r for recs in per_group for r in recs]
    out = []
    for i in range(max(len(x) for x in per_group)):
        for recs in per_group:
            if i < len(recs):
                out.append(recs[i])
    return out


def advantages(recs: list[dict], algo: str) -> list[float]:
    """Per record, within its group (by id, wherever the records are)."""
    by_group: dict[int, list[float]] = {}
    for r in recs:
        by_group.setdefault(r["group"], []).append(float(r["reward"]))
    out = []
    for r in recs:
        rs = torch.tensor(by_group[r["group"]], dtype=torch.float64)
        mean = rs.mean()
        if algo == "grpo":
            if len(rs) == 1:
                a = 0.0  # DESIGN: a group of one gets 0 (verl would give A = r)
            else:
                a = float((r["reward"] - mean) / (rs.std() + GRPO_EPS))  # Bessel (torch default)
        elif algo == "dr-grpo":
            a = float(r["reward"] - mean)
        else:
            raise ValueError(algo)
        out.append(a)
    return out


# --------------------------------------------------------------------------
# Loss (DESIGN section 5; verl core_algos.compute_policy_loss "vanilla", kl_penalty, agg_loss)
# --------------------------------------------------------------------------

def forward_tokens(model, recs: list[dict]):
    """Per record: (logp [C], entropy [C]) of the completion tokens, each sequence
    run alone (no padding). logp of token j = log_softmax(logits[P+j-1])[token]."""
    out = []
    for r in recs:
        p, c = r["prompt_ids"], r["completion_ids"]
        ids = torch.tensor(p + c, dtype=torch.long)
        logits = model(input_ids=ids[None], use_cache=False).logits[0]
        rows = logits[len(p) - 1: len(p) + len(c) - 1]
        if rows.dtype == torch.bfloat16:
            rows = rows.float()  # bf16 model: the loss in f32 from bf16 logits (as verl)
        lsm = torch.log_softmax(rows, dim=-1)
        logp = lsm.gather(-1, torch.tensor(c, dtype=torch.long)[:, None])[:, 0]
        # verl entropy_from_logits: logsumexp(logits) - sum(softmax * logits)
        pd = torch.softmax(rows, dim=-1)
        ent = torch.logsumexp(rows, dim=-1) - (pd * rows).sum(-1)
        out.append((logp, ent))
    return out


def kl_term(logp, ref, kind: str):
    d = logp - ref
    if kind == "k1":
        return d
    if kind == "k2":
        return d * d / 2
    if kind == "k3":
        return torch.exp(ref - logp) - (ref - logp) - 1
    raise ValueError(kind)


def case_loss(model, recs, cfg, old_override=None):
    """Returns (loss, logp list, facts) for the case settings `cfg`."""
    adv = advantages(recs, cfg["algo"])
    toks = forward_tokens(model, recs)
    per_seq = []
    facts = dict(clip_high=0, clip_low=0, dual_clip=0, tokens=0, ratio_min=math.inf, ratio_max=-math.inf,
                 log_ratio_margin=math.inf)
    dt = toks[0][0].dtype
    for i, (r, (logp, ent)) in enumerate(zip(recs, toks)):
        n = len(r["completion_ids"])
        a = torch.full((n,), adv[i], dtype=dt)
        if old_override is not None:
            old = old_override[i].to(dt)
        elif "old_logprobs" in r:
            old = torch.tensor(r["old_logprobs"], dtype=torch.float32).to(dt)
        else:
            old = logp.detach()
        neg_kl = torch.clamp(logp - old, -RATIO_LIMIT, RATIO_LIMIT)
        ratio = torch.exp(neg_kl)
        lo, hi = 1 - cfg["eps_low"], 1 + cfg["eps_high"]
        pg1 = -a * ratio
        pg2 = -a * torch.clamp(ratio, lo, hi)
        clip1 = torch.maximum(pg1, pg2)
        if cfg["clip_c"] is not None:
            pg3 = -a * cfg["clip_c"]
            clip2 = torch.minimum(pg3, clip1)
            pg = torch.where(a < 0, clip2, clip1)
        else:
            pg = clip1
        l = pg
        if cfg["kl_coef"] != 0.0:
            ref = torch.tensor(r["ref_logprobs"], dtype=torch.float32).to(dt)
            l = l + cfg["kl_coef"] * kl_term(logp, ref, cfg["kl"])
        if cfg["entropy_coef"] != 0.0:
            l = l - cfg["entropy_coef"] * ent
        per_seq.append(l)
        # facts: which clip bound (strictly), and how far ratios sit from every threshold
        with torch.no_grad():
            rr = ratio.double()
            facts["tokens"] += n
            facts["ratio_min"] = min(facts["ratio_min"], float(rr.min()))
            facts["ratio_max"] = max(facts["ratio_max"], float(rr.max()))
            if adv[i] > 0:
                facts["clip_high"] += int((rr > hi).sum())
            if adv[i] < 0:
                facts["clip_low"] += int((rr < lo).sum())
                if cfg["clip_c"] is not None:
                    facts["dual_clip"] += int((rr > cfg["clip_c"]).sum())
            if adv[i] != 0 and not bool((rr == 1).all()):
                lr_ = rr.log()
                for t in (lo, hi, cfg["clip_c"] or hi):
                    facts["log_ratio_margin"] = min(facts["log_ratio_margin"],
                                                    float((lr_ - math.log(t)).abs().min()))
    agg = cfg["loss_agg"]
    if agg == "token-mean":
        flat = torch.cat(per_seq)
        loss = flat.sum() / flat.numel()
    elif agg == "seq-mean-token-mean":
        loss = torch.stack([l.sum() / l.numel() for l in per_seq]).mean()
    elif agg == "seq-mean-token-sum-norm":
        loss = torch.stack([l.sum() / cfg["max_new_tokens"] for l in per_seq]).mean()
    else:
        raise ValueError(agg)
    facts["entropy"] = [e.detach() for _, e in toks]
    return loss, [lp for lp, _ in toks], facts, adv


def scalar_loss(recs, logps, ents, adv, cfg) -> float:
    """The same loss again, token by token with Python floats (an independent
    transcription of DESIGN section 5, to catch a slip in the tensor version)."""
    seqs = []
    for r, lp, en, a in zip(recs, logps, ents, adv):
        ls = []
        for j, (x, h) in enumerate(zip(lp.tolist(), en.tolist())):
            old = r["old_logprobs"][j] if "old_logprobs" in r else x
            ratio = math.exp(min(max(x - old, -RATIO_LIMIT), RATIO_LIMIT))
            l = max(-a * ratio, -a * min(max(ratio, 1 - cfg["eps_low"]), 1 + cfg["eps_high"]))
            if a < 0 and cfg["clip_c"] is not None:
                l = min(l, -a * cfg["clip_c"])
            if cfg["kl_coef"]:
                d = x - r["ref_logprobs"][j]
                k = {"k1": d, "k2": d * d / 2, "k3": math.exp(-d) + d - 1}[cfg["kl"]]
                l += cfg["kl_coef"] * k
            l -= cfg["entropy_coef"] * h
            ls.append(l)
        seqs.append(ls)
    agg = cfg["loss_agg"]
    if agg == "token-mean":
        return sum(map(sum, seqs)) / sum(map(len, seqs))
    if agg == "seq-mean-token-mean":
        return sum(sum(s) / len(s) for s in seqs) / len(seqs)
    return sum(sum(s) / cfg["max_new_tokens"] for s in seqs) / len(seqs)


def grads_for(model, names, recs, cfg):
    loss, logps, facts, adv = case_loss(model, recs, cfg)
    again = scalar_loss(recs, logps, facts["entropy"], adv, cfg)
    assert abs(again - float(loss.detach())) <= 1e-6 * max(1.0, abs(again)), (again, float(loss.detach()))
    loss.backward()
    params = dict(model.named_parameters())
    grads = {n: params[n].grad.detach().clone() for n in names}
    for n in names:
        params[n].grad = None
    return loss.detach(), [lp.detach() for lp in logps], grads, facts, adv


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

BASE_LOSS = dict(algo="grpo", loss_agg="token-mean", max_new_tokens=12, eps_low=0.2, eps_high=0.2,
                 clip_c=3.0, kl="k3", kl_coef=0.0, entropy_coef=0.0)

# Offsets logp - old_logp (log-ratios) for the clip cases: ratios 0.30, 0.55, 0.74,
# 0.95, 1.05, 1.35, 1.82, 4.48 -- each at least 0.07 (in log space) from the
# thresholds 0.8, 1.2 and 3, so a ~1e-6 difference in logp never flips a branch.
CLIP_OFFSETS = [-1.2, -0.6, -0.3, -0.05, 0.05, 0.3, 0.6, 1.5]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def f64_check(model_name, layers, recs, cfg, grads32, loss32):
    """The float32 reference's own error: the same computation in float64."""
    m64 = load_model(model_name, torch.float64)
    names = set_trainable(m64, layers)
    loss64, _, g64, _, _ = grads_for(m64, names, recs, cfg)
    worst = max(rel(grads32[n], g64[n]) for n in names)
    return dict(grad_rel_err_vs_f64_max=worst,
                loss_rel_err_vs_f64=abs(float(loss32) - float(loss64)) / abs(float(loss64)))


def torch_bf16_errors(model_name, layers, recs, cfg, ref_grads) -> dict[str, float]:
    """How far PyTorch's own bf16 compute (model.to(bfloat16): weights and
    activations bf16, the loss in f32 from the bf16 logits) lands from the f32
    reference, per gradient tensor: the yardstick for the bf16 CUDA backend."""
    m = load_model(model_name).to(torch.bfloat16)
    names = set_trainable(m, layers)
    loss, _, _, _ = case_loss(m, recs, cfg)
    loss.backward()
    params = dict(m.named_parameters())
    return {n: rel(params[n].grad.float(), ref_grads[n]) for n in names}


def write_case(name: str, case: dict, recs: list[dict] | None, tensors: dict | None):
    d = OUT / name
    d.mkdir(parents=True)
    if recs is not None:
        with open(d / "rollouts.jsonl", "w") as f:
            for r in recs:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")
        case.setdefault("rollouts", "rollouts.jsonl")
    if tensors is not None:
        save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(d / "expected.safetensors"))
        case.setdefault("expected", "expected.safetensors")
    case["torch"] = torch.__version__.split("+")[0]
    case["transformers"] = transformers.__version__
    (d / "case.json").write_text(json.dumps(case, indent=2) + "\n")


def f32(x):
    """A Python float as the nearest float32 value (JSON keeps it exactly)."""
    return float(torch.tensor(x, dtype=torch.float32))


def loss_case(name, model_name, layers_spec, recs, cfg, note, extra=None):
    model = load_model(model_name)
    layers = parse_layers(layers_spec, model.config.num_hidden_layers)
    names = set_trainable(model, layers)
    loss, logps, grads, facts, adv = grads_for(model, names, recs, cfg)
    case = dict(note=note, model=model_name, train_layers=layers_spec, **cfg,
                optimizer=None, grad_clip=0.0, steps=0, trained_params=names,
                records=len(recs), completion_tokens=facts["tokens"],
                advantages=[f32(a) for a in adv], loss=float(loss))
    case.update(f64_check(model_name, layers, recs, cfg, grads, loss))
    if extra:
        case.update(extra(facts, grads))
    tensors = {"loss": loss.reshape(1).float(), "logp": torch.cat(logps).float()}
    tensors.update({f"grad.{n}": g.float() for n, g in grads.items()})
    write_case(name, case, recs, tensors)
    return model, names, loss, logps, grads


def with_old(recs, logps, offsets_for):
    """Copies of `recs` with old_logprobs = logp - offset (stored as float32)."""
    out = []
    for r, lp in zip(recs, logps):
        r = dict(r)
        off = torch.tensor(offsets_for(len(lp)), dtype=torch.float32)
        r["old_logprobs"] = [f32(x) for x in (lp.float() - off).tolist()]
        out.append(r)
    return out


def cycle_offsets(seed: int, choices):
    rng = random.Random(seed)
    return lambda n: [rng.choice(choices) for _ in range(n)]


def clip_facts(facts, _grads):
    return dict(clip_counts=dict(clip_high=facts["clip_high"], clip_low=facts["clip_low"],
                                 dual_clip=facts["dual_clip"]),
                ratio_range=[facts["ratio_min"], facts["ratio_max"]],
                min_log_ratio_margin=facts["log_ratio_margin"])


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    Q3, Q2 = "qwen3-gqa2-tied", "qwen2-gqa4-bias-tied"

    # ---- qwen3: which layers are trained (one shared reference, every layer) ----
    base_recs = make_rollouts(11, [[1.0, 0.0, 0.5], [1.0, 1.0, 1.0], [0.0, 1.0, 0.25], [0.7]])
    all_name = "qwen3-grpo-all"
    model, names_all, base_loss, base_logps, base_grads = loss_case(
        all_name, Q3, "all", base_recs, dict(BASE_LOSS),
        "GRPO token-mean, on-policy (no old_logprobs: ratio 1), every decoder layer trained. "
        "Group 1 has equal rewards and group 3 is a group of one: advantage 0 for both. "
        "Its expected.safetensors is also the reference of the qwen3-grpo-layer* cases.",
        extra=lambda _f, grads: {"grad_rel_err_torch_bf16": torch_bf16_errors(
            Q3, [0, 1, 2], base_recs, dict(BASE_LOSS), grads)})
    for layers_spec, cname in [("0", "qwen3-grpo-layer0"), ("1", "qwen3-grpo-layer1"),
                               ("2", "qwen3-grpo-layer2"), ("0,2", "qwen3-grpo-layer0-layer2")]:
        layers = parse_layers(layers_spec, 3)
        names = set_trainable(model, layers)
        loss, _, grads, _, adv = grads_for(model, names, base_recs, dict(BASE_LOSS))
        assert float(loss) == float(base_loss)
        worst = max(float((grads[n] - base_grads[n]).abs().max()) for n in names)
        assert worst <= 1e-7, (cname, worst)
        case = dict(note=f"GRPO token-mean, on-policy, layer(s) {layers_spec} trained; same rollouts and "
                         f"reference as {all_name} (only this case's layers are compared).",
                    model=Q3, train_layers=layers_spec, **BASE_LOSS, optimizer=None, grad_clip=0.0, steps=0,
                    trained_params=names, records=len(base_recs),
                    completion_tokens=sum(len(r["completion_ids"]) for r in base_recs),
                    advantages=[f32(a) for a in adv], loss=float(loss),
                    max_abs_diff_vs_all_layers_run=worst,
                    grad_rel_err_torch_bf16=torch_bf16_errors(Q3, layers, base_recs, dict(BASE_LOSS), grads),
                    rollouts=f"../{all_name}/rollouts.jsonl", expected=f"../{all_name}/expected.safetensors")
        write_case(cname, case, None, None)

    # ---- qwen3: ratio clip (both sides) and dual clip, layer 1 ----
    clip_recs0 = make_rollouts(12, [[1.0, 0.0, 0.5], [0.2, 0.9, 0.0], [0.3, 0.3, 0.3]])
    m = load_model(Q3)
    set_trainable(m, [1])
    with torch.no_grad():
        lp0 = [lp for lp, _ in forward_tokens(m, clip_recs0)]
    clip_recs = with_old(clip_recs0, lp0, cycle_offsets(5, CLIP_OFFSETS))
    _, _, _, _, _ = loss_case(
        "qwen3-clip-layer1", Q3, "1", clip_recs, dict(BASE_LOSS),
        "GRPO token-mean with old_logprobs = logp - offset, offsets from "
        f"{CLIP_OFFSETS}: the ratio clip binds above (A>0, r>1.2) and below (A<0, r<0.8) and the "
        "dual clip (A<0, r>3) binds; clip_counts has how many tokens each.", extra=clip_facts)
    c = json.loads((OUT / "qwen3-clip-layer1" / "case.json").read_text())
    assert all(v >= 1 for v in c["clip_counts"].values()), c["clip_counts"]
    assert c["min_log_ratio_margin"] > 0.05, c["min_log_ratio_margin"]

    # ---- qwen3: KL (k3, 0.1) to reference log-probs and an entropy bonus, layer 2 ----
    kl_recs = make_rollouts(13, [[1.0, 0.0, 0.0], [0.5, 1.0, 0.25], [1.0, 1.0, 1.0]])
    with torch.no_grad():
        lpk = [lp for lp, _ in forward_tokens(m, kl_recs)]
    g = torch.Generator().manual_seed(14)
    for r, lp in zip(kl_recs, lpk):
        r["ref_logprobs"] = [f32(x) for x in (lp + 0.5 * torch.randn(lp.shape, generator=g)).tolist()]
    loss_case("qwen3-kl-entropy-layer2", Q3, "2", kl_recs,
              dict(BASE_LOSS, kl="k3", kl_coef=0.1, entropy_coef=0.01),
              "GRPO token-mean, on-policy, + 0.1 * k3 KL to ref_logprobs (= logp + N(0, 0.5^2)) "
              "- 0.01 * entropy of the full softmax (384 columns); group 2 has equal rewards, so its "
              "gradient comes from the KL and entropy terms alone. Top layer trained.")

    # ---- qwen3: Dr. GRPO, seq-mean-token-sum-norm, layer 0 ----
    dr_recs = make_rollouts(15, [[1.0, 0.0, 1.0], [2.0, 2.0, 2.0], [3.0, -1.0]])
    loss_case("qwen3-drgrpo-layer0", Q3, "0", dr_recs,
              dict(BASE_LOSS, algo="dr-grpo", loss_agg="seq-mean-token-sum-norm", max_new_tokens=12),
              "Dr. GRPO (A = r - mean, no std), seq-mean-token-sum-norm with max_new_tokens 12, "
              "on-policy, bottom layer trained (empty frozen prefix).")

    # ---- qwen2: layer 1 GRPO; layers 0-1 seq-mean-token-mean with old log-probs ----
    q2_recs = make_rollouts(21, [[1.0, 0.0, 0.5], [0.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    loss_case("qwen2-grpo-layer1", Q2, "1", q2_recs, dict(BASE_LOSS),
              "Qwen2 (q/k/v biases, no q/k norm, GQA 4): GRPO token-mean, on-policy, top layer.")
    q2b0 = make_rollouts(22, [[1.0, 0.0, 0.25], [0.0, 1.0, 0.5], [0.5, 0.5, 0.5]], interleave=True)
    m2 = load_model(Q2)
    with torch.no_grad():
        lpq = [lp for lp, _ in forward_tokens(m2, q2b0)]
    q2b = with_old(q2b0, lpq, cycle_offsets(23, CLIP_OFFSETS))
    loss_case("qwen2-seqmean-old-layers0-1", Q2, "0-1", q2b,
              dict(BASE_LOSS, loss_agg="seq-mean-token-mean"),
              "Qwen2, both layers: GRPO seq-mean-token-mean with old_logprobs (offsets as in "
              "qwen3-clip-layer1). Records are interleaved across groups (g0, g1, g2, g0, ...): "
              "groups are found by id, not by position.", extra=clip_facts)
    c = json.loads((OUT / "qwen2-seqmean-old-layers0-1" / "case.json").read_text())
    assert c["min_log_ratio_margin"] > 0.05, c["min_log_ratio_margin"]

    # ---- optimizer cases on qwen3 layer 1 ----
    optimizer_cases(Q3, base_recs, base_logps, base_grads, all_name)

    report()
    return 0


def optimizer_cases(Q3, base_recs, base_logps, base_grads, all_name):
    # SGD lr 1, one step, no clipping: the base rollouts (on-policy), layer 1. The
    # gradients are exactly grad.model.layers.1.* of the shared reference, and the
    # step is exactly param - lr * grad in float32 (checked here bit for bit), so the
    # parameters after the step are not stored again: the test computes them.
    m = load_model(Q3)
    names = set_trainable(m, [1])
    params = dict(m.named_parameters())
    before = {n: params[n].detach().clone() for n in names}
    opt = torch.optim.SGD([params[n] for n in names], lr=1.0)
    loss, logps, _, _ = case_loss(m, base_recs, BASE_LOSS)
    loss.backward()
    gn = torch.sqrt(sum((params[n].grad.double() ** 2).sum() for n in names))
    for n in names:
        assert torch.equal(params[n].grad, base_grads[n]), n
    opt.step()
    for n in names:
        assert torch.equal(params[n].detach(), before[n] - 1.0 * base_grads[n]), n
    tensors = {"loss": loss.detach().reshape(1), "logp": torch.cat([x.detach() for x in logps]),
               "grad_norm": gn.float().reshape(1)}
    case = dict(note=f"One torch.optim.SGD(lr=1.0) step on layer 1, no clipping, rollouts of {all_name}. "
                     f"The step's gradients are grad.model.layers.1.* of {all_name}'s expected.safetensors "
                     "and the parameters after the step are exactly (float32) param - lr * grad, which the "
                     "script checked against torch.optim.SGD bit for bit; they are not stored twice.",
                model=Q3, train_layers="1", **BASE_LOSS,
                optimizer=dict(kind="sgd", lr=1.0, weight_decay=0.0), grad_clip=0.0, steps=1,
                trained_params=names, records=len(base_recs), loss=float(loss.detach()), grad_norms=[float(gn)],
                rollouts=f"../{all_name}/rollouts.jsonl",
                params_after_from=f"../{all_name}/expected.safetensors")
    write_case("qwen3-sgd-layer1", case, None, tensors)

    # AdamW, two steps, clip 1.0 before each; old_logprobs fixed (= the initial logp).
    recs = []
    for r, lp in zip(base_recs, base_logps):
        r = dict(r)
        r["old_logprobs"] = [f32(x) for x in lp.tolist()]
        recs.append(r)
    adamw = dict(kind="adamw", lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
    # Step 1's gradients are exactly the shared reference's grad.model.layers.1.*
    # (old_logprobs = the very logp, so the ratio is exactly 1): checked bit for bit.
    deltas, norms, losses, facts2, first, final = adamw_run(Q3, [1], recs, 1.0, adamw,
                                                            step1_grads=base_grads)
    # step 2's clip branches must not hinge on rounding (an engine's logp after step 1
    # differs from torch's by ~1e-6)
    assert facts2["log_ratio_margin"] > 1e-3, facts2["log_ratio_margin"]
    # How sensitive are the updates to the gradients' last digits? Rerun with the
    # gradients of both steps perturbed (a) multiplicatively by 1 + 1e-5 N(0,1),
    # (b) additively by 3e-6 * RMS(tensor) * N(0,1) (about how far two f32
    # implementations' gradients are apart), and report the worst relative change
    # of a tensor's update, over all elements and over the well-conditioned ones
    # (|step-1 gradient| >= ADAMW_WELL_CONDITIONED * RMS): AdamW normalises each
    # element by its own gradient scale, so an element whose gradient is a rounding
    # residue (1e-5 of the tensor's RMS) gets an update set by rounding.
    def well(n):
        g = base_grads[n]
        return g.abs() >= ADAMW_WELL_CONDITIONED * g.norm() / g.numel() ** 0.5
    sens = {}
    for key, kw in [("multiplicative_1e-5", dict(noise=1e-5)), ("additive_3e-6_rms", dict(abs_noise=3e-6))]:
        d = adamw_run(Q3, [1], recs, 1.0, adamw, **kw)[0]
        sens[key] = max(rel(d[n], deltas[n]) for n in deltas)
        sens[key + "_well_conditioned"] = max(rel(d[n][well(n)], deltas[n][well(n)]) for n in deltas)
    ill = {n: int((~well(n)).sum()) for n in deltas}
    names = list(final)
    tensors = {"loss": torch.tensor(losses[:1], dtype=torch.float32),
               "losses": torch.tensor(losses, dtype=torch.float32),
               "logp": torch.cat([x for x in first]).float(),
               "grad_norm": torch.tensor(norms, dtype=torch.float32)}
    tensors.update({f"param.{n}": final[n] for n in names})
    case = dict(note="Two torch.optim.AdamW steps on layer 1 (lr 1e-3, betas 0.9/0.999, eps 1e-8, "
                     "weight_decay 0.01), clip_grad_norm_(1.0) before each, the same rollouts both steps "
                     f"(those of {all_name}) with old_logprobs fixed to the initial logp, so step 2's "
                     "ratios differ from 1. grad_norm = pre-clip global norm of each step.",
                model=Q3, train_layers="1", **BASE_LOSS, optimizer=adamw, grad_clip=1.0, steps=2,
                trained_params=names, records=len(recs), losses=losses, grad_norms=norms,
                step2_ratio_range=[facts2["ratio_min"], facts2["ratio_max"]],
                step2_min_log_ratio_margin=facts2["log_ratio_margin"],
                step2_clip_counts=dict(clip_high=facts2["clip_high"], clip_low=facts2["clip_low"],
                                       dual_clip=facts2["dual_clip"]),
                step1_grads_from=f"../{all_name}/expected.safetensors",
                well_conditioned_threshold=ADAMW_WELL_CONDITIONED,
                ill_conditioned_elements=ill,
                update_rel_change_under_grad_noise=sens)
    write_case("qwen3-adamw2-layer1", case, recs, tensors)


def adamw_run(model_name, layers, recs, clip, a, noise=0.0, abs_noise=0.0, step1_grads=None):
    m = load_model(model_name)
    names = set_trainable(m, layers)
    params = dict(m.named_parameters())
    before = {n: params[n].detach().clone() for n in names}
    opt = torch.optim.AdamW([params[n] for n in names], lr=a["lr"], betas=(a["beta1"], a["beta2"]),
                            eps=a["eps"], weight_decay=a["weight_decay"], foreach=False)
    g = torch.Generator().manual_seed(99)
    norms, losses, facts2, first = [], [], None, None
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        loss, logps, facts, _ = case_loss(m, recs, BASE_LOSS)
        loss.backward()
        if step == 0 and step1_grads is not None:
            for n in names:
                assert torch.equal(params[n].grad, step1_grads[n]), n
        for n in names:
            gr = params[n].grad
            if noise:
                gr.mul_(1 + noise * torch.randn(gr.shape, generator=g))
            if abs_noise:
                gr.add_(abs_noise * (gr.norm() / gr.numel() ** 0.5) * torch.randn(gr.shape, generator=g))
        norm = torch.nn.utils.clip_grad_norm_([params[n] for n in names], clip, foreach=False)
        norms.append(float(norm))
        losses.append(float(loss.detach()))
        if step == 0:
            first = [x.detach() for x in logps]
        else:
            facts2 = facts
        opt.step()
    deltas = {n: params[n].detach().double() - before[n].double() for n in names}
    final = {n: params[n].detach().clone() for n in names}
    return deltas, norms, losses, facts2, first, final


def report():
    total = 0
    print("cases (tests/fixtures/train):")
    for d in sorted(OUT.iterdir()):
        c = json.loads((d / "case.json").read_text())
        size = sum(f.stat().st_size for f in d.iterdir())
        total += size
        extra = ""
        if "clip_counts" in c:
            extra += f" clips={c['clip_counts']} margin={c['min_log_ratio_margin']:.3f}"
        if c.get("grad_norms"):
            extra += f" grad_norms={[round(x, 4) for x in c['grad_norms']]}"
        if "grad_rel_err_vs_f64_max" in c:
            extra += f" f32-vs-f64 grad rel<={c['grad_rel_err_vs_f64_max']:.1e}"
        if "update_rel_change_under_grad_noise" in c:
            extra += (f" step2 ratios {c['step2_ratio_range'][0]:.3f}..{c['step2_ratio_range'][1]:.3f}"
                      f" update sensitivity {c['update_rel_change_under_grad_noise']}")
        print(f"  {d.name:30s} {size/1024:7.1f} KiB  layers={c['train_layers']:4s} loss={c['loss'] if 'loss' in c else c['losses']}{extra}")
    print(f"total: {total/1024:.1f} KiB")


if __name__ == "__main__":
    sys.exit(main())
