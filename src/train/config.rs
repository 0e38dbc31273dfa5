//! The settings of a training step (`engine run` flags, DESIGN section 5).

use super::{AdamW, Algo};
use crate::backend::cpu::loss::LossAgg;
use crate::backend::LossConfig;
use crate::{Error, Result};

/// The optimizer of the trained parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    AdamW(AdamW),
    /// Plain SGD (torch `SGD`, no momentum), for checks: one `--lr 1` step moves each
    /// parameter by exactly minus its gradient.
    Sgd {
        lr: f32,
        weight_decay: f32,
    },
}

impl Optimizer {
    pub fn lr(&self) -> f32 {
        match self {
            Optimizer::AdamW(a) => a.lr,
            Optimizer::Sgd { lr, .. } => *lr,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub algo: Algo,
    pub loss: LossConfig,
    pub loss_agg: LossAgg,
    /// The constant divisor of `seq-mean-token-sum-norm` (`--max-new-tokens`).
    pub max_new_tokens: usize,
    pub optimizer: Optimizer,
    /// Clip the global gradient norm of the trained parameters to this (0: off).
    pub grad_clip: f32,
    /// Passes over the rollouts per step.
    pub ppo_epochs: usize,
    /// Records per optimizer update (`None`: all of them, one update per epoch).
    pub mini_batch: Option<usize>,
    /// Tokens per forward/backward pass: each update runs as micro-batches of at
    /// most this many tokens with gradients accumulated (`None`: one pass).
    pub micro_batch_tokens: Option<usize>,
    /// Keep the hidden state entering the lowest trained layer for the whole step
    /// (else recompute the frozen prefix in every pass that needs it).
    pub keep_prefix: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            algo: Algo::Grpo,
            loss: LossConfig::default(),
            loss_agg: LossAgg::TokenMean,
            max_new_tokens: 1024,
            optimizer: Optimizer::AdamW(AdamW::default()),
            grad_clip: 1.0,
            ppo_epochs: 1,
            mini_batch: None,
            micro_batch_tokens: None,
            keep_prefix: true,
        }
    }
}

impl TrainConfig {
    /// The aggregation an algorithm uses unless `--loss-agg` overrides it.
    pub fn default_agg(algo: Algo) -> LossAgg {
        match algo {
            Algo::Grpo | Algo::Gigpo => LossAgg::TokenMean,
            Algo::DrGrpo => LossAgg::SeqMeanTokenSumNorm,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.ppo_epochs == 0 {
            return bad("--ppo-epochs must be at least 1".into());
        }
        if self.mini_batch == Some(0) {
            return bad("--mini-batch must be at least 1".into());
        }
        if self.micro_batch_tokens == Some(0) {
            return bad("--micro-batch-tokens must be at least 1".into());
        }
        if self.max_new_tokens == 0 {
            return bad("--max-new-tokens must be at least 1".into());
        }
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            return bad(format!(
                "--grad-clip {} must be >= 0 (0 disables)",
                self.grad_clip
            ));
        }
        let l = &self.loss;
        if !(l.eps_low >= 0.0 && l.eps_low < 1.0) {
            return bad(format!("--clip-low {} must be in [0, 1)", l.eps_low));
        }
        if !(l.eps_high >= 0.0 && l.eps_high.is_finite()) {
            return bad(format!("--clip-high {} must be >= 0", l.eps_high));
        }
        if let Some(c) = l.clip_c {
            if !(c > 1.0 && c.is_finite()) {
                return bad(format!(
                    "--clip-c {c} must be > 1 (0 disables the dual clip)"
                ));
            }
        }
        if !l.beta.is_finite() || !l.entropy_coef.is_finite() {
            return bad("--kl-coef and --entropy-coef must be finite".into());
        }
        let lr = self.optimizer.lr();
        if !(lr >= 0.0 && lr.is_finite()) {
            return bad(format!("--lr {lr} must be a finite number >= 0"));
        }
        Ok(())
    }
}

/// Parse `--loss-agg`.
pub fn parse_loss_agg(s: &str) -> Result<LossAgg> {
    match s {
        "token-mean" => Ok(LossAgg::TokenMean),
        "seq-mean-token-mean" => Ok(LossAgg::SeqMeanTokenMean),
        "seq-mean-token-sum-norm" => Ok(LossAgg::SeqMeanTokenSumNorm),
        other => Err(Error::invalid(format!(
            "--loss-agg '{other}': expected token-mean, seq-mean-token-mean or seq-mean-token-sum-norm"
        ))),
    }
}

/// Parse `--kl-type`.
pub fn parse_kl_type(s: &str) -> Result<crate::backend::KlType> {
    use crate::backend::KlType;
    match s {
        "k1" => Ok(KlType::K1),
        "k2" => Ok(KlType::K2),
        "k3" => Ok(KlType::K3),
        "low-var-kl" | "low_var_kl" => Ok(KlType::LowVarKl),
        other => Err(Error::invalid(format!(
            "--kl-type '{other}': expected k1, k2, k3 or low-var-kl"
        ))),
    }
}
