//! The whole model on the CUDA backend (host emulator; a GPU too when present)
//! against the CPU reference: logits of a ragged batch and greedy generation.
//! bf16 weights and activations: relative error <= 2e-2 (DESIGN.md section 7).

mod common;

use common::{assert_close, cuda_backends, fixture, Reference};
use onelayer::backend::cpu::CpuBackend;
use onelayer::backend::cuda::CudaBackend;
use onelayer::generate::{generate, GenerateParams};
use onelayer::model::{Model, TokenBatch};
use onelayer::sampling::SamplingParams;

/// Fixture models whose head_dim the CUDA kernels take (multiples of 16).
const MODELS: [&str; 3] = [
    "qwen3-gqa2-tied",
    "qwen2-gqa4-bias-tied",
    "qwen2-mha-untied-f16",
];

fn load_cuda(name: &str, be: CudaBackend) -> Model<CudaBackend> {
    Model::load(&fixture(name), be).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn logits_match_the_cpu_reference() {
    for name in MODELS {
        let cpu = Model::load(&fixture(name), CpuBackend::<f32>::new()).unwrap();
        let r = Reference::load(name);
        let seqs: Vec<Vec<u32>> = (0..3).map(|i| r.ids(&format!("seq{i}.ids"))).collect();
        for (dev, be) in cuda_backends() {
            let model = load_cuda(name, be);
            // the ragged batch in one forward pass
            let mut cache = model.new_cache(3, 16).unwrap();
            let mut batch = TokenBatch::default();
            for (slot, s) in seqs.iter().enumerate() {
                batch.push_seq(slot, 0, s);
            }
            let hidden = model.forward(&batch, &mut cache, None).unwrap();
            let got = model.logits(&hidden, batch.len()).unwrap();
            let mut want = Vec::new();
            for s in &seqs {
                let mut c = cpu.new_cache(1, s.len()).unwrap();
                let mut b = TokenBatch::default();
                b.push_seq(0, 0, s);
                let h = cpu.forward(&b, &mut c, None).unwrap();
                want.extend(cpu.logits(&h, s.len()).unwrap());
            }
            assert_close(&format!("{dev} {name} logits"), &got, &want, 2e-2);
            // per-token log-probs through the fused gather
            let lp = model.score(&seqs).unwrap();
            let lp_cpu = cpu.score(&seqs).unwrap();
            assert_close(
                &format!("{dev} {name} logprobs"),
                &lp.concat(),
                &lp_cpu.concat(),
                2e-2,
            );
        }
    }
}

#[test]
fn greedy_generation_matches_the_cpu_reference() {
    for name in MODELS {
        let cpu = Model::load(&fixture(name), CpuBackend::<f32>::new()).unwrap();
        let r = Reference::load(name);
        let prompts: Vec<Vec<u32>> = (0..2)
            .map(|i| r.ids(&format!("greedy{i}.prompt")))
            .collect();
        let params = GenerateParams {
            max_new_tokens: 8,
            sampling: SamplingParams::default(),
            seed: 0,
            stop_ids: vec![],
            kv_cache_tokens: None,
        };
        let want = generate(&cpu, &prompts, &params).unwrap();
        for (dev, be) in cuda_backends() {
            let model = load_cuda(name, be);
            assert_eq!(
                generate(&model, &prompts, &params).unwrap(),
                want,
                "{dev} {name}"
            );
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible_on_the_cuda_backend() {
    let name = MODELS[0];
    let r = Reference::load(name);
    let prompts: Vec<Vec<u32>> = (0..2)
        .map(|i| r.ids(&format!("greedy{i}.prompt")))
        .collect();
    let params = GenerateParams {
        max_new_tokens: 6,
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 50,
        },
        seed: 7,
        stop_ids: vec![],
        kv_cache_tokens: None,
    };
    for (dev, be) in cuda_backends() {
        let model = load_cuda(name, be);
        let a = generate(&model, &prompts, &params).unwrap();
        assert_eq!(a, generate(&model, &prompts, &params).unwrap(), "{dev}");
        let other = GenerateParams {
            seed: 8,
            ..params.clone()
        };
        assert_ne!(
            a,
            generate(&model, &prompts, &other).unwrap(),
            "{dev}: the seed matters"
        );
    }
}

#[test]
fn unsupported_head_dim_is_a_clear_error() {
    for (dev, be) in cuda_backends() {
        let model = load_cuda("qwen3-mqa-hd24-untied-bf16", be);
        let e = model.score(&[vec![1, 2, 3]]).unwrap_err().to_string();
        assert!(e.contains("head_dim 24"), "{dev}: {e}");
    }
}

#[test]
fn random_models_are_the_same_on_every_backend() {
    let cfg = onelayer::config::builtin("tiny").unwrap();
    let cpu = Model::random(cfg.clone(), CpuBackend::<f32>::new(), 3).unwrap();
    let seqs = vec![
        (0..21).map(|i| i * 7 % 500).collect::<Vec<u32>>(),
        vec![5, 6, 7],
    ];
    let want = cpu.score(&seqs).unwrap().concat();
    for (dev, be) in cuda_backends() {
        let model = Model::random(cfg.clone(), be, 3).unwrap();
        assert_close(
            &format!("{dev} random tiny"),
            &model.score(&seqs).unwrap().concat(),
            &want,
            2e-2,
        );
    }
}
