//! The model's parameters on a backend, loaded under their HF names
//! (`model.layers.{i}.self_attn.q_proj.weight`, ...), each checked for presence and
//! shape against the config.

use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::weights::WeightFiles;
use crate::Result;
use std::collections::HashMap;

/// One decoder layer. Projections are `[out, in]` as in HF.
pub struct LayerWeights<B: Backend> {
    pub input_norm: B::Buf,
    pub q_proj: B::Buf,
    pub q_bias: Option<B::Buf>,
    pub k_proj: B::Buf,
    pub k_bias: Option<B::Buf>,
    pub v_proj: B::Buf,
    pub v_bias: Option<B::Buf>,
    pub o_proj: B::Buf,
    pub o_bias: Option<B::Buf>,
    pub q_norm: Option<B::Buf>,
    pub k_norm: Option<B::Buf>,
    pub post_norm: B::Buf,
    pub gate_proj: B::Buf,
    pub up_proj: B::Buf,
    pub down_proj: B::Buf,
}

macro_rules! layer_tensors {
    ($self:ident, $($ref:tt)+) => {{
        let mut v = Vec::with_capacity(15);
        v.push(("input_layernorm.weight", $($ref)+ $self.input_norm));
        v.push(("self_attn.q_proj.weight", $($ref)+ $self.q_proj));
        if let Some(b) = $($ref)+ $self.q_bias {
            v.push(("self_attn.q_proj.bias", b));
        }
        v.push(("self_attn.k_proj.weight", $($ref)+ $self.k_proj));
        if let Some(b) = $($ref)+ $self.k_bias {
            v.push(("self_attn.k_proj.bias", b));
        }
        v.push(("self_attn.v_proj.weight", $($ref)+ $self.v_proj));
        if let Some(b) = $($ref)+ $self.v_bias {
            v.push(("self_attn.v_proj.bias", b));
        }
        v.push(("self_attn.o_proj.weight", $($ref)+ $self.o_proj));
        if let Some(b) = $($ref)+ $self.o_bias {
            v.push(("self_attn.o_proj.bias", b));
        }
        if let Some(b) = $($ref)+ $self.q_norm {
            v.push(("self_attn.q_norm.weight", b));
        }
        if let Some(b) = $($ref)+ $self.k_norm {
            v.push(("self_attn.k_norm.weight", b));
        }
        v.push(("post_attention_layernorm.weight", $($ref)+ $self.post_norm));
        v.push(("mlp.gate_proj.weight", $($ref)+ $self.gate_proj));
        v.push(("mlp.up_proj.weight", $($ref)+ $self.up_proj));
        v.push(("mlp.down_proj.weight", $($ref)+ $self.down_proj));
        v
    }};
}

impl<B: Backend> LayerWeights<B> {
    /// The tensors with their HF name after `model.layers.{i}.`, in
    /// `layer_param_specs` order.
    pub fn tensors(&self) -> Vec<(&'static str, &B::Buf)> {
        layer_tensors!(self, &)
    }

    /// `tensors`, mutable.
    pub fn tensors_mut(&mut self) -> Vec<(&'static str, &mut B::Buf)> {
        layer_tensors!(self, &mut)
    }

