//! `engine export`: a complete HF model directory with a run's trained layers merged
//! in: every non-weight file of the base model copied (config.json, tokenizer files,
//! generation_config.json, chat template), and one `model.safetensors` holding every
//! tensor in the base checkpoint's dtype, the trained ones replaced. transformers and
//! vLLM load it as they load the base model.

use onelayer::resolve::resolve_model;
use onelayer::weights::{encode, write_tensors, WeightFiles};
use onelayer::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base model (directory, HF id or alias).
    #[arg(long)]
    pub model: String,
    /// A run directory (or its trained.safetensors).
    #[arg(long)]
    pub trained: PathBuf,
    /// The directory to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let dir = resolve_model(&a.model)?;
    let trained_path = if a.trained.is_dir() {
        a.trained.join("trained.safetensors")
    } else {
        a.trained.clone()
    };
    let trained = WeightFiles::open_files(std::slice::from_ref(&trained_path))?;
    let base = WeightFiles::open_dir(&dir)?;
    let mut replaced = 0;
    for name in trained.names() {
        match base.info(name) {
            None => {
                return Err(Error::file(
                    &trained_path,
                    format!("tensor {name} is not in the base model {}", dir.display()),
                ))
            }
            Some(info) if Some(&info.shape) != trained.info(name).map(|i| i.shape).as_ref() => {
                return Err(Error::file(
                    &trained_path,
                    format!("tensor {name} has another shape than in the base model"),
                ))
            }
            Some(_) => replaced += 1,
        }
    }
    if a.out.exists()
        && std::fs::read_dir(&a.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        return Err(Error::file(&a.out, "exists and is not empty"));
    }
    std::fs::create_dir_all(&a.out).map_err(|e| Error::file(&a.out, e))?;
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::file(&dir, e))? {
        let entry = entry.map_err(|e| Error::file(&dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        if !path.is_file()
            || name.ends_with(".safetensors")
            || name.ends_with(".safetensors.index.json")
        {
            continue;
        }
        std::fs::copy(&path, a.out.join(&name)).map_err(|e| Error::file(&path, e))?;
    }
    let mut names: Vec<String> = base.names().map(str::to_string).collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let info = base.info(&name).expect("listed");
        let values = if trained.contains(&name) {
            trained.get_f32(&name, &info.shape)?
        } else {
            base.get_f32(&name, &info.shape)?
        };
        let bytes = encode(&values, info.dtype)?;
        tensors.push((name, info.dtype, info.shape, bytes));
    }
    write_tensors(&a.out.join("model.safetensors"), &tensors)?;
    eprintln!(
        "wrote {} ({} tensors, {replaced} from {})",
        a.out.display(),
        tensors.len(),
        trained_path.display()
    );
    Ok(())
}
