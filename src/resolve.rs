//! `--model` resolution: a local directory, an alias (`qwen3-4b`) or an HF id
//! (`Qwen/Qwen3-4B`) becomes a directory in HF layout (DESIGN.md section 1).
//!
//! Ids are looked up in the local Hugging Face cache (`$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), the layout that
//! `huggingface_hub` and `hf-hub` share: `models--{owner}--{name}/refs/main`
//! holds a commit hash and `snapshots/{hash}/` the files. A snapshot counts
//! once it has config.json, which a download here fetches last. When the id is
//! not cached and `HF_HUB_OFFLINE` is not set, the files the engine needs are
//! downloaded into that cache with hf-hub (`HF_ENDPOINT` and `HF_TOKEN` are
//! honoured).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const ALIASES: &[(&str, &str)] = &[
    ("qwen3-0.6b", "Qwen/Qwen3-0.6B"),
    ("qwen3-1.7b", "Qwen/Qwen3-1.7B"),
    ("qwen3-4b", "Qwen/Qwen3-4B"),
    ("qwen3-8b", "Qwen/Qwen3-8B"),
    ("qwen3-14b", "Qwen/Qwen3-14B"),
    ("qwen3-32b", "Qwen/Qwen3-32B"),
    ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B"),
    ("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
    ("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B"),
    ("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct"),
    ("qwen2.5-3b", "Qwen/Qwen2.5-3B"),
    ("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct"),
    ("qwen2.5-7b", "Qwen/Qwen2.5-7B"),
    ("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct"),
    ("qwen2.5-14b", "Qwen/Qwen2.5-14B"),
    ("qwen2.5-14b-instruct", "Qwen/Qwen2.5-14B-Instruct"),
    ("qwen2.5-32b", "Qwen/Qwen2.5-32B"),
    ("qwen2.5-32b-instruct", "Qwen/Qwen2.5-32B-Instruct"),
];

/// The built-in aliases, `(alias, HF id)`, for the CLI help.
pub fn aliases() -> &'static [(&'static str, &'static str)] {
    ALIASES
}

/// The HF id an alias stands for (case-insensitive).
pub fn alias_id(alias: &str) -> Option<&'static str> {
    ALIASES
        .iter()
        .find(|(a, _)| a.eq_ignore_ascii_case(alias))
        .map(|(_, id)| *id)
}

/// Resolve `--model` to a model directory, using the environment's HF cache
/// and downloading unless `HF_HUB_OFFLINE` is set.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    resolve_model_in(spec, &hf_cache_root()?, !offline())
}

/// `resolve_model` with an explicit cache root (the `hub` folder) and
/// download switch.
pub fn resolve_model_in(spec: &str, cache_root: &Path, allow_download: bool) -> Result<PathBuf> {
    let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
    resolve_with(spec, cache_root, allow_download.then_some(endpoint))
}

/// The HF hub cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hf_cache_root() -> Result<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var("HF_HUB_CACHE") {
        return Ok(p);
    }
    if let Some(p) = var("HF_HOME") {
        return Ok(p.join("hub"));
    }
    match var("HOME") {
        Some(home) => Ok(home.join(".cache/huggingface/hub")),
        None => Err(Error::invalid(
            "cannot locate the Hugging Face cache: set HF_HOME or HF_HUB_CACHE",
        )),
    }
}

/// Whether `HF_HUB_OFFLINE` forbids downloads (1, true, yes or on).
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// `download`: `None` = offline, `Some(endpoint)` = allowed (`None` endpoint =
/// huggingface.co).
fn resolve_with(
    spec: &str,
    cache_root: &Path,
    download: Option<Option<String>>,
) -> Result<PathBuf> {
    if spec.trim().is_empty() {
        return Err(Error::invalid("--model: empty model name"));
    }
    let local = expand_home(spec);
    if local.is_dir() {
        return check_model_dir(&local);
    }
    if local.exists() {
        return Err(Error::invalid(format!(
            "--model '{spec}': {} is not a directory",
            local.display()
        )));
    }
    let rel = local.strip_prefix(".").unwrap_or(&local);
    let shown_local = std::env::current_dir()
        .map(|d| d.join(rel))
        .unwrap_or(local.clone());
    if looks_like_path(spec) {
        return Err(Error::invalid(format!(
            "--model '{spec}': model directory {} does not exist",
            shown_local.display()
        )));
    }
    let (repo_id, label) = match alias_id(spec) {
        Some(id) => (id.to_string(), format!("model '{spec}' ({id})")),
        None if is_hf_id(spec) => (spec.to_string(), format!("model '{spec}'")),
        None => {
            return Err(Error::invalid(format!(
                "model '{spec}' not found: {} does not exist, and it is neither a known alias \
                 (qwen3-4b, qwen2.5-1.5b-instruct, ...) nor an HF id (owner/name)",
                shown_local.display()
            )))
        }
    };
    if let Some(snapshot) = cached_snapshot(cache_root, &repo_id) {
        return Ok(snapshot);
    }
    let why = match download {
        None => "download disabled (HF_HUB_OFFLINE is set)".to_string(),
        Some(endpoint) => match download_model(&repo_id, cache_root, endpoint) {
            Ok(dir) => return Ok(dir),
            Err(e) => format!("download failed: {}", one_line(&e)),
        },
    };
    Err(Error::invalid(format!(
        "{label} not found: looked in {}, {}; {why}",
        shown_local.display(),
        repo_cache_dir(cache_root, &repo_id).display()
    )))
}

