//! One SFT step against PyTorch (tests/fixtures/train/qwen3-sft-*, made by
//! tools/make_sft_fixture.py): token-mean cross-entropy over the completion tokens,
//! `F.cross_entropy(..., reduction="mean")` and `loss.backward()` with one decoder
//! layer trainable, and (`--train-embeddings`) the embedding, LM head and final norm
//! too, on a tied and on an untied model. The engine's trainer in cross-entropy mode must give the same
//! loss (1e-4 relative, f32 CPU), per-token log-probs (1e-4) and gradient of every
//! trained tensor (2e-3, the tolerance of the GRPO fixtures); on the CUDA backend
//! (emulator, GPU when present; bf16 weights and activations) 2e-2 on the loss and,
//! per gradient, 3e-2 or 1.5x what PyTorch's own bf16 compute gets on that tensor
//! where that is more (`grad_rel_err_torch_bf16` in case.json), as for GRPO.
//! Then a short `engine sft` on the built-in demo model: the loss falls.

mod common;

use common::{cuda_backends, diff, fixture, read_f32_tensors};
use onelayer::backend::cpu::loss::LossAgg;
use onelayer::backend::cpu::CpuBackend;
use onelayer::backend::{Backend, LossConfig};
use onelayer::model::Model;
use onelayer::train::{Algo, Optimizer, Rollout, TrainConfig, TrainLayers, Trainer};
use std::path::Path;

fn examples(dir: &Path) -> Vec<Rollout> {
    std::fs::read_to_string(dir.join("examples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let ids = |k: &str| -> Vec<u32> {
                v[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            };
            Rollout {
                group: String::new(),
                prompt_ids: ids("prompt_ids"),
                completion_ids: ids("completion_ids"),
                reward: 0.0,
                old_logprobs: None,
                ref_logprobs: None,
                advantage: Some(0.0),
            }
        })
        .collect()
}

fn sft_config() -> TrainConfig {
    TrainConfig {
        algo: Algo::Grpo,
        loss: LossConfig::cross_entropy(),
        loss_agg: LossAgg::TokenMean,
        max_new_tokens: 8,
        optimizer: Optimizer::Sgd {
            lr: 1.0,
            weight_decay: 0.0,
        },
        grad_clip: 0.0,
        ppo_epochs: 1,
        mini_batch: None,
        micro_batch_tokens: Some(9),
        keep_prefix: false,
    }
}

/// The SFT fixture cases: (folder, with the embedding, head and final norm trained).
const CASES: [&str; 3] = [
    "qwen3-sft-layer1",
    "qwen3-sft-embed-layer1",
    "qwen2-untied-sft-embed-layer0",
];

fn check<B: Backend>(case_name: &str, name: &str, be: B, loss_tol: f64, grad_tol: f64) {
    let dir = fixture("train").join(case_name);
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let name = &format!("{case_name} {name}");
    let want = read_f32_tensors(&dir.join("expected.safetensors"));
    let model = Model::load(&fixture(case["model"].as_str().unwrap()), be).unwrap();
    let spec = case["train_layers"].as_str().unwrap();
    let layers = TrainLayers::parse(spec, model.cfg.num_hidden_layers).unwrap();
    let mut trainer = Trainer::new(model, &layers, sft_config()).unwrap();
    if case["train_embeddings"].as_bool().unwrap() {
        trainer = trainer.with_embeddings().unwrap();
    }
    let (stats, grads) = trainer.loss_and_grads(&examples(&dir)).unwrap();
    let want_loss = want["loss"].1[0] as f64;
    let rel = (stats.loss - want_loss).abs() / want_loss.abs();
    eprintln!("{name}: loss {} vs {want_loss} (rel {rel:.2e})", stats.loss);
    assert!(
        rel <= loss_tol,
        "{name}: loss {} vs {want_loss}",
        stats.loss
    );
    assert!(!grads.is_empty());
    for (gname, g) in &grads {
        let (_, w) = &want[&format!("grad.{gname}")];
        let d = diff(g, w);
        let tol = if grad_tol > 1e-2 {
            let torch_bf16 = case["grad_rel_err_torch_bf16"][gname.as_str()]
                .as_f64()
                .unwrap_or_else(|| panic!("case.json lacks the bf16 error of {gname}"));
            grad_tol.max(1.5 * torch_bf16)
        } else {
            grad_tol
        };
        eprintln!("{name}: {gname}: rel {:.2e} (tol {tol:.2e})", d.rel);
        assert!(
            d.rel <= tol,
            "{name}: {gname} rel {:.3e} > {tol:.3e}",
            d.rel
        );
    }
    assert_eq!(
        grads.len(),
        want.keys().filter(|k| k.starts_with("grad.")).count()
    );
}

#[test]
fn sft_step_matches_pytorch_cross_entropy_on_the_cpu() {
    for case in CASES {
        check(case, "cpu", CpuBackend::<f32>::new(), 1e-4, 2e-3);
    }
}

#[test]
fn sft_step_matches_pytorch_cross_entropy_on_the_cuda_backend() {
    for case in CASES {
        for (name, be) in cuda_backends() {
            check(case, &name, be, 2e-2, 3e-2);
        }
    }
}