    /// A layer of the same structure with every tensor `f(name, tensor)`.
    pub fn try_map(
        &self,
        mut f: impl FnMut(&'static str, &B::Buf) -> Result<B::Buf>,
    ) -> Result<Self> {
        fn opt<B: Backend>(
            f: &mut impl FnMut(&'static str, &B::Buf) -> Result<B::Buf>,
            name: &'static str,
            b: &Option<B::Buf>,
        ) -> Result<Option<B::Buf>> {
            b.as_ref().map(|b| f(name, b)).transpose()
        }
        Ok(LayerWeights {
            input_norm: f("input_layernorm.weight", &self.input_norm)?,
            q_proj: f("self_attn.q_proj.weight", &self.q_proj)?,
            q_bias: opt::<B>(&mut f, "self_attn.q_proj.bias", &self.q_bias)?,
            k_proj: f("self_attn.k_proj.weight", &self.k_proj)?,
            k_bias: opt::<B>(&mut f, "self_attn.k_proj.bias", &self.k_bias)?,
            v_proj: f("self_attn.v_proj.weight", &self.v_proj)?,
            v_bias: opt::<B>(&mut f, "self_attn.v_proj.bias", &self.v_bias)?,
            o_proj: f("self_attn.o_proj.weight", &self.o_proj)?,
            o_bias: opt::<B>(&mut f, "self_attn.o_proj.bias", &self.o_bias)?,
            q_norm: opt::<B>(&mut f, "self_attn.q_norm.weight", &self.q_norm)?,
            k_norm: opt::<B>(&mut f, "self_attn.k_norm.weight", &self.k_norm)?,
            post_norm: f("post_attention_layernorm.weight", &self.post_norm)?,
            gate_proj: f("mlp.gate_proj.weight", &self.gate_proj)?,
            up_proj: f("mlp.up_proj.weight", &self.up_proj)?,
            down_proj: f("mlp.down_proj.weight", &self.down_proj)?,
        })
    }
}

pub struct ModelWeights<B: Backend> {
    pub embed: B::Buf,
    pub layers: Vec<LayerWeights<B>>,
    pub norm: B::Buf,
    /// `None` when tied to the embedding.
    pub lm_head: Option<B::Buf>,
}

/// One parameter: its HF name and shape.
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The HF names and shapes of layer `i`'s parameters, in a fixed order.
pub fn layer_param_specs(cfg: &ModelConfig, i: usize) -> Vec<ParamSpec> {
    let (h, q, kv, inter, hd) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
        cfg.head_dim,
    );
    let p = format!("model.layers.{i}.");
    let mut specs = vec![(format!("{p}input_layernorm.weight"), vec![h])];
    for (name, out) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
        specs.push((format!("{p}self_attn.{name}.weight"), vec![out, h]));
        if cfg.qkv_bias {
            specs.push((format!("{p}self_attn.{name}.bias"), vec![out]));
        }
    }
    specs.push((format!("{p}self_attn.o_proj.weight"), vec![h, q]));
    if cfg.o_bias {
        specs.push((format!("{p}self_attn.o_proj.bias"), vec![h]));
    }
    if cfg.qk_norm {
        specs.push((format!("{p}self_attn.q_norm.weight"), vec![hd]));
        specs.push((format!("{p}self_attn.k_norm.weight"), vec![hd]));
    }
    specs.push((format!("{p}post_attention_layernorm.weight"), vec![h]));
    specs.push((format!("{p}mlp.gate_proj.weight"), vec![inter, h]));
    specs.push((format!("{p}mlp.up_proj.weight"), vec![inter, h]));
    specs.push((format!("{p}mlp.down_proj.weight"), vec![h, inter]));
    specs
        .into_iter()
        .map(|(name, shape)| ParamSpec { name, shape })
        .collect()
}

/// Every parameter of the model: the layers' (`layer_param_specs`), then the
/// embedding, the final norm and, when untied, the LM head.
pub fn all_param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let (v, h) = (cfg.vocab_size, cfg.hidden_size);
    let mut specs: Vec<ParamSpec> = (0..cfg.num_hidden_layers)
        .flat_map(|i| layer_param_specs(cfg, i))
        .collect();
    specs.push(ParamSpec {
        name: "model.embed_tokens.weight".into(),
        shape: vec![v, h],
    });
    specs.push(ParamSpec {
        name: "model.norm.weight".into(),
        shape: vec![h],
    });
    if !cfg.tie_word_embeddings {
        specs.push(ParamSpec {
            name: "lm_head.weight".into(),
            shape: vec![v, h],
        });
    }
    specs
}

