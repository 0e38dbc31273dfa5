//! The CPU reference model against transformers (fixtures from tools/make_fixtures.py):
//! logits, per-token log-probs and per-layer hidden states of a ragged batch, greedy
//! continuations, and the tokenizer. DESIGN.md section 7: relative error <= 1e-4.

mod common;

use common::{assert_close, fixture, Reference, MODELS};
use onelayer::backend::cpu::CpuBackend;
use onelayer::generate::{generate, GenerateParams};
use onelayer::model::{Model, TokenBatch};
use onelayer::sampling::SamplingParams;
use onelayer::tokenizer::Tokenizer;

const TOL: f64 = 1e-4;

fn load(name: &str) -> Model<CpuBackend> {
    Model::load(&fixture(name), CpuBackend::new()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn seqs(r: &Reference) -> Vec<Vec<u32>> {
    (0..3).map(|i| r.ids(&format!("seq{i}.ids"))).collect()
}

#[test]
fn logits_and_hidden_states_match_transformers() {
    for name in MODELS {
        let model = load(name);
        let r = Reference::load(name);
        for (i, ids) in seqs(&r).iter().enumerate() {
            let mut cache = model.new_cache(1, ids.len()).unwrap();
            let mut batch = TokenBatch::default();
            batch.push_seq(0, 0, ids);
            let mut hidden = Vec::new();
            let out = model
                .forward(&batch, &mut cache, Some(&mut hidden))
                .unwrap();
            let (want, shape) = r.f32(&format!("seq{i}.hidden"));
            assert_eq!(
                shape,
                [
                    model.cfg.num_hidden_layers + 1,
                    ids.len(),
                    model.cfg.hidden_size
                ]
            );
            let per_layer = ids.len() * model.cfg.hidden_size;
            for (l, got) in hidden.iter().enumerate() {
                let want_l = &want[l * per_layer..(l + 1) * per_layer];
                assert_close(&format!("{name} seq{i} hidden[{l}]"), got, want_l, TOL);
            }
            let (final_want, _) = r.f32(&format!("seq{i}.final_hidden"));
            assert_close(
                &format!("{name} seq{i} final_hidden"),
                &out,
                &final_want,
                TOL,
            );
            let logits = model.logits(&out, ids.len()).unwrap();
            let (want, _) = r.f32(&format!("seq{i}.logits"));
            assert_close(&format!("{name} seq{i} logits"), &logits, &want, TOL);
        }
    }
}

#[test]
fn ragged_batch_logprobs_match_transformers() {
    for name in MODELS {
        let model = load(name);
        let r = Reference::load(name);
        let seqs = seqs(&r);
        let batched = model.score(&seqs).unwrap();
        for (i, got) in batched.iter().enumerate() {
            let (want, _) = r.f32(&format!("seq{i}.logprobs"));
            assert_close(&format!("{name} seq{i} logprobs"), got, &want, TOL);
            // one by one gives the same numbers as the batch
            let alone = model
                .score(std::slice::from_ref(&seqs[i]))
                .unwrap()
                .remove(0);
            assert_close(
                &format!("{name} seq{i} batched vs alone"),
                got,
                &alone,
                1e-6,
            );
        }
    }
}

#[test]
fn incremental_decoding_equals_full_recomputation() {
    for name in MODELS {
        let model = load(name);
        let r = Reference::load(name);
        let ids = r.ids("seq1.ids");
        let mut full_cache = model.new_cache(1, ids.len()).unwrap();
        let mut batch = TokenBatch::default();
        batch.push_seq(0, 0, &ids);
        let full = model.forward(&batch, &mut full_cache, None).unwrap();
        let h = model.cfg.hidden_size;
        // prefill 4 tokens, then one token at a time, then a chunk of 3
        let mut cache = model.new_cache(1, ids.len()).unwrap();
        let mut steps: Vec<std::ops::Range<usize>> = Vec::new();
        steps.push(0..4);
        steps.extend((4..ids.len() - 3).map(|j| j..j + 1));
        steps.push(ids.len() - 3..ids.len());
        for range in steps {
            let mut b = TokenBatch::default();
            b.push_seq(0, range.start, &ids[range.clone()]);
            let out = model.forward(&b, &mut cache, None).unwrap();
            let want = &full[range.start * h..range.end * h];
            assert_close(&format!("{name} incremental {range:?}"), &out, want, 1e-5);
        }
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in MODELS {
        let model = load(name);
        let r = Reference::load(name);
        let prompts: Vec<Vec<u32>> = (0..2)
            .map(|i| r.ids(&format!("greedy{i}.prompt")))
            .collect();
        let want: Vec<Vec<u32>> = (0..2)
            .map(|i| r.ids(&format!("greedy{i}.output")))
            .collect();
        let params = GenerateParams {
            max_new_tokens: want[0].len(),
            sampling: SamplingParams::default(),
            seed: 0,
            stop_ids: vec![],
            kv_cache_tokens: None,
        };
        // batched (ragged prompts) and one by one
        assert_eq!(
            generate(&model, &prompts, &params).unwrap(),
            want,
            "{name} batched"
        );
        for (p, w) in prompts.iter().zip(&want) {
            assert_eq!(
                &generate(&model, std::slice::from_ref(p), &params).unwrap()[0],
                w,
                "{name}"
            );
        }
    }
}

#[test]
fn tokenizer_matches_transformers() {
    for name in MODELS {
        let tok = Tokenizer::from_file(&fixture(name).join("tokenizer.json")).unwrap();
        let r = Reference::load(name);
        for case in r.json["texts"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(text).unwrap(), want, "{name}: {text:?}");
            assert_eq!(tok.decode(&want, false).unwrap(), text, "{name} decode");
        }
    }
}
