//! Allocation accounting of the trainer: gradient, master and optimizer buffers
//! exist for the trained layers only, 16 bytes per trained parameter with AdamW (as
//! `engine plan` counts them), 8 with SGD; a step changes the trained layers and
//! leaves every frozen tensor bit-identical.

use onelayer::backend::cpu::CpuBackend;
use onelayer::backend::Backend;
use onelayer::config::ModelConfig;
use onelayer::model::Model;
use onelayer::train::{
    AdamW, MemoryPlan, Optimizer, PlanInput, Rollout, TrainConfig, TrainLayers, Trainer,
};

mod common;

fn cfg() -> ModelConfig {
    ModelConfig::from_file(&common::fixture("qwen2-gqa4-bias-tied").join("config.json")).unwrap()
}

fn rollouts() -> Vec<Rollout> {
    (0..4)
        .map(|i| Rollout {
            group: "g".into(),
            prompt_ids: vec![3, 4, 5 + i],
            completion_ids: vec![7, 8 + i, 9],
            reward: i as f64,
            old_logprobs: None,
            ref_logprobs: None,
            advantage: None,
        })
        .collect()
}

fn state_bytes<B: Backend>(t: &Trainer<B>) -> (Vec<usize>, usize) {
    let be = &t.model().backend;
    let mut bytes = 0;
    let mut layers = Vec::new();
    for tl in t.trained() {
        layers.push(tl.layer);
        let mut bufs: Vec<_> = tl.master.tensors().into_iter().map(|x| x.1).collect();
        bufs.extend(tl.grads.tensors().into_iter().map(|x| x.1));
        if let Some((m, v)) = &tl.adam {
            bufs.extend(m.tensors().into_iter().map(|x| x.1));
            bufs.extend(v.tensors().into_iter().map(|x| x.1));
        }
        bytes += bufs.iter().map(|b| be.len(b) * 4).sum::<usize>();
    }
    (layers, bytes)
}

#[test]
fn state_exists_for_trained_layers_only() {
    let cfg = cfg();
    for spec in ["1", "0,1", "all"] {
        let layers = TrainLayers::parse(spec, cfg.num_hidden_layers).unwrap();
        let model = Model::random(cfg.clone(), CpuBackend::<f32>::new(), 3).unwrap();
        let t = Trainer::new(model, &layers, TrainConfig::default()).unwrap();
        let (held, bytes) = state_bytes(&t);
        assert_eq!(held, layers.layers(), "{spec}");
        let plan = MemoryPlan::new(
            &cfg,
            &layers,
            PlanInput {
                rollout_seqs: 1,
                distinct_prompts: 1,
                prompt_len: 4,
                max_new_tokens: 4,
                micro_batch_tokens: 8,
                keep_prefix: true,
                adamw: true,
                kv_cache_tokens: None,
            },
        );
        assert_eq!(
            bytes, plan.trained_state,
            "{spec}: AdamW state vs engine plan"
        );
        assert_eq!(bytes, 16 * layers.len() * cfg.params_per_layer());
        let sgd = TrainConfig {
            optimizer: Optimizer::Sgd {
                lr: 0.1,
                weight_decay: 0.0,
            },
            ..TrainConfig::default()
        };
        let model = Model::random(cfg.clone(), CpuBackend::<f32>::new(), 3).unwrap();
        let t = Trainer::new(model, &layers, sgd).unwrap();
        assert_eq!(
            state_bytes(&t).1,
            8 * layers.len() * cfg.params_per_layer(),
            "{spec}: SGD"
        );
    }
}

#[test]
fn a_step_touches_only_the_trained_layer() {
    let cfg = cfg();
    let before = Model::random(cfg.clone(), CpuBackend::<f32>::new(), 3).unwrap();
    let model = Model::random(cfg.clone(), CpuBackend::<f32>::new(), 3).unwrap();
    let layers = TrainLayers::parse("1", cfg.num_hidden_layers).unwrap();
    let opt = TrainConfig {
        optimizer: Optimizer::AdamW(AdamW {
            lr: 1e-2,
            ..AdamW::default()
        }),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(model, &layers, opt).unwrap();
    let s = t.step(&rollouts()).unwrap();
    assert_eq!(s.updates, 1);
    let after = t.model();
    for l in 0..cfg.num_hidden_layers {
        for ((name, a), (_, b)) in before.weights.layers[l]
            .tensors()
            .into_iter()
            .zip(after.weights.layers[l].tensors())
        {
            if l == 1 {
                assert_ne!(a, b, "trained tensor {name} did not move");
            } else {
                assert_eq!(a, b, "frozen layer {l} {name} changed");
            }
        }
    }
    assert_eq!(before.weights.embed, after.weights.embed);
    assert_eq!(before.weights.norm, after.weights.norm);
}
