//! The training step over the trainable window (DESIGN section 4), written once over
//! the `Backend` trait.
//!
//! Trained layers S, `lo = min(S)`. Only the layers of S own an f32 master copy,
//! an f32 gradient and (AdamW) m and v; no other layer has any training buffer.
//! Per mini-batch, a preparation pass runs the prefix (layers < lo) once and keeps
//! the hidden state entering `lo` for every PPO epoch, and computes the old
//! log-probs where the rollouts carry none (before any update, so they are the
//! policy that the step starts from). Each update then runs layers lo.. keeping
//! only their inputs, the fused LM-head loss, and the backward from the top down to
//! `lo`, recomputing each layer from its saved input; frozen layers above `lo` get
//! input gradients only. Nothing is backpropagated below `lo`.
//!
//! With `train_embeddings` (SFT's `--train-embeddings`, to pretrain from scratch) the
//! embedding table, the LM head (when untied) and the final norm are trained too:
//! each gets a master copy, a gradient and optimizer state, the window reaches down
//! to layer 0 (every layer below the lowest trained one passes input gradients),
//! the embedding's gradient is `embedding_grad` of the gradient entering layer 0,
//! the head's `linear_backward_weight` of each logits chunk (into the embedding's
//! gradient when tied), the norm's `rmsnorm_backward`'s weight gradient.
//!
//! Each trained layer's optimizer step uses `lr * lr_scale` (its multiplier from
//! `TrainLayers`, 1 unless `--lr-by-contribution`); with every multiplier 1 the
//! arithmetic is exactly that of a single learning rate.

use super::layer::{self, PackedIdx};
use super::pack::Packed;
use super::{advantages, Optimizer, Rollout, TrainConfig, TrainLayers};
use crate::backend::accounting::{purpose, Purpose};
use crate::backend::{cpu::loss::kl_term, stat, Backend};
use crate::model::{layer_param_specs, LayerWeights, Model};
use crate::{Error, Result};

/// A named host tensor: (HF name, shape, values).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Gradients by HF name.
pub type NamedGrads = Vec<(String, Vec<f32>)>;

/// Training state of one trained layer: master weights, gradients, optimizer state.
pub struct TrainedLayer<B: Backend> {
    pub layer: usize,
    pub master: LayerWeights<B>,
    pub grads: LayerWeights<B>,
    pub adam: Option<(LayerWeights<B>, LayerWeights<B>)>,
    /// Multiplier of the optimizer's learning rate for this layer.
    pub lr_scale: f32,
}

/// Which model tensor an edge tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    Embed,
    Head,
    Norm,
}

impl Edge {
    /// Its HF name.
    pub fn name(self) -> &'static str {
        match self {
            Edge::Embed => "model.embed_tokens.weight",
            Edge::Head => "lm_head.weight",
            Edge::Norm => "model.norm.weight",
        }
    }
}

/// Training state of the embedding, the untied LM head or the final norm.
pub struct TrainedEdge<B: Backend> {
    pub edge: Edge,
    pub shape: Vec<usize>,
    pub master: B::Buf,
    pub grad: B::Buf,
    pub adam: Option<(B::Buf, B::Buf)>,
}

/// What a step (or one gradient computation) measured. Means are over the loss
/// tokens of all updates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepStats {
    /// The aggregated loss (mean over the updates of the step).
    pub loss: f64,
    /// Global gradient norm before clipping (of the last update).
    pub grad_norm: f64,
    pub clip_frac: f64,
    pub entropy: f64,
    /// Mean KL estimate where reference log-probs were given (0 otherwise).
    pub kl: f64,
    pub ratio_mean: f64,
    pub reward_mean: f64,
    pub adv_abs_mean: f64,
    /// Completion tokens (loss rows) per epoch.
    pub loss_tokens: usize,
    /// Tokens run through the window per epoch (prompt + completion).
    pub tokens: usize,
    pub updates: usize,
    /// Updates skipped because the loss or a gradient was not finite.
    pub skipped: usize,
}

/// One forward/backward pass of a mini-batch: its sequences packed, and the hidden
/// state entering the lowest trained layer when the step keeps it.
struct Micro<B: Backend> {
    pack: Packed,
    x_lo: Option<B::Buf>,
}

/// A prepared mini-batch (one optimizer update): the whole batch packed on the host
/// (its loss weights are the update's), its old log-probs, and its micro-batches.
struct Prepared<B: Backend> {
    pack: Packed,
    old_logp: Vec<f32>,
    micro: Vec<Micro<B>>,
}

