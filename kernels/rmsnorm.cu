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

// ---- RMSNorm backward ------------------------------------------------------------
//
// Math (f32 on the stored inputs; rstd recomputed from x as in the forward):
//   r = rsqrt(mean_c(x[c]^2) + eps),  dot = sum_c dy[c] * w[c] * x[c]
//   dx[c] = r * dy[c] * w[c] - (r^3 * dot / dim) * x[c]
//   dw[c] += sum_rows dy[c] * x[c] * r
// This is the plain math of y = x * r * w (the CPU reference); the bf16 forward's
// rounding of x * r before the weight multiply is not differentiated.
// Shapes: dy, x, dx [rows, dim]; weight [dim]; dw_part [gridDim.x, dim] f32, optional
//   (null: no weight gradient).
// Saves: nothing (the forward's x is the saved tensor).
// Launch: 1-D grid-stride over rows (the host gives each row group two rows or more),
//   RMSB_THREADS (256) threads. dim <= 1024: one warp
//   per row (8 rows at a time per block, warp reductions only); larger rows: the whole
//   block per row (block reductions). 16-byte vectors when dim % V == 0 and every
//   pointer is 16-byte aligned, else element by element. With dw_part: dynamic shared
//   memory of (rows in flight per block) * dim floats holds each row group's
//   partial dw, owned column by column by fixed threads (no atomics; vector columns
//   stored transposed, element j of vector i at j * dim / V + i, so a warp's lanes
//   hit consecutive banks); at the end the
//   block adds its row groups in order and writes its row of dw_part. The caller then
//   sums dw_part's rows in order into dw (column_sum_f32, kernels/backward.cu): for a
//   given (rows, dim, grid) the result is bitwise reproducible.
// Writes: dx (=), dw_part (=, one row per block). Every thread reaches every barrier.

#define RMSB_THREADS 256

template <class T>
__device__ __forceinline__ void rmsb_row(T* __restrict__ dxr, float* __restrict__ acc, const T* __restrict__ dyr,
                                         const T* __restrict__ xr, const T* __restrict__ weight, int dim, int nvec,
                                         float eps, int lane, int width, bool by_warp) {
    constexpr int V = Vec16<T>::N;
    float ss = 0.f, dot = 0.f;
    for (int i = lane; i < nvec; i += width) {
        float g[V], v[V], w[V];
        load16(dyr + i * V, g);
        load16(xr + i * V, v);
        load16(weight + i * V, w);
#pragma unroll
        for (int j = 0; j < V; ++j) ss += v[j] * v[j], dot += g[j] * w[j] * v[j];
    }
    for (int c = nvec * V + lane; c < dim; c += width) {
        const float g = to_f32(dyr[c]), v = to_f32(xr[c]), w = to_f32(weight[c]);
        ss += v * v;
        dot += g * w * v;
    }
    if (by_warp) {
        ss = warp_sum(ss);
        dot = warp_sum(dot);
    } else {
        ss = block_sum(ss);
        dot = block_sum(dot);
    }
    const float r = rsqrtf(ss / (float)dim + eps);
    const float k = r * r * r * dot / (float)dim;
    for (int i = lane; i < nvec; i += width) {
        float g[V], v[V], w[V], d[V];
        load16(dyr + i * V, g);
        load16(xr + i * V, v);
        load16(weight + i * V, w);
#pragma unroll
        for (int j = 0; j < V; ++j) d[j] = r * g[j] * w[j] - k * v[j];
        store16(dxr + i * V, d);
        if (acc != nullptr) {
#pragma unroll
            for (int j = 0; j < V; ++j) acc[j * nvec + i] += g[j] * v[j] * r;
        }
    }
    for (int c = nvec * V + lane; c < dim; c += width) {
        const float g = to_f32(dyr[c]), v = to_f32(xr[c]), w = to_f32(weight[c]);
        dxr[c] = from_f32<T>(r * g * w - k * v);
        if (acc != nullptr) acc[c] += g * v * r;
    }
}

template <class T>
__device__ __forceinline__ void rmsnorm_bwd(T* __restrict__ dx, float* __restrict__ dw_part, const T* __restrict__ dy,
                                            const T* __restrict__ x, const T* __restrict__ weight, int rows, int dim,
                                            float eps) {
    constexpr int V = Vec16<T>::N;
    EXTERN_SHARED(float, part);  // [groups, dim] when dw_part != null
    const bool by_warp = dim <= 1024;  // uniform across the grid
    const int width = by_warp ? 32 : (int)blockDim.x;
    const int groups = (int)blockDim.x / width;
    const int grp = (int)threadIdx.x / width, lane = (int)threadIdx.x % width;
    const bool vec = dim % V == 0 && is_aligned16(dx) && is_aligned16(dy) && is_aligned16(x) && is_aligned16(weight);
    const int nvec = vec ? dim / V : 0;
    const bool want_dw = dw_part != nullptr;
    float* acc = want_dw ? part + (size_t)grp * dim : nullptr;
    if (want_dw) {
        for (int c = threadIdx.x; c < groups * dim; c += blockDim.x) part[c] = 0.f;
        __syncthreads();
    }
    // by_warp: each warp takes its own rows (no block barriers inside); otherwise
    // groups == 1 and the loop is uniform across the block.
    for (int row = blockIdx.x * groups + grp; row < rows; row += gridDim.x * groups) {
        const size_t off = (size_t)row * dim;
        rmsb_row<T>(dx + off, acc, dy + off, x + off, weight, dim, nvec, eps, lane, width, by_warp);
    }
    if (want_dw) {
        __syncthreads();
        for (int c = threadIdx.x; c < dim; c += blockDim.x) {
            float s = 0.f;
            const int a = c < nvec * V ? (c % V) * nvec + c / V : c;
            for (int g = 0; g < groups; ++g) s += part[(size_t)g * dim + a];
            dw_part[(size_t)blockIdx.x * dim + c] = s;
        }
    }
}

extern "C" __global__ void __launch_bounds__(RMSB_THREADS)
rmsnorm_backward_bf16(bf16* dx, float* dw_part, const bf16* dy, const bf16* x, const bf16* weight, int rows, int dim,
                      float eps) {
    rmsnorm_bwd<bf16>(dx, dw_part, dy, x, weight, rows, dim, eps);
}

extern "C" __global__ void __launch_bounds__(RMSB_THREADS)
rmsnorm_backward_f32(float* dx, float* dw_part, const float* dy, const float* x, const float* weight, int rows,
                     int dim, float eps) {
    rmsnorm_bwd<float>(dx, dw_part, dy, x, weight, rows, dim, eps);
}
