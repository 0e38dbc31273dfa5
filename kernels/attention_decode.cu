// Decode attention: one new query token per sequence against a long KV cache,
// split along the keys (flash decoding), bf16 in, f32 math.
//
// Math: as attention_prefill for a single query row per token: token t (slot s,
//   position p), query head h, keys 0..p of slot s, kv head h / group. The keys are
//   cut into `splits` chunks of `chunk` keys; each block computes, for its chunk,
//   the running max m, the sum l = sum exp(x - m) and o = sum exp(x - m) v, and
//   attention_decode_combine merges the chunks: M = max m_i,
//   out = sum_i e^(m_i - M) o_i / sum_i e^(m_i - M) l_i, lse = M + log(sum ...).
// Shapes: q, out [tokens, heads, head_dim] bf16; caches [slots, max_len, kv_heads,
//   head_dim] bf16; slot, pos [tokens] int32; part_o [splits, tokens, heads,
//   head_dim] f32; part_ml [splits, tokens, heads, 2] f32 (m in log2 units, l);
//   lse [tokens, heads] f32 (natural log, may be null). head_dim <= 256, even.
// Launch (split): grid (tokens, kv_heads * ceil(group / 8), splits), 128 threads. The
//   block owns up to 8 query heads sharing one kv head, so each K/V row is read once
//   for all of them; warp w takes keys w, w+4, ... of the chunk; each lane holds dims
//   2*lane + 64 i. The 4 warps merge through shared memory. An empty chunk (past p)
//   writes m = -inf, l = 0.
// Launch (combine): grid (tokens, heads), 64 threads over head_dim.
// Writes: part_o, part_ml, out, lse (all =). Every thread reaches every barrier.

#define DEC_THREADS 128
#define DEC_WARPS 4
#define DEC_HEADS 8   // query heads per block
#define DEC_PAIRS 4   // dims per lane = 2 * DEC_PAIRS (head_dim <= 256)
#define DEC_NEG_INF (__int_as_float((int)0xff800000))