pub struct Trainer<B: Backend> {
    model: Model<B>,
    /// The final norm divided by the sampling temperature (`set_temperature`).
    head_norm: Option<B::Buf>,
    layers: Vec<usize>,
    trained: Vec<TrainedLayer<B>>,
    /// The embedding, untied head and final norm, when trained (empty otherwise).
    edges: Vec<TrainedEdge<B>>,
    cfg: TrainConfig,
    /// Optimizer updates done (AdamW's t).
    updates: u64,
}

impl<B: Backend> Trainer<B> {
    pub fn new(model: Model<B>, train: &TrainLayers, cfg: TrainConfig) -> Result<Self> {
        cfg.validate()?;
        let layers: Vec<usize> = train.layers().to_vec();
        let n = model.cfg.num_hidden_layers;
        if layers.is_empty() || layers.iter().any(|&l| l >= n) {
            return Err(Error::invalid(format!(
                "--train-layer: layers {layers:?} do not fit a model of {n} layers"
            )));
        }
        let be = &model.backend;
        let _state = purpose(Purpose::TrainedState);
        let mut trained = Vec::with_capacity(layers.len());
        for &l in &layers {
            let w = &model.weights.layers[l];
            // The master copy from the checkpoint's own values (an f32 checkpoint
            // trained zero steps comes back bit for bit), not the bf16 device copy.
            let prefix = format!("model.layers.{l}.");
            let values: std::collections::HashMap<String, Vec<f32>> =
                layer_param_specs(&model.cfg, l)
                    .into_iter()
                    .map(|s| s.name[prefix.len()..].to_string())
                    .zip(model.layer_values(l)?)
                    .collect();
            let master = w.try_map(|name, _| be.upload_f32(&values[name]))?;
            let grads = w.try_map(|_, b| be.zeros_f32(be.len(b)))?;
            let adam = match cfg.optimizer {
                Optimizer::AdamW(_) => Some((
                    w.try_map(|_, b| be.zeros_f32(be.len(b)))?,
                    w.try_map(|_, b| be.zeros_f32(be.len(b)))?,
                )),
                Optimizer::Sgd { .. } => None,
            };
            trained.push(TrainedLayer {
                layer: l,
                master,
                grads,
                adam,
                lr_scale: train.lr_scale(l),
            });
        }
        Ok(Trainer {
            model,
            head_norm: None,
            layers,
            trained,
            edges: Vec::new(),
            cfg,
            updates: 0,
        })
    }

