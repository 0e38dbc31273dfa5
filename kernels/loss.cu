// The fused PPO / GRPO token loss of one chunk of LM-head rows (DESIGN.md section 4):
// log-softmax, the target's log-prob, the clipped policy loss with optional KL
// penalty, the entropy, and the gradient with respect to the logits, one row per
// block, without materialising the probabilities.
//
// Math (f32), per row with logits z [vocab], target y, p = softmax(z):
//   pass 1 (online, one sweep): m = max z, s = sum e^(z - m), t = sum e^(z - m) (z - m);
//     lse = m + log s; H = log s - t / s (= lse - sum p z); logp = z_y - lse.
//   loss (cpu::loss::ppo_token_loss, same branches): ratio = exp(clamp(logp - old,
//     -20, 20)); l1 = -A r, l2 = -A clamp(r, 1 - eps_low, 1 + eps_high); the larger
//     (ties: l1) with dl/dlogp = 0 for l2 (clipped); dual clip (dual_clip != 0):
//     A < 0 and l > -A c -> l = -A c, dl/dlogp = 0, clipped; KL (ref_logp != null and
//     beta != 0): l += beta kl, dl/dlogp += beta dkl, kl by kl_type (0 K1, 1 K2, 2 K3,
//     3 low-var-kl; cpu::loss::kl_term).
//   cross-entropy mode (ce != 0, supervised fine-tuning): l = -logp, dl/dlogp = -1,
//     never clipped; old_logp, adv, ref_logp are not read.
//   pass 2: dlogits[j] = weight * (g ([j = y] - p_j) + entropy_coef p_j (z_j - lse + H)),
//     g = dl/dlogp (the gradient of l - entropy_coef H times the aggregation weight).
//   stats[row] = (logp, l, H, clipped ? 1 : 0).
// Shapes: logits [rows, vocab] f32; dlogits [rows, vocab] bf16 or f32 (per kernel);
//   target [rows] int32 (< vocab, checked on the host); old_logp, adv, weight [rows]
//   f32; ref_logp [rows] f32 or null; stats [rows, 4] f32.
// Saves: nothing (the backward is this kernel; logits are not kept).
// Launch: 1-D grid-stride over rows (one row per block per step), a multiple of 32
//   threads up to LOSS_THREADS (512; the host takes 512 for real vocabularies, fewer
//   for small ones); the row is read twice (pass 2 mostly from L2). Rows go through 8
//   elements per step (two 16-byte loads of z, one 16-byte bf16 / two f32 stores)
//   when vocab % 8 == 0 and logits and dlogits are 16-byte aligned, else element by
//   element. Reductions in a fixed order (warp butterflies, then warps in order by
//   thread 0): deterministic.
// Writes: dlogits (=), stats (=). Every thread reaches every barrier.

#define LOSS_THREADS 512

// KL estimate and its derivative w.r.t. logp (cpu::loss::kl_term).
__device__ __forceinline__ void loss_kl_term(float logp, float ref, int kl_type, float& k, float& dk) {
    const float diff = logp - ref;
    if (kl_type == 0) {  // K1
        k = diff;
        dk = 1.f;
    } else if (kl_type == 1) {  // K2
        k = diff * diff / 2.f;
        dk = diff;
    } else if (kl_type == 2) {  // K3
        const float e = expf(-diff);
        k = e + diff - 1.f;
        dk = 1.f - e;
    } else {  // low-var-kl (verl)
        const float raw = ref - logp;
        const float kl = fminf(fmaxf(raw, -20.f), 20.f);
        const float dkl = fabsf(raw) < 20.f ? -1.f : 0.f;
        const float e = expf(kl);
        const float v = e - kl - 1.f;
        if (fabsf(v) < 10.f) {
            k = v;
            dk = (e - 1.f) * dkl;
        } else {
            k = fminf(fmaxf(v, -10.f), 10.f);
            dk = 0.f;
        }
    }
}

