// Decode attention over a paged KV cache: one new query token per sequence, keys
// and values read through the sequence's block table, split along the keys (flash
// decoding), bf16 in, f32 math.
//
// Math: token t (table row r = seq[t], position p = pos[t]), query head h, kv head
//   h / group: out = softmax_j(scale q.k_j) v_j over j = 0..p, where position j is
//   physical row table[r, j / block_size] * block_size + j % block_size of the
//   caches. The keys are cut into splits of PD_CHUNK positions. PD_CHUNK is fixed,
//   so the splits of a token, and with them every rounding, depend on its own
//   position only, never on the batch (completions do not depend on which
//   sequences decode together). Each split block computes the running max m (log2
//   units), l = sum 2^(x - m) and o = sum 2^(x - m) v; the combine merges the
//   ceil((p + 1) / PD_CHUNK) splits of the token: M = max m_i,
//   out = sum_i 2^(m_i - M) o_i / sum_i 2^(m_i - M) l_i.
// Shapes: q, out [tokens, heads, head_dim] bf16; caches [blocks, block_size,
//   kv_heads, head_dim] bf16; table [rows, table_width] int32; seq, pos [tokens]
//   int32; part_o [splits, tokens, heads, head_dim] f32 and part_ml [splits,
//   tokens, heads, 2] f32 (m, l), splits = ceil(table_width * block_size /
//   PD_CHUNK). head_dim a multiple of 8, at most HD.
// Specialisation: HD = 64, 128 or 256 (head_dim padded up to it) and GH = 2, 4 or 8
//   query heads per block (the GQA group, or 8 of it; a group of 1 runs as GH = 2,
//   whose instantiation has no spills where GH = 1's had a 4-byte one), so registers
//   are sized for the model, not the worst case: GH x 8 query and GH x 8 output
//   floats per lane.
// Launch (split): grid (tokens, kv_heads * ceil(group / GH), splits), 128 threads =
//   4 warps. A key row of HD bf16 is read by HD / 8 lanes with one 16-byte load each
//   (K and V), so a warp reads 256 / HD keys at once and each K/V row is read once for
//   all GH query heads. Per-lane partial dots are reduced over the row's lanes with
//   shuffles; the key groups of a warp, then the 4 warps (through shared memory)
//   are merged in a fixed order. A split past p returns at once (block-uniform).
// Launch (combine): grid (tokens, heads), 128 threads over head_dim.
// Writes: part_o, part_ml (splits 0..p / PD_CHUNK of each token), out (=). Every
//   thread of a block reaches every barrier.

#define PD_THREADS 128
#define PD_WARPS 4
#define PD_CHUNK 512
#define PD_NEG_INF (__int_as_float((int)0xff800000))

// Eight bf16 of a 16-byte word as floats.
__device__ __forceinline__ void unpack8(const uint4 w, float* f) {
    f[0] = __uint_as_float(w.x << 16);
    f[1] = __uint_as_float(w.x & 0xffff0000u);
    f[2] = __uint_as_float(w.y << 16);
    f[3] = __uint_as_float(w.y & 0xffff0000u);
    f[4] = __uint_as_float(w.z << 16);
    f[5] = __uint_as_float(w.z & 0xffff0000u);
    f[6] = __uint_as_float(w.w << 16);
    f[7] = __uint_as_float(w.w & 0xffff0000u);
}

// Merge (m2, l2, o2) into (m, l, o): the online-softmax union of two key sets.
__device__ __forceinline__ void merge_state(float& m, float& l, float* o, float m2, float l2,
                                            const float* o2) {
    const float mn = fmaxf(m, m2);
    const float ref = mn == PD_NEG_INF ? 0.f : mn;
    const float c1 = exp2f(m - ref), c2 = exp2f(m2 - ref);
    l = l * c1 + l2 * c2;
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = o[i] * c1 + o2[i] * c2;
    m = mn;
}

