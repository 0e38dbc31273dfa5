//! Whole training steps against PyTorch: the fixtures under tests/fixtures/train/
//! (tools/make_train_fixtures.py; transformers in f32, only the trained decoder
//! layers with requires_grad, the GRPO / Dr. GRPO loss of DESIGN section 5,
//! `loss.backward()`, torch.optim.SGD / AdamW).
//!
//! Tolerances (DESIGN section 7 metric: ‖got − want‖ / ‖want‖ per tensor, worst
//! element reported):
//! - loss and per-token log-probs: 1e-4 relative (f32 CPU vs f32 PyTorch);
//! - each gradient tensor: 2e-3 relative (a gradient is the end of a long chain of
//!   reductions; the script measured its own f32-vs-f64 error at <= 2.3e-6);
//! - global gradient norm: 2e-3 relative (it cannot be off by more than the worst
//!   gradient tensor);
//! - SGD (lr 1): the parameters after the step to 1e-4, and the update
//!   (after − before, computed in f64 from the f32 values) to 2e-3, as it is
//!   minus the gradient;
//! - AdamW, two steps: the update after − before (in f64) to 1e-4 relative per
//!   tensor. On the parameters themselves a relative test would be blind (they are
//!   100-1000x larger than a 1e-3-lr update), so the update is what is compared.
//!   AdamW divides each element's first moment by the root of its second, so an
//!   element's update depends on its gradient's *relative* precision: where the
//!   step-1 gradient is a rounding residue (the smallest is 6.5e-6 of its tensor's
//!   RMS) the update is set by rounding. The script measured it: with 3e-6·RMS of
//!   additive noise on the gradients (about the distance of two f32
//!   implementations) the updates move by up to 3.7e-4, but by 1.8e-5 over the
//!   elements whose step-1 gradient is at least 1e-2 of the RMS
//!   (`update_rel_change_under_grad_noise` in case.json). So the ≤ 1.5% of
//!   elements below that (`ill_conditioned_elements`, recomputed and checked here)
//!   are only required to move no more than AdamW can (2.02 lr + decay), and the
//!   rest must agree to 1e-4, which still catches a wrong m, v, bias correction,
//!   weight decay (1e-3 of the update for the matrices, 1e-2 for the norms), clip
//!   factor or step count.
//! - CUDA backend (host emulator; the GPU when present): bf16 frozen weights and
//!   activations. Loss: 2e-2. Each gradient tensor: 3e-2, or 1.5x what PyTorch's
//!   own bf16 compute gets on that tensor where that is more. The GRPO gradient
//!   sum_i A_i grad(logp_i) cancels (the advantages of a group sum to zero), which
//!   amplifies rounding: PyTorch with the model in bf16 (`model.to(bfloat16)`, the
//!   loss in f32) is 1.9e-2..4.8e-2 from its own f32 gradients on these cases, 17 of
//!   33 tensors above 3e-2 (`grad_rel_err_torch_bf16` in case.json, per tensor), so
//!   a flat 3e-2 would fail a correct bf16 implementation. CI runs the two-layer
//!   case on the emulator; `ONELAYER_LONG_TESTS=1` adds the all-layers case.

#![allow(clippy::neg_cmp_op_on_partial_ord)] // `!(err <= tol)` also fails on NaN

mod common;

