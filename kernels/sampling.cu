// Next-token selection on the device: greedy argmax, or a seeded sample with
// temperature, top-k and top-p — the same algorithm as the CPU reference
// (src/sampling.rs), so a seed gives the same tokens on every backend.
//
// Math (one row of logits l[0..vocab)):
//   greedy (temperature == 0): the first index of the maximum.
//   otherwise x_i = l_i / temperature;
//   top-k (0 < k < vocab): keep x_i >= tk, tk = the k-th largest x (ties kept);
//   top-p (p < 1): over the kept set, keep x_i >= tp, tp the largest value whose
//     kept mass sum_{x_j >= tp} e^(x_j - max) reaches p * sum_kept e^(x_j - max);
//   sample = argmax over kept i of x_i + g_i, ties to the lower index, with Gumbel
//     noise g_i = -log(-log(u_i)), u_i = uniform(seed, stream[row], i) (counter hash).
//   Thresholds are found exactly by binary search over the order-preserving 32-bit
//   keys of the floats (32 passes); masses are summed in f64.
// Shapes: logits [rows, vocab] f32; streams [rows] u64 (the caller's (sequence, step)
//   counter); out [rows] int32.
// Saves: nothing.
// Launch: grid (rows), 512 threads (SAMPLE_THREADS), block reductions through shared
//   memory. Writes out (=).

#define SAMPLE_THREADS 512

// Order-preserving key of a float (larger float, larger key).
__device__ __forceinline__ unsigned int order_key(float x) {
    const unsigned int b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Block-wide sums and maxima through shared scratch (all threads must call).
__device__ double block_sum_f64(double v, double* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < SAMPLE_THREADS / 32; ++w) total += scratch[w];
    return total;
}

__device__ float block_max_f32(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    float m = scratch[0];
    for (int w = 1; w < SAMPLE_THREADS / 32; ++w) m = fmaxf(m, scratch[w]);
    return m;
}

// Block-wide argmax of (value, index): larger value wins, then the lower index.
__device__ int block_argmax(float v, int idx, float* sv, int* si) {
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0) { sv[threadIdx.x / 32] = v; si[threadIdx.x / 32] = idx; }
    __syncthreads();
    float bv = sv[0];
    int bi = si[0];
    for (int w = 1; w < SAMPLE_THREADS / 32; ++w)
        if (sv[w] > bv || (sv[w] == bv && si[w] < bi)) { bv = sv[w]; bi = si[w]; }
    return bi;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_forward_f32(int* out, const float* logits, const unsigned long long* streams, int rows, int vocab,
                   float temperature, int top_k, float top_p, unsigned long long seed) {
    __shared__ double sd[SAMPLE_THREADS / 32];
    __shared__ float sf[SAMPLE_THREADS / 32];
    __shared__ int si[SAMPLE_THREADS / 32];
    const int row = blockIdx.x;
    const float* l = logits + (size_t)row * vocab;
    const float NEG = __int_as_float((int)0xff800000);

    if (temperature == 0.f) {
        float bv = NEG;
        int bi = vocab;
        for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS)
            if (l[i] > bv || (l[i] == bv && i < bi)) { bv = l[i]; bi = i; }
        const int best = block_argmax(bv, bi, sf, si);
        if (threadIdx.x == 0) out[row] = best < vocab ? best : 0;
        return;  // uniform across the block: every thread returns here together
    }
    const float inv_t = 1.f / temperature;

    // top-k: the largest key t with count(key >= t) >= k.
    unsigned int tk = 0;
    if (top_k > 0 && top_k < vocab) {
        unsigned int lo = 0, hi = 0xffffffffu;  // invariant: count(>= lo) >= k
        while (lo < hi) {
            const unsigned int mid = lo + (hi - lo) / 2 + 1;
            double c = 0.0;
            for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) c += order_key(l[i] * inv_t) >= mid ? 1.0 : 0.0;
            if (block_sum_f64(c, sd) >= (double)top_k) lo = mid; else hi = mid - 1;
        }
        tk = lo;
    }
    // top-p over the top-k set: the largest key t with mass(key >= t) >= p * total.
    float mx = NEG;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) mx = fmaxf(mx, l[i] * inv_t);
    mx = block_max_f32(mx, sf);
    unsigned int tp = tk;
    if (top_p < 1.f) {
        double z = 0.0;
        for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
            const float x = l[i] * inv_t;
            if (order_key(x) >= tk) z += exp((double)(x - mx));
        }
        const double target = (double)top_p * block_sum_f64(z, sd);
        unsigned int lo = tk, hi = 0xffffffffu;  // invariant: mass(>= lo) >= target
        while (lo < hi) {
            const unsigned int mid = lo + (hi - lo) / 2 + 1;
            double m = 0.0;
            for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
                const float x = l[i] * inv_t;
                if (order_key(x) >= mid) m += exp((double)(x - mx));
            }
            if (block_sum_f64(m, sd) >= target) lo = mid; else hi = mid - 1;
        }
        tp = lo;
    }
    // Gumbel-max over the kept set.
    float bv = NEG;
    int bi = vocab;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
        const float x = l[i] * inv_t;
        if (order_key(x) < tp) continue;
        const float g = -logf(-logf(hash_uniform(seed, streams[row], (unsigned int)i)));
        const float v = x + g;
        if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
    }
    const int best = block_argmax(bv, bi, sf, si);
    if (threadIdx.x == 0) out[row] = best < vocab ? best : 0;
}
