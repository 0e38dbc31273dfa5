//! The counting device (`--device meta`) at real shapes: `engine bench rl` runs the
//! real CUDA-backend code on Qwen3-4B and Qwen3-8B shapes with nothing allocated,
//! and its counted peak (reserved bytes) agrees with `engine plan`'s accounting
//! within 10%, fits an 80 GB H100 with room, and a training step after the first
//! allocates nothing. Also: the counting device counts what the emulator does on a
//! small model, the preflight refuses a run that does not fit in one line, and an
//! f32 checkpoint trained zero steps on the emulator comes back bit for bit.

mod common;

use common::engine_output as engine;
use onelayer::backend::cuda::{emu::EmuDevice, CudaBackend};
use onelayer::model::{layer_param_specs, Model};
use onelayer::train::{TrainConfig, TrainLayers, Trainer};
use onelayer::weights::WeightFiles;
use serde_json::Value;
use std::sync::Arc;

const GIB: f64 = (1u64 << 30) as f64;

fn bench_rl(device: &str, shape: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "bench", "rl", "--device", device, "--shape", shape, "--json",
    ];
    args.extend(extra);
    let (ok, out, err) = engine(&args);
    assert!(ok, "engine {}: {err}", args.join(" "));
    serde_json::from_str(out.trim()).expect("one JSON object")
}

fn check_real_shape(shape: &str, layer: &str, prompts: &str) -> Value {
    let j = bench_rl(
        "meta",
        shape,
        &[
            "--prompts-per-step",
            prompts,
            "--group-size",
            "8",
            "--prompt-len",
            "256",
            "--max-new-tokens",
            "1024",
            "--train-layer",
            layer,
        ],
    );
    let m = &j["memory"];
    let peak = m["device_peak_bytes"].as_f64().unwrap();
    let plan = m["plan_bytes"].as_f64().unwrap();
    eprintln!(
        "{shape} {prompts}x8: counted peak {:.2} GiB, plan {:.2} GiB, micro-batches of {}",
        peak / GIB,
        plan / GIB,
        j["micro_batch_tokens"]
    );
    assert!(peak <= 76.0 * GIB, "{shape}: peak {:.2} GiB", peak / GIB);
    assert!(
        (peak / plan - 1.0).abs() <= 0.10,
        "{shape}: counted {:.2} GiB vs plan {:.2} GiB",
        peak / GIB,
        plan / GIB
    );
    // every term the device books agrees with the plan's term of the same name
    let by = &m["device"]["by_purpose"];
    let terms = &m["plan_terms_bytes"];
    for (purpose, term) in [
        ("weights", "weights (bf16)"),
        ("kv_cache", "KV cache (rollouts, paged)"),
        (
            "trained_state",
            "trained state (f32 master, grad, AdamW m, v)",
        ),
        (
            "prefix_cache",
            "prefix cache (hidden state entering the lowest trained layer)",
        ),
        ("logits", "LM-head logits chunk (f32 + gradient)"),
    ] {
        let got = by[purpose]["peak_bytes"].as_f64().unwrap();
        let want = terms[term].as_f64().unwrap();
        assert!(
            (got / want - 1.0).abs() <= 0.10,
            "{shape} {purpose}: counted {got} vs plan {want}"
        );
    }
    let rollout = &j["rollout"];
    assert_eq!(
        rollout["new_tokens"].as_u64().unwrap(),
        j["samples"].as_u64().unwrap() * 1024,
        "downloads are zeros: no stop token, every completion runs to its limit"
    );
    let c = &j["counts"]["train_step"];
    assert_eq!(c["device_allocations"], 0.0, "{shape}: {c}");
    assert!(c["launches"].as_f64().unwrap() > 1000.0, "{c}");
    assert!(c["gemm_tflop"].as_f64().unwrap() > 100.0, "{c}");
    // the decode step: fixed buffers, one synchronisation (the drawn ids)
    let d = &j["counts"]["decode_step"];
    assert!(
        j["counts"]["decode_steps_counted"].as_u64().unwrap() > 1000,
        "{j}"
    );
    assert_eq!(d["device_allocations"], 0.0, "{shape}: {d}");
    assert_eq!(d["buffer_requests"], 0.0, "{shape}: {d}");
    assert_eq!(d["memsets"], 0.0, "{shape}: {d}");
    assert_eq!(d["host_syncs"], 1.0, "{shape}: {d}");
    assert!(
        rollout["kv_peak_tokens"].as_u64().unwrap() <= rollout["kv_cache_tokens"].as_u64().unwrap()
    );
    j
}