use common::{cuda_backends, diff, fixture, read_f32_tensors, repo_root, unravel};
use onelayer::backend::cpu::loss::LossAgg;
use onelayer::backend::cpu::CpuBackend;
use onelayer::backend::{Backend, KlType, LossConfig};
use onelayer::model::Model;
use onelayer::train::{
    read_rollouts, AdamW, Algo, Optimizer, Rollout, TrainConfig, TrainLayers, Trainer,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

const LOSS_TOL: f64 = 1e-4;
const LOGP_TOL: f64 = 1e-4;
const GRAD_TOL: f64 = 2e-3;
const PARAM_TOL: f64 = 1e-4;
const ADAMW_DELTA_TOL: f64 = 1e-4;
const BF16_GRAD_TOL: f64 = 3e-2;
const BF16_VS_TORCH: f64 = 1.5;
const BF16_LOSS_TOL: f64 = 2e-2;

/// Every case folder under tests/fixtures/train, and what checks it.
const LOSS_CASES: [&str; 10] = [
    "qwen3-grpo-layer0",
    "qwen3-grpo-layer1",
    "qwen3-grpo-layer2",
    "qwen3-grpo-layer0-layer2",
    "qwen3-grpo-all",
    "qwen3-clip-layer1",
    "qwen3-kl-entropy-layer2",
    "qwen3-drgrpo-layer0",
    "qwen2-grpo-layer1",
    "qwen2-seqmean-old-layers0-1",
];
const SGD_CASE: &str = "qwen3-sgd-layer1";
const ADAMW_CASE: &str = "qwen3-adamw2-layer1";
/// Checked by tests/sft_vs_pytorch.rs (tools/make_sft_fixture.py).
const SFT_CASES: [&str; 3] = [
    "qwen3-sft-layer1",
    "qwen3-sft-embed-layer1",
    "qwen2-untied-sft-embed-layer0",
];

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

struct Case {
    name: String,
    dir: PathBuf,
    json: Value,
}

impl Case {
    /// A committed fixture: anything missing is a failure, not a skip.
    fn load(name: &str) -> Case {
        let dir = fixture("train").join(name);
        let path = dir.join("case.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (tools/make_train_fixtures.py)", path.display()));
        let json =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Case {
            name: name.to_string(),
            dir,
            json,
        }
    }

    fn str(&self, key: &str) -> &str {
        self.json[key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: case.json lacks string {key:?}", self.name))
    }

    fn f64(&self, key: &str) -> f64 {
        self.json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: case.json lacks number {key:?}", self.name))
    }

    /// A file named in case.json (relative to the case folder; shared references
    /// live in another case's folder).
    fn file(&self, key: &str) -> PathBuf {
        let p = self.dir.join(self.str(key));
        assert!(p.is_file(), "{}: {} is missing", self.name, p.display());
        p
    }

    fn model_dir(&self) -> PathBuf {
        fixture(self.str("model"))
    }

    fn rollouts(&self) -> Vec<Rollout> {
        let path = self.file("rollouts");
        let r = read_rollouts(&path).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        assert_eq!(
            r.len() as f64,
            self.f64("records"),
            "{}: records",
            self.name
        );
        r
    }

    fn expected(&self) -> Tensors {
        read_f32_tensors(&self.file("expected"))
    }

    fn layers(&self, num_layers: usize) -> TrainLayers {
        TrainLayers::parse(self.str("train_layers"), num_layers)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// The HF names of the parameters PyTorch trained (requires_grad) in this case.
    fn trained_params(&self) -> BTreeSet<String> {
        self.json["trained_params"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: trained_params", self.name))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    /// With micro-batches of at most `micro` tokens (gradient accumulation), the
    /// prefix kept or recomputed per pass.
    fn train_config_split(&self, micro: Option<usize>, keep_prefix: bool) -> TrainConfig {
        let algo = match self.str("algo") {
            "grpo" => Algo::Grpo,
            "dr-grpo" => Algo::DrGrpo,
            a => panic!("{}: algo {a}", self.name),
        };
        let loss_agg = match self.str("loss_agg") {
            "token-mean" => LossAgg::TokenMean,
            "seq-mean-token-mean" => LossAgg::SeqMeanTokenMean,
            "seq-mean-token-sum-norm" => LossAgg::SeqMeanTokenSumNorm,
            a => panic!("{}: loss_agg {a}", self.name),
        };
        let kl = match self.str("kl") {
            "k1" => KlType::K1,
            "k2" => KlType::K2,
            "k3" => KlType::K3,
            k => panic!("{}: kl {k}", self.name),
        };
        let o = &self.json["optimizer"];
        let optimizer = match o["kind"].as_str() {
            // loss_and_grads only: the optimizer is never used
            None => Optimizer::Sgd {
                lr: 1.0,
                weight_decay: 0.0,
            },
            Some("sgd") => Optimizer::Sgd {
                lr: o["lr"].as_f64().unwrap() as f32,
                weight_decay: o["weight_decay"].as_f64().unwrap() as f32,
            },
            Some("adamw") => Optimizer::AdamW(AdamW {
                lr: o["lr"].as_f64().unwrap() as f32,
                beta1: o["beta1"].as_f64().unwrap() as f32,
                beta2: o["beta2"].as_f64().unwrap() as f32,
                eps: o["eps"].as_f64().unwrap() as f32,
                weight_decay: o["weight_decay"].as_f64().unwrap() as f32,
            }),
            Some(k) => panic!("{}: optimizer {k}", self.name),
        };
        TrainConfig {
            algo,
            loss: LossConfig {
                eps_low: self.f64("eps_low"),
                eps_high: self.f64("eps_high"),
                clip_c: self.json["clip_c"].as_f64(),
                kl,
                beta: self.f64("kl_coef"),
                entropy_coef: self.f64("entropy_coef"),
                cross_entropy: false,
            },
            loss_agg,
            max_new_tokens: self.f64("max_new_tokens") as usize,
            optimizer,
            grad_clip: self.f64("grad_clip") as f32,
            ppo_epochs: 1,
            mini_batch: None,
            micro_batch_tokens: micro,
            keep_prefix,
        }
    }

    fn trainer<B: Backend>(&self, backend: B) -> onelayer::Result<Trainer<B>> {
        self.trainer_split(backend, None, true)
    }

    fn trainer_split<B: Backend>(
        &self,
        backend: B,
        micro: Option<usize>,
        keep_prefix: bool,
    ) -> onelayer::Result<Trainer<B>> {
        let model = Model::load(&self.model_dir(), backend)?;
        let layers = self.layers(model.cfg.num_hidden_layers);
        Trainer::new(model, &layers, self.train_config_split(micro, keep_prefix))
    }

    fn cpu_trainer(&self) -> Trainer<CpuBackend<f32>> {
        self.trainer(CpuBackend::<f32>::new())
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

fn want<'a>(exp: &'a Tensors, key: &str, case: &str) -> &'a (Vec<usize>, Vec<f32>) {
    exp.get(key)
        .unwrap_or_else(|| panic!("{case}: expected.safetensors lacks {key}"))
}

#[track_caller]
fn check_scalar(what: &str, got: f64, want: f64, tol: f64) {
    let rel = (got - want).abs() / want.abs().max(1e-30);
    eprintln!("  {what}: got {got:.9} want {want:.9} (rel {rel:.2e})");
    assert!(
        got.is_finite() && rel <= tol,
        "{what}: got {got} want {want}: relative error {rel:.3e} > {tol:.0e}"
    );
}

/// One line per tensor: relative norm error, max abs error, where, got/want there.
fn describe(name: &str, shape: &[usize], got: &[f32], want: &[f32]) -> (f64, String) {
    let d = diff(got, want);
    (
        d.rel,
        format!(
            "{name} {shape:?}: rel {:.2e}, max abs {:.2e} at {:?} (got {:.6e}, want {:.6e})",
            d.rel,
            d.max_abs,
            unravel(d.worst, shape),
            got[d.worst],
            want[d.worst]
        ),
    )
}

/// Compare every gradient; the set of names must be exactly the trained parameters
/// PyTorch had (every parameter of the trained layers, nothing else). `tol(name)`
/// is the tolerance of one tensor.
fn check_grads(
    what: &str,
    case: &Case,
    exp: &Tensors,
    grads: &[(String, Vec<f32>)],
    tol: &dyn Fn(&str) -> f64,
) {
    let got_names: Vec<&String> = grads.iter().map(|(n, _)| n).collect();
    let got_set: BTreeSet<String> = got_names.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        got_set.len(),
        grads.len(),
        "{what}: duplicate gradient names {got_names:?}"
    );
    let want_set = case.trained_params();
    assert_eq!(
        got_set,
        want_set,
        "{what}: gradient names differ from the trained layers' parameters\n  extra: {:?}\n  missing: {:?}",
        got_set.difference(&want_set).collect::<Vec<_>>(),
        want_set.difference(&got_set).collect::<Vec<_>>()
    );
    let mut worst = (0.0f64, String::new());
    let mut failures = Vec::new();
    for (name, got) in grads {
        let (shape, w) = want(exp, &format!("grad.{name}"), &case.name);
        assert_eq!(
            got.len(),
            w.len(),
            "{what}: {name} has {} values, want {shape:?}",
            got.len()
        );
        assert!(
            w.iter().any(|&x| x != 0.0),
            "{what}: reference gradient {name} is all zero"
        );
        let (rel, line) = describe(name, shape, got, w);
        let t = tol(name);
        if rel / t >= worst.0 {
            worst = (rel / t, format!("{line} [tol {t:.1e}]"));
        }
        if !(rel <= t) {
            failures.push(format!("{line} > {t:.1e}"));
        }
    }
    eprintln!(
        "  {what}: {} gradients, closest to its tolerance: {}",
        grads.len(),
        worst.1
    );
    assert!(
        failures.is_empty(),
        "{what}: {} of {} gradient tensors over tolerance:\n  {}",
        failures.len(),
        grads.len(),
        failures.join("\n  ")
    );
}

/// Per-token log-probs of the completions under the (untrained) model, in record
/// order, through `Model::score`.
fn completion_logprobs<B: Backend>(model: &Model<B>, rollouts: &[Rollout]) -> Vec<f32> {
    let seqs: Vec<Vec<u32>> = rollouts
        .iter()
        .map(|r| [r.prompt_ids.clone(), r.completion_ids.clone()].concat())
        .collect();
    let scored = model.score(&seqs).unwrap();
    let mut out = Vec::new();
    for (r, lp) in rollouts.iter().zip(scored) {
        // lp[i] = log p(seq[i + 1] | seq[..=i]); completion token j sits at P + j
        assert_eq!(lp.len(), r.len() - 1);
        out.extend_from_slice(&lp[r.prompt_ids.len() - 1..]);
    }
    out
}

fn check_logp<B: Backend>(case: &Case, exp: &Tensors, model: &Model<B>, rollouts: &[Rollout]) {
    let got = completion_logprobs(model, rollouts);
    let (shape, w) = want(exp, "logp", &case.name);
    assert_eq!(got.len(), w.len(), "{}: completion tokens", case.name);
    let (rel, line) = describe("logp", shape, &got, w);
    eprintln!("  {line}");
    assert!(rel <= LOGP_TOL, "{}: {line} > {LOGP_TOL:.0e}", case.name);
}

// ---------------------------------------------------------------------------
// Loss and gradients, CPU backend (f32)
// ---------------------------------------------------------------------------

fn loss_case(name: &str) {
    let case = Case::load(name);
    eprintln!("{name}: {}", case.str("note"));
    let exp = case.expected();
    let rollouts = case.rollouts();
    let mut trainer = case.cpu_trainer();
    check_logp(&case, &exp, trainer.model(), &rollouts);
    let (stats, grads) = trainer
        .loss_and_grads(&rollouts)
        .unwrap_or_else(|e| panic!("{name}: loss_and_grads: {e}"));
    let loss = want(&exp, "loss", name).1[0] as f64;
    check_scalar(&format!("{name} loss"), stats.loss, loss, LOSS_TOL);
    check_grads(name, &case, &exp, &grads, &|_| GRAD_TOL);
    // Micro-batches with gradient accumulation give the same loss and gradients:
    // one sequence per pass (a budget below any sequence), about half the batch per
    // pass, with the prefix kept and recomputed.
    let tokens: usize = rollouts.iter().map(|r| r.len()).sum();
    for (micro, keep) in [(1, true), (tokens / 2, false), (tokens / 2, true)] {
        let what = format!("{name} micro-batches of {micro} tokens, keep_prefix {keep}");
        let mut t = case
            .trainer_split(CpuBackend::<f32>::new(), Some(micro), keep)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (s, g) = t
            .loss_and_grads(&rollouts)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        check_scalar(&format!("{what} loss"), s.loss, loss, LOSS_TOL);
        check_grads(&what, &case, &exp, &g, &|_| GRAD_TOL);
    }
}

macro_rules! loss_tests {
    ($($test:ident => $case:expr,)*) => {
        $(
            #[test]
            fn $test() {
                loss_case($case);
            }
        )*
    };
}

loss_tests! {
    qwen3_grpo_layer0 => "qwen3-grpo-layer0",
    qwen3_grpo_layer1 => "qwen3-grpo-layer1",
    qwen3_grpo_layer2 => "qwen3-grpo-layer2",
    qwen3_grpo_layer0_and_layer2 => "qwen3-grpo-layer0-layer2",
    qwen3_grpo_all_layers => "qwen3-grpo-all",
    qwen3_ratio_and_dual_clip => "qwen3-clip-layer1",
    qwen3_kl_k3_and_entropy => "qwen3-kl-entropy-layer2",
    qwen3_dr_grpo_seq_mean_token_sum_norm => "qwen3-drgrpo-layer0",
    qwen2_grpo_layer1 => "qwen2-grpo-layer1",
    qwen2_seq_mean_token_mean_old_logprobs_layers0_1 => "qwen2-seqmean-old-layers0-1",
}

/// Every case folder is checked by a test above (a new case cannot go unnoticed).
#[test]
fn every_fixture_case_is_tested() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture("train"))
        .expect("tests/fixtures/train")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| fixture("train").join(n).is_dir())
        .collect();
    on_disk.sort();
    let mut tested: Vec<String> = LOSS_CASES
        .iter()
        .chain([&SGD_CASE, &ADAMW_CASE])
        .chain(SFT_CASES.iter())
        .map(|s| s.to_string())
        .collect();
    tested.sort();
    assert_eq!(on_disk, tested);
}