impl<B: Backend> ModelWeights<B> {
    /// Check every tensor the config implies, then upload them.
    pub fn load(cfg: &ModelConfig, files: &WeightFiles, backend: &B) -> Result<Self> {
        // Validate presence and shapes of everything before any upload work.
        for spec in all_param_specs(cfg) {
            check(files, &spec.name, &spec.shape)?;
        }
        Self::build(cfg, |spec| {
            backend.upload(&files.get_f32(&spec.name, &spec.shape)?)
        })
    }

    /// Assemble the weights from `make(spec)` for every parameter.
    pub fn build(
        cfg: &ModelConfig,
        mut make: impl FnMut(&ParamSpec) -> Result<B::Buf>,
    ) -> Result<Self> {
        let mut bufs = HashMap::new();
        for spec in all_param_specs(cfg) {
            let buf = make(&spec)?;
            bufs.insert(spec.name, buf);
        }
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            // Optional tensors are in the specs only when the config calls for them.
            let mut opt = |suffix: &str| bufs.remove(&format!("model.layers.{i}.{suffix}"));
            layers.push(LayerWeights {
                input_norm: need(opt("input_layernorm.weight")),
                q_proj: need(opt("self_attn.q_proj.weight")),
                q_bias: opt("self_attn.q_proj.bias"),
                k_proj: need(opt("self_attn.k_proj.weight")),
                k_bias: opt("self_attn.k_proj.bias"),
                v_proj: need(opt("self_attn.v_proj.weight")),
                v_bias: opt("self_attn.v_proj.bias"),
                o_proj: need(opt("self_attn.o_proj.weight")),
                o_bias: opt("self_attn.o_proj.bias"),
                q_norm: opt("self_attn.q_norm.weight"),
                k_norm: opt("self_attn.k_norm.weight"),
                post_norm: need(opt("post_attention_layernorm.weight")),
                gate_proj: need(opt("mlp.gate_proj.weight")),
                up_proj: need(opt("mlp.up_proj.weight")),
                down_proj: need(opt("mlp.down_proj.weight")),
            });
        }
        Ok(ModelWeights {
            embed: need(bufs.remove("model.embed_tokens.weight")),
            layers,
            norm: need(bufs.remove("model.norm.weight")),
            lm_head: bufs.remove("lm_head.weight"),
        })
    }

    /// Random weights of the right scale (norm weights near 1, projections of
    /// variance 1/fan_in, small biases), from `Backend::fill_uniform` with `seed`.
    pub fn random(cfg: &ModelConfig, backend: &B, seed: u64) -> Result<Self> {
        let mut n = 0u64;
        Self::build(cfg, |spec| {
            n += 1;
            let len: usize = spec.shape.iter().product();
            let (lo, hi) = if spec.name.ends_with("norm.weight") {
                (0.8, 1.2)
            } else if spec.name.ends_with(".bias") {
                (-0.02, 0.02)
            } else if spec.name.contains("embed_tokens") || spec.name.starts_with("lm_head") {
                (-0.05, 0.05)
            } else {
                let a = (3.0 / spec.shape[1] as f32).sqrt(); // uniform of variance 1/fan_in
                (-a, a)
            };
            backend.fill_uniform(len, lo, hi, crate::sampling::mix64(seed ^ n))
        })
    }

    /// The LM head matrix `[vocab, hidden]`.
    pub fn head(&self) -> &B::Buf {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

fn check(files: &WeightFiles, name: &str, shape: &[usize]) -> Result<()> {
    match files.info(name) {
        None => Err(crate::Error::invalid(format!(
            "tensor `{name}` not found in {}",
            files
                .files()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        Some(info) if info.shape != shape => Err(crate::Error::file(
            &info.file,
            format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                info.shape
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// A tensor `layer_param_specs` always lists.
fn need<T>(buf: Option<T>) -> T {
    buf.expect("listed by layer_param_specs")
}
