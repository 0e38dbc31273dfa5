// RMSNorm forward, as transformers computes it (Qwen3RMSNorm / Qwen2RMSNorm).
//
// Math: rstd[r] = rsqrt(mean_c(x[r, c]^2) + eps), in f32 whatever the storage type;
//   f32:  out[r, c] = (x[r, c] * rstd[r]) * weight[c]
//   bf16: out[r, c] = bf16(weight[c] * bf16(x[r, c] * rstd[r]))  (transformers casts the
//         normalised row back to the input dtype before the weight multiply)
// Shapes: x, out [rows, dim]; weight [dim]; rstd [rows] f32, optional (null: not written).
// Saves for backward: rstd (the per-row reciprocal RMS), when rstd != null.
// Launch: grid (rows), block (rmsnorm_threads(dim)): a multiple of 32 up to 1024, 256
//   recommended for large rows (min(256, 32 * ceil(dim / (32 * V))), V = 16 / sizeof(T)
//   elements per vector); no dynamic shared memory. Rows whose x, out and weight are
//   all 16-byte aligned go through 16-byte vectors plus a scalar tail; others are
//   read element by element. x is read twice (the second pass hits L1/L2).
// Writes: out (=), rstd (=). Every thread reaches every barrier (block_sum).

template <class T>
__device__ __forceinline__ float rms_apply(float x, float r, float w) {
    return x * r * w;
}
template <>
__device__ __forceinline__ float rms_apply<bf16>(float x, float r, float w) {
    return w * round_to<bf16>(x * r);
}

template <class T>
__device__ __forceinline__ void rmsnorm_row(T* __restrict__ out, float* __restrict__ rstd,
                                            const T* __restrict__ x, const T* __restrict__ weight, int rows,
                                            int dim, float eps) {
    constexpr int V = Vec16<T>::N;
    const int row = blockIdx.x;
    if (row >= rows) return;  // uniform across the block
    const T* xr = x + (size_t)row * dim;
    T* orow = out + (size_t)row * dim;
    const bool vec = is_aligned16(xr) && is_aligned16(orow) && is_aligned16(weight);
    const int nvec = vec ? dim / V : 0;

    float ss = 0.f;
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
        float v[V];
        load16(xr + i * V, v);
#pragma unroll
        for (int j = 0; j < V; ++j) ss += v[j] * v[j];
    }
    for (int c = nvec * V + threadIdx.x; c < dim; c += blockDim.x) {
        const float v = to_f32(xr[c]);
        ss += v * v;
    }
    ss = block_sum(ss);
    const float r = rsqrtf(ss / (float)dim + eps);
    if (rstd != nullptr && threadIdx.x == 0) rstd[row] = r;

    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
        float v[V], w[V];
        load16(xr + i * V, v);
        load16(weight + i * V, w);
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = rms_apply<T>(v[j], r, w[j]);
        store16(orow + i * V, v);
    }
    for (int c = nvec * V + threadIdx.x; c < dim; c += blockDim.x)
        orow[c] = from_f32<T>(rms_apply<T>(to_f32(xr[c]), r, to_f32(weight[c])));
}

extern "C" __global__ void __launch_bounds__(1024)
rmsnorm_forward_f32(float* out, float* rstd, const float* x, const float* weight, int rows, int dim, float eps) {
    rmsnorm_row<float>(out, rstd, x, weight, rows, dim, eps);
}

extern "C" __global__ void __launch_bounds__(1024)
rmsnorm_forward_bf16(bf16* out, float* rstd, const bf16* x, const bf16* weight, int rows, int dim, float eps) {
    rmsnorm_row<bf16>(out, rstd, x, weight, rows, dim, eps);
}
