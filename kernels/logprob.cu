// Log-softmax gather of the LM head: the log-probability of each row's target token.
//
// Math: out[r] = logits[r, target[r]] - logsumexp(logits[r, :]), f32 throughout,
//   with an online (max, sum) per thread merged across the block.
// Shapes: logits [rows, vocab] f32 (the LM-head GEMM writes f32); target [rows]
//   int32; out [rows] f32.
// Saves: nothing here (the fused training loss of the next issue saves the lse).
// Launch: grid (rows), 256 threads (LOGPROB_THREADS). Writes out (=).

#define LOGPROB_THREADS 256

extern "C" __global__ void __launch_bounds__(LOGPROB_THREADS)
logprob_gather_forward_f32(float* out, const float* logits, const int* target, int rows, int vocab) {
    __shared__ float sm[LOGPROB_THREADS / 32];
    __shared__ float ss[LOGPROB_THREADS / 32];
    const int r = blockIdx.x;
    const float* l = logits + (size_t)r * vocab;
    float m = __int_as_float((int)0xff800000), s = 0.f;
    for (int i = threadIdx.x; i < vocab; i += LOGPROB_THREADS) {
        const float x = l[i];
        if (x > m) {
            s = s * expf(m - x) + 1.f;
            m = x;
        } else {
            s += expf(x - m);
        }
    }
    // Merge (m, s) pairs: across the warp, then across warps.
    for (int o = 16; o > 0; o >>= 1) {
        const float om = __shfl_xor_sync(0xffffffffu, m, o);
        const float os = __shfl_xor_sync(0xffffffffu, s, o);
        const float nm = fmaxf(m, om);
        s = (s == 0.f ? 0.f : s * expf(m - nm)) + (os == 0.f ? 0.f : os * expf(om - nm));
        m = nm;
    }
    if (threadIdx.x % 32 == 0) {
        sm[threadIdx.x / 32] = m;
        ss[threadIdx.x / 32] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float bm = sm[0];
        for (int w = 1; w < LOGPROB_THREADS / 32; ++w) bm = fmaxf(bm, sm[w]);
        float bs = 0.f;
        for (int w = 0; w < LOGPROB_THREADS / 32; ++w) bs += ss[w] == 0.f ? 0.f : ss[w] * expf(sm[w] - bm);
        out[r] = l[target[r]] - (bm + logf(bs));
    }
}
