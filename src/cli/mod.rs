//! Subcommands. Each file holds one subcommand's flags and its `run`.

mod bench;
mod eval;
mod export;
mod generate;
mod inspect;
mod kernels;
mod plan;
mod reward;
mod run;
mod score;
mod sft;
mod sweep;

use clap::{Parser, Subcommand};
use onelayer::backend::cpu::CpuBackend;
use onelayer::backend::cuda::{emu::EmuDevice, gpu::GpuDevice, meta::MetaDevice, CudaBackend};
use onelayer::backend::Backend;
use onelayer::device::Device;
use onelayer::model::Model;
use onelayer::resolve::resolve_model;
use onelayer::tokenizer::Tokenizer;
use onelayer::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "engine",
    version,
    about = "Single-layer RL post-training for Qwen3 and Qwen2.5"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// RL post-training of the selected layers (no arguments: the built-in demo).
    Run(Box<run::Args>),
    /// Supervised fine-tuning of the selected layers (cross-entropy on completions).
    Sft(Box<sft::Args>),
    /// Contribution of every layer against the full-parameter baseline (runs, report,
    /// chart); `sweep compare A B` correlates two sweeps' layer rankings.
    Sweep(Box<sweep::Args>),
    /// Accuracy (pass@1, pass@k) of a model or a run's trained layers on a task.
    Eval(eval::Args),
    /// An HF model directory with a run's trained layers merged in.
    Export(export::Args),
    /// Score a file of completions with a task's reward or a --reward-fn, without a
    /// model (one line per completion, then a summary).
    Reward(reward::Args),
    /// Per-token log-probs of a sequence, as JSON.
    Score(score::Args),
    /// Generate a continuation of a prompt.
    Generate(generate::Args),
    /// Show a model's configuration, parameter counts and weight bytes.
    Inspect(inspect::Args),
    /// The memory plan of a single-layer run, term by term.
    Plan(plan::Args),
    /// Prefill and decode throughput (random weights of a built-in shape by default);
    /// `bench rl`: one whole RL step (rollouts, training step, peak memory).
    Bench(bench::Args),
    /// List the CUDA kernels; --check compiles them with NVRTC (no GPU needed) and
    /// reports registers, shared memory and spills per kernel.
    Kernels(kernels::Args),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => run::run(*a),
        Command::Sft(a) => sft::run(*a),
        Command::Sweep(a) => sweep::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Export(a) => export::run(a),
        Command::Reward(a) => reward::run(a),
        Command::Score(a) => score::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Kernels(a) => kernels::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Plan(a) => plan::run(a),
    }
}

/// Flags shared by every subcommand that loads a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// An alias (qwen3-4b, qwen2.5-1.5b-instruct, ...), an HF id (Qwen/Qwen3-4B) or a
    /// local directory in HF layout.
    #[arg(long)]
    pub model: String,
    /// auto | cpu | cuda | cuda:N | emu (the CUDA kernels on the host emulator) |
    /// meta[:SIZE] (the counting device: real shapes, nothing computed)
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl ModelArgs {
    pub fn dir(&self) -> Result<PathBuf> {
        resolve_model(&self.model)
    }

    /// Load the model on the chosen device and run `job` with it.
    pub fn run<J: ModelJob>(&self, job: J) -> Result<()> {
        let dir = self.dir()?;
        with_backend(&self.device, LoadThen { dir, job })
    }
}

/// Work that needs a loaded model, generic over the backend it landed on.
pub trait ModelJob {
    fn run<B: Backend>(self, dir: &Path, model: Model<B>) -> Result<()>;
}

/// Work that needs a backend.
pub trait BackendJob {
    fn run<B: Backend>(self, backend: B) -> Result<()>;
}

struct LoadThen<J> {
    dir: PathBuf,
    job: J,
}

impl<J: ModelJob> BackendJob for LoadThen<J> {
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let model = Model::load(&self.dir, backend)?;
        self.job.run(&self.dir, model)
    }
}

/// Parse `--device`, open that backend and run `job` on it.
pub fn with_backend<J: BackendJob>(device_flag: &str, job: J) -> Result<()> {
    let device: Device = device_flag.parse()?;
    let flag = |e: Error| Error::invalid(format!("--device {device_flag}: {e}"));
    match device.resolve() {
        Device::Cpu | Device::Auto => {
            let be = CpuBackend::<f32>::new();
            announce(device, &be);
            job.run(be)
        }
        Device::Cuda(i) => {
            let be = CudaBackend::new(Arc::new(GpuDevice::open(i).map_err(flag)?));
            announce(device, &be);
            job.run(be)
        }
        Device::Emu => {
            let be = CudaBackend::new(Arc::new(EmuDevice::new()));
            announce(device, &be);
            job.run(be)
        }
        Device::Meta(capacity) => {
            let be = CudaBackend::new(Arc::new(MetaDevice::new(capacity)));
            job.run(be)
        }
    }
}

/// With `--device auto`, say which device was picked (on stderr).
fn announce<B: Backend>(device: Device, backend: &B) {
    if device == Device::Auto {
        eprintln!("device: {}", backend.name());
    }
}

pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(Error::file(
            &path,
            "not found (needed to turn text into tokens)",
        ));
    }
    Tokenizer::from_file(&path)
}

/// Parse `1,2,3` into token ids, naming the flag on error.
pub fn parse_ids(flag: &str, text: &str) -> Result<Vec<u32>> {
    let ids: Result<Vec<u32>> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| Error::invalid(format!("{flag}: '{s}' is not a token id")))
        })
        .collect();
    let ids = ids?;
    if ids.is_empty() {
        return Err(Error::invalid(format!("{flag}: no token ids given")));
    }
    Ok(ids)
}

pub fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string(v).expect("JSON values serialise")
    );
}
