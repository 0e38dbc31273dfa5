// Causal grouped-query attention over the KV cache, FlashAttention-2 style, bf16.
//
// Math: for query token t (cache slot s, position p) and query head h,
//   out[t, h, :] = softmax_j(scale * q[t, h, :] . k[s, j, h / group, :]) v[s, j, h / group, :],
//   j = 0..p (causal), group = heads / kv_heads; computed in f32 with an online
//   softmax (running max m and sum l per row), never materialising the scores.
// Saves for backward: lse[t, h] = m + log(l) in natural-log units of the scaled
//   scores (f32), when `lse` is not null.
// Shapes: q, out [tokens, heads, head_dim] (bf16); k_cache, v_cache
//   [slots, max_len, kv_heads, head_dim] (bf16); lse [tokens, heads] (f32).
//   `tiles` [n_tiles, 4] (int32): token_start, rows (<= 64), slot, pos0 — a run of
//   `rows` consecutive tokens of one slot at positions pos0.. (the host splits each
//   sequence of the batch into such runs). The keys of the slot up to
//   pos0 + rows - 1 must already be in the cache.
// Paged caches: with `table` [rows, table_width] (int32) not null, the caches are
//   [blocks, block_size, kv_heads, head_dim], `slot` is a block-table row and key j
//   lives at physical row table[slot, j / block_size] * block_size + j % block_size
//   (see kv_row); null table: the contiguous layout above (training). A row's
//   arithmetic depends only on its own keys: key tiles start at position 0 and a
//   tile masked out for a row leaves its state unchanged bit for bit, so how a
//   sequence is cut into tiles or batches never changes its values.
// Launch: grid (n_tiles, heads, DT / DV), block 128 threads = 4 warps; warp w owns query rows
//   16w..16w+15 of the tile. K and V tiles of BC keys are staged in static shared
//   memory; Q·Kᵀ and P·V run on tensor cores (mma m16n8k16 bf16 -> f32) through the
//   wrappers in common.cuh. The accumulator fragment of S is reused as the A
//   fragment of P (FlashAttention-2's register trick). head_dim is padded with zeros
//   to DT = 32, 64, 128 or 256 (one instantiation each); 64 and 128 are the fast
//   paths (no padding work). Each block produces DV = min(DT, 128) output dims:
//   DT = 256 runs two blocks per tile and head (grid z), each recomputing Q·Kᵀ
//   over all 256 dims for its half of V, so the 128-float O accumulator per lane
//   never spills.
// Writes: out (=), lse (=). Every thread reaches every barrier.

#define ATTN_THREADS 128
#define ATTN_ROWS 64
#define NEG_INF (__int_as_float(0xff800000u))

template <int DT>
struct AttnTile {
    static constexpr int BC = DT <= 128 ? 64 : 32;   // keys per shared-memory tile
    static constexpr int DV = DT <= 128 ? DT : 128;  // V / output dims per block
    static constexpr int PAD = 8;                      // bf16 elements of row padding
};

// The cache row of key j of `slot`: through the block table when there is one.
__device__ __forceinline__ size_t kv_row(const int* table, int slot, int j, int table_width, int block_size,
                                         int max_len) {
    return table != nullptr ? (size_t)table[(size_t)slot * table_width + j / block_size] * block_size + j % block_size
                            : (size_t)slot * max_len + j;
}

// Two bf16 of a shared-memory row as one 32-bit register (lower column in the low half).
__device__ __forceinline__ uint32_t ld_pair(const bf16* p) {
    return pack_bf16x2(p[0], p[1]);
}

template <int DT>
__device__ void attention_prefill_bf16(bf16* __restrict__ out, float* __restrict__ lse,
                                       const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                                       const bf16* __restrict__ v_cache, const int* __restrict__ tiles,
                                       const int* __restrict__ table, int table_width, int block_size,
                                       int heads, int kv_heads, int head_dim, int max_len,
                                       float scale) {
    constexpr int BC = AttnTile<DT>::BC;
    constexpr int DV = AttnTile<DT>::DV;
    constexpr int LD = DT + AttnTile<DT>::PAD;
    constexpr int LDV = DV + AttnTile<DT>::PAD;
    __shared__ bf16 ks[BC * LD];
    __shared__ bf16 vs[BC * LDV];
    const int dv0 = blockIdx.z * DV;  // first output dim of this block

    const int tile = blockIdx.x, head = blockIdx.y;
    const int token0 = tiles[4 * tile + 0], rows = tiles[4 * tile + 1];
    const int slot = tiles[4 * tile + 2], pos0 = tiles[4 * tile + 3];
    const int kvh = head / (heads / kv_heads);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, tig = lane & 3;  // mma group id and thread-in-group
    const float scale_log2 = scale * 1.4426950408889634f;

    // Q fragments of this warp's 16 rows, kept in registers for the whole kernel.
    uint32_t qf[DT / 16][4];
    const int row_a = warp * 16 + g, row_b = row_a + 8;  // the two rows this lane holds
#pragma unroll
    for (int kk = 0; kk < DT / 16; ++kk) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int row = (r & 1) ? row_b : row_a;
            const int col = kk * 16 + tig * 2 + ((r & 2) ? 8 : 0);
            uint32_t v = 0;
            if (row < rows && col < head_dim)
                v = *reinterpret_cast<const uint32_t*>(q + ((size_t)(token0 + row) * heads + head) * head_dim + col);
            qf[kk][r] = v;
        }
    }

    float o[DV / 8][4];