// ---------------------------------------------------------------------------
// Optimizer steps
// ---------------------------------------------------------------------------

/// The model's own (f32) weights of the trained parameters, before any step.
fn params_before(case: &Case) -> Tensors {
    read_f32_tensors(&case.model_dir().join("model.safetensors"))
        .into_iter()
        .filter(|(n, _)| case.trained_params().contains(n))
        .collect()
}

/// SGD's expected parameters: exactly what torch.optim.SGD computed, param - lr * grad
/// in f32 (the script checked it bit for bit), from the shared reference gradients.
fn sgd_expected(case: &Case, before: &Tensors) -> Tensors {
    let grads = read_f32_tensors(&case.file("params_after_from"));
    let lr = case.json["optimizer"]["lr"].as_f64().unwrap() as f32;
    before
        .iter()
        .map(|(n, (shape, p))| {
            let g = &want(&grads, &format!("grad.{n}"), &case.name).1;
            let after = p.iter().zip(g).map(|(&p, &g)| p - lr * g).collect();
            (n.clone(), (shape.clone(), after))
        })
        .collect()
}

fn delta(after: &[f32], before: &[f32]) -> Vec<f64> {
    after
        .iter()
        .zip(before)
        .map(|(&a, &b)| a as f64 - b as f64)
        .collect()
}

