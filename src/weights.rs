//! Safetensors checkpoints: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Files are memory-mapped; a tensor is converted to
//! f32 (from bf16, f16 or f32) only when asked for, after its shape is checked.

use crate::error::{Error, FileContext, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Byte offset where tensor data starts (8 + header length).
    data_start: usize,
    meta: Metadata,
}

/// Where a tensor lives and what it looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub file: PathBuf,
}

pub struct WeightFiles {
    shards: Vec<Shard>,
    /// tensor name -> shard index
    index: HashMap<String, usize>,
}

impl WeightFiles {
    /// Open the checkpoint in a model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        if index_path.exists() {
            Self::open_index(&index_path)
        } else if single.exists() {
            Self::open_files(&[single])
        } else {
            Err(Error::file(
                dir,
                format!("no {SINGLE_FILE} or {INDEX_FILE}"),
            ))
        }
    }

    /// Open the shards named by an index file and check the index against them.
    pub fn open_index(index_path: &Path) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(index_path).in_file(index_path)?;
        let index: Index = serde_json::from_str(&text).in_file(index_path)?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut files: Vec<PathBuf> = index.weight_map.values().map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        let weights = Self::open_files(&files)?;
        for (name, file) in &index.weight_map {
            match weights.index.get(name) {
                Some(&i) if weights.shards[i].path == dir.join(file) => {}
                _ => {
                    return Err(Error::file(
                        dir.join(file),
                        format!("tensor `{name}` listed in {INDEX_FILE} is missing"),
                    ))
                }
            }
        }
        Ok(weights)
    }

    /// Open and validate a list of safetensors files.
    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for path in files {
            let file = File::open(path).in_file(path)?;
            // SAFETY: the file is opened read-only; the engine never writes to a
            // checkpoint it has mapped.
            let map = unsafe { Mmap::map(&file) }.in_file(path)?;
            // deserialize validates the header and that every tensor lies inside the file.
            SafeTensors::deserialize(&map)
                .map_err(|e| Error::file(path, format!("invalid safetensors: {e}")))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map)
                .map_err(|e| Error::file(path, format!("invalid safetensors: {e}")))?;
            for name in meta.tensors().keys() {
                if index.insert(name.clone(), shards.len()).is_some() {
                    return Err(Error::file(
                        path,
                        format!("tensor `{name}` appears in more than one file"),
                    ));
                }
            }
            shards.push(Shard {
                path: path.clone(),
                map,
                data_start: 8 + header_len,
                meta,
            });
        }
        Ok(WeightFiles { shards, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    pub fn info(&self, name: &str) -> Option<TensorInfo> {
        let shard = &self.shards[*self.index.get(name)?];
        let info = shard.meta.info(name)?;
        Some(TensorInfo {
            dtype: info.dtype,
            shape: info.shape.clone(),
            file: shard.path.clone(),
        })
    }

    /// Total bytes of tensor data, and bytes per dtype.
    pub fn bytes(&self) -> (usize, BTreeMap<String, usize>) {
        let mut by_dtype = BTreeMap::new();
        let mut total = 0;
        for shard in &self.shards {
            for info in shard.meta.tensors().values() {
                let n = info.data_offsets.1 - info.data_offsets.0;
                total += n;
                *by_dtype.entry(format!("{:?}", info.dtype)).or_insert(0) += n;
            }
        }
        (total, by_dtype)
    }

    /// The tensor `name` as f32, after checking it exists with shape `shape`.
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let i = *self.index.get(name).ok_or_else(|| self.missing(name))?;
        let shard = &self.shards[i];
        let info = shard.meta.info(name).ok_or_else(|| self.missing(name))?;
        if info.shape != shape {
            return Err(Error::file(
                &shard.path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    info.shape
                ),
            ));
        }
        let (a, b) = info.data_offsets;
        let bytes = &shard.map[shard.data_start + a..shard.data_start + b];
        to_f32(bytes, info.dtype)
            .map_err(|msg| Error::file(&shard.path, format!("tensor `{name}`: {msg}")))
    }

    fn missing(&self, name: &str) -> Error {
        let files: Vec<String> = self
            .shards
            .iter()
            .map(|s| s.path.display().to_string())
            .collect();
        Error::invalid(format!("tensor `{name}` not found in {}", files.join(", ")))
    }
}

