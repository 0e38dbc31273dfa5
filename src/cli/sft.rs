//! `engine sft`: supervised fine-tuning of the selected layers (`onelayer::sft`):
//! cross-entropy on the completion tokens (or every token with `--loss-on all`) of
//! JSONL examples, with the run directory, checkpoints and `--resume` of `engine run`.
//! Without `--model`, the built-in demo model (its character vocabulary).

use super::run::{build_model, timestamp};
use super::{with_backend, BackendJob};
use onelayer::backend::Backend;
use onelayer::rl::RunSettings;
use onelayer::sft::{run_sft, SftSettings};
use onelayer::train::INTERRUPTED;
use onelayer::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Model directory, HF id or alias (default: the built-in demo model).
    #[arg(long)]
    pub model: Option<String>,
    /// auto | cpu | cuda | cuda:N | emu
    #[arg(long)]
    pub device: Option<String>,
    /// Examples (JSONL): {"prompt", "completion"}, {"messages"}, or {"text"} with --loss-on all.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// arith: generated problems with worked solutions instead of --data.
    #[arg(long)]
    pub task: Option<String>,
    /// Generated training problems (--task arith; default 50,000).
    #[arg(long)]
    pub train_size: Option<usize>,
    #[arg(long)]
    pub arith_digits: Option<u32>,
    #[arg(long)]
    pub arith_ops: Option<String>,
    /// Operands per arith problem (default 2).
    #[arg(long)]
    pub arith_terms: Option<usize>,
    /// Held-out generated problems (greedy accuracy at each evaluation; default 200).
    #[arg(long)]
    pub eval_size: Option<usize>,
    /// Held-out examples: their mean cross-entropy every --eval-every steps.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Run directory (default: runs/sft-<UTC timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Settings file (TOML, the keys of OUT/config.toml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Layers to train: 18, 17,18, 16-19 or all (default: the middle layer).
    #[arg(long)]
    pub train_layer: Option<String>,
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sequences per optimizer step (default 32).
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long)]
    pub weight_decay: Option<f32>,
    #[arg(long)]
    pub grad_clip: Option<f32>,
    /// adamw | sgd
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Tokens per forward/backward pass (gradients accumulated; default 16,384).
    #[arg(long)]
    pub micro_batch_tokens: Option<usize>,
    /// Longest sequence kept (longer ones are cut; default 2,048).
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// completion (default) | all
    #[arg(long)]
    pub loss_on: Option<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub eval_every: Option<usize>,
    #[arg(long)]
    pub save_every: Option<usize>,
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// Qwen3 chat prompts with thinking on.
    #[arg(long)]
    pub thinking: bool,
    /// Also train the embedding, the LM head and the final norm (to pretrain from
    /// scratch; off by default, as in the paper).
    #[arg(long)]
    pub train_embeddings: bool,
}

impl Args {
    fn flags(&self) -> SftSettings {
        SftSettings {
            model: self.model.clone(),
            device: self.device.clone(),
            task: self.task.clone(),
            data: self.data.clone(),
            eval_data: self.eval_data.clone(),
            train_layer: self.train_layer.clone(),
            steps: self.steps,
            batch_size: self.batch_size,
            lr: self.lr,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            optimizer: self.optimizer.clone(),
            micro_batch_tokens: self.micro_batch_tokens,
            max_seq_len: self.max_seq_len,
            loss_on: self.loss_on.clone(),
            seed: self.seed,
            eval_every: self.eval_every,
            save_every: self.save_every,
            keep_checkpoints: self.keep_checkpoints,
            thinking: self.thinking.then_some(true),
            train_embeddings: self.train_embeddings.then_some(true),
            train_size: self.train_size,
            arith_digits: self.arith_digits,
            arith_ops: self.arith_ops.clone(),
            arith_terms: self.arith_terms,
            eval_size: self.eval_size,
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let file = match (&a.resume, &a.config) {
        (Some(dir), _) => SftSettings::from_toml_file(&dir.join("config.toml"))?,
        (None, Some(p)) => SftSettings::from_toml_file(p)?,
        (None, None) => SftSettings::default(),
    };
    let given = file.overlay(&a.flags());
    let settings = SftSettings::defaults(onelayer::rl::settings::is_demo_model(
        given.model.as_deref(),
    ))
    .overlay(&given);
    let out = match (&a.resume, &a.out) {
        (Some(dir), _) => dir.clone(),
        (None, Some(o)) => o.clone(),
        (None, None) => PathBuf::from("runs").join(format!("sft-{}", timestamp())),
    };
    let device = settings.device.clone().unwrap_or_else(|| "auto".into());
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing this step and saving a checkpoint (again to quit now)");
    });
    with_backend(
        &device,
        SftJob {
            settings,
            out,
            resume: a.resume.is_some(),
        },
    )
}