/// AdamW elements whose update rounding decides (see the header): those whose
/// step-1 gradient is below `threshold` times the tensor's RMS gradient. Their
/// update is only checked to stay within what AdamW can move an element
/// (`max_move`); the others are compared to the update tolerance.
struct IllConditioned {
    step1_grads: Tensors,
    threshold: f64,
    max_move: f64,
    counts: Value,
}

impl IllConditioned {
    fn for_case(case: &Case) -> Self {
        let o = &case.json["optimizer"];
        let lr = o["lr"].as_f64().unwrap();
        let wd = o["weight_decay"].as_f64().unwrap();
        let steps = case.f64("steps");
        IllConditioned {
            step1_grads: read_f32_tensors(&case.file("step1_grads_from")),
            threshold: case.f64("well_conditioned_threshold"),
            // |m_hat / sqrt(v_hat)| <= ~1.001 per step, plus the decay of |p| <= 2
            max_move: steps * lr * (1.01 + 2.0 * wd),
            counts: case.json["ill_conditioned_elements"].clone(),
        }
    }

    fn mask(&self, name: &str, case: &str) -> Vec<bool> {
        let g = &want(&self.step1_grads, &format!("grad.{name}"), case).1;
        let rms = (g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / g.len() as f64).sqrt();
        let ill: Vec<bool> = g
            .iter()
            .map(|&x| (x as f64).abs() < self.threshold * rms)
            .collect();
        let n = ill.iter().filter(|&&b| b).count() as u64;
        assert_eq!(
            Some(n),
            self.counts[name].as_u64(),
            "{case}: ill-conditioned elements of {name}"
        );
        ill
    }
}

