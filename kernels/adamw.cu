// Optimizer steps on the f32 master copy of the trained parameters, and the sum of
// squares behind the global gradient norm.
//
// AdamW (torch.optim.AdamW; t = step, 1-based; g = grad * grad_scale, the global-norm
// clip factor):
//   p *= 1 - lr * weight_decay                      (decoupled weight decay)
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc1 = 1 - beta1^t, bc2 = 1 - beta2^t
//   param_bf16 = bf16(p)                              (the forward's copy; may be null)
// SGD (torch.optim.SGD without momentum): p -= lr * (g + weight_decay * p),
//   param_bf16 = bf16(p).
// sum_squares: partial[b] = sum over block b's elements of x^2, in f64 (each square
//   is exact in f64); the host adds the partials in order, so the result depends only
//   on n and the grid.
// Shapes: param, m, v, grad [n] f32; param_bf16 [n] bf16; x [n] f32 or bf16; partial
//   [gridDim.x] f64. bc1, bc2 come from the host (AdamW::bias_corrections).
// Saves: m, v (the optimizer state).
// Launch: grid-stride, 256 threads, any grid (sum_squares: 256 threads, the grid the
//   host sums). Four (f32) or eight (bf16) elements per step with 16-byte loads when n
//   is a multiple of that and the pointers are 16-byte aligned, else one.
// Writes: param, m, v, param_bf16 (= in place); partial (=).

struct AdamWHyper {
    float lr, beta1, beta2, eps, weight_decay, step_size, inv_sqrt_bc2, grad_scale;
};

__device__ __forceinline__ float adamw_one(float& p, float& m, float& v, float grad, const AdamWHyper& h) {
    const float g = grad * h.grad_scale;
    float q = p * (1.f - h.lr * h.weight_decay);
    const float mi = h.beta1 * m + (1.f - h.beta1) * g;
    const float vi = h.beta2 * v + (1.f - h.beta2) * g * g;
    q -= h.step_size * mi / (sqrtf(vi) * h.inv_sqrt_bc2 + h.eps);
    m = mi;
    v = vi;
    p = q;
    return q;
}

extern "C" __global__ void __launch_bounds__(256)
adamw_step_f32(float* param, float* m, float* v, bf16* param_bf16, const float* grad, int n, float lr,
               float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2, float grad_scale) {
    const int stride = gridDim.x * blockDim.x;
    const int start = blockIdx.x * blockDim.x + threadIdx.x;
    const AdamWHyper h = {lr, beta1, beta2, eps, weight_decay, lr / bc1, 1.f / sqrtf(bc2), grad_scale};
    const bool vec = n % 4 == 0 && is_aligned16(param) && is_aligned16(m) && is_aligned16(v) &&
                     is_aligned16(grad) && ((unsigned long long)param_bf16 & 7ull) == 0;
    const int nvec = vec ? n / 4 : 0;
    for (int i = start; i < nvec; i += stride) {
        float p[4], mm[4], vv[4], g[4];
        load16(param + 4 * i, p);
        load16(m + 4 * i, mm);
        load16(v + 4 * i, vv);
        load16(grad + 4 * i, g);
#pragma unroll
        for (int k = 0; k < 4; ++k) adamw_one(p[k], mm[k], vv[k], g[k], h);
        store16(param + 4 * i, p);
        store16(m + 4 * i, mm);
        store16(v + 4 * i, vv);
        if (param_bf16 != nullptr)
            *reinterpret_cast<uint2*>(param_bf16 + 4 * i) =
                make_uint2(pack_f32x2_bf16(p[0], p[1]), pack_f32x2_bf16(p[2], p[3]));
    }
    for (int i = nvec * 4 + start; i < n; i += stride) {
        float p = param[i], mi = m[i], vi = v[i];
        adamw_one(p, mi, vi, grad[i], h);
        m[i] = mi;
        v[i] = vi;
        param[i] = p;
        if (param_bf16 != nullptr) param_bf16[i] = __float2bfloat16(p);
    }
}

extern "C" __global__ void __launch_bounds__(256)
sgd_step_f32(float* param, bf16* param_bf16, const float* grad, int n, float lr, float weight_decay,
             float grad_scale) {
    const int stride = gridDim.x * blockDim.x;
    const int start = blockIdx.x * blockDim.x + threadIdx.x;
    const bool vec = n % 4 == 0 && is_aligned16(param) && is_aligned16(grad) &&
                     ((unsigned long long)param_bf16 & 7ull) == 0;
    const int nvec = vec ? n / 4 : 0;
    for (int i = start; i < nvec; i += stride) {
        float p[4], g[4];
        load16(param + 4 * i, p);
        load16(grad + 4 * i, g);
#pragma unroll
        for (int k = 0; k < 4; ++k) p[k] = p[k] - lr * (g[k] * grad_scale + weight_decay * p[k]);
        store16(param + 4 * i, p);
        if (param_bf16 != nullptr)
            *reinterpret_cast<uint2*>(param_bf16 + 4 * i) =
                make_uint2(pack_f32x2_bf16(p[0], p[1]), pack_f32x2_bf16(p[2], p[3]));
    }
    for (int i = nvec * 4 + start; i < n; i += stride) {
        const float p = param[i] - lr * (grad[i] * grad_scale + weight_decay * param[i]);
        param[i] = p;
        if (param_bf16 != nullptr) param_bf16[i] = __float2bfloat16(p);
    }
}

#define SUMSQ_THREADS 256

__device__ __forceinline__ double sq_add(double acc, const float (&v)[4]) {
#pragma unroll
    for (int k = 0; k < 4; ++k) acc += (double)v[k] * (double)v[k];
    return acc;
}
__device__ __forceinline__ double sq_add(double acc, const float (&v)[8]) {
#pragma unroll
    for (int k = 0; k < 8; ++k) acc += (double)v[k] * (double)v[k];
    return acc;
}

template <class T>
__device__ __forceinline__ void sum_squares_of(double* __restrict__ partial, const T* __restrict__ x, int n) {
    constexpr int V = Vec16<T>::N;
    __shared__ double red[SUMSQ_THREADS / 32];
    const int stride = gridDim.x * blockDim.x;
    const int start = blockIdx.x * blockDim.x + threadIdx.x;
    const int nvec = (n % V == 0 && is_aligned16(x)) ? n / V : 0;
    double acc = 0.0;
    for (int i = start; i < nvec; i += stride) {
        float v[V];
        load16(x + (size_t)V * i, v);
        acc = sq_add(acc, v);
    }
    for (int i = nvec * V + start; i < n; i += stride) {
        const double v = (double)to_f32(x[i]);
        acc += v * v;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s += red[w];
        partial[blockIdx.x] = s;
    }
}

extern "C" __global__ void __launch_bounds__(SUMSQ_THREADS)
sum_squares_f32(double* partial, const float* x, int n) {
    sum_squares_of<float>(partial, x, n);
}

extern "C" __global__ void __launch_bounds__(SUMSQ_THREADS)
sum_squares_bf16(double* partial, const bf16* x, int n) {
    sum_squares_of<bf16>(partial, x, n);
}