// Per-token loss, its derivative w.r.t. logp and the clipped flag
// (cpu::loss::ppo_token_loss).
__device__ __forceinline__ void loss_ppo_token(float logp, float old_logp, float adv, const float* ref_logp,
                                               int row, float eps_low, float eps_high, int dual_clip,
                                               float clip_c, int kl_type, float beta, float& loss, float& grad,
                                               float& clipped) {
    const float raw = logp - old_logp;
    const float limit = 20.f;
    const float ratio = expf(fminf(fmaxf(raw, -limit), limit));
    const float dratio = fabsf(raw) < limit ? ratio : 0.f;
    const float lo = 1.f - eps_low, hi = 1.f + eps_high;
    const float l1 = -adv * ratio;
    const float l2 = -adv * fminf(fmaxf(ratio, lo), hi);
    if (l2 > l1) {
        loss = l2;
        grad = 0.f;
        clipped = 1.f;
    } else {
        loss = l1;
        grad = -adv * dratio;
        clipped = 0.f;
    }
    if (dual_clip) {
        const float l3 = -adv * clip_c;
        if (adv < 0.f && loss > l3) {
            loss = l3;
            grad = 0.f;
            clipped = 1.f;
        }
    }
    if (ref_logp != nullptr && beta != 0.f) {
        float k, dk;
        loss_kl_term(logp, ref_logp[row], kl_type, k, dk);
        loss = loss + beta * k;
        grad = grad + beta * dk;
    }
}

// Online softmax statistics: m = max, s = sum e^(z - m), t = sum e^(z - m) (z - m).
struct SoftStats {
    float m, s, t;
};

__device__ __forceinline__ void soft_add(SoftStats& a, float z) {
    if (a.s == 0.f) {
        a.m = z, a.s = 1.f, a.t = 0.f;
    } else if (z > a.m) {
        const float d = a.m - z;  // < 0: rescale the old terms to the new max
        const float sc = expf(d);
        a.t = sc * (a.t + d * a.s);
        a.s = a.s * sc + 1.f;
        a.m = z;
    } else {
        const float d = z - a.m;
        const float e = expf(d);
        a.s += e;
        a.t += e * d;
    }
}

// Eight values at once: one rescale to the chunk's max, then eight plain terms.
__device__ __forceinline__ void soft_add8(SoftStats& a, const float (&a4)[4], const float (&b4)[4]) {
    float cm = fmaxf(fmaxf(fmaxf(a4[0], a4[1]), fmaxf(a4[2], a4[3])), fmaxf(fmaxf(b4[0], b4[1]), fmaxf(b4[2], b4[3])));
    if (a.s == 0.f) {
        a.m = cm;
    } else if (cm > a.m) {
        const float d = a.m - cm;
        const float sc = expf(d);
        a.t = sc * (a.t + d * a.s);
        a.s = a.s * sc;
        a.m = cm;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const float d = (k < 4 ? a4[k] : b4[k - 4]) - a.m;
        const float e = expf(d);
        a.s += e;
        a.t += e * d;
    }
}

__device__ __forceinline__ SoftStats soft_merge(SoftStats a, SoftStats b) {
    if (b.s == 0.f) return a;
    if (a.s == 0.f) return b;
    const float M = fmaxf(a.m, b.m);
    const float da = a.m - M, db = b.m - M;
    const float ea = expf(da), eb = expf(db);
    SoftStats r;
    r.m = M;
    r.s = ea * a.s + eb * b.s;
    r.t = ea * (a.t + da * a.s) + eb * (b.t + db * b.s);
    return r;
}

__device__ __forceinline__ void loss_store8(bf16* p, const float (&v)[8]) { store16(p, v); }
__device__ __forceinline__ void loss_store8(float* p, const float (&v)[8]) {
    const float a[4] = {v[0], v[1], v[2], v[3]}, b[4] = {v[4], v[5], v[6], v[7]};
    store16(p, a);
    store16(p + 4, b);
}