/// Compare parameters after training: names and shapes exactly; the parameters to
/// `param_tol`; the update (after − before) to `delta_tol`.
#[allow(clippy::too_many_arguments)]
fn check_params(
    what: &str,
    case: &Case,
    got: &[(String, Vec<usize>, Vec<f32>)],
    want_after: &Tensors,
    before: &Tensors,
    param_tol: f64,
    delta_tol: f64,
    ill: Option<&IllConditioned>,
) {
    let got_set: BTreeSet<String> = got.iter().map(|(n, _, _)| n.clone()).collect();
    assert_eq!(
        got_set.len(),
        got.len(),
        "{what}: duplicate parameter names"
    );
    assert_eq!(
        got_set,
        case.trained_params(),
        "{what}: trained parameter names"
    );
    let mut failures = Vec::new();
    let (mut worst_p, mut worst_d) = ((0.0, String::new()), (0.0, String::new()));
    let mut excluded = 0;
    for (name, shape, g) in got {
        let (wshape, w) = want(want_after, name, &case.name);
        assert_eq!(shape, wshape, "{what}: shape of {name}");
        let (rel, line) = describe(name, shape, g, w);
        if rel >= worst_p.0 {
            worst_p = (rel, line.clone());
        }
        if !(rel <= param_tol) {
            failures.push(format!("params: {line}"));
        }
        let b = &before[name].1;
        let (dg, dw) = (delta(g, b), delta(w, b));
        assert!(
            dw.iter().any(|&x| x != 0.0),
            "{what}: {name} did not move in the reference"
        );
        let mut dg32: Vec<f32> = dg.iter().map(|&x| x as f32).collect();
        let mut dw32: Vec<f32> = dw.iter().map(|&x| x as f32).collect();
        if let Some(ill) = ill {
            for (i, bad) in ill.mask(name, &case.name).into_iter().enumerate() {
                if bad {
                    excluded += 1;
                    if !(dg[i].abs() <= ill.max_move) {
                        failures.push(format!(
                            "update: {name} {:?} (ill-conditioned) moved {:.3e} > {:.3e}",
                            unravel(i, shape),
                            dg[i],
                            ill.max_move
                        ));
                    }
                    // compared over the well-conditioned elements only
                    dg32[i] = 0.0;
                    dw32[i] = 0.0;
                }
            }
        }
        let (rel, line) = describe(name, shape, &dg32, &dw32);
        if rel >= worst_d.0 {
            worst_d = (rel, line.clone());
        }
        if !(rel <= delta_tol) {
            failures.push(format!("update: {line}"));
        }
    }
    eprintln!("  {what}: params worst {}", worst_p.1);
    eprintln!(
        "  {what}: updates worst {}{}",
        worst_d.1,
        if ill.is_some() {
            format!(" ({excluded} ill-conditioned elements only bounded)")
        } else {
            String::new()
        }
    );
    assert!(
        failures.is_empty(),
        "{what}: over tolerance (params {param_tol:.0e}, updates {delta_tol:.0e}):\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn qwen3_sgd_step_layer1() {
    let case = Case::load(SGD_CASE);
    eprintln!("{SGD_CASE}: {}", case.str("note"));
    let exp = case.expected();
    let rollouts = case.rollouts();
    // unsplit, and one sequence per pass (gradients accumulated)
    for micro in [None, Some(1)] {
        let mut trainer = case
            .trainer_split(CpuBackend::<f32>::new(), micro, true)
            .expect("trainer");
        check_logp(&case, &exp, trainer.model(), &rollouts);
        let stats = trainer.step(&rollouts).expect("step");
        check_scalar(
            "sgd loss",
            stats.loss,
            want(&exp, "loss", SGD_CASE).1[0] as f64,
            LOSS_TOL,
        );
        let norm = want(&exp, "grad_norm", SGD_CASE).1[0] as f64;
        check_scalar("sgd grad_norm", stats.grad_norm, norm, GRAD_TOL);
        let before = params_before(&case);
        let after = sgd_expected(&case, &before);
        let got = trainer.trained_params().expect("trained_params");
        check_params(
            &format!("sgd step, micro-batches {micro:?}"),
            &case,
            &got,
            &after,
            &before,
            PARAM_TOL,
            GRAD_TOL,
            None,
        );
    }
}

#[test]
fn qwen3_adamw_two_clipped_steps_layer1() {
    let case = Case::load(ADAMW_CASE);
    eprintln!("{ADAMW_CASE}: {}", case.str("note"));
    let exp = case.expected();
    let rollouts = case.rollouts();
    let mut trainer = case.cpu_trainer();
    check_logp(&case, &exp, trainer.model(), &rollouts);
    let losses = &want(&exp, "losses", ADAMW_CASE).1;
    let norms = &want(&exp, "grad_norm", ADAMW_CASE).1;
    assert_eq!((losses.len(), norms.len()), (2, 2));
    for step in 0..2 {
        let stats = trainer.step(&rollouts).expect("step");
        let what = format!("adamw step {}", step + 1);
        check_scalar(
            &format!("{what} loss"),
            stats.loss,
            losses[step] as f64,
            LOSS_TOL,
        );
        check_scalar(
            &format!("{what} pre-clip grad_norm"),
            stats.grad_norm,
            norms[step] as f64,
            GRAD_TOL,
        );
        assert_eq!(stats.updates, 1, "{what}: updates");
    }
    let before = params_before(&case);
    let after: Tensors = exp
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_string(), v.clone())))
        .collect();
    let got = trainer.trained_params().expect("trained_params");
    check_params(
        "adamw 2 steps",
        &case,
        &got,
        &after,
        &before,
        PARAM_TOL,
        ADAMW_DELTA_TOL,
        Some(&IllConditioned::for_case(&case)),
    );
}

