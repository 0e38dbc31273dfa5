//! The LM head and the loss, fused and chunked over loss rows (DESIGN section 4):
//! per chunk, gather the rows' final-normed hidden states, logits GEMM (f32),
//! `token_loss_backward` (log-softmax, gather, ratio, clips, KL, entropy → dlogits),
//! then `dlogits · W_head` straight into the hidden-state gradient. At most
//! `LOGIT_CHUNK_ELEMS` logits exist at a time; nothing flows into the frozen head.

use super::pack::Packed;
use crate::backend::accounting::{purpose, Purpose};
use crate::backend::{stat, Backend, LossConfig, LossRows};
use crate::model::score::chunks;
use crate::model::Model;
use crate::{Error, Result};

/// The final norm's weight divided by the sampling temperature, when it is not 1:
/// `rmsnorm(x, w / T) · W_head = logits / T`, so training sees the distribution the
/// rollouts were sampled from (verl and TRL divide the logits by the rollout
/// temperature the same way) and the backward pass through the norm carries the
/// 1/T with no kernel of its own.
pub fn tempered_norm<B: Backend>(model: &Model<B>, temperature: f32) -> Result<Option<B::Buf>> {
    if temperature == 1.0 {
        return Ok(None);
    }
    let w = model.backend.download(&model.weights.norm)?;
    let scaled: Vec<f32> = w.iter().map(|v| v / temperature).collect();
    let _w = purpose(Purpose::Weights);
    Ok(Some(model.backend.upload(&scaled)?))
}

/// `rmsnorm(x, norm)`: the hidden states the head reads (`norm`: the model's final
/// norm or its tempered copy).
fn final_norm<B: Backend>(model: &Model<B>, norm: &B::Buf, x: &B::Buf, t: usize) -> Result<B::Buf> {
    let h = model.cfg.hidden_size;
    let mut out = model.backend.empty(t * h)?;
    model
        .backend
        .rmsnorm(&mut out, x, norm, t, h, model.cfg.rms_norm_eps as f32)?;
    Ok(out)
}

/// Current log-probs of every loss row, given the residual stream after the last
/// layer `x [tokens, hidden]` (no gradient). `norm`: see [`tempered_norm`].
pub fn row_logprobs<B: Backend>(
    model: &Model<B>,
    norm: Option<&B::Buf>,
    x: &B::Buf,
    p: &Packed,
) -> Result<Vec<f32>> {
    let be = &model.backend;
    let (h, v) = (model.cfg.hidden_size, model.cfg.vocab_size);
    let norm = norm.unwrap_or(&model.weights.norm);
    let normed = final_norm(model, norm, x, p.tokens())?;
    let mut out = Vec::with_capacity(p.rows.len());
    for (r0, n) in chunks(p.rows.len(), v) {
        let rows = be.upload_idx(&p.rows[r0..r0 + n])?;
        let mut hc = be.empty(n * h)?;
        be.embedding(&mut hc, &rows, &normed, n, h)?;
        let logits = model.logits_on_device(&hc, n)?;
        let tgt = be.upload_idx(&p.targets[r0..r0 + n])?;
        let mut lp = be.empty_f32(n)?;
        be.logprob_gather(&mut lp, &logits, &tgt, n, v)?;
        out.extend(be.download(&lp)?);
    }
    Ok(out)
}

/// Gradient accumulators (f32) of a trained LM head `[vocab, hidden]` and final norm
/// `[hidden]`.
pub struct HeadGrads<'a, B: Backend> {
    pub head: &'a mut B::Buf,
    pub norm: &'a mut B::Buf,
}