/// Decode little-endian tensor bytes to f32.
pub fn to_f32(bytes: &[u8], dtype: Dtype) -> std::result::Result<Vec<f32>, String> {
    let words = |size: usize| bytes.chunks_exact(size);
    Ok(match dtype {
        Dtype::F32 => words(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => words(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => words(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(format!("dtype {other:?} is not supported (bf16, f16, f32)")),
    })
}

/// `values` encoded as `dtype` (F32, BF16 or F16; round to nearest even).
pub fn encode(values: &[f32], dtype: Dtype) -> Result<Vec<u8>> {
    Ok(match dtype {
        Dtype::F32 => bytemuck::cast_slice(values).to_vec(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        other => return Err(Error::Unsupported(format!("writing {other:?} tensors"))),
    })
}

/// Write `(name, dtype, shape, bytes)` tensors to one safetensors file, atomically.
pub fn write_tensors(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Result<()> {
    use safetensors::tensor::TensorView;
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::invalid(format!("tensor {name}: {e}")))
        })
        .collect::<Result<_>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, None, &tmp).map_err(|e| Error::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

/// Write f32 tensors `(name, shape, values)` to a safetensors file, atomically (a
/// temporary file in the same directory, then a rename).
pub fn write_f32(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    use safetensors::tensor::TensorView;
    for (name, shape, data) in tensors {
        if shape.iter().product::<usize>() != data.len() {
            return Err(Error::invalid(format!(
                "tensor {name}: shape {shape:?} does not hold {} values",
                data.len()
            )));
        }
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .expect("shape checked above");
            (name.clone(), view)
        })
        .collect();
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, None, &tmp).map_err(|e| Error::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn converts_bf16_f16_f32() {
        let dir = tempfile::tempdir().unwrap();
        let vals = [1.5f32, -2.25, 0.0, 65504.0];
        let bf: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let hf: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let f: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = dir.path().join(SINGLE_FILE);
        write(
            &path,
            &[
                ("a", Dtype::BF16, vec![2, 2], bf),
                ("b", Dtype::F16, vec![4], hf),
                ("c", Dtype::F32, vec![4], f),
            ],
        );
        let w = WeightFiles::open_dir(dir.path()).unwrap();
        assert_eq!(
            w.get_f32("a", &[2, 2]).unwrap(),
            vec![1.5, -2.25, 0.0, 65536.0]
        ); // bf16 rounds 65504 up
        assert_eq!(w.get_f32("b", &[4]).unwrap(), vals);
        assert_eq!(w.get_f32("c", &[4]).unwrap(), vals);
        let e = w.get_f32("a", &[4]).unwrap_err().to_string();
        assert!(
            e.contains("`a`") && e.contains("[2, 2]") && e.contains("[4]"),
            "{e}"
        );
        assert!(w
            .get_f32("zz", &[1])
            .unwrap_err()
            .to_string()
            .contains("`zz` not found"));
        assert_eq!(w.bytes().0, 8 + 8 + 16);
    }

    #[test]
    fn refuses_other_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join(SINGLE_FILE),
            &[("i", Dtype::I32, vec![1], vec![0; 4])],
        );
        let e = WeightFiles::open_dir(dir.path())
            .unwrap()
            .get_f32("i", &[1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("I32") && e.contains("`i`"), "{e}");
    }

    #[test]
    fn sharded_index_is_checked_against_the_shards() {
        let dir = tempfile::tempdir().unwrap();
        let f = 1.0f32.to_le_bytes().to_vec();
        write(
            &dir.path().join("s1.safetensors"),
            &[("x", Dtype::F32, vec![1], f.clone())],
        );
        write(
            &dir.path().join("s2.safetensors"),
            &[("y", Dtype::F32, vec![1], f)],
        );
        let index = |map: &str| {
            std::fs::write(
                dir.path().join(INDEX_FILE),
                format!("{{\"weight_map\": {map}}}"),
            )
            .unwrap()
        };
        index(r#"{"x": "s1.safetensors", "y": "s2.safetensors"}"#);
        let w = WeightFiles::open_dir(dir.path()).unwrap();
        assert_eq!(w.files().len(), 2);
        assert_eq!(w.get_f32("y", &[1]).unwrap(), vec![1.0]);
        index(r#"{"x": "s2.safetensors", "y": "s2.safetensors"}"#);
        let e = WeightFiles::open_dir(dir.path()).err().unwrap().to_string();
        assert!(e.contains("`x`") && e.contains("s2.safetensors"), "{e}");
        index(r#"{"x": "s1.safetensors", "z": "missing.safetensors"}"#);
        let e = WeightFiles::open_dir(dir.path()).err().unwrap().to_string();
        assert!(e.contains("missing.safetensors"), "{e}");
        std::fs::write(dir.path().join(INDEX_FILE), "{").unwrap();
        let e = WeightFiles::open_dir(dir.path()).err().unwrap().to_string();
        assert!(e.contains(INDEX_FILE), "{e}");
    }
}