// ---------------------------------------------------------------------------
// The engine binary
// ---------------------------------------------------------------------------

fn engine_run(case: &Case, out: &Path, extra: &[&str]) -> (Tensors, Vec<Value>) {
    let rollouts = case.file("rollouts");
    let model = case.model_dir();
    let steps = case.f64("steps").to_string();
    let max_new = case.f64("max_new_tokens").to_string();
    let mut args: Vec<&str> = vec![
        "run",
        "--model",
        model.to_str().unwrap(),
        "--train-layer",
        case.str("train_layers"),
        "--rollouts",
        rollouts.to_str().unwrap(),
        "--steps",
        &steps,
        "--out",
        out.to_str().unwrap(),
        "--algo",
        case.str("algo"),
        "--loss-agg",
        case.str("loss_agg"),
        "--max-new-tokens",
        &max_new,
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    let o = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(&args)
        .current_dir(repo_root())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "engine {}\nfailed:\n{err}",
        args.join(" ")
    );
    let trained = read_f32_tensors(&out.join("trained.safetensors"));
    let metrics_path = out.join("metrics.jsonl");
    let metrics: Vec<Value> = std::fs::read_to_string(&metrics_path)
        .unwrap_or_else(|e| panic!("{}: {e}", metrics_path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("metrics.jsonl: {e}: {l}")))
        .collect();
    (trained, metrics)
}