/// The per-token log-probs of the fixture, through the engine's scorer.
#[test]
fn sft_fixture_logprobs_match() {
    let dir = fixture("train").join("qwen3-sft-layer1");
    let want = read_f32_tensors(&dir.join("expected.safetensors"));
    let model = Model::load(&fixture("qwen3-gqa2-tied"), CpuBackend::<f32>::new()).unwrap();
    let ex = examples(&dir);
    let seqs: Vec<Vec<u32>> = ex
        .iter()
        .map(|e| {
            e.prompt_ids
                .iter()
                .chain(&e.completion_ids)
                .copied()
                .collect()
        })
        .collect();
    let got: Vec<f32> = ex
        .iter()
        .zip(model.score(&seqs).unwrap())
        .flat_map(|(e, lp)| lp[e.prompt_ids.len() - 1..].to_vec())
        .collect();
    let d = diff(&got, &want["logp"].1);
    assert!(d.rel <= 1e-4, "logp rel {:.3e}", d.rel);
    let mean = -got.iter().map(|&v| v as f64).sum::<f64>() / got.len() as f64;
    let loss = want["loss"].1[0] as f64;
    assert!((mean - loss).abs() <= 1e-4 * loss, "{mean} vs {loss}");
}

/// `engine sft` on the demo model: the loss falls, the run directory holds what
/// `engine run` keeps, and a resumed run continues from its checkpoint.
#[test]
fn engine_sft_loss_falls_and_resumes() {
    let dir = common::fresh_dir("sft", "demo");
    std::fs::create_dir_all(&dir).unwrap();
    let data: String = (0..200)
        .map(|i| {
            let (a, b) = (i % 10, (i / 10) % 10);
            let (a, b) = (a.max(b), a.min(b));
            format!(
                "{{\"prompt\": \"{a}-{b}=\", \"completion\": \"{}\"}}\n",
                a - b
            )
        })
        .collect();
    let data_path = dir.join("train.jsonl");
    std::fs::write(&data_path, data).unwrap();
    let out = dir.join("out");
    let (d, o) = (data_path.to_str().unwrap(), out.to_str().unwrap());
    let common = [
        "--device",
        "cpu",
        "--data",
        d,
        "--eval-data",
        d,
        "--out",
        o,
        "--eval-every",
        "10",
        "--save-every",
        "10",
    ];
    let mut args = vec!["sft", "--steps", "20"];
    args.extend_from_slice(&common);
    common::engine_ok(&args);
    let lines = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let m = lines(&out);
    let first = m[0]["eval_loss"].as_f64().unwrap();
    let last = m.last().unwrap()["eval_loss"].as_f64().unwrap();
    assert!(last < 0.6 * first, "eval loss {first} -> {last}");
    for f in [
        "config.toml",
        "loss.svg",
        "trained.safetensors",
        "checkpoints/step-000020/meta.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let mut args = vec!["sft", "--steps", "30", "--resume", o];
    args.extend_from_slice(&common[..2]);
    common::engine_ok(&args);
    let m = lines(&out);
    assert_eq!(m.last().unwrap()["step"], 30);
    assert_eq!(m.iter().filter(|l| l["step"] == 20).count(), 1);
    // --train-embeddings: every layer plus the embedding (tied head) and final norm
    // are trained and saved.
    let out2 = dir.join("out2");
    let mut args = vec![
        "sft",
        "--steps",
        "3",
        "--train-layer",
        "all",
        "--train-embeddings",
        "--out",
        out2.to_str().unwrap(),
    ];
    args.extend_from_slice(&common[..4]);
    common::engine_ok(&args);
    let files =
        onelayer::weights::WeightFiles::open_files(&[out2.join("trained.safetensors")]).unwrap();
    for name in [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "model.layers.0.mlp.up_proj.weight",
    ] {
        assert!(files.contains(name), "{name} not saved");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engine sft` on a model with a tokenizer and chat template: chat `messages` rows,
/// prompt/completion rows and (with `--loss-on all`) plain text all train; a row
/// that ends with a user turn is a one-line error naming the file and line.
#[test]
fn engine_sft_reads_chat_prompt_completion_and_text_rows() {
    let dir = common::fresh_dir("sft", "formats");
    std::fs::create_dir_all(&dir).unwrap();
    let model = fixture("qwen3-gqa2-tied");
    let m = model.to_str().unwrap();
    let rows = [
        (
            "chat.jsonl",
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}"#,
            "completion",
        ),
        (
            "pc.jsonl",
            r#"{"prompt": [{"role": "user", "content": "Name a colour."}], "completion": "Blue."}"#,
            "completion",
        ),
        (
            "text.jsonl",
            r#"{"text": "The quick brown fox jumps over the lazy dog."}"#,
            "all",
        ),
    ];
    for (name, row, loss_on) in rows {
        let path = dir.join(name);
        std::fs::write(&path, format!("{row}\n{row}\n")).unwrap();
        let out = dir.join(format!("out-{name}"));
        common::engine_ok(&[
            "sft",
            "--model",
            m,
            "--device",
            "cpu",
            "--data",
            path.to_str().unwrap(),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--loss-on",
            loss_on,
            "--lr",
            "1e-3",
            "--out",
            out.to_str().unwrap(),
        ]);
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert!(last["loss"].as_f64().unwrap().is_finite(), "{name}: {last}");
        assert!(last["loss_tokens"].as_u64().unwrap() > 0, "{name}: {last}");
    }
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    )
    .unwrap();
    let (ok, _, err) = common::engine_output(&[
        "sft",
        "--model",
        m,
        "--device",
        "cpu",
        "--data",
        bad.to_str().unwrap(),
        "--out",
        dir.join("o").to_str().unwrap(),
    ]);
    assert!(!ok);
    let line = err.lines().find(|l| l.starts_with("error")).unwrap();
    assert!(
        line.contains("bad.jsonl") && line.contains("line 1") && line.contains("assistant"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