/// The paper-scale step of issue 12: 256 prompts x 8 samples, 256 + 1024 tokens,
/// on Qwen3-4B. Every sequence at full length needs 2.19M KV positions (~300 GiB);
/// the default budget is what the plan leaves free, and the scheduler keeps the
/// decode batch full within it.
#[test]
fn qwen3_4b_2048_rollouts_fit_in_the_kv_budget() {
    let j = check_real_shape("qwen3-4b", "18", "256");
    let r = &j["rollout"];
    let budget = r["kv_cache_tokens"].as_u64().unwrap();
    assert!(budget < r["kv_full_tokens"].as_u64().unwrap() / 4, "{r}");
    assert!(r["peak_running"].as_u64().unwrap() >= 200, "{r}");
    assert!(
        r["kv_peak_tokens"].as_u64().unwrap() as f64 >= 0.9 * budget as f64,
        "{r}"
    );
}

#[test]
fn qwen3_4b_256_rollouts_fit_and_match_the_plan() {
    check_real_shape("qwen3-4b", "18", "32");
}

#[test]
fn qwen3_8b_128_rollouts_fit_and_match_the_plan() {
    check_real_shape("qwen3-8b", "18", "16");
}

#[test]
fn the_counting_device_counts_what_the_emulator_does() {
    let args = [
        "--prompts-per-step",
        "2",
        "--group-size",
        "2",
        "--prompt-len",
        "5",
        "--max-new-tokens",
        "3",
        "--micro-batch-tokens",
        "10",
    ];
    let emu = bench_rl("emu", "tiny", &args);
    let meta = bench_rl("meta", "tiny", &args);
    for phase in ["rollout", "train_step"] {
        for key in [
            "launches",
            "gemms",
            "buffer_requests",
            "memsets",
            "memset_bytes",
            "uploads",
            "downloads",
            "device_copies",
            "host_syncs",
        ] {
            assert_eq!(
                emu["counts"][phase][key], meta["counts"][phase][key],
                "{phase} {key}"
            );
        }
    }
    assert_eq!(
        emu["counts"]["train_launches_by_kernel"],
        meta["counts"]["train_launches_by_kernel"]
    );
    for p in [
        "weights",
        "trained_state",
        "kv_cache",
        "activations",
        "logits",
    ] {
        assert_eq!(
            emu["memory"]["device"]["by_purpose"][p], meta["memory"]["device"]["by_purpose"][p],
            "{p}"
        );
    }
    // the emulator's own count of what its allocations held at most
    let emu_peak = emu["memory"]["device_peak_bytes"].as_u64().unwrap();
    let requested = emu["memory"]["device"]["requested_peak_bytes"]
        .as_u64()
        .unwrap();
    assert!(emu_peak >= requested && requested > 0);
}

#[test]
fn a_run_that_does_not_fit_is_refused_in_one_line() {
    let (ok, _, err) = engine(&[
        "bench",
        "rl",
        "--device",
        "meta:20GiB",
        "--shape",
        "qwen3-8b",
        "--prompts-per-step",
        "32",
        "--max-new-tokens",
        "1024",
    ]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // the KV cache shrinks to what is left, down to one sequence; the rest does not fit
    assert!(
        err.contains("needs") && err.contains("20.0 GiB") && err.contains("--train-layer"),
        "{err}"
    );
}

#[test]
fn an_f32_checkpoint_trained_zero_steps_comes_back_bit_for_bit() {
    let dir = common::fixture("qwen3-gqa2-tied");
    let files = WeightFiles::open_dir(&dir).unwrap();
    let be = CudaBackend::new(Arc::new(EmuDevice::new()));
    let model = Model::load(&dir, be).unwrap();
    let n = model.cfg.num_hidden_layers;
    let cfg = model.cfg.clone();
    let t = Trainer::new(
        model,
        &TrainLayers::parse("1", n).unwrap(),
        TrainConfig::default(),
    )
    .unwrap();
    let got = t.trained_params().unwrap();
    let specs = layer_param_specs(&cfg, 1);
    assert_eq!(got.len(), specs.len());
    let mut rounded_somewhere = false;
    for ((name, shape, values), spec) in got.iter().zip(&specs) {
        assert_eq!((name, shape), (&spec.name, &spec.shape));
        let want = files.get_f32(&spec.name, &spec.shape).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(values), bits(&want), "{name}");
        rounded_somewhere |= want.iter().any(|&x| half::bf16::from_f32(x).to_f32() != x);
    }
    assert!(rounded_somewhere, "the fixture has values bf16 cannot hold");
}