#pragma unroll
    for (int i = 0; i < DV / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_a = NEG_INF, m_b = NEG_INF, l_a = 0.f, l_b = 0.f;
    const int qpos_a = pos0 + row_a, qpos_b = pos0 + row_b;

    const int kv_len = pos0 + rows;  // keys 0..kv_len-1 are visible to some row
    const bf16* kbase = k_cache + (size_t)kvh * head_dim;
    const bf16* vbase = v_cache + (size_t)kvh * head_dim;
    const size_t kv_row_stride = (size_t)kv_heads * head_dim;

    for (int kb = 0; kb < kv_len; kb += BC) {
        __syncthreads();  // the previous tile is no longer read
        // Stage K (all dims) and this block's V dims: 16-byte chunks (8 bf16), zero
        // beyond head_dim or kv_len.
        for (int c = threadIdx.x; c < BC * (DT / 8); c += ATTN_THREADS) {
            const int key = c / (DT / 8), col = (c % (DT / 8)) * 8;
            uint4 kv4 = make_uint4(0, 0, 0, 0);
            if (kb + key < kv_len && col < head_dim)
                kv4 = *reinterpret_cast<const uint4*>(
                    kbase + kv_row(table, slot, kb + key, table_width, block_size, max_len) * kv_row_stride + col);
            *reinterpret_cast<uint4*>(ks + key * LD + col) = kv4;
        }
        for (int c = threadIdx.x; c < BC * (DV / 8); c += ATTN_THREADS) {
            const int key = c / (DV / 8), col = (c % (DV / 8)) * 8;
            uint4 vv4 = make_uint4(0, 0, 0, 0);
            if (kb + key < kv_len && dv0 + col < head_dim)
                vv4 = *reinterpret_cast<const uint4*>(
                    vbase + kv_row(table, slot, kb + key, table_width, block_size, max_len) * kv_row_stride + dv0 + col);
            *reinterpret_cast<uint4*>(vs + key * LDV + col) = vv4;
        }
        __syncthreads();

        // S = Q Kᵀ for this warp: 16 rows x BC keys, BC/8 accumulator tiles.
        float s[BC / 8][4];
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < DT / 16; ++kk) {
                const bf16* kr = ks + (nt * 8 + g) * LD + kk * 16 + tig * 2;
                uint32_t b[2] = {ld_pair(kr), ld_pair(kr + 8)};
                mma_m16n8k16_bf16_f32(s[nt], qf[kk], b, s[nt]);
            }
        }

        // Causal mask, scale to log2 units, row max over the quad of lanes.
        float mx_a = NEG_INF, mx_b = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = kb + nt * 8 + tig * 2 + (e & 1);
                const bool upper = e >= 2;
                const int qpos = upper ? qpos_b : qpos_a;
                const int row = upper ? row_b : row_a;
                float v = (key <= qpos && row < rows) ? s[nt][e] * scale_log2 : NEG_INF;
                s[nt][e] = v;
                if (upper) mx_b = fmaxf(mx_b, v); else mx_a = fmaxf(mx_a, v);
            }
        }
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
        const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
        // A row that has seen no visible key yet keeps a zero reference (no NaN).
        const float ref_a = mn_a == NEG_INF ? 0.f : mn_a;
        const float ref_b = mn_b == NEG_INF ? 0.f : mn_b;
        const float corr_a = exp2f(m_a - ref_a), corr_b = exp2f(m_b - ref_b);
        m_a = mn_a;
        m_b = mn_b;

        // P = exp2(S - m), row sums, rescale O.
        float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
            s[nt][0] = exp2f(s[nt][0] - ref_a);
            s[nt][1] = exp2f(s[nt][1] - ref_a);
            s[nt][2] = exp2f(s[nt][2] - ref_b);
            s[nt][3] = exp2f(s[nt][3] - ref_b);
            sum_a += s[nt][0] + s[nt][1];
            sum_b += s[nt][2] + s[nt][3];
        }
        sum_a += __shfl_xor_sync(0xffffffffu, sum_a, 1);
        sum_a += __shfl_xor_sync(0xffffffffu, sum_a, 2);
        sum_b += __shfl_xor_sync(0xffffffffu, sum_b, 1);
        sum_b += __shfl_xor_sync(0xffffffffu, sum_b, 2);
        l_a = l_a * corr_a + sum_a;
        l_b = l_b * corr_b + sum_b;
