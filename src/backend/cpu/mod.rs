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
mod real;
mod rope;

pub use attention::{attention, attention_backward, attention_saved, kv_write};
pub use elementwise::{
    add_assign, embedding, logprob_gather, logsumexp, silu, swiglu, swiglu_backward,
};
pub use gemm::{linear, linear_backward_input, linear_backward_weight};
pub use norm::{rmsnorm, rmsnorm_backward, rmsnorm_saved};
pub use real::Real;
pub use rope::{inv_freq, rope, rope_backward};

use super::{AttnDims, Backend};
use crate::sampling::{hash_uniform, sample, SamplingParams};
use crate::Result;
use std::marker::PhantomData;

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

    fn zeros(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::zero(); len])
    }

    fn zeros_f32(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::zero(); len])
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
}