fn as_list(t: &Tensors) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    t.iter()
        .map(|(n, (s, d))| (n.clone(), s.clone(), d.clone()))
        .collect()
}

#[test]
fn engine_run_cli_sgd_and_adamw_match_pytorch() {
    let tmp = tempfile::tempdir().unwrap();

    let case = Case::load(SGD_CASE);
    let exp = case.expected();
    let out = tmp.path().join("sgd");
    let (trained, metrics) = engine_run(
        &case,
        &out,
        &[
            "--optimizer",
            "sgd",
            "--lr",
            "1",
            "--grad-clip",
            "0",
            "--weight-decay",
            "0",
        ],
    );
    assert_eq!(metrics.len(), 1, "metrics.jsonl: one line per step");
    let m = &metrics[0];
    check_scalar(
        "cli sgd loss",
        m["loss"].as_f64().unwrap(),
        exp["loss"].1[0] as f64,
        LOSS_TOL,
    );
    check_scalar(
        "cli sgd grad_norm",
        m["grad_norm"].as_f64().unwrap(),
        exp["grad_norm"].1[0] as f64,
        GRAD_TOL,
    );
    let before = params_before(&case);
    let after = sgd_expected(&case, &before);
    check_params(
        "cli sgd",
        &case,
        &as_list(&trained),
        &after,
        &before,
        PARAM_TOL,
        GRAD_TOL,
        None,
    );

    let case = Case::load(ADAMW_CASE);
    let exp = case.expected();
    let out = tmp.path().join("adamw");
    let (trained, metrics) = engine_run(
        &case,
        &out,
        &[
            "--optimizer",
            "adamw",
            // betas 0.9/0.999 and eps 1e-8 are the defaults (DESIGN section 5)
            "--lr",
            "1e-3",
            "--weight-decay",
            "0.01",
            "--grad-clip",
            "1",
        ],
    );
    assert_eq!(metrics.len(), 2, "metrics.jsonl: one line per step");
    for (i, m) in metrics.iter().enumerate() {
        check_scalar(
            &format!("cli adamw step {} loss", i + 1),
            m["loss"].as_f64().unwrap(),
            exp["losses"].1[i] as f64,
            LOSS_TOL,
        );
        check_scalar(
            &format!("cli adamw step {} grad_norm", i + 1),
            m["grad_norm"].as_f64().unwrap(),
            exp["grad_norm"].1[i] as f64,
            GRAD_TOL,
        );
    }
    let before = params_before(&case);
    let after: Tensors = exp
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_string(), v.clone())))
        .collect();
    check_params(
        "cli adamw",
        &case,
        &as_list(&trained),
        &after,
        &before,
        PARAM_TOL,
        ADAMW_DELTA_TOL,
        Some(&IllConditioned::for_case(&case)),
    );
}