#pragma unroll
        for (int dt = 0; dt < DV / 8; ++dt) {
            o[dt][0] *= corr_a;
            o[dt][1] *= corr_a;
            o[dt][2] *= corr_b;
            o[dt][3] *= corr_b;
        }

        // O += P V: the S accumulators of key tiles 2kk and 2kk+1 form P's A fragment.
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            uint32_t a[4] = {pack_f32x2_bf16(s[2 * kk][0], s[2 * kk][1]),
                             pack_f32x2_bf16(s[2 * kk][2], s[2 * kk][3]),
                             pack_f32x2_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack_f32x2_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            const bf16* v0 = vs + (kk * 16 + tig * 2) * LDV + g;
#pragma unroll
            for (int dt = 0; dt < DV / 8; ++dt) {
                const bf16* vp = v0 + dt * 8;
                uint32_t b[2] = {pack_bf16x2(vp[0], vp[LDV]), pack_bf16x2(vp[8 * LDV], vp[9 * LDV])};
                mma_m16n8k16_bf16_f32(o[dt], a, b, o[dt]);
            }
        }
    }

    // Normalise and write this lane's two rows.
    const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
#pragma unroll
    for (int dt = 0; dt < DV / 8; ++dt) {
        const int col = dv0 + dt * 8 + tig * 2;
        if (col < head_dim) {
            if (row_a < rows) {
                bf16* dst = out + ((size_t)(token0 + row_a) * heads + head) * head_dim + col;
                *reinterpret_cast<uint32_t*>(dst) = pack_f32x2_bf16(o[dt][0] * inv_a, o[dt][1] * inv_a);
            }
            if (row_b < rows) {
                bf16* dst = out + ((size_t)(token0 + row_b) * heads + head) * head_dim + col;
                *reinterpret_cast<uint32_t*>(dst) = pack_f32x2_bf16(o[dt][2] * inv_b, o[dt][3] * inv_b);
            }
        }
    }
    if (lse != nullptr && tig == 0 && blockIdx.z == 0) {
        const float ln2 = 0.6931471805599453f;
        if (row_a < rows) lse[(size_t)(token0 + row_a) * heads + head] = (m_a + log2f(l_a)) * ln2;
        if (row_b < rows) lse[(size_t)(token0 + row_b) * heads + head] = (m_b + log2f(l_b)) * ln2;
    }
}

extern "C" __global__ void __launch_bounds__(ATTN_THREADS, 1)
attention_prefill_d32_forward_bf16(bf16* out, float* lse, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* tiles, const int* table,
                                   int table_width, int block_size, int heads, int kv_heads,
                                   int head_dim, int max_len, float scale) {
    attention_prefill_bf16<32>(out, lse, q, k_cache, v_cache, tiles, table, table_width, block_size, heads,
                                kv_heads, head_dim, max_len, scale);
}

extern "C" __global__ void __launch_bounds__(ATTN_THREADS, 1)
attention_prefill_d64_forward_bf16(bf16* out, float* lse, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* tiles, const int* table,
                                   int table_width, int block_size, int heads, int kv_heads,
                                   int head_dim, int max_len, float scale) {
    attention_prefill_bf16<64>(out, lse, q, k_cache, v_cache, tiles, table, table_width, block_size, heads,
                                kv_heads, head_dim, max_len, scale);
}

extern "C" __global__ void __launch_bounds__(ATTN_THREADS, 1)
attention_prefill_d128_forward_bf16(bf16* out, float* lse, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* tiles, const int* table,
                                   int table_width, int block_size, int heads, int kv_heads,
                                   int head_dim, int max_len, float scale) {
    attention_prefill_bf16<128>(out, lse, q, k_cache, v_cache, tiles, table, table_width, block_size, heads,
                                kv_heads, head_dim, max_len, scale);
}

extern "C" __global__ void __launch_bounds__(ATTN_THREADS, 1)
attention_prefill_d256_forward_bf16(bf16* out, float* lse, const bf16* q, const bf16* k_cache,
                                   const bf16* v_cache, const int* tiles, const int* table,
                                   int table_width, int block_size, int heads, int kv_heads,
                                   int head_dim, int max_len, float scale) {
    attention_prefill_bf16<256>(out, lse, q, k_cache, v_cache, tiles, table, table_width, block_size, heads,
                                kv_heads, head_dim, max_len, scale);
}
