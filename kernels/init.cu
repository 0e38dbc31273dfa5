// Seeded uniform fill, for models with random weights (benchmarks, tests).
//
// Math: out[i] = lo + (hi - lo) * hash_uniform(seed, 0, i) — the same counter hash as
//   the CPU reference (`crate::sampling::hash_uniform`), so both backends build
//   identical random tensors; rounded to bf16.
// Shapes: out [n] bf16.
// Launch: grid-stride, 256 threads, any grid. Writes out (=).

extern "C" __global__ void __launch_bounds__(256)
fill_uniform_bf16(bf16* out, unsigned long long n, unsigned long long seed, float lo, float hi) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = __float2bfloat16(lo + (hi - lo) * hash_uniform(seed, 0ull, (unsigned int)i));
}