struct SftJob {
    settings: SftSettings,
    out: PathBuf,
    resume: bool,
}

impl BackendJob for SftJob {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let s = &self.settings;
        // The model and codec exactly as `engine run` builds them for a dataset task.
        let as_run = RunSettings {
            model: s.model.clone(),
            task: Some(
                if s.task.as_deref() == Some("arith") {
                    "arith"
                } else {
                    "custom"
                }
                .into(),
            ),
            seed: s.seed,
            thinking: s.thinking,
            ..RunSettings::default()
        };
        let (model, codec, _) = build_model(&as_run, backend)?;
        if s.model.as_deref().is_some_and(|m| m.starts_with("random:")) {
            // (see write_model_dir for the complete model written at the end)
            // A model with no directory: its config.json beside trained.safetensors,
            // so a run that trains every tensor is a complete checkpoint.
            std::fs::create_dir_all(&self.out).map_err(|e| onelayer::Error::file(&self.out, e))?;
            let path = self.out.join("config.json");
            std::fs::write(&path, model.cfg.to_hf_json("float32"))
                .map_err(|e| onelayer::Error::file(&path, e))?;
        }
        eprintln!("run directory: {}", self.out.display());
        let random = s.model.as_deref().is_some_and(|m| m.starts_with("random:"));
        let every = s.train_layer.as_deref() == Some("all") && s.train_embeddings == Some(true);
        let cfg = model.cfg.clone();
        let summary = run_sft(model, codec.as_ref(), s, &self.out, self.resume)?;
        if random && every {
            write_model_dir(&cfg, &self.out)?;
        }
        let first = summary.losses.first().map(|r| r.1).unwrap_or(f64::NAN);
        let last = summary.losses.last().map(|r| r.1).unwrap_or(f64::NAN);
        eprintln!(
            "done: {} steps; loss {first:.4} at the first step, {last:.4} at the last; {}/metrics.jsonl, loss.svg, trained.safetensors",
            summary.steps_done,
            self.out.display()
        );
        Ok(())
    }
}

/// A model pretrained from `random:SHAPE` with every tensor trained: `OUT/model/`
/// holds it as an HF directory (config.json, model.safetensors in bf16), the form
/// `assets/base/` commits (tools/make_base_model.sh).
fn write_model_dir(cfg: &onelayer::config::ModelConfig, out: &std::path::Path) -> Result<()> {
    use onelayer::weights::{encode, write_tensors, WeightFiles};
    let dir = out.join("model");
    std::fs::create_dir_all(&dir).map_err(|e| onelayer::Error::file(&dir, e))?;
    let trained = WeightFiles::open_files(&[out.join("trained.safetensors")])?;
    let mut names: Vec<String> = trained.names().map(str::to_string).collect();
    names.sort();
    let dtype = safetensors::Dtype::BF16;
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let info = trained.info(&name).expect("listed");
        let values = trained.get_f32(&name, &info.shape)?;
        tensors.push((name, dtype, info.shape, encode(&values, dtype)?));
    }
    write_tensors(&dir.join("model.safetensors"), &tensors)?;
    let path = dir.join("config.json");
    std::fs::write(&path, cfg.to_hf_json("bfloat16"))
        .map_err(|e| onelayer::Error::file(&path, e))?;
    eprintln!("wrote {} (the whole model, bf16)", dir.display());
    Ok(())
}