    /// Also train the embedding, the LM head (when untied) and the final norm; the
    /// window then reaches down to layer 0. Their master copies are the device
    /// weights read back in f32 (exact for f32 and bf16 checkpoints on the CPU).
    pub fn with_embeddings(mut self) -> Result<Self> {
        if self.head_norm.is_some() {
            return Err(Error::invalid(
                "training the embeddings needs the untempered head (temperature 1)",
            ));
        }
        let (h, v) = (self.model.cfg.hidden_size, self.model.cfg.vocab_size);
        let be = &self.model.backend;
        let w = &self.model.weights;
        let mut edges = vec![(Edge::Embed, vec![v, h], &w.embed)];
        if let Some(head) = &w.lm_head {
            edges.push((Edge::Head, vec![v, h], head));
        }
        edges.push((Edge::Norm, vec![h], &w.norm));
        let _state = purpose(Purpose::TrainedState);
        let adamw = matches!(self.cfg.optimizer, Optimizer::AdamW(_));
        self.edges = edges
            .into_iter()
            .map(|(edge, shape, buf)| {
                let n = be.len(buf);
                Ok(TrainedEdge {
                    edge,
                    shape,
                    master: be.upload_f32(&be.download(buf)?)?,
                    grad: be.zeros_f32(n)?,
                    adam: if adamw {
                        Some((be.zeros_f32(n)?, be.zeros_f32(n)?))
                    } else {
                        None
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(self)
    }

    /// The trained embedding, head and norm (empty unless `with_embeddings`).
    pub fn edges(&self) -> &[TrainedEdge<B>] {
        &self.edges
    }

    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    /// Train on `logits / temperature`, the distribution the rollouts were sampled
    /// from (default 1; a temperature of 0, greedy, counts as 1).
    pub fn set_temperature(&mut self, temperature: f32) -> Result<()> {
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(Error::invalid(format!(
                "--temperature {temperature}: expected a number >= 0"
            )));
        }
        let t = if temperature == 0.0 { 1.0 } else { temperature };
        if t != 1.0 && !self.edges.is_empty() {
            return Err(Error::invalid(
                "--temperature: a run that trains the embeddings samples at temperature 1",
            ));
        }
        self.head_norm = super::head::tempered_norm(&self.model, t)?;
        Ok(())
    }

    pub fn into_model(self) -> Model<B> {
        self.model
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The trained layers' state (for accounting and checkpoints).
    pub fn trained(&self) -> &[TrainedLayer<B>] {
        &self.trained
    }

    /// Optimizer updates applied so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The bottom of the window: the lowest trained layer, or 0 when the embedding
    /// is trained.
    fn lo(&self) -> usize {
        if self.edges.is_empty() {
            self.layers[0]
        } else {
            0
        }
    }

    /// One RL step on `rollouts`: `ppo_epochs` passes of `mini_batch`-record updates.
    pub fn step(&mut self, rollouts: &[Rollout]) -> Result<StepStats> {
        let prepared = self.prepare(rollouts)?;
        let mut total = StepStats::default();
        let mut acc = RowAcc::default();
        let mut losses = Vec::new();
        for _ in 0..self.cfg.ppo_epochs {
            for mb in &prepared {
                let (loss, stats) = self.gradients(mb)?;
                acc.add(&mb.pack, &mb.old_logp, &stats, &self.cfg);
                let norm = self.grad_norm()?;
                total.grad_norm = norm;
                if !loss.is_finite() || !norm.is_finite() {
                    total.skipped += 1;
                    continue;
                }
                losses.push(loss);
                self.apply(norm)?;
                total.updates += 1;
            }
        }
        acc.finish(&mut total);
        total.loss = if losses.is_empty() {
            f64::NAN
        } else {
            losses.iter().sum::<f64>() / losses.len() as f64
        };
        fill_batch_stats(&mut total, rollouts, &prepared, self.cfg.algo);
        Ok(total)
    }

    /// The loss of all `rollouts` as one mini-batch and the gradient of every trained
    /// parameter (HF names), without updating anything.
    pub fn loss_and_grads(&mut self, rollouts: &[Rollout]) -> Result<(StepStats, NamedGrads)> {
        let saved = self.cfg.mini_batch.take();
        let prepared = self.prepare(rollouts);
        self.cfg.mini_batch = saved;
        let prepared = prepared?;
        let mb = &prepared[0];
        let (loss, stats) = self.gradients(mb)?;
        let mut total = StepStats {
            loss,
            grad_norm: self.grad_norm()?,
            ..StepStats::default()
        };
        let mut acc = RowAcc::default();
        acc.add(&mb.pack, &mb.old_logp, &stats, &self.cfg);
        acc.finish(&mut total);
        fill_batch_stats(&mut total, rollouts, &prepared, self.cfg.algo);
        let be = &self.model.backend;
        let mut grads = Vec::new();
        for tl in &self.trained {
            for (name, g) in tl.grads.tensors() {
                grads.push((format!("model.layers.{}.{name}", tl.layer), be.download(g)?));
            }
        }
        for e in &self.edges {
            grads.push((e.edge.name().to_string(), be.download(&e.grad)?));
        }
        Ok((total, grads))
    }

    /// The trained parameters (f32 master copies) under their HF names, with shapes.
    pub fn trained_params(&self) -> Result<Vec<NamedTensor>> {
        let be = &self.model.backend;
        let mut out = Vec::new();
        for tl in &self.trained {
            let specs = layer_param_specs(&self.model.cfg, tl.layer);
            for (spec, (_, buf)) in specs.into_iter().zip(tl.master.tensors()) {
                out.push((spec.name, spec.shape, be.download(buf)?));
            }
        }
        for e in &self.edges {
            out.push((
                e.edge.name().to_string(),
                e.shape.clone(),
                be.download(&e.master)?,
            ));
        }
        Ok(out)
    }

    /// Everything a checkpoint needs besides the update count: the trained
    /// parameters under their HF names and, for AdamW, `optimizer.m.<name>` and
    /// `optimizer.v.<name>`.
    pub fn state(&self) -> Result<Vec<NamedTensor>> {
        let be = &self.model.backend;
        let mut out = self.trained_params()?;
        for tl in &self.trained {
            if let Some((m, v)) = &tl.adam {
                let specs = layer_param_specs(&self.model.cfg, tl.layer);
                for (spec, ((_, mb), (_, vb))) in
                    specs.iter().zip(m.tensors().into_iter().zip(v.tensors()))
                {
                    out.push((
                        format!("optimizer.m.{}", spec.name),
                        spec.shape.clone(),
                        be.download(mb)?,
                    ));
                    out.push((
                        format!("optimizer.v.{}", spec.name),
                        spec.shape.clone(),
                        be.download(vb)?,
                    ));
                }
            }
        }
        for e in &self.edges {
            if let Some((m, v)) = &e.adam {
                for (kind, b) in [("m", m), ("v", v)] {
                    out.push((
                        format!("optimizer.{kind}.{}", e.edge.name()),
                        e.shape.clone(),
                        be.download(b)?,
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Restore `state()` (and the update count): master weights, the forward pass's
    /// copies, AdamW's m and v. Every tensor must be present with its shape.
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>,
        updates: u64,
    ) -> Result<()> {
        let get = |name: &str, shape: &[usize]| -> Result<&Vec<f32>> {
            match tensors.get(name) {
                Some((s, v)) if s.as_slice() == shape => Ok(v),
                Some((s, _)) => Err(Error::invalid(format!(
                    "checkpoint tensor {name} has shape {s:?}, expected {shape:?}"
                ))),
                None => Err(Error::invalid(format!("checkpoint lacks tensor {name}"))),
            }
        };
        let be = &self.model.backend;
        for tl in &mut self.trained {
            let specs = layer_param_specs(&self.model.cfg, tl.layer);
            let copies = self.model.weights.layers[tl.layer].tensors_mut();
            for ((spec, (_, master)), (_, copy)) in
                specs.iter().zip(tl.master.tensors_mut()).zip(copies)
            {
                *master = be.upload_f32(get(&spec.name, &spec.shape)?)?;
                be.copy_convert(copy, master)?;
            }
            if let Some((m, v)) = &mut tl.adam {
                for (spec, ((_, mb), (_, vb))) in specs
                    .iter()
                    .zip(m.tensors_mut().into_iter().zip(v.tensors_mut()))
                {
                    *mb =
                        be.upload_f32(get(&format!("optimizer.m.{}", spec.name), &spec.shape)?)?;
                    *vb =
                        be.upload_f32(get(&format!("optimizer.v.{}", spec.name), &spec.shape)?)?;
                }
            }
        }
        for e in &mut self.edges {
            e.master = be.upload_f32(get(e.edge.name(), &e.shape)?)?;
            let w = &mut self.model.weights;
            let copy = match e.edge {
                Edge::Embed => &mut w.embed,
                Edge::Head => w.lm_head.as_mut().expect("an untied head"),
                Edge::Norm => &mut w.norm,
            };
            be.copy_convert(copy, &e.master)?;
            if let Some((m, v)) = &mut e.adam {
                *m = be.upload_f32(get(&format!("optimizer.m.{}", e.edge.name()), &e.shape)?)?;
                *v = be.upload_f32(get(&format!("optimizer.v.{}", e.edge.name()), &e.shape)?)?;
            }
        }
        self.updates = updates;
        Ok(())
    }

    /// Pack the mini-batches and their micro-batches, run the prefix once per
    /// micro-batch (kept for the step when `keep_prefix`), and fill in the old
    /// log-probs the rollouts do not carry.
    fn prepare(&self, rollouts: &[Rollout]) -> Result<Vec<Prepared<B>>> {
        if rollouts.is_empty() {
            return Err(Error::invalid("no rollouts to train on"));
        }
        super::rollout::check_vocab(rollouts, self.model.cfg.vocab_size)?;
        let adv = advantages(rollouts, self.cfg.algo);
        let per = self.cfg.mini_batch.unwrap_or(rollouts.len()).max(1);
        let mut out = Vec::new();
        let order: Vec<usize> = (0..rollouts.len()).collect();
        for chunk in order.chunks(per) {
            let records: Vec<&Rollout> = chunk.iter().map(|&i| &rollouts[i]).collect();
            let a: Vec<f64> = chunk.iter().map(|&i| adv[i]).collect();
            let pack = Packed::new(&records, &a, self.cfg.loss_agg, self.cfg.max_new_tokens);
            let mut micro = Vec::new();
            let mut old_logp = Vec::with_capacity(pack.rows.len());
            for seqs in pack.split_by_tokens(self.cfg.micro_batch_tokens) {
                let mp = pack.micro(seqs);
                let idx = PackedIdx::new(&self.model.backend, &mp, &self.model)?;
                // Cross-entropy (SFT) reads no old log-probs.
                let need_old =
                    !self.cfg.loss.cross_entropy && mp.old_logp.iter().any(Option::is_none);
                let x_lo = if self.cfg.keep_prefix || need_old {
                    Some(self.prefix(&mp, &idx)?)
                } else {
                    None
                };
                if need_old {
                    let x = x_lo.as_ref().expect("computed above");
                    let x_top = self.run_layers_ref(x, self.lo()..self.n_layers(), &idx)?;
                    let current = super::head::row_logprobs(
                        &self.model,
                        self.head_norm.as_ref(),
                        &x_top,
                        &mp,
                    )?;
                    old_logp.extend(mp.old_logp.iter().zip(current).map(|(o, c)| o.unwrap_or(c)));
                } else {
                    old_logp.extend(mp.old_logp.iter().map(|v| v.unwrap_or(0.0)));
                }
                let x_lo = match x_lo {
                    Some(x) if self.cfg.keep_prefix => Some(self.keep(x)?),
                    _ => None,
                };
                micro.push(Micro { pack: mp, x_lo });
            }
            out.push(Prepared {
                pack,
                old_logp,
                micro,
            });
        }
        Ok(out)
    }

    fn n_layers(&self) -> usize {
        self.model.cfg.num_hidden_layers
    }

    /// The hidden state entering layer `lo` (the embedding, then the frozen prefix).
    fn prefix(&self, p: &Packed, idx: &PackedIdx<B>) -> Result<B::Buf> {
        self.run_layers(self.embed(p)?, 0..self.lo(), idx)
    }

    /// `x` moved into a buffer booked as the prefix cache, to be kept for the step.
    fn keep(&self, x: B::Buf) -> Result<B::Buf> {
        let be = &self.model.backend;
        let _p = purpose(Purpose::PrefixCache);
        let mut kept = be.empty(be.len(&x))?;
        be.copy_convert(&mut kept, &x)?;
        Ok(kept)
    }

    fn embed(&self, p: &Packed) -> Result<B::Buf> {
        let be = &self.model.backend;
        let h = self.model.cfg.hidden_size;
        let ids = be.upload_idx(&p.ids)?;
        let mut x = be.empty(p.tokens() * h)?;
        be.embedding(&mut x, &ids, &self.model.weights.embed, p.tokens(), h)?;
        Ok(x)
    }

    /// Run `layers` without keeping anything.
    fn run_layers(
        &self,
        mut x: B::Buf,
        layers: std::ops::Range<usize>,
        idx: &PackedIdx<B>,
    ) -> Result<B::Buf> {
        for l in layers {
            x = layer::forward_saved(&self.model, l, &x, idx)?.0;
        }
        Ok(x)
    }

    fn run_layers_ref(
        &self,
        x: &B::Buf,
        mut layers: std::ops::Range<usize>,
        idx: &PackedIdx<B>,
    ) -> Result<B::Buf> {
        match layers.next() {
            None => {
                let be = &self.model.backend;
                let mut y = be.empty(be.len(x))?;
                be.copy_convert(&mut y, x)?;
                Ok(y)
            }
            Some(first) => {
                let y = layer::forward_saved(&self.model, first, x, idx)?.0;
                self.run_layers(y, layers, idx)
            }
        }
    }

    /// Zero the gradients and accumulate them over the mini-batch's micro-batches;
    /// returns the loss and the per-row stats (in the mini-batch's row order).
    fn gradients(&mut self, mb: &Prepared<B>) -> Result<(f64, Vec<f64>)> {
        {
            let be = &self.model.backend;
            for tl in &mut self.trained {
                for (_, g) in tl.grads.tensors_mut() {
                    be.fill_zero(g)?;
                }
            }
            for e in &mut self.edges {
                be.fill_zero(&mut e.grad)?;
            }
        }
        let mut loss = 0.0;
        let mut stats = Vec::with_capacity(mb.pack.rows.len() * stat::STATS);
        let mut row = 0;
        for m in &mb.micro {
            let n = m.pack.rows.len();
            let old = &mb.old_logp[row..row + n];
            let (l, st) = self.micro_gradients(m, old)?;
            loss += l;
            stats.extend(st);
            row += n;
        }
        Ok((loss, stats))
    }

    /// Add one micro-batch's gradients; returns its share of the loss and its stats.
    fn micro_gradients(&mut self, m: &Micro<B>, old_logp: &[f32]) -> Result<(f64, Vec<f64>)> {
        let model = &self.model;
        let be = &model.backend;
        let idx = PackedIdx::new(be, &m.pack, model)?;
        let recomputed;
        let x_lo = match &m.x_lo {
            Some(x) => x,
            None => {
                recomputed = self.prefix(&m.pack, &idx)?;
                &recomputed
            }
        };
        let (lo, n) = (self.lo(), model.cfg.num_hidden_layers);
        let embeddings = !self.edges.is_empty();
        // Forward through the window and the suffix, keeping each layer's output
        // (= the next layer's input) only.
        let mut outs: Vec<B::Buf> = Vec::with_capacity(n - lo);
        for l in lo..n {
            let input = if l == lo { x_lo } else { &outs[l - lo - 1] };
            let y = layer::forward_saved(model, l, input, &idx)?.0;
            outs.push(y);
        }
        let top = outs.pop().expect("at least one layer in the window");
        let head_grads = head_grads(&mut self.edges);
        let (mut dx, stats) = super::head::loss_backward(
            model,
            self.head_norm.as_ref(),
            &top,
            &m.pack,
            old_logp,
            &self.cfg.loss,
            head_grads,
        )?;
        drop(top);
        let ec = self.cfg.loss.entropy_coef;
        let loss: f64 = stats
            .chunks(stat::STATS)
            .zip(&m.pack.weight)
            .map(|(s, &w)| w as f64 * (s[stat::LOSS] - ec * s[stat::ENTROPY]))
            .sum();
        for l in (lo..n).rev() {
            let input = if l == lo { x_lo } else { &outs[l - lo - 1] };
            let (_, acts) = layer::forward_saved(model, l, input, &idx)?;
            let grads = self
                .trained
                .iter_mut()
                .find(|t| t.layer == l)
                .map(|t| &mut t.grads);
            match layer::backward(
                model,
                l,
                input,
                &acts,
                &dx,
                grads,
                &idx,
                l > lo || embeddings,
            )? {
                Some(d) => dx = d,
                None => break,
            }
            if l > lo {
                outs.pop();
            }
        }
        if let Some(e) = self.edges.iter_mut().find(|e| e.edge == Edge::Embed) {
            // dx is now the gradient of the embedding's output (the window starts at 0).
            let ids = be.upload_idx(&m.pack.ids)?;
            let h = model.cfg.hidden_size;
            be.embedding_grad(&mut e.grad, &dx, &ids, m.pack.tokens(), h)?;
        }
        Ok((loss, stats))
    }

    /// The global norm of all trained gradients.
    fn grad_norm(&self) -> Result<f64> {
        let be = &self.model.backend;
        let mut sum = 0.0;
        for tl in &self.trained {
            for (_, g) in tl.grads.tensors() {
                sum += be.sum_squares(g)?;
            }
        }
        for e in &self.edges {
            sum += be.sum_squares(&e.grad)?;
        }
        Ok(sum.sqrt())
    }

    /// Clip and apply the optimizer; refresh the forward pass's copies.
    fn apply(&mut self, norm: f64) -> Result<()> {
        let clip = self.cfg.grad_clip as f64;
        let scale = if clip > 0.0 {
            (clip / (norm + 1e-6)).min(1.0) as f32
        } else {
            1.0
        };
        self.updates += 1;
        let be = &self.model.backend;
        for tl in &mut self.trained {
            let weights = &mut self.model.weights.layers[tl.layer];
            let copies = weights.tensors_mut();
            let masters = tl.master.tensors_mut();
            let grads = tl.grads.tensors();
            match (&self.cfg.optimizer, &mut tl.adam) {
                (Optimizer::AdamW(opt), Some((m, v))) => {
                    let opt = &opt.scaled(tl.lr_scale);
                    for ((((_, c), (_, p)), (_, g)), ((_, m), (_, v))) in copies
                        .into_iter()
                        .zip(masters)
                        .zip(grads)
                        .zip(m.tensors_mut().into_iter().zip(v.tensors_mut()))
                    {
                        be.adamw_step(p, m, v, Some(c), g, opt, self.updates, scale)?;
                    }
                }
                (Optimizer::Sgd { lr, weight_decay }, _) => {
                    let lr = *lr * tl.lr_scale;
                    for (((_, c), (_, p)), (_, g)) in copies.into_iter().zip(masters).zip(grads) {
                        be.sgd_step(p, Some(c), g, lr, *weight_decay, scale)?;
                    }
                }
                (Optimizer::AdamW(_), None) => {
                    return Err(Error::invalid("AdamW state missing (optimizer changed?)"))
                }
            }
        }
        for e in &mut self.edges {
            let w = &mut self.model.weights;
            let copy = match e.edge {
                Edge::Embed => &mut w.embed,
                Edge::Head => w.lm_head.as_mut().expect("an untied head"),
                Edge::Norm => &mut w.norm,
            };
            match (&self.cfg.optimizer, &mut e.adam) {
                (Optimizer::AdamW(opt), Some((m, v))) => be.adamw_step(
                    &mut e.master,
                    m,
                    v,
                    Some(copy),
                    &e.grad,
                    opt,
                    self.updates,
                    scale,
                )?,
                (Optimizer::Sgd { lr, weight_decay }, _) => be.sgd_step(
                    &mut e.master,
                    Some(copy),
                    &e.grad,
                    *lr,
                    *weight_decay,
                    scale,
                )?,
                (Optimizer::AdamW(_), None) => {
                    return Err(Error::invalid("AdamW state missing (optimizer changed?)"))
                }
            }
        }
        Ok(())
    }
}

/// The LM head's and the final norm's gradient accumulators, when they are trained
/// (a tied head's gradient goes into the embedding's).
fn head_grads<B: Backend>(edges: &mut [TrainedEdge<B>]) -> Option<super::head::HeadGrads<'_, B>> {
    if edges.is_empty() {
        return None;
    }
    let tied = !edges.iter().any(|e| e.edge == Edge::Head);
    let mut head = None;
    let mut norm = None;
    for e in edges.iter_mut() {
        match e.edge {
            Edge::Head => head = Some(&mut e.grad),
            Edge::Embed if tied => head = Some(&mut e.grad),
            Edge::Norm => norm = Some(&mut e.grad),
            Edge::Embed => {}
        }
    }
    Some(super::head::HeadGrads {
        head: head.expect("an embedding or a head"),
        norm: norm.expect("the final norm"),
    })
}

/// Sums over loss rows for the step's means.
#[derive(Default)]
struct RowAcc {
    rows: usize,
    clipped: f64,
    entropy: f64,
    ratio: f64,
    kl: f64,
    kl_rows: usize,
}

impl RowAcc {
    fn add(&mut self, p: &Packed, old: &[f32], stats: &[f64], cfg: &TrainConfig) {
        for (r, s) in stats.chunks(stat::STATS).enumerate() {
            let logp = s[stat::LOGP];
            self.rows += 1;
            self.clipped += s[stat::CLIPPED];
            self.entropy += s[stat::ENTROPY];
            self.ratio += (logp - old[r] as f64).clamp(-20.0, 20.0).exp();
            if let Some(rf) = p.ref_logp[r] {
                self.kl += kl_term(logp, rf as f64, cfg.loss.kl).0;
                self.kl_rows += 1;
            }
        }
    }

    fn finish(&self, s: &mut StepStats) {
        let n = self.rows.max(1) as f64;
        s.clip_frac = self.clipped / n;
        s.entropy = self.entropy / n;
        s.ratio_mean = self.ratio / n;
        s.kl = if self.kl_rows > 0 {
            self.kl / self.kl_rows as f64
        } else {
            0.0
        };
    }
}

fn fill_batch_stats<B: Backend>(
    s: &mut StepStats,
    rollouts: &[Rollout],
    prepared: &[Prepared<B>],
    algo: super::Algo,
) {
    s.reward_mean = rollouts.iter().map(|r| r.reward).sum::<f64>() / rollouts.len() as f64;
    let adv = advantages(rollouts, algo);
    s.adv_abs_mean = adv.iter().map(|a| a.abs()).sum::<f64>() / adv.len() as f64;
    s.loss_tokens = prepared.iter().map(|p| p.pack.rows.len()).sum();
    s.tokens = prepared.iter().map(|p| p.pack.tokens()).sum();
}
