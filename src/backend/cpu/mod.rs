//! The CPU reference backend: plain loops over `Vec<T>` (rayon where it helps,
//! matrixmultiply for GEMMs). It is the spec the CUDA kernels are tested against,
//! and it runs small models for real. Generic over f32 and f64 (`Real`), so finite
//! differences can run in f64.
//!
//! The ops are free functions in the submodules, callable directly by tests; the
//! `Backend` impl below only forwards to them.

mod attention;
mod elementwise;
mod gemm;
#[cfg(test)]
mod grad_tests;
pub mod loss;
mod norm;
mod paged;
mod real;
mod rope;

pub use attention::{attention, attention_backward, attention_saved, kv_gather, kv_write};
pub use elementwise::{
    add_assign, embedding, logprob_gather, logsumexp, silu, swiglu, swiglu_backward,
};
pub use gemm::{linear, linear_backward_input, linear_backward_weight};
pub use norm::{rmsnorm, rmsnorm_backward, rmsnorm_saved};
pub use paged::{attention_paged, kv_write_paged, physical_row};
pub use real::Real;
pub use rope::{inv_freq, rope, rope_backward};

use super::{AttnDims, Backend, LossConfig, LossRows, PagedDims};
use crate::sampling::{hash_uniform, sample, SamplingParams};
use crate::train::AdamW;
use crate::Result;
use std::marker::PhantomData;