template <class TD>
__device__ __forceinline__ void token_loss_rows(TD* __restrict__ dlogits, float* __restrict__ stats,
                                                const float* __restrict__ logits, const int* __restrict__ target,
                                                const float* __restrict__ old_logp,
                                                const float* __restrict__ ref_logp, const float* __restrict__ adv,
                                                const float* __restrict__ weight, int rows, int vocab,
                                                float eps_low, float eps_high, int dual_clip, float clip_c,
                                                int kl_type, float beta, float entropy_coef, int ce) {
    __shared__ float red_m[LOSS_THREADS / 32], red_s[LOSS_THREADS / 32], red_t[LOSS_THREADS / 32];
    __shared__ float bcast[3];  // lse, H, g * weight
    const int warps = (int)blockDim.x >> 5;
    const bool vec = vocab % 8 == 0 && is_aligned16(logits) && is_aligned16(dlogits);
    const int nvec = vec ? vocab / 8 : 0;
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* z = logits + (size_t)row * vocab;
        TD* dz = dlogits + (size_t)row * vocab;
        // Pass 1: online statistics per thread, then merged in a fixed order.
        SoftStats st = {0.f, 0.f, 0.f};
        for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
            float a[4], b[4];
            load16(z + 8 * i, a);
            load16(z + 8 * i + 4, b);
            soft_add8(st, a, b);
        }
        for (int j = nvec * 8 + threadIdx.x; j < vocab; j += blockDim.x) soft_add(st, z[j]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            SoftStats other;
            other.m = __shfl_xor_sync(0xffffffffu, st.m, o);
            other.s = __shfl_xor_sync(0xffffffffu, st.s, o);
            other.t = __shfl_xor_sync(0xffffffffu, st.t, o);
            st = soft_merge(st, other);
        }
        if ((threadIdx.x & 31) == 0) {
            red_m[threadIdx.x >> 5] = st.m;
            red_s[threadIdx.x >> 5] = st.s;
            red_t[threadIdx.x >> 5] = st.t;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            SoftStats all = {red_m[0], red_s[0], red_t[0]};
            for (int w = 1; w < warps; ++w) all = soft_merge(all, SoftStats{red_m[w], red_s[w], red_t[w]});
            const float log_s = logf(all.s);
            const float lse = all.m + log_s;
            const float entropy = log_s - all.t / all.s;
            const float logp = z[target[row]] - lse;
            float loss, grad, clipped;
            if (ce) {
                loss = -logp;
                grad = -1.f;
                clipped = 0.f;
            } else {
                loss_ppo_token(logp, old_logp[row], adv[row], ref_logp, row, eps_low, eps_high, dual_clip, clip_c,
                               kl_type, beta, loss, grad, clipped);
            }
            float* so = stats + (size_t)row * 4;
            so[0] = logp;
            so[1] = loss;
            so[2] = entropy;
            so[3] = clipped;
            bcast[0] = lse;
            bcast[1] = entropy;
            bcast[2] = grad;
        }
        __syncthreads();
        const float lse = bcast[0], entropy = bcast[1], g = bcast[2];
        const float w = weight[row];
        const int y = target[row];
        // Pass 2: the gradient.
        for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
            float a[4], b[4], d[8];
            load16(z + 8 * i, a);
            load16(z + 8 * i + 4, b);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const float zj = k < 4 ? a[k] : b[k - 4];
                const int j = 8 * i + k;
                const float p = expf(zj - lse);
                const float dlogp = j == y ? 1.f - p : -p;
                const float dh = -p * (zj - lse + entropy);
                d[k] = w * (g * dlogp - entropy_coef * dh);
            }
            loss_store8(dz + 8 * i, d);
        }
        for (int j = nvec * 8 + threadIdx.x; j < vocab; j += blockDim.x) {
            const float zj = z[j];
            const float p = expf(zj - lse);
            const float dlogp = j == y ? 1.f - p : -p;
            const float dh = -p * (zj - lse + entropy);
            dz[j] = from_f32<TD>(w * (g * dlogp - entropy_coef * dh));
        }
    }
}

extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
token_loss_backward_bf16(bf16* dlogits, float* stats, const float* logits, const int* target, const float* old_logp,
                         const float* ref_logp, const float* adv, const float* weight, int rows, int vocab,
                         float eps_low, float eps_high, int dual_clip, float clip_c, int kl_type, float beta,
                         float entropy_coef, int ce) {
    token_loss_rows<bf16>(dlogits, stats, logits, target, old_logp, ref_logp, adv, weight, rows, vocab, eps_low,
                          eps_high, dual_clip, clip_c, kl_type, beta, entropy_coef, ce);
}

extern "C" __global__ void __launch_bounds__(LOSS_THREADS)
token_loss_backward_f32(float* dlogits, float* stats, const float* logits, const int* target, const float* old_logp,
                        const float* ref_logp, const float* adv, const float* weight, int rows, int vocab,
                        float eps_low, float eps_high, int dual_clip, float clip_c, int kl_type, float beta,
                        float entropy_coef, int ce) {
    token_loss_rows<float>(dlogits, stats, logits, target, old_logp, ref_logp, adv, weight, rows, vocab, eps_low,
                           eps_high, dual_clip, clip_c, kl_type, beta, entropy_coef, ce);
}
