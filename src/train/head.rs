//! The LM head and the loss, fused and chunked over loss rows (DESIGN section 4):
//! per chunk, gather the rows' final-normed hidden states, logits GEMM (f32),
//! `token_loss_backward` (log-softmax, gather, ratio, clips, KL, entropy → dlogits),
//! then `dlogits · W_head` straight into the hidden-state gradient. At most
//! `LOGIT_CHUNK_ELEMS` logits exist at a time; nothing flows into the frozen head.

use super::pack::Packed;
use crate::backend::{stat, Backend, LossConfig, LossRows};
use crate::model::score::chunks;
use crate::model::Model;
use crate::{Error, Result};

/// `rmsnorm(x, final norm)`: the hidden states the head reads.
fn final_norm<B: Backend>(model: &Model<B>, x: &B::Buf, t: usize) -> Result<B::Buf> {
    let h = model.cfg.hidden_size;
    let mut out = model.backend.zeros(t * h)?;
    model.backend.rmsnorm(
        &mut out,
        x,
        &model.weights.norm,
        t,
        h,
        model.cfg.rms_norm_eps as f32,
    )?;
    Ok(out)
}

/// Current log-probs of every loss row, given the residual stream after the last
/// layer `x [tokens, hidden]` (no gradient).
pub fn row_logprobs<B: Backend>(model: &Model<B>, x: &B::Buf, p: &Packed) -> Result<Vec<f32>> {
    let be = &model.backend;
    let (h, v) = (model.cfg.hidden_size, model.cfg.vocab_size);
    let normed = final_norm(model, x, p.tokens())?;
    let mut out = Vec::with_capacity(p.rows.len());
    for (r0, n) in chunks(p.rows.len(), v) {
        let rows = be.upload_idx(&p.rows[r0..r0 + n])?;
        let mut hc = be.zeros(n * h)?;
        be.embedding(&mut hc, &rows, &normed, n, h)?;
        let logits = model.logits_on_device(&hc, n)?;
        let tgt = be.upload_idx(&p.targets[r0..r0 + n])?;
        let mut lp = be.zeros_f32(n)?;
        be.logprob_gather(&mut lp, &logits, &tgt, n, v)?;
        out.extend(be.download(&lp)?);
    }
    Ok(out)
}

/// The loss of the mini-batch and its gradient w.r.t. `x` (the residual stream after
/// the last layer). `old_logp` has one value per loss row. Returns `dx` and the
/// per-row stats `[rows, stat::STATS]`.
pub fn loss_backward<B: Backend>(
    model: &Model<B>,
    x: &B::Buf,
    p: &Packed,
    old_logp: &[f32],
    cfg: &LossConfig,
) -> Result<(B::Buf, Vec<f64>)> {
    let be = &model.backend;
    let (h, v) = (model.cfg.hidden_size, model.cfg.vocab_size);
    let t = p.tokens();
    let use_ref = cfg.beta != 0.0;
    if use_ref && p.ref_logp.iter().any(Option::is_none) {
        return Err(Error::invalid(
            "--kl-coef is set but some rollouts carry no \"ref_logprobs\"",
        ));
    }
    let normed = final_norm(model, x, t)?;
    let mut dnormed = be.zeros(t * h)?;
    let mut stats = Vec::with_capacity(p.rows.len() * stat::STATS);
    for (r0, n) in chunks(p.rows.len(), v) {
        let r = r0..r0 + n;
        let rows = be.upload_idx(&p.rows[r.clone()])?;
        let mut hc = be.zeros(n * h)?;
        be.embedding(&mut hc, &rows, &normed, n, h)?;
        let logits = model.logits_on_device(&hc, n)?;
        let ref_host: Vec<f32> = p.ref_logp[r.clone()]
            .iter()
            .map(|v| v.unwrap_or(0.0))
            .collect();
        let target = be.upload_idx(&p.targets[r.clone()])?;
        let old = be.upload_f32(&old_logp[r.clone()])?;
        let adv = be.upload_f32(&p.adv[r.clone()])?;
        let weight = be.upload_f32(&p.weight[r.clone()])?;
        let refb = if use_ref {
            Some(be.upload_f32(&ref_host)?)
        } else {
            None
        };
        let loss_rows = LossRows::<B> {
            target: &target,
            old_logp: &old,
            ref_logp: refb.as_ref(),
            adv: &adv,
            weight: &weight,
        };
        let mut dlogits = be.zeros(n * v)?;
        let mut st = be.zeros_f32(n * stat::STATS)?;
        be.token_loss_backward(&mut dlogits, &mut st, &logits, &loss_rows, n, v, cfg)?;
        drop(logits);
        stats.extend(be.download_f64(&st)?);
        let mut dh = be.zeros(n * h)?;
        be.linear_backward_input(&mut dh, &dlogits, model.weights.head(), n, v, h, false)?;
        be.scatter_rows(&mut dnormed, &dh, &rows, n, h)?;
    }
    let mut dx = be.zeros(t * h)?;
    be.rmsnorm_backward(
        &mut dx,
        None,
        &dnormed,
        x,
        &model.weights.norm,
        t,
        h,
        model.cfg.rms_norm_eps as f32,
    )?;
    Ok((dx, stats))
}
