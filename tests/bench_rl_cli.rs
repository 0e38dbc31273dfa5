//! `engine bench rl` on the CPU with the tiny shape: the JSON report's fields and
//! their consistency (prefill shared within groups, token counts, peak memory and
//! where it came from), the text report, and one-line errors for bad flags.

mod common;

use common::engine_output as engine;

const SMALL: [&str; 13] = [
    "bench",
    "rl",
    "--shape",
    "tiny",
    "--device",
    "cpu",
    "--prompts-per-step",
    "3",
    "--group-size",
    "4",
    "--prompt-len",
    "10",
    "--max-new-tokens",
];

#[test]
fn bench_rl_reports_a_whole_step_as_json() {
    let (ok, out, err) = engine(&[&SMALL[..], &["5", "--json"]].concat());
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(j["bench"], "rl");
    assert_eq!(j["samples"], 12);
    assert_eq!(
        j["train_layers"],
        serde_json::json!([2]),
        "the middle layer"
    );
    let r = &j["rollout"];
    assert_eq!(r["prompt_tokens"], 12 * 10);
    // prompts shorter than a KV block (16) have no whole block to share: each
    // sequence prefills its own (tests/generate_groups.rs covers sharing)
    assert_eq!(r["prefill_tokens"], 12 * 10);
    assert_eq!(r["shared_slots"], 0);
    assert_eq!(r["preemptions"], 0);
    assert!(r["kv_peak_tokens"].as_u64().unwrap() <= r["kv_cache_tokens"].as_u64().unwrap());
    assert_eq!(
        r["new_tokens"],
        12 * 5,
        "no stop token: every completion is full"
    );
    assert_eq!(r["decode_steps"], 4);
    let t = &j["train"];
    assert_eq!(t["tokens"], 12 * 15);
    assert_eq!(t["loss_tokens"], 12 * 5);
    assert_eq!(t["updates"], 1);
    assert!(
        t["grad_norm"].as_f64().unwrap() > 0.0,
        "rewards differ within groups"
    );
    for v in [&r["tokens_per_s"], &t["tokens_per_s"], &j["step_s"]] {
        assert!(v.as_f64().unwrap() > 0.0, "{j}");
    }
    let m = &j["memory"];
    assert_eq!(m["source"], "process max RSS");
    assert!(m["device_peak_bytes"].is_null());
    assert_eq!(m["peak_bytes"], m["max_rss_bytes"]);
    assert!(m["peak_bytes"].as_u64().unwrap() > 1 << 20);
    assert!(m["plan_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn bench_rl_prints_text_and_rejects_bad_flags() {
    let args = [
        &SMALL[..],
        &["2", "--train-layer", "0,3", "--no-shared-prefill"],
    ]
    .concat();
    let (ok, out, err) = engine(&args);
    assert!(ok, "{err}");
    assert!(out.contains("prefill 120 of 120 prompt tokens"), "{out}");
    for key in ["rollout", "train", "memory", "tokens/s", "process max RSS"] {
        assert!(out.contains(key), "{key} missing from:\n{out}");
    }
    for (args, msg) in [
        (vec!["--group-size", "0"], "--group-size must be at least 1"),
        (vec!["--train-layer", "4"], "layer 4 is out of range"),
        (vec!["--shape", "huge"], "unknown shape 'huge'"),
    ] {
        let mut all = vec!["bench", "rl", "--device", "cpu"];
        if args[0] != "--shape" {
            all.extend(["--shape", "tiny"]);
        }
        all.extend(args);
        let (ok, _, err) = engine(&all);
        assert!(!ok);
        assert!(err.contains(msg), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}
