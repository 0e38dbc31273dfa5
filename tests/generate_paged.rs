//! Generation over the paged KV cache with continuous batching: what a sequence
//! generates does not depend on the KV budget (from one sequence at a time to all at
//! once), on preemption, or on prompt sharing, on the CPU and on the emulator; too
//! small a budget is a one-line error naming the flag.

use onelayer::backend::cpu::CpuBackend;
use onelayer::backend::cuda::emu::EmuDevice;
use onelayer::backend::cuda::CudaBackend;
use onelayer::backend::Backend;
use onelayer::config::builtin;
use onelayer::generate::{generate_with_stats, GenerateParams, BLOCK_SIZE};
use onelayer::model::Model;
use onelayer::sampling::SamplingParams;
use std::sync::Arc;

fn prompt(k: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (k * 131 + i * 37 + 5) % 512)
        .collect()
}

/// Groups of equal prompts (shared whole blocks), a prompt of exactly one block,
/// and a loner.
fn batch(lens: &[usize], group: usize) -> Vec<Vec<u32>> {
    let mut b = Vec::new();
    for (k, &n) in lens.iter().enumerate() {
        b.extend(std::iter::repeat_n(prompt(k as u32 + 1, n), group));
    }
    b.push(prompt(9, BLOCK_SIZE));
    b
}

/// Generate under each budget; every run must equal the unshared, unconstrained
/// one. Returns (preemptions over the runs, whether a stop token ended a sequence).
fn check_budgets<B: Backend>(
    name: &str,
    model: &Model<B>,
    batch: &[Vec<u32>],
    p: GenerateParams,
) -> (usize, bool) {
    let (want, plain) = generate_with_stats(model, batch, &p, false).unwrap();
    assert_eq!(plain.preemptions, 0, "{name}");
    assert!(
        want.iter().any(|o| o.len() == p.max_new_tokens),
        "{name}: every sequence stopped early"
    );
    let longest = batch.iter().map(Vec::len).max().unwrap();
    let one = (longest + p.max_new_tokens - 1).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    let mut preempted = 0;
    for budget in [
        one,
        one + BLOCK_SIZE,
        one + 2 * BLOCK_SIZE,
        3 * one,
        100 * one,
    ] {
        let q = GenerateParams {
            kv_cache_tokens: Some(budget),
            ..p.clone()
        };
        let (got, stats) = generate_with_stats(model, batch, &q, true).unwrap();
        assert_eq!(got, want, "{name}: budget {budget}");
        assert_eq!(stats.kv_cache_tokens, budget, "{name}");
        assert!(stats.kv_peak_tokens <= budget, "{name}");
        if budget == one {
            // room for the longest sequence alone: never all at once
            assert!(stats.peak_running < batch.len(), "{name}: {stats:?}");
        }
        preempted += stats.preemptions;
    }
    let stopped = want.iter().any(|o| o.len() < p.max_new_tokens);
    (preempted, stopped)
}

#[test]
fn completions_do_not_depend_on_the_kv_budget_on_the_cpu() {
    let model = Model::random(builtin("tiny").unwrap(), CpuBackend::<f32>::new(), 3).unwrap();
    let b = batch(&[37, 21, 5], 3);
    let sampling = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 40,
    };
    let mut p = GenerateParams::new(20, sampling, 7, vec![]);
    let (first, _) = generate_with_stats(&model, &b, &p, true).unwrap();
    // stop tokens that end some sequences at different steps
    p.stop_ids = vec![first[0][3], first[4][11]];
    let (pre_s, stop_s) = check_budgets("cpu sampled", &model, &b, p);
    let greedy = GenerateParams::new(20, SamplingParams::default(), 0, vec![]);
    let (g, _) = generate_with_stats(&model, &b, &greedy, true).unwrap();
    let (pre_g, stop_g) = check_budgets(
        "cpu greedy",
        &model,
        &b,
        GenerateParams {
            stop_ids: vec![g[0][5], g[6][2]],
            ..greedy
        },
    );
    assert!(pre_s > 0 && pre_g > 0, "no budget forced a preemption");
    assert!(stop_s && stop_g, "no stop token ended a sequence");
}

#[test]
fn completions_do_not_depend_on_the_kv_budget_on_the_emulator() {
    let be = CudaBackend::new(Arc::new(EmuDevice::new()));
    let model = Model::random(builtin("tiny").unwrap(), be, 3).unwrap();
    // 13 + 7 positions: every sequence of the first group crosses into a second block
    let b = batch(&[13, 4], 2);
    let sampling = SamplingParams {
        temperature: 1.0,
        ..SamplingParams::default()
    };
    let mut p = GenerateParams::new(8, sampling, 5, vec![]);
    let (first, _) = generate_with_stats(&model, &b, &p, true).unwrap();
    // a sequence that stops at once makes the scheduler expect short completions and
    // admit more than fit at full length: the ones that run long are preempted
    let mut preempted = 0;
    let mut stopped = false;
    for stops in [vec![first[0][0]], vec![first[0][2], first[2][1]]] {
        p.stop_ids = stops;
        let (pre, stop) = check_budgets("emu", &model, &b, p.clone());
        preempted += pre;
        stopped |= stop;
    }
    assert!(preempted > 0, "emu: no budget forced a preemption");
    assert!(stopped, "emu: no stop token ended a sequence");
    // greedy on the emulator equals the CPU reference at a tight budget
    let cpu = Model::random(builtin("tiny").unwrap(), CpuBackend::<f32>::new(), 3).unwrap();
    let greedy = GenerateParams {
        kv_cache_tokens: Some(2 * BLOCK_SIZE),
        ..GenerateParams::new(8, SamplingParams::default(), 0, vec![])
    };
    let (want, _) = generate_with_stats(&cpu, &b, &greedy, true).unwrap();
    let (got, stats) = generate_with_stats(&model, &b, &greedy, true).unwrap();
    assert!(stats.peak_running < b.len(), "{stats:?}");
    assert_eq!(got, want, "emu greedy = cpu greedy");
}

#[test]
fn a_budget_below_one_sequence_is_a_one_line_error() {
    let model = Model::random(builtin("tiny").unwrap(), CpuBackend::<f32>::new(), 3).unwrap();
    let p = GenerateParams {
        kv_cache_tokens: Some(20),
        ..GenerateParams::new(16, SamplingParams::default(), 0, vec![])
    };
    let e = generate_with_stats(&model, &[prompt(1, 30)], &p, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--kv-cache-tokens 20") && e.contains("48"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1);
}