template <int HD, int GH>
__device__ void paged_decode_split(float* __restrict__ part_o, float* __restrict__ part_ml,
                                   const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                                   const bf16* __restrict__ v_cache, const int* __restrict__ table,
                                   const int* __restrict__ seq, const int* __restrict__ pos, int tokens,
                                   int heads, int kv_heads, int head_dim, int table_width,
                                   int block_size, float scale) {
    constexpr int LPK = HD / 8;    // lanes per key row
    constexpr int KPW = 32 / LPK;  // keys a warp reads at once
    __shared__ float sh_m[PD_WARPS][GH];
    __shared__ float sh_l[PD_WARPS][GH];
    __shared__ __align__(16) float sh_o[PD_WARPS][GH][HD];

    const int t = blockIdx.x, split = blockIdx.z;
    const int p = pos[t];
    const int k_begin = split * PD_CHUNK;
    if (k_begin > p) return;  // the whole block: this split lies past the token's context
    const int k_end = min(p + 1, k_begin + PD_CHUNK);
    const int group = heads / kv_heads;
    const int head_blocks = (group + GH - 1) / GH;
    const int kvh = blockIdx.y / head_blocks;
    const int h0 = kvh * group + (blockIdx.y % head_blocks) * GH;  // first query head
    const int nh = min(GH, kvh * group + group - h0);              // heads in this block
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int sub = lane / LPK, d0 = (lane % LPK) * 8;  // this lane's key of the warp, first dim
    const bool dim_ok = d0 < head_dim;
    const float scale_log2 = scale * 1.4426950408889634f;

    float qv[GH][8];
#pragma unroll
    for (int h = 0; h < GH; ++h) {
        if (h < nh && dim_ok) {
            const uint4 w = *reinterpret_cast<const uint4*>(q + ((size_t)t * heads + h0 + h) * head_dim + d0);
            unpack8(w, qv[h]);
#pragma unroll
            for (int i = 0; i < 8; ++i) qv[h][i] *= scale_log2;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) qv[h][i] = 0.f;
        }
    }
    float m[GH], l[GH], o[GH][8];
#pragma unroll
    for (int h = 0; h < GH; ++h) {
        m[h] = PD_NEG_INF;
        l[h] = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) o[h][i] = 0.f;
    }

    const int* trow = table + (size_t)seq[t] * table_width;
    for (int j0 = k_begin + warp * KPW; j0 < k_end; j0 += PD_WARPS * KPW) {
        const int j = j0 + sub;
        const bool key_ok = j < k_end;
        float kf[8], vf[8];
        if (key_ok && dim_ok) {
            const size_t prow = (size_t)trow[j / block_size] * block_size + j % block_size;
            const size_t off = (prow * kv_heads + kvh) * head_dim + d0;
            unpack8(*reinterpret_cast<const uint4*>(k_cache + off), kf);
            unpack8(*reinterpret_cast<const uint4*>(v_cache + off), vf);
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) kf[i] = vf[i] = 0.f;
        }
#pragma unroll
        for (int h = 0; h < GH; ++h) {
            float x = 0.f;
#pragma unroll
            for (int i = 0; i < 8; ++i) x += qv[h][i] * kf[i];
#pragma unroll
            for (int s = LPK / 2; s > 0; s >>= 1) x += __shfl_xor_sync(0xffffffffu, x, s);
            x = key_ok ? x : PD_NEG_INF;
            const float mn = fmaxf(m[h], x);
            const float ref = mn == PD_NEG_INF ? 0.f : mn;
            const float corr = exp2f(m[h] - ref), e = exp2f(x - ref);
            l[h] = l[h] * corr + e;
#pragma unroll
            for (int i = 0; i < 8; ++i) o[h][i] = o[h][i] * corr + e * vf[i];
            m[h] = mn;
        }
    }

    // Merge the warp's key groups (lanes LPK apart hold the same dims).
#pragma unroll
    for (int s = LPK; s < 32; s <<= 1) {
#pragma unroll
        for (int h = 0; h < GH; ++h) {
            float o2[8];
            const float m2 = __shfl_xor_sync(0xffffffffu, m[h], s);
            const float l2 = __shfl_xor_sync(0xffffffffu, l[h], s);
#pragma unroll
            for (int i = 0; i < 8; ++i) o2[i] = __shfl_xor_sync(0xffffffffu, o[h][i], s);
            merge_state(m[h], l[h], o[h], m2, l2, o2);
        }
    }
    if (sub == 0) {
#pragma unroll
        for (int h = 0; h < GH; ++h) {
            if (lane == 0) {
                sh_m[warp][h] = m[h];
                sh_l[warp][h] = l[h];
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) sh_o[warp][h][d0 + i] = o[h][i];
        }
    }
    __syncthreads();

    // Merge the warps, one (head, dim) per thread and pass.
    for (int e = threadIdx.x; e < nh * HD; e += PD_THREADS) {
        const int h = e / HD, d = e % HD;
        float mm = PD_NEG_INF;
#pragma unroll
        for (int w = 0; w < PD_WARPS; ++w) mm = fmaxf(mm, sh_m[w][h]);
        const float ref = mm == PD_NEG_INF ? 0.f : mm;
        float ll = 0.f, acc = 0.f;
#pragma unroll
        for (int w = 0; w < PD_WARPS; ++w) {
            const float c = exp2f(sh_m[w][h] - ref);
            ll += c * sh_l[w][h];
            acc += c * sh_o[w][h][d];
        }
        const size_t row = ((size_t)split * tokens + t) * heads + h0 + h;
        if (d < head_dim) part_o[row * head_dim + d] = acc;
        if (d == 0) {
            part_ml[2 * row] = mm;
            part_ml[2 * row + 1] = ll;
        }
    }
}