/// The loss of the mini-batch and its gradient w.r.t. `x` (the residual stream after
/// the last layer). `old_logp` has one value per loss row. Returns `dx` and the
/// per-row stats `[rows, stat::STATS]`. `norm`: see [`tempered_norm`]. With `grads`,
/// also accumulates the head's weight gradient (`dlogitsᵀ · h` per chunk) and the
/// final norm's.
#[allow(clippy::too_many_arguments)]
pub fn loss_backward<B: Backend>(
    model: &Model<B>,
    norm: Option<&B::Buf>,
    x: &B::Buf,
    p: &Packed,
    old_logp: &[f32],
    cfg: &LossConfig,
    mut grads: Option<HeadGrads<'_, B>>,
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
    let norm = norm.unwrap_or(&model.weights.norm);
    let normed = final_norm(model, norm, x, t)?;
    let mut dnormed = be.zeros(t * h)?;
    let mut stats = Vec::with_capacity(p.rows.len() * stat::STATS);
    for (r0, n) in chunks(p.rows.len(), v) {
        let r = r0..r0 + n;
        let rows = be.upload_idx(&p.rows[r.clone()])?;
        let mut hc = be.empty(n * h)?;
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
        let mut dlogits = {
            let _l = purpose(Purpose::Logits);
            be.empty(n * v)?
        };
        let mut st = be.empty_f32(n * stat::STATS)?;
        be.token_loss_backward(&mut dlogits, &mut st, &logits, &loss_rows, n, v, cfg)?;
        drop(logits);
        stats.extend(be.download_f64(&st)?);
        if let Some(g) = grads.as_mut() {
            be.linear_backward_weight(g.head, None, &dlogits, &hc, n, v, h)?;
        }
        let mut dh = be.empty(n * h)?;
        be.linear_backward_input(&mut dh, &dlogits, model.weights.head(), n, v, h, false)?;
        be.scatter_rows(&mut dnormed, &dh, &rows, n, h)?;
    }
    let mut dx = be.empty(t * h)?;
    be.rmsnorm_backward(
        &mut dx,
        grads.map(|g| g.norm),
        &dnormed,
        x,
        norm,
        t,
        h,
        model.cfg.rms_norm_eps as f32,
    )?;
    Ok((dx, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::loss::LossAgg;
    use crate::backend::cpu::CpuBackend;
    use crate::config::builtin;
    use crate::train::Rollout;

    /// With a tempered norm the row log-probs are `log_softmax(logits / T)` of the
    /// untempered head, computed here on the host in f64.
    #[test]
    fn tempered_norm_divides_the_logits() {
        let cfg = builtin("tiny").unwrap();
        let model = Model::random(cfg, CpuBackend::<f32>::new(), 3).unwrap();
        let (h, v) = (model.cfg.hidden_size, model.cfg.vocab_size);
        let r = Rollout {
            group: "g".into(),
            prompt_ids: vec![1, 2],
            completion_ids: vec![3, 4],
            reward: 1.0,
            old_logprobs: None,
            ref_logprobs: None,
            advantage: None,
        };
        let pack = Packed::new(&[&r], &[1.0], LossAgg::TokenMean, 4);
        let x_host: Vec<f32> = (0..pack.tokens() * h)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 2.0)
            .collect();
        let x = model.backend.upload(&x_host).unwrap();
        let w_norm = model.backend.download(&model.weights.norm).unwrap();
        let w_head = model.backend.download(model.weights.head()).unwrap();
        let eps = model.cfg.rms_norm_eps;
        for t in [1.0f32, 0.7, 2.5] {
            let norm = tempered_norm(&model, t).unwrap();
            assert_eq!(norm.is_none(), t == 1.0);
            let got = row_logprobs(&model, norm.as_ref(), &x, &pack).unwrap();
            for (k, (&row, &tgt)) in pack.rows.iter().zip(&pack.targets).enumerate() {
                let xr = &x_host[row as usize * h..(row as usize + 1) * h];
                let ms = xr.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() / h as f64;
                let rstd = 1.0 / (ms + eps).sqrt();
                let logits: Vec<f64> = (0..v)
                    .map(|j| {
                        (0..h)
                            .map(|i| {
                                xr[i] as f64 * rstd * w_norm[i] as f64 * w_head[j * h + i] as f64
                            })
                            .sum::<f64>()
                            / t as f64
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
                let want = logits[tgt as usize] - lse;
                assert!(
                    (got[k] as f64 - want).abs() < 1e-4,
                    "T {t}: {} vs {want}",
                    got[k]
                );
            }
        }
    }
}
