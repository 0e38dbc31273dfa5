//! Criterion benchmarks of the CPU reference ops at small-model shapes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onelayer::backend::cpu;
use onelayer::backend::AttnDims;

fn ramp(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn bench_linear(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_linear");
    for &(m, n, k) in &[(64usize, 1024usize, 1024usize), (1, 3072, 1024)] {
        let (x, w) = (ramp(m * k), ramp(n * k));
        let mut out = vec![0.0; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(format!("{m}x{n}x{k}"), |b| {
            b.iter(|| cpu::linear(&mut out, &x, &w, None, m, n, k))
        });
    }
    g.finish();
}

fn bench_rmsnorm(c: &mut Criterion) {
    let (rows, dim) = (256, 1024);
    let (x, w) = (ramp(rows * dim), ramp(dim));
    let mut out = vec![0.0; rows * dim];
    let mut g = c.benchmark_group("cpu_rmsnorm");
    g.throughput(Throughput::Bytes((2 * rows * dim * 4) as u64));
    g.bench_function("256x1024", |b| {
        b.iter(|| cpu::rmsnorm(&mut out, &x, &w, rows, dim, 1e-6))
    });
    g.finish();
}

fn bench_attention(c: &mut Criterion) {
    let d = AttnDims {
        tokens: 256,
        heads: 16,
        kv_heads: 8,
        head_dim: 64,
        slots: 1,
        max_len: 256,
    };
    let q = ramp(d.tokens * d.heads * d.head_dim);
    let (k, v) = (ramp(d.cache_len()), ramp(d.cache_len()));
    let slot = vec![0u32; d.tokens];
    let pos: Vec<u32> = (0..d.tokens as u32).collect();
    let mut out = vec![0.0; q.len()];
    let mut g = c.benchmark_group("cpu_attention");
    g.bench_function("prefill_256_h16_kv8_d64", |b| {
        b.iter(|| cpu::attention(&mut out, &q, &k, &v, &slot, &pos, d, 0.125))
    });
    g.finish();
}

criterion_group!(benches, bench_linear, bench_rmsnorm, bench_attention);
criterion_main!(benches);