// One kernel per (HD, GH), spelled out (build.rs parses kernel declarations literally).
extern "C" __global__ void __launch_bounds__(PD_THREADS)
attention_paged_decode_d64_g2_bf16(float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* table, const int* seq, const int* pos,
                                   int tokens, int heads, int kv_heads, int head_dim, int table_width,
                                   int block_size, float scale) {
    paged_decode_split<64, 2>(part_o, part_ml, q, k_cache, v_cache, table, seq, pos, tokens, heads, kv_heads,
                             head_dim, table_width, block_size, scale);
}

extern "C" __global__ void __launch_bounds__(PD_THREADS)
attention_paged_decode_d64_g4_bf16(float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* table, const int* seq, const int* pos,
                                   int tokens, int heads, int kv_heads, int head_dim, int table_width,
                                   int block_size, float scale) {
    paged_decode_split<64, 4>(part_o, part_ml, q, k_cache, v_cache, table, seq, pos, tokens, heads, kv_heads,
                             head_dim, table_width, block_size, scale);
}

extern "C" __global__ void __launch_bounds__(PD_THREADS)
attention_paged_decode_d64_g8_bf16(float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* table, const int* seq, const int* pos,
                                   int tokens, int heads, int kv_heads, int head_dim, int table_width,
                                   int block_size, float scale) {
    paged_decode_split<64, 8>(part_o, part_ml, q, k_cache, v_cache, table, seq, pos, tokens, heads, kv_heads,
                             head_dim, table_width, block_size, scale);
}

extern "C" __global__ void __launch_bounds__(PD_THREADS)
attention_paged_decode_d128_g2_bf16(float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* table, const int* seq, const int* pos,
                                   int tokens, int heads, int kv_heads, int head_dim, int table_width,
                                   int block_size, float scale) {
    paged_decode_split<128, 2>(part_o, part_ml, q, k_cache, v_cache, table, seq, pos, tokens, heads, kv_heads,
                             head_dim, table_width, block_size, scale);
}

extern "C" __global__ void __launch_bounds__(PD_THREADS)
attention_paged_decode_d128_g4_bf16(float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* table, const int* seq, const int* pos,
                                   int tokens, int heads, int kv_heads, int head_dim, int table_width,
                                   int block_size, float scale) {
    paged_decode_split<128, 4>(part_o, part_ml, q, k_cache, v_cache, table, seq, pos, tokens, heads, kv_heads,
                             head_dim, table_width, block_size, scale);
}

extern "C" __global__ void __launch_bounds__(PD_THREADS)
attention_paged_decode_d128_g8_bf16(float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* table, const int* seq, const int* pos,
                                   int tokens, int heads, int kv_heads, int head_dim, int table_width,
                                   int block_size, float scale) {
    paged_decode_split<128, 8>(part_o, part_ml, q, k_cache, v_cache, table, seq, pos, tokens, heads, kv_heads,
                             head_dim, table_width, block_size, scale);
}

extern "C" __global__ void __launch_bounds__(PD_THREADS)
attention_paged_decode_d256_g2_bf16(float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* table, const int* seq, const int* pos,
                                   int tokens, int heads, int kv_heads, int head_dim, int table_width,
                                   int block_size, float scale) {
    paged_decode_split<256, 2>(part_o, part_ml, q, k_cache, v_cache, table, seq, pos, tokens, heads, kv_heads,
                             head_dim, table_width, block_size, scale);
}

extern "C" __global__ void __launch_bounds__(PD_THREADS)
attention_paged_decode_d256_g4_bf16(float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* table, const int* seq, const int* pos,
                                   int tokens, int heads, int kv_heads, int head_dim, int table_width,
                                   int block_size, float scale) {
    paged_decode_split<256, 4>(part_o, part_ml, q, k_cache, v_cache, table, seq, pos, tokens, heads, kv_heads,
                             head_dim, table_width, block_size, scale);
}

extern "C" __global__ void __launch_bounds__(PD_THREADS)
attention_paged_decode_d256_g8_bf16(float* part_o, float* part_ml, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* table, const int* seq, const int* pos,
                                   int tokens, int heads, int kv_heads, int head_dim, int table_width,
                                   int block_size, float scale) {
    paged_decode_split<256, 8>(part_o, part_ml, q, k_cache, v_cache, table, seq, pos, tokens, heads, kv_heads,
                             head_dim, table_width, block_size, scale);
}

extern "C" __global__ void __launch_bounds__(PD_THREADS)
attention_paged_decode_combine_bf16(bf16* out, const float* part_o, const float* part_ml, const int* pos,
                                    int tokens, int heads, int head_dim) {
    const int t = blockIdx.x, h = blockIdx.y;
    const int splits = pos[t] / PD_CHUNK + 1;
    float mm = PD_NEG_INF;
    for (int i = 0; i < splits; ++i) mm = fmaxf(mm, part_ml[2 * (((size_t)i * tokens + t) * heads + h)]);
    const float ref = mm == PD_NEG_INF ? 0.f : mm;
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
}