extern "C" __global__ void __launch_bounds__(DEC_THREADS)
attention_decode_split_forward_bf16(float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                                    const bf16* v_cache, const int* slot, const int* pos, int tokens,
                                    int heads, int kv_heads, int head_dim, int max_len, int chunk,
                                    float scale) {
    __shared__ float sh_m[DEC_WARPS][DEC_HEADS];
    __shared__ float sh_l[DEC_WARPS][DEC_HEADS];
    __shared__ float sh_o[DEC_WARPS][DEC_HEADS][2 * 32 * DEC_PAIRS];

    const int t = blockIdx.x, split = blockIdx.z;
    const int group = heads / kv_heads;
    const int head_blocks = (group + DEC_HEADS - 1) / DEC_HEADS;
    const int kvh = blockIdx.y / head_blocks;
    const int h0 = kvh * group + (blockIdx.y % head_blocks) * DEC_HEADS;  // first query head
    const int nh = min(DEC_HEADS, kvh * group + group - h0);              // heads in this block
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int s = slot[t], p = pos[t];
    const int k_begin = split * chunk, k_end = min(p + 1, k_begin + chunk);
    const float scale_log2 = scale * 1.4426950408889634f;

    // This lane's query values, pre-scaled.
    float qv[DEC_HEADS][2 * DEC_PAIRS];
    #pragma unroll
    for (int h = 0; h < DEC_HEADS; ++h)
        #pragma unroll
        for (int i = 0; i < DEC_PAIRS; ++i) {
            const int d = 2 * lane + 64 * i;
            const bool ok = h < nh && d < head_dim;
            const bf16* src = q + ((size_t)t * heads + h0 + h) * head_dim + d;
            qv[h][2 * i] = ok ? __bfloat162float(src[0]) * scale_log2 : 0.f;
            qv[h][2 * i + 1] = ok ? __bfloat162float(src[1]) * scale_log2 : 0.f;
        }
    float m[DEC_HEADS], l[DEC_HEADS], o[DEC_HEADS][2 * DEC_PAIRS];
    #pragma unroll
    for (int h = 0; h < DEC_HEADS; ++h) {
        m[h] = DEC_NEG_INF;
        l[h] = 0.f;
        #pragma unroll
        for (int i = 0; i < 2 * DEC_PAIRS; ++i) o[h][i] = 0.f;
    }

    const size_t row_stride = (size_t)kv_heads * head_dim;
    const bf16* kbase = k_cache + ((size_t)s * max_len * kv_heads + kvh) * head_dim;
    const bf16* vbase = v_cache + ((size_t)s * max_len * kv_heads + kvh) * head_dim;
    for (int j = k_begin + warp; j < k_end; j += DEC_WARPS) {
        float kv[2 * DEC_PAIRS], vv[2 * DEC_PAIRS];
        #pragma unroll
        for (int i = 0; i < DEC_PAIRS; ++i) {
            const int d = 2 * lane + 64 * i;
            const bool ok = d < head_dim;
            const bf16* kp = kbase + j * row_stride + d;
            const bf16* vp = vbase + j * row_stride + d;
            kv[2 * i] = ok ? __bfloat162float(kp[0]) : 0.f;
            kv[2 * i + 1] = ok ? __bfloat162float(kp[1]) : 0.f;
            vv[2 * i] = ok ? __bfloat162float(vp[0]) : 0.f;
            vv[2 * i + 1] = ok ? __bfloat162float(vp[1]) : 0.f;
        }
        #pragma unroll
        for (int h = 0; h < DEC_HEADS; ++h) {
            float x = 0.f;
            #pragma unroll
            for (int i = 0; i < 2 * DEC_PAIRS; ++i) x += qv[h][i] * kv[i];
            x = warp_sum(x);
            const float mn = fmaxf(m[h], x);
            const float corr = exp2f(m[h] - mn), e = exp2f(x - mn);
            l[h] = l[h] * corr + e;
            #pragma unroll
            for (int i = 0; i < 2 * DEC_PAIRS; ++i) o[h][i] = o[h][i] * corr + e * vv[i];
            m[h] = mn;
        }
    }

    // Merge the warps: warp 0 combines what the others published.
    #pragma unroll
    for (int h = 0; h < DEC_HEADS; ++h) {
        if (lane == 0) {
            sh_m[warp][h] = m[h];
            sh_l[warp][h] = l[h];
        }
        #pragma unroll
        for (int i = 0; i < DEC_PAIRS; ++i) {
            sh_o[warp][h][2 * lane + 64 * i] = o[h][2 * i];
            sh_o[warp][h][2 * lane + 64 * i + 1] = o[h][2 * i + 1];
        }
    }
    __syncthreads();
    if (warp == 0) {
        for (int h = 0; h < nh; ++h) {
            float mm = DEC_NEG_INF;
            for (int w = 0; w < DEC_WARPS; ++w) mm = fmaxf(mm, sh_m[w][h]);
            const float ref = mm == DEC_NEG_INF ? 0.f : mm;
            float ll = 0.f;
            float acc[2 * DEC_PAIRS];
            #pragma unroll
            for (int i = 0; i < 2 * DEC_PAIRS; ++i) acc[i] = 0.f;
            for (int w = 0; w < DEC_WARPS; ++w) {
                const float c = exp2f(sh_m[w][h] - ref);
                ll += c * sh_l[w][h];
                #pragma unroll
                for (int i = 0; i < DEC_PAIRS; ++i) {
                    acc[2 * i] += c * sh_o[w][h][2 * lane + 64 * i];
                    acc[2 * i + 1] += c * sh_o[w][h][2 * lane + 64 * i + 1];
                }
            }
            const size_t row = ((size_t)split * tokens + t) * heads + h0 + h;
            #pragma unroll
            for (int i = 0; i < DEC_PAIRS; ++i) {
                const int d = 2 * lane + 64 * i;
                if (d < head_dim) {
                    part_o[row * head_dim + d] = acc[2 * i];
                    part_o[row * head_dim + d + 1] = acc[2 * i + 1];
                }
            }
            if (lane == 0) {
                part_ml[2 * row] = mm;
                part_ml[2 * row + 1] = ll;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(64)
attention_decode_combine_forward_bf16(bf16* out, float* lse, const float* part_o, const float* part_ml,
                                      int tokens, int heads, int head_dim, int splits) {
    const int t = blockIdx.x, h = blockIdx.y;
    float mm = DEC_NEG_INF;
    for (int i = 0; i < splits; ++i) mm = fmaxf(mm, part_ml[2 * (((size_t)i * tokens + t) * heads + h)]);
    const float ref = mm == DEC_NEG_INF ? 0.f : mm;
    float ll = 0.f;
    for (int i = 0; i < splits; ++i) {
        const size_t row = ((size_t)i * tokens + t) * heads + h;
        ll += exp2f(part_ml[2 * row] - ref) * part_ml[2 * row + 1];
    }
    const float inv = ll > 0.f ? 1.f / ll : 0.f;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.f;
        for (int i = 0; i < splits; ++i) {
            const size_t row = ((size_t)i * tokens + t) * heads + h;
            acc += exp2f(part_ml[2 * row] - ref) * part_o[row * head_dim + d];
        }
        out[((size_t)t * heads + h) * head_dim + d] = __float2bfloat16(acc * inv);
    }
    if (lse != nullptr && threadIdx.x == 0)
        lse[(size_t)t * heads + h] = (ref + log2f(ll)) * 0.6931471805599453f;
}