// ---------------------------------------------------------------------------
// CUDA backend: host emulator (and the GPU when present), bf16
// ---------------------------------------------------------------------------

#[test]
fn cuda_backend_all_layers_and_two_layers_match_pytorch() {
    // The emulator takes minutes per case on 2 cores: CI runs the two-layer case
    // (a frozen layer between two trained ones); ONELAYER_LONG_TESTS=1 adds `all`.
    let mut names = vec!["qwen3-grpo-layer0-layer2"];
    if std::env::var_os("ONELAYER_LONG_TESTS").is_some() {
        names.push("qwen3-grpo-all");
    }
    for name in names {
        let case = Case::load(name);
        let exp = case.expected();
        let rollouts = case.rollouts();
        for (dev, be) in cuda_backends() {
            // one sequence per pass, the prefix recomputed: the accumulation path
            let what = format!("{dev} {name} (micro-batches of one sequence)");
            let mut trainer = case
                .trainer_split(be, Some(1), false)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let (stats, grads) = trainer
                .loss_and_grads(&rollouts)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let loss = want(&exp, "loss", name).1[0] as f64;
            check_scalar(&format!("{what} loss"), stats.loss, loss, BF16_LOSS_TOL);
            let torch_bf16 = &case.json["grad_rel_err_torch_bf16"];
            let tol = |n: &str| {
                let t = torch_bf16[n]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{name}: grad_rel_err_torch_bf16 lacks {n}"));
                BF16_GRAD_TOL.max(BF16_VS_TORCH * t)
            };
            check_grads(&what, &case, &exp, &grads, &tol);
        }
    }
}
