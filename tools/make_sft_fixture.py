#!/usr/bin/env python3
"""The SFT fixtures of tests/sft_vs_pytorch.rs: one cross-entropy step on a few
examples with PyTorch autograd.

For the tiny random model tests/fixtures/qwen3-gqa2-tied (transformers, f32), with
only decoder layer 1 trainable: the loss is F.cross_entropy over the completion
tokens of every example (the logits at position t predict token t+1), token-mean
over the batch (reduction="mean" over all completion tokens), as TRL's SFTTrainer
computes it with completion_only_loss. Written to tests/fixtures/train/qwen3-sft-layer1/:
examples.jsonl ({"prompt_ids", "completion_ids"}), expected.safetensors (loss,
per-token logp, grad.<param>) and case.json. Two more cases train the embedding,
the LM head and the final norm too (`--train-embeddings`): qwen3-sft-embed-layer1
(tied head: one gradient for both uses of the table) and qwen2-untied-sft-embed-layer0
(tests/fixtures/qwen2-mha-untied-f16, its own lm_head).

    python3 -m venv .venv && .venv/bin/pip install -r tools/requirements-fixtures.txt
    .venv/bin/python tools/make_sft_fixture.py
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
EDGES = ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight")


def sft_step(model_name, layer, edges, dtype, examples=None):
    """(loss, per-token logp, grads by name, examples) with the model in `dtype`
    (the loss and the log-softmax in f32)."""
    model = AutoModelForCausalLM.from_pretrained(FIXTURES / model_name, torch_dtype=torch.float32).to(dtype)
    model.eval()
    vocab = model.config.vocab_size
    names = []
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith(f"model.layers.{layer}.") or (edges and n in EDGES)
        if p.requires_grad:
            names.append(n)
    if examples is None:
        rng = random.Random(7)
        examples = []
        for plen, clen in [(3, 5), (6, 2), (1, 7), (4, 4)]:
            examples.append(dict(prompt_ids=[rng.randrange(vocab) for _ in range(plen)],
                                 completion_ids=[rng.randrange(vocab) for _ in range(clen)]))
    logits_rows, targets, logps = [], [], []
    for e in examples:
        ids = torch.tensor([e["prompt_ids"] + e["completion_ids"]])
        logits = model(input_ids=ids).logits[0].float()
        p = len(e["prompt_ids"])
        rows = logits[p - 1:-1]
        tgt = torch.tensor(e["completion_ids"])
        logits_rows.append(rows)
        targets.append(tgt)
        logps.append(torch.log_softmax(rows, -1).gather(1, tgt[:, None])[:, 0])
    loss = F.cross_entropy(torch.cat(logits_rows), torch.cat(targets), reduction="mean")
    loss.backward()
    params = dict(model.named_parameters())
    grads = {n: params[n].grad.detach().float().clone() for n in names}
    return loss.detach(), torch.cat(logps).detach(), grads, examples


def case(name, model_name, layer, edges) -> None:
    out = FIXTURES / "train" / name
    loss, logp, grads, examples = sft_step(model_name, layer, edges, torch.float32)
    names = list(grads)
    targets = [e["completion_ids"] for e in examples]
    # What PyTorch's own bf16 compute gets against its f32 gradients, per tensor: the
    # emulator's bf16 tolerance is 1.5x this where it exceeds 3e-2.
    _, _, g16, _ = sft_step(model_name, layer, edges, torch.bfloat16, examples)
    bf16_err = {n: float((g16[n] - grads[n]).norm() / grads[n].norm()) for n in names}
    tensors = {"loss": loss.reshape(1), "logp": logp}
    tensors.update({f"grad.{n}": g for n, g in grads.items()})
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with open(out / "examples.jsonl", "w") as f:
        for e in examples:
            f.write(json.dumps(e, separators=(",", ":")) + "\n")
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(out / "expected.safetensors"))
    info = dict(note="one SFT step: token-mean cross-entropy over completion tokens",
                model=model_name, train_layers=str(layer), train_embeddings=edges, trained_params=names,
                loss=float(loss), completion_tokens=int(sum(len(t) for t in targets)),
                grad_rel_err_torch_bf16=bf16_err,
                torch=torch.__version__.split("+")[0], transformers=transformers.__version__)
    (out / "case.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out}: loss {float(loss):.6f}, {len(names)} gradients")


def main() -> None:
    torch.manual_seed(0)
    case("qwen3-sft-layer1", "qwen3-gqa2-tied", 1, False)
    case("qwen3-sft-embed-layer1", "qwen3-gqa2-tied", 1, True)
    case("qwen2-untied-sft-embed-layer0", "qwen2-mha-untied-f16", 0, True)


if __name__ == "__main__":
    main()
