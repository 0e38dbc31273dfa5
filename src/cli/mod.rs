//! Subcommands. Each file holds one subcommand's flags and its `run`.

mod generate;
mod inspect;
mod score;

use clap::{Parser, Subcommand};
use onelayer::backend::cpu::CpuBackend;
use onelayer::device::Device;
use onelayer::model::Model;
use onelayer::resolve::resolve_model;
use onelayer::tokenizer::Tokenizer;
use onelayer::{Error, Result};
use std::path::{Path, PathBuf};

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
    /// Per-token log-probs of a sequence, as JSON.
    Score(score::Args),
    /// Generate a continuation of a prompt.
    Generate(generate::Args),
    /// Show a model's configuration, parameter counts and weight bytes.
    Inspect(inspect::Args),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Score(a) => score::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Inspect(a) => inspect::run(a),
    }
}

/// Flags shared by every subcommand that loads a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// An alias (qwen3-4b, qwen2.5-1.5b-instruct, ...), an HF id (Qwen/Qwen3-4B) or a
    /// local directory in HF layout.
    #[arg(long)]
    pub model: String,
    /// auto | cpu
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl ModelArgs {
    pub fn dir(&self) -> Result<PathBuf> {
        resolve_model(&self.model)
    }

    pub fn load(&self) -> Result<(PathBuf, Model<CpuBackend>)> {
        let device: Device = self.device.parse()?;
        let dir = self.dir()?;
        let model = match device.resolve() {
            Device::Cpu | Device::Auto => Model::load(&dir, CpuBackend::<f32>::new())?,
        };
        if device == Device::Auto {
            eprintln!(
                "device: {}",
                onelayer::backend::Backend::name(&model.backend)
            );
        }
        Ok((dir, model))
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