/// `Backend::set_len` on a `Vec`: within its capacity, so it never reallocates.
fn set_len_within<V: Clone>(v: &mut Vec<V>, len: usize, fill: V) -> Result<()> {
    if len > v.capacity() {
        return Err(crate::Error::invalid(format!(
            "set_len: {len} elements in a buffer of {}",
            v.capacity()
        )));
    }
    v.resize(len, fill);
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend<T: Real = f32> {
    _t: PhantomData<T>,
}

impl<T: Real> CpuBackend<T> {
    pub fn new() -> Self {
        CpuBackend { _t: PhantomData }
    }
}

impl<T: Real> Backend for CpuBackend<T> {
    type Buf = Vec<T>;
    type Idx = Vec<u32>;
    type Graph = ();

    fn name(&self) -> String {
        format!(
            "cpu ({}, {} threads)",
            std::any::type_name::<T>(),
            rayon::current_num_threads()
        )
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn upload(&self, host: &[f32]) -> Result<Vec<T>> {
        Ok(host.iter().map(|&v| T::from_f32(v)).collect())
    }

    fn upload_f32(&self, host: &[f32]) -> Result<Vec<T>> {
        self.upload(host)
    }

    fn upload_idx(&self, host: &[u32]) -> Result<Vec<u32>> {
        Ok(host.to_vec())
    }

    fn download(&self, buf: &Vec<T>) -> Result<Vec<f32>> {
        Ok(buf.iter().map(|&v| v.to_f32()).collect())
    }

    fn download_f64(&self, buf: &Vec<T>) -> Result<Vec<f64>> {
        Ok(buf
            .iter()
            .map(|&v| v.to_f64().unwrap_or(f64::NAN))
            .collect())
    }

    fn zeros(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::zero(); len])
    }

    fn zeros_f32(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::zero(); len])
    }

    fn fill_zero(&self, buf: &mut Vec<T>) -> Result<()> {
        buf.iter_mut().for_each(|v| *v = T::zero());
        Ok(())
    }

    fn len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }

    fn fill_uniform(&self, len: usize, lo: f32, hi: f32, seed: u64) -> Result<Vec<T>> {
        use rayon::prelude::*;
        Ok((0..len)
            .into_par_iter()
            .map(|i| T::from_f32(lo + (hi - lo) * hash_uniform(seed, 0, i as u32)))
            .collect())
    }

    fn slice(&self, src: &Vec<T>, start: usize, len: usize) -> Result<Vec<T>> {
        Ok(src[start..start + len].to_vec())
    }

    fn copy_within(&self, buf: &mut Vec<T>, src: usize, dst: usize, len: usize) -> Result<()> {
        super::check_copy_within(buf.len(), src, dst, len)?;
        buf.copy_within(src..src + len, dst);
        Ok(())
    }

    fn embedding(
        &self,
        out: &mut Vec<T>,
        ids: &Vec<u32>,
        table: &Vec<T>,
        tokens: usize,
        dim: usize,
    ) -> Result<()> {
        embedding(out, ids, table, tokens, dim);
        Ok(())
    }

    fn rmsnorm(
        &self,
        out: &mut Vec<T>,
        x: &Vec<T>,
        w: &Vec<T>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        rmsnorm(out, x, w, rows, dim, eps);
        Ok(())
    }

    fn linear(
        &self,
        out: &mut Vec<T>,
        x: &Vec<T>,
        w: &Vec<T>,
        bias: Option<&Vec<T>>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        linear(out, x, w, bias.map(|b| b.as_slice()), m, n, k);
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<T>,
        pos: &Vec<u32>,
        tokens: usize,
        heads: usize,
        hd: usize,
        theta: f32,
    ) -> Result<()> {
        rope(x, pos, tokens, heads, hd, theta);
        Ok(())
    }

    fn kv_write(
        &self,
        cache: &mut Vec<T>,
        x: &Vec<T>,
        slot: &Vec<u32>,
        pos: &Vec<u32>,
        d: AttnDims,
    ) -> Result<()> {
        kv_write(cache, x, slot, pos, d);
        Ok(())
    }

    fn attention(
        &self,
        out: &mut Vec<T>,
        q: &Vec<T>,
        k_cache: &Vec<T>,
        v_cache: &Vec<T>,
        slot: &Vec<u32>,
        pos: &Vec<u32>,
        d: AttnDims,
        scale: f32,
    ) -> Result<()> {
        attention(out, q, k_cache, v_cache, slot, pos, d, scale);
        Ok(())
    }

    fn kv_write_paged(
        &self,
        cache: &mut Vec<T>,
        x: &Vec<T>,
        rows: &Vec<u32>,
        d: PagedDims,
    ) -> Result<()> {
        kv_write_paged(cache, x, rows, d);
        Ok(())
    }

    fn attention_paged(
        &self,
        out: &mut Vec<T>,
        q: &Vec<T>,
        k_cache: &Vec<T>,
        v_cache: &Vec<T>,
        table: &Vec<u32>,
        seq: &Vec<u32>,
        pos: &Vec<u32>,
        d: PagedDims,
        scale: f32,
        _decode: Option<&mut Vec<T>>,
    ) -> Result<()> {
        attention_paged(out, q, k_cache, v_cache, table, seq, pos, d, scale);
        Ok(())
    }

    fn capture_begin(&self) -> Result<bool> {
        Ok(false)
    }

    fn capture_end(&self) -> Result<Option<()>> {
        Ok(None)
    }

    fn replay(&self, _graph: &()) -> Result<()> {
        Ok(())
    }

    fn set_len(&self, buf: &mut Vec<T>, len: usize) -> Result<()> {
        set_len_within(buf, len, T::zero())
    }

    fn set_idx_len(&self, idx: &mut Vec<u32>, len: usize) -> Result<()> {
        set_len_within(idx, len, 0)
    }

    fn upload_idx_into(&self, dst: &mut Vec<u32>, host: &[u32]) -> Result<()> {
        assert_eq!(dst.len(), host.len(), "upload_idx_into: lengths");
        dst.copy_from_slice(host);
        Ok(())
    }

    fn download_idx(&self, src: &Vec<u32>, n: usize) -> Result<Vec<u32>> {
        Ok(src[..n].to_vec())
    }

    fn sample_into(
        &self,
        out: &mut Vec<u32>,
        logits: &Vec<T>,
        streams: &Vec<u32>,
        rows: usize,
        vocab: usize,
        p: &SamplingParams,
        seed: u64,
    ) -> Result<()> {
        assert!(
            out.len() >= rows && streams.len() >= 2 * rows,
            "sample_into: sizes"
        );
        assert_eq!(logits.len(), rows * vocab, "sample_into: logits");
        for (r, row) in logits.chunks(vocab).enumerate() {
            let row: Vec<f32> = row.iter().map(|&v| v.to_f32()).collect();
            let stream = streams[2 * r] as u64 | (streams[2 * r + 1] as u64) << 32;
            out[r] = sample(&row, p, seed, stream);
        }
        Ok(())
    }

    fn swiglu(&self, out: &mut Vec<T>, gate: &Vec<T>, up: &Vec<T>, n: usize) -> Result<()> {
        swiglu(out, gate, up, n);
        Ok(())
    }

    fn add_assign(&self, x: &mut Vec<T>, y: &Vec<T>) -> Result<()> {
        add_assign(x, y);
        Ok(())
    }

    fn sample(
        &self,
        logits: &Vec<T>,
        streams: &[u64],
        vocab: usize,
        p: &SamplingParams,
        seed: u64,
    ) -> Result<Vec<u32>> {
        assert_eq!(logits.len(), streams.len() * vocab, "sample: logits");
        Ok(logits
            .chunks(vocab)
            .zip(streams)
            .map(|(row, &stream)| {
                let row: Vec<f32> = row.iter().map(|&v| v.to_f32()).collect();
                sample(&row, p, seed, stream)
            })
            .collect())
    }

    fn logprob_gather(
        &self,
        out: &mut Vec<T>,
        logits: &Vec<T>,
        target: &Vec<u32>,
        rows: usize,
        vocab: usize,
    ) -> Result<()> {
        logprob_gather(out, logits, target, rows, vocab);
        Ok(())
    }

    fn attention_saved(
        &self,
        out: &mut Vec<T>,
        lse: &mut Vec<T>,
        q: &Vec<T>,
        k_cache: &Vec<T>,
        v_cache: &Vec<T>,
        slot: &Vec<u32>,
        pos: &Vec<u32>,
        d: AttnDims,
        scale: f32,
    ) -> Result<()> {
        attention_saved(out, lse, q, k_cache, v_cache, slot, pos, d, scale);
        Ok(())
    }

    fn attention_backward(
        &self,
        dq: &mut Vec<T>,
        dk_cache: &mut Vec<T>,
        dv_cache: &mut Vec<T>,
        dout: &Vec<T>,
        out: &Vec<T>,
        lse: &Vec<T>,
        q: &Vec<T>,
        k_cache: &Vec<T>,
        v_cache: &Vec<T>,
        slot: &Vec<u32>,
        pos: &Vec<u32>,
        d: AttnDims,
        scale: f32,
    ) -> Result<()> {
        attention_backward(
            dq, dk_cache, dv_cache, dout, out, lse, q, k_cache, v_cache, slot, pos, d, scale,
        );
        Ok(())
    }

    fn kv_gather(
        &self,
        x: &mut Vec<T>,
        cache: &Vec<T>,
        slot: &Vec<u32>,
        pos: &Vec<u32>,
        d: AttnDims,
    ) -> Result<()> {
        kv_gather(x, cache, slot, pos, d);
        Ok(())
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut Vec<T>,
        dw_accum: Option<&mut Vec<T>>,
        dy: &Vec<T>,
        x: &Vec<T>,
        weight: &Vec<T>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let mut normed = vec![T::zero(); rows * dim];
        let mut rstd = vec![T::zero(); rows];
        rmsnorm_saved(&mut normed, &mut rstd, x, weight, rows, dim, eps);
        let mut scratch;
        let dw = match dw_accum {
            Some(dw) => dw,
            None => {
                scratch = vec![T::zero(); dim];
                &mut scratch
            }
        };
        rmsnorm_backward(dx, dw, dy, x, weight, &rstd, rows, dim);
        Ok(())
    }

    fn rope_backward(
        &self,
        dx: &mut Vec<T>,
        pos: &Vec<u32>,
        tokens: usize,
        heads: usize,
        hd: usize,
        theta: f32,
    ) -> Result<()> {
        rope_backward(dx, pos, tokens, heads, hd, theta);
        Ok(())
    }

    fn swiglu_backward(
        &self,
        dgate: &mut Vec<T>,
        dup: &mut Vec<T>,
        dout: &Vec<T>,
        gate: &Vec<T>,
        up: &Vec<T>,
        n: usize,
    ) -> Result<()> {
        swiglu_backward(dgate, dup, dout, gate, up, n);
        Ok(())
    }

    fn linear_backward_input(
        &self,
        dx: &mut Vec<T>,
        dout: &Vec<T>,
        w: &Vec<T>,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<()> {
        if accumulate {
            let mut tmp = vec![T::zero(); m * k];
            linear_backward_input(&mut tmp, dout, w, m, n, k);
            add_assign(dx, &tmp);
        } else {
            linear_backward_input(dx, dout, w, m, n, k);
        }
        Ok(())
    }

    fn linear_backward_weight(
        &self,
        dw_accum: &mut Vec<T>,
        db_accum: Option<&mut Vec<T>>,
        dout: &Vec<T>,
        x: &Vec<T>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        linear_backward_weight(
            dw_accum,
            db_accum.map(|b| b.as_mut_slice()),
            dout,
            x,
            m,
            n,
            k,
        );
        Ok(())
    }

    /// Each row's tokens summed first, in token order, then added to the row (the
    /// order the CUDA kernel uses, so both give the same f32 sums).
    fn embedding_grad(
        &self,
        dtable: &mut Vec<T>,
        dx: &Vec<T>,
        ids: &Vec<u32>,
        tokens: usize,
        dim: usize,
    ) -> Result<()> {
        assert_eq!(dx.len(), tokens * dim, "embedding_grad: dx");
        assert_eq!(ids.len(), tokens, "embedding_grad: ids");
        let rows = dtable.len() / dim.max(1);
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
            return Err(crate::Error::invalid(format!(
                "embedding_grad: id {bad} outside a table of {rows} rows"
            )));
        }
        let mut by_id: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (t, &i) in ids.iter().enumerate() {
            by_id.entry(i).or_default().push(t);
        }
        let mut sum = vec![T::zero(); dim];
        for (i, toks) in by_id {
            sum.iter_mut().for_each(|s| *s = T::zero());
            for t in toks {
                for (s, &g) in sum.iter_mut().zip(&dx[t * dim..(t + 1) * dim]) {
                    *s = *s + g;
                }
            }
            let row = &mut dtable[i as usize * dim..(i as usize + 1) * dim];
            for (d, &s) in row.iter_mut().zip(&sum) {
                *d = *d + s;
            }
        }
        Ok(())
    }

    fn scatter_rows(
        &self,
        dst: &mut Vec<T>,
        src: &Vec<T>,
        rows_idx: &Vec<u32>,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        assert_eq!(src.len(), rows * dim, "scatter_rows: src");
        assert_eq!(rows_idx.len(), rows, "scatter_rows: rows_idx");
        for (r, &i) in rows_idx.iter().enumerate() {
            let i = i as usize;
            assert!(
                (i + 1) * dim <= dst.len(),
                "scatter_rows: row {i} outside dst"
            );
            dst[i * dim..(i + 1) * dim].copy_from_slice(&src[r * dim..(r + 1) * dim]);
        }
        Ok(())
    }

    fn token_loss_backward(
        &self,
        dlogits: &mut Vec<T>,
        stats: &mut Vec<T>,
        logits: &Vec<T>,
        rows: &LossRows<'_, Self>,
        n_rows: usize,
        vocab: usize,
        cfg: &LossConfig,
    ) -> Result<()> {
        use super::stat::STATS;
        use rayon::prelude::*;
        assert_eq!(logits.len(), n_rows * vocab, "token_loss_backward: logits");
        assert_eq!(
            dlogits.len(),
            n_rows * vocab,
            "token_loss_backward: dlogits"
        );
        assert_eq!(stats.len(), n_rows * STATS, "token_loss_backward: stats");
        for (b, name) in [
            (rows.old_logp, "old_logp"),
            (rows.adv, "adv"),
            (rows.weight, "weight"),
        ] {
            assert_eq!(b.len(), n_rows, "token_loss_backward: {name}");
        }
        assert_eq!(rows.target.len(), n_rows, "token_loss_backward: target");
        dlogits
            .par_chunks_mut(vocab)
            .zip(logits.par_chunks(vocab))
            .zip(stats.par_chunks_mut(STATS))
            .enumerate()
            .for_each(|(r, ((d, z), st))| {
                let row = loss::token_loss_row(
                    d,
                    z,
                    rows.target[r] as usize,
                    rows.old_logp[r],
                    rows.ref_logp.map(|b| b[r]),
                    rows.adv[r],
                    rows.weight[r],
                    cfg,
                );
                st.copy_from_slice(&row);
            });
        Ok(())
    }

    fn adamw_step(
        &self,
        param: &mut Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        copy: Option<&mut Vec<T>>,
        grad: &Vec<T>,
        opt: &AdamW,
        step: u64,
        grad_scale: f32,
    ) -> Result<()> {
        // The f32 reference (`AdamW::step`), whatever T is: the optimizer is f32.
        let f = |b: &Vec<T>| b.iter().map(|&v| Real::to_f32(v)).collect::<Vec<f32>>();
        let (mut p, mut mm, mut vv, g) = (f(param), f(m), f(v), f(grad));
        opt.step(&mut p, &mut mm, &mut vv, &g, step, grad_scale);
        for (dst, src) in [(param, &p), (m, &mm), (v, &vv)] {
            dst.iter_mut()
                .zip(src)
                .for_each(|(d, &s)| *d = T::from_f32(s));
        }
        if let Some(c) = copy {
            c.iter_mut().zip(&p).for_each(|(d, &s)| *d = T::from_f32(s));
        }
        Ok(())
    }

    fn sgd_step(
        &self,
        param: &mut Vec<T>,
        copy: Option<&mut Vec<T>>,
        grad: &Vec<T>,
        lr: f32,
        weight_decay: f32,
        grad_scale: f32,
    ) -> Result<()> {
        assert_eq!(param.len(), grad.len(), "sgd_step: lengths");
        let (lr, wd, gs) = (
            T::from_f32(lr),
            T::from_f32(weight_decay),
            T::from_f32(grad_scale),
        );
        param
            .iter_mut()
            .zip(grad)
            .for_each(|(p, &g)| *p = *p - lr * (g * gs + wd * *p));
        if let Some(c) = copy {
            c.copy_from_slice(param);
        }
        Ok(())
    }

    fn sum_squares(&self, buf: &Vec<T>) -> Result<f64> {
        Ok(buf
            .iter()
            .map(|&v| v.to_f64().unwrap_or(f64::NAN).powi(2))
            .sum())
    }

    fn copy_convert(&self, dst: &mut Vec<T>, src: &Vec<T>) -> Result<()> {
        assert_eq!(dst.len(), src.len(), "copy_convert: lengths");
        dst.copy_from_slice(src);
        Ok(())
    }
}