/// A local model directory must have config.json.
fn check_model_dir(dir: &Path) -> Result<PathBuf> {
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(Error::file(
            config,
            "not found (a model directory needs config.json)",
        ));
    }
    Ok(dir.to_path_buf())
}

fn expand_home(spec: &str) -> PathBuf {
    match (spec.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(spec),
    }
}

/// Specs that can only mean a filesystem path.
fn looks_like_path(spec: &str) -> bool {
    spec.starts_with(['/', '.', '~']) || spec.contains('\\') || spec.matches('/').count() > 1
}

/// `owner/name` with the characters HF allows in ids.
fn is_hf_id(spec: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && !s.contains("..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!(spec.split_once('/'), Some((owner, name)) if ok(owner) && ok(name))
}

fn repo_cache_dir(cache_root: &Path, repo_id: &str) -> PathBuf {
    cache_root.join(format!("models--{}", repo_id.replace('/', "--")))
}

/// The snapshot `refs/main` points to when it has config.json, else the
/// newest snapshot that has one.
pub fn cached_snapshot(cache_root: &Path, repo_id: &str) -> Option<PathBuf> {
    let repo = repo_cache_dir(cache_root, repo_id);
    let complete = |p: &Path| p.join("config.json").is_file();
    if let Ok(hash) = std::fs::read_to_string(repo.join("refs/main")) {
        let snap = repo.join("snapshots").join(hash.trim());
        if !hash.trim().is_empty() && complete(&snap) {
            return Some(snap);
        }
    }
    std::fs::read_dir(repo.join("snapshots"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| complete(p))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// Download what the engine reads into the cache; config.json last, so an
/// interrupted download never leaves a snapshot that counts as complete.
fn download_model(
    repo_id: &str,
    cache_root: &Path,
    endpoint: Option<String>,
) -> std::result::Result<PathBuf, String> {
    use hf_hub::api::sync::ApiBuilder;

    let mut builder = ApiBuilder::from_env()
        .with_cache_dir(cache_root.to_path_buf())
        .with_progress(true)
        .with_retries(2);
    if let Some(ep) = endpoint {
        builder = builder.with_endpoint(ep.trim_end_matches('/').to_string());
    }
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(|e| e.to_string())?;
    let repo = api.model(repo_id.to_string());
    let info = repo.info().map_err(|e| e.to_string())?;
    let has = |f: &str| info.siblings.iter().any(|s| s.rfilename == f);
    for required in ["config.json", "tokenizer.json"] {
        if !has(required) {
            return Err(format!("the repository has no {required}"));
        }
    }
    eprintln!("downloading {repo_id} into {}", cache_root.display());
    let get = |f: &str| repo.get(f).map_err(|e| format!("{f}: {e}"));
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        if has(f) {
            get(f)?;
        }
    }
    if has("model.safetensors.index.json") {
        let index = get("model.safetensors.index.json")?;
        for shard in shard_names(&index)? {
            get(&shard)?;
        }
    } else if has("model.safetensors") {
        get("model.safetensors")?;
    } else {
        return Err(
            "the repository has no model.safetensors or model.safetensors.index.json".into(),
        );
    }
    let config = get("config.json")?;
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "bad cache path".to_string())
}

/// The distinct shard files a `model.safetensors.index.json` lists.
fn shard_names(index: &Path) -> std::result::Result<Vec<String>, String> {
    let bad = |msg: &str| format!("{}: {msg}", index.display());
    let text = std::fs::read_to_string(index).map_err(|e| bad(&e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map"))?;
    let mut names: Vec<String> = Vec::new();
    for v in map.values() {
        let name = v
            .as_str()
            .ok_or_else(|| bad("weight_map values must be file names"))?;
        if name.starts_with('/') || name.split('/').any(|part| part == "..") {
            return Err(bad(&format!("unsafe shard name '{name}'")));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lay out `models--{id}` with refs/main -> `hash` and a snapshot holding
    /// `files`.
    fn cache_model(root: &Path, id: &str, hash: &str, files: &[&str]) -> PathBuf {
        let repo = repo_cache_dir(root, id);
        let snap = repo.join("snapshots").join(hash);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), hash).unwrap();
        for f in files {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        snap
    }

    #[test]
    fn alias_and_id_resolve_to_cached_snapshot() {
        let cache = tempfile::tempdir().unwrap();
        let snap = cache_model(
            cache.path(),
            "Qwen/Qwen3-4B",
            "abc123",
            &["config.json", "tokenizer.json"],
        );
        assert_eq!(
            resolve_model_in("qwen3-4b", cache.path(), false).unwrap(),
            snap
        );
        assert_eq!(
            resolve_model_in("Qwen3-4B", cache.path(), false).unwrap(),
            snap
        );
        assert_eq!(
            resolve_model_in("Qwen/Qwen3-4B", cache.path(), false).unwrap(),
            snap
        );

        let snap = cache_model(cache.path(), "someone/tiny-qwen", "f00", &["config.json"]);
        assert_eq!(
            resolve_model_in("someone/tiny-qwen", cache.path(), false).unwrap(),
            snap
        );
    }

    #[test]
    fn snapshot_needs_config_and_falls_back_past_a_bad_ref() {
        let cache = tempfile::tempdir().unwrap();
        let old = cache_model(
            cache.path(),
            "Qwen/Qwen2.5-1.5B-Instruct",
            "old",
            &["config.json"],
        );
        // refs/main moves to a snapshot whose download never finished.
        cache_model(
            cache.path(),
            "Qwen/Qwen2.5-1.5B-Instruct",
            "new",
            &["tokenizer.json"],
        );
        assert_eq!(
            resolve_model_in("qwen2.5-1.5b-instruct", cache.path(), false).unwrap(),
            old
        );

        cache_model(cache.path(), "Qwen/Qwen3-8B", "h", &["tokenizer.json"]);
        assert!(resolve_model_in("qwen3-8b", cache.path(), false).is_err());
    }

    #[test]
    fn missing_model_error_names_the_places_looked() {
        let cache = tempfile::tempdir().unwrap();
        let e = resolve_model_in("qwen3-0.6b", cache.path(), false)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.starts_with("model 'qwen3-0.6b' (Qwen/Qwen3-0.6B) not found: looked in "),
            "{e}"
        );
        assert!(
            e.contains(
                &repo_cache_dir(cache.path(), "Qwen/Qwen3-0.6B")
                    .display()
                    .to_string()
            ),
            "{e}"
        );
        let cwd = std::env::current_dir().unwrap();
        assert!(
            e.contains(&cwd.join("qwen3-0.6b").display().to_string()),
            "{e}"
        );
        assert!(e.contains("HF_HUB_OFFLINE"), "{e}");

        let e = resolve_model_in("nobody-xyz", cache.path(), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nobody-xyz") && e.contains("alias") && !e.contains('\n'),
            "{e}"
        );
        assert!(resolve_model_in("  ", cache.path(), false).is_err());
        let e = resolve_model_in("./no/such/dir", cache.path(), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&cwd.join("no/such/dir").display().to_string()),
            "{e}"
        );
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn failed_download_is_reported_in_one_line() {
        let cache = tempfile::tempdir().unwrap();
        // Nothing listens on port 1 of the loopback interface.
        let endpoint = Some("http://127.0.0.1:1".to_string());
        let e = resolve_with("qwen3-0.6b", cache.path(), Some(endpoint))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("(Qwen/Qwen3-0.6B) not found") && e.contains("download failed: "),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn local_directories() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let spec = dir.path().to_str().unwrap();
        let e = resolve_model_in(spec, cache.path(), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&dir.path().join("config.json").display().to_string()),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");

        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert_eq!(
            resolve_model_in(spec, cache.path(), false).unwrap(),
            dir.path()
        );

        let file = dir.path().join("config.json");
        let e = resolve_model_in(file.to_str().unwrap(), cache.path(), false).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn alias_table_is_consistent() {
        for (i, (alias, id)) in aliases().iter().enumerate() {
            assert_eq!(*alias, alias.to_lowercase());
            assert!(is_hf_id(id), "{id}");
            assert_eq!(id.to_lowercase(), format!("qwen/{alias}"));
            assert!(
                aliases()[..i].iter().all(|(a, _)| a != alias),
                "duplicate {alias}"
            );
        }
        assert_eq!(
            alias_id("QWEN2.5-7B-INSTRUCT"),
            Some("Qwen/Qwen2.5-7B-Instruct")
        );
        assert!(
            is_hf_id("Qwen/Qwen3-4B") && !is_hf_id("a/b/c") && !is_hf_id("../x") && !is_hf_id("x")
        );
    }

    #[test]
    fn shard_names_are_distinct_and_safe() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("model.safetensors.index.json");
        let body = r#"{"weight_map": {"a": "m-00002.safetensors", "b": "m-00001.safetensors", "c": "m-00002.safetensors"}}"#;
        std::fs::write(&index, body).unwrap();
        assert_eq!(
            shard_names(&index).unwrap(),
            vec!["m-00001.safetensors", "m-00002.safetensors"]
        );
        std::fs::write(&index, r#"{"weight_map": {"a": "../evil"}}"#).unwrap();
        assert!(shard_names(&index).is_err());
    }
}
