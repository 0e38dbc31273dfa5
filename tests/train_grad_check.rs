//! The whole training step's gradients against f64 central finite differences of the
//! loss, on random Qwen3- and Qwen2-shaped models (CPU backend in f64): every kind of
//! trained parameter, the bottom, middle and top layer and two layers at once, with
//! old log-probs that make the ratio clip and the dual clip bind, KL and entropy on.

use onelayer::backend::cpu::loss::LossAgg;
use onelayer::backend::cpu::CpuBackend;
use onelayer::backend::{KlType, LossConfig};
use onelayer::config::ModelConfig;
use onelayer::model::Model;
use onelayer::sampling::hash_uniform;
use onelayer::train::{Algo, Optimizer, Rollout, TrainConfig, TrainLayers, Trainer};

mod common;

type Be = CpuBackend<f64>;

fn config(fixture: &str) -> ModelConfig {
    ModelConfig::from_file(&common::fixture(fixture).join("config.json")).unwrap()
}

fn rollouts(vocab: u32, seed: u64) -> Vec<Rollout> {
    let mut n = 0u32;
    let mut u = || {
        n += 1;
        hash_uniform(seed, 7, n)
    };
    let mut out = Vec::new();
    for g in 0..3 {
        for _ in 0..3 {
            let plen = 2 + (u() * 5.0) as usize;
            let clen = 1 + (u() * 6.0) as usize;
            let prompt_ids = (0..plen)
                .map(|_| (u() * vocab as f32) as u32 % vocab)
                .collect();
            let completion_ids = (0..clen)
                .map(|_| (u() * vocab as f32) as u32 % vocab)
                .collect();
            // Old log-probs spread around the current ones (about -6 for a random
            // model of this vocabulary) so that ratios fall on both sides of the clip
            // range and beyond the dual clip.
            let old: Vec<f32> = (0..clen).map(|_| -6.0 + 3.0 * (u() - 0.5)).collect();
            let rf: Vec<f32> = (0..clen).map(|_| -6.0 + 2.0 * (u() - 0.5)).collect();
            out.push(Rollout {
                group: g.to_string(),
                prompt_ids,
                completion_ids,
                reward: (u() * 3.0).floor() as f64,
                old_logprobs: Some(old),
                ref_logprobs: Some(rf),
                advantage: None,
            });
        }
    }
    out
}

fn train_config() -> TrainConfig {
    TrainConfig {
        algo: Algo::Grpo,
        loss: LossConfig {
            beta: 0.05,
            kl: KlType::K3,
            entropy_coef: 0.01,
            ..LossConfig::default()
        },
        loss_agg: LossAgg::SeqMeanTokenMean,
        max_new_tokens: 8,
        optimizer: Optimizer::Sgd {
            lr: 1.0,
            weight_decay: 0.0,
        },
        grad_clip: 0.0,
        ppo_epochs: 1,
        mini_batch: None,
        micro_batch_tokens: None,
        keep_prefix: true,
    }
}

fn model(cfg: &ModelConfig) -> Model<Be> {
    Model::random(cfg.clone(), Be::new(), 11).unwrap()
}

/// Loss with one parameter entry moved by `delta`.
fn loss_at(
    cfg: &ModelConfig,
    layers: &TrainLayers,
    r: &[Rollout],
    tensor: &str,
    i: usize,
    delta: f64,
) -> f64 {
    let mut m = model(cfg);
    let (l, suffix) = split(tensor);
    for (name, buf) in m.weights.layers[l].tensors_mut() {
        if name == suffix {
            buf[i] += delta;
        }
    }
    let mut t = Trainer::new(m, layers, train_config()).unwrap();
    t.loss_and_grads(r).unwrap().0.loss
}

fn split(name: &str) -> (usize, &str) {
    let rest = name.strip_prefix("model.layers.").unwrap();
    let (l, suffix) = rest.split_once('.').unwrap();
    (l.parse().unwrap(), suffix)
}

fn check(fixture: &str, spec: &str) {
    let cfg = config(fixture);
    let layers = TrainLayers::parse(spec, cfg.num_hidden_layers).unwrap();
    let r = rollouts(cfg.vocab_size as u32, 5);
    let mut t = Trainer::new(model(&cfg), &layers, train_config()).unwrap();
    let (stats, grads) = t.loss_and_grads(&r).unwrap();
    assert!(stats.clip_frac > 0.05, "the clip never binds: {stats:?}");
    let names: Vec<String> = layers
        .layers()
        .iter()
        .flat_map(|&l| onelayer::model::layer_param_specs(&cfg, l))
        .map(|s| s.name)
        .collect();
    assert_eq!(grads.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), names);
    let eps = 1e-5;
    let mut worst = 0.0f64;
    for (name, g) in &grads {
        // Three entries per tensor: the largest gradient and two fixed ones.
        let big = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        for i in [big, g.len() / 3, g.len() - 1] {
            let fd = (loss_at(&cfg, &layers, &r, name, i, eps)
                - loss_at(&cfg, &layers, &r, name, i, -eps))
                / (2.0 * eps);
            let err = (fd - g[i] as f64).abs() / (fd.abs().max(1e-3));
            worst = worst.max(err);
            assert!(
                err < 1e-6,
                "{fixture} layers {spec}: {name}[{i}] analytic {} vs finite difference {fd}",
                g[i]
            );
        }
    }
    eprintln!("{fixture} layers {spec}: worst relative error {worst:.2e}");
}

#[test]
fn qwen3_middle_layer() {
    check("qwen3-gqa2-tied", "1");
}

#[test]
fn qwen3_bottom_and_top_layers() {
    check("qwen3-gqa2-tied", "0,2");
}

#[test]
fn qwen2_with_biases() {
    check("qwen2-gqa4-bias-tied", "0-1");
}
