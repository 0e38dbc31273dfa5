// Backward of causal grouped-query attention over the KV cache (attention_prefill with
// lse saved), FlashAttention-2 style on tensor cores, bf16 in, f32 math. Three kernels,
// launched in this order by src/backend/cuda/attention_backward.rs:
//
//   attention_dot_backward_bf16        D = rowsum(dO * O)                    (pre-pass)
//   attention_dkdv_d{DT}_backward_bf16 dK, dV (+=) into the cache gradients  (per key tile)
//   attention_dq_d{DT}_backward_bf16   dQ (=)                                (per query tile)
//
// Math, per query row (token t at slot s, position p; query head h; kv head
//   kvh = h / group, group = heads / kv_heads) and key j = 0..p of slot s, with the
//   probabilities recomputed from the saved log-sum-exp (natural log, scaled scores):
//     P_j  = exp(scale * q·k_j - lse[t, h])
//     dP_j = dO·v_j,   D = dO·O (= sum_j P_j dP_j),   dS_j = P_j (dP_j - D)
//     dq[t, h]                 = scale * sum_j dS_j k_j                        (=)
//     dk_cache[s, j, kvh]     += scale * sum_{t, h in group} dS_j q[t, h]      (+=)
//     dv_cache[s, j, kvh]     += sum_{t, h in group} P_j dO[t, h]               (+=)
//   This is the FA2 variant with a separate dQ pass: every output element is owned by
//   exactly one block and summed in a fixed order, so the result is deterministic and
//   needs no atomics (the price: S = QKᵀ and dP = dO Vᵀ are computed twice, once per
//   pass).
// Saved tensors used: out (O, bf16) and lse (f32) from the forward, q and the K/V cache.
// Shapes: q, out, dout, dq [tokens, heads, head_dim] bf16; lse, delta [tokens, heads] f32;
//   k_cache, v_cache, dk_cache, dv_cache [slots, max_len, kv_heads, head_dim] bf16.
//   A batch is a set of sequences, each a run of consecutive tokens of one slot at
//   consecutive positions pos0..pos0+n-1 (the host checks this); keys 0..pos0-1 are an
//   earlier, cached prefix: they get dK/dV too. Each slot appears in one run only.
// head_dim is padded with zeros to DT = 32, 64, 128 or 256 (one instantiation each; any
//   multiple of 16 up to 256). Each block produces DV = min(DT, 128) output dims: at
//   DT = 256 two blocks (grid z) share a tile, each recomputing S and dP over all 256
//   dims for its half of the outputs, so the f32 accumulators never spill (as
//   attention_prefill does). The mma operands are read from padded shared-memory rows
//   (LD = DT + 8 bf16: conflict-free 32-bit fragment loads). Every thread reaches every
//   barrier; warps that have nothing to do in an iteration skip only their math.

#define ATTB_THREADS 128
#define ATTB_LOG2E 1.4426950408889634f

template <int DT>
struct AttnBwdTile {
    static constexpr int LD = DT + 8;               // shared-memory row, bf16 elements
    static constexpr int BC = 64;                   // dK/dV: keys per block (4 warps x 16)
    static constexpr int BR = DT <= 64 ? 64 : 32;   // dK/dV: query rows per inner step
    static constexpr int QC = DT <= 64 ? 64 : 32;   // dQ: keys per shared-memory tile
    static constexpr int DV = DT <= 128 ? DT : 128; // output dims per block (grid z = DT / DV)
    static constexpr int QR = 64;                   // dQ: query rows per block (4 warps x 16)
    // Dynamic shared memory (the launcher computes the same: attention_plan::backward_smem).
    // dK/dV: K, V tiles, Q, dO tiles, lse and D of the query rows.
    static constexpr int DKDV_SMEM = (2 * BC + 2 * BR) * LD * 2 + 2 * BR * 4;
    // dQ: K, V tiles, the block's Q and dO rows.
    static constexpr int DQ_SMEM = (2 * QC + 2 * QR) * LD * 2;
};

// Two bf16 of a shared-memory row as one 32-bit register (lower column in the low half).
__device__ __forceinline__ uint32_t attb_pair(const bf16* p) { return pack_bf16x2(p[0], p[1]); }

// rows x DT bf16 from global rows `src` (row stride `stride` elements) into shared rows of
// LD elements, 16-byte chunks; zero beyond `valid` rows and beyond head_dim.
template <int DT>
__device__ __forceinline__ void attb_stage(bf16* dst, int rows, const bf16* src, size_t stride, int valid,
                                           int head_dim) {
    constexpr int LD = AttnBwdTile<DT>::LD;
    for (int c = threadIdx.x; c < rows * (DT / 8); c += ATTB_THREADS) {
        const int r = c / (DT / 8), col = (c % (DT / 8)) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < valid && col < head_dim) v = *reinterpret_cast<const uint4*>(src + r * stride + col);
        *reinterpret_cast<uint4*>(dst + r * LD + col) = v;
    }
}

// acc[nt] (16 rows x 8 cols per tile, nt < N / 8) = A Bᵀ over DT dims, with A the warp's
// 16 rows at `a_rows` and B the N rows at `b_rows` (both shared memory, LD stride).
template <int DT, int N>
__device__ __forceinline__ void attb_abt(float (&acc)[N / 8][4], const bf16* a_rows, const bf16* b_rows) {
    constexpr int LD = AttnBwdTile<DT>::LD;
    const int lane = threadIdx.x % 32, g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int nt = 0; nt < N / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
    // Unrolled by 2 only: full unrolling hoists the fragment loads of every kk and
    // pushed the dK/dV kernel at DT 256 into spills (sm_80); 4 mma per kk are enough ILP.
#pragma unroll 2
    for (int kk = 0; kk < DT / 16; ++kk) {
        const bf16* ar = a_rows + g * LD + kk * 16 + tig * 2;
        const uint32_t a[4] = {attb_pair(ar), attb_pair(ar + 8 * LD), attb_pair(ar + 8), attb_pair(ar + 8 * LD + 8)};
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt) {
            const bf16* br = b_rows + (nt * 8 + g) * LD + kk * 16 + tig * 2;
            const uint32_t b[2] = {attb_pair(br), attb_pair(br + 8)};
            mma_m16n8k16_bf16_f32(acc[nt], a, b, acc[nt]);
        }
    }
}

// acc[dt] += X B for dt < DV / 8, X the 16 x K matrix held as mma accumulators x[K / 8]
// (rounded to bf16: the FA2 register trick) and B the K x DV block of shared rows
// starting at `b_rows` (row stride LD).
template <int DT, int K>
__device__ __forceinline__ void attb_xb(float (&acc)[AttnBwdTile<DT>::DV / 8][4], const float (&x)[K / 8][4],
                                        const bf16* b_rows) {
    constexpr int LD = AttnBwdTile<DT>::LD;
    constexpr int DV = AttnBwdTile<DT>::DV;
    const int lane = threadIdx.x % 32, g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
        const uint32_t a[4] = {pack_f32x2_bf16(x[2 * kk][0], x[2 * kk][1]), pack_f32x2_bf16(x[2 * kk][2], x[2 * kk][3]),
                               pack_f32x2_bf16(x[2 * kk + 1][0], x[2 * kk + 1][1]),
                               pack_f32x2_bf16(x[2 * kk + 1][2], x[2 * kk + 1][3])};
        const bf16* b0 = b_rows + (kk * 16 + tig * 2) * LD + g;
#pragma unroll
        for (int dt = 0; dt < DV / 8; ++dt) {
            const bf16* bp = b0 + dt * 8;
            const uint32_t b[2] = {pack_bf16x2(bp[0], bp[LD]), pack_bf16x2(bp[8 * LD], bp[9 * LD])};
            mma_m16n8k16_bf16_f32(acc[dt], a, b, acc[dt]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// attention_dot_backward_bf16: delta[r] = sum_d dout[r, d] * out[r, d] over the
//   rows r = t * heads + h (f32 accumulation). head_dim a multiple of 8, <= 256.
// Launch: 1-D grid, 256 threads; warp w of block b takes rows 8b + w, then strides by
//   8 * gridDim.x; lane i reads dims 8i..8i+7 (16-byte loads). Writes delta (=).
extern "C" __global__ void __launch_bounds__(256)
attention_dot_backward_bf16(float* __restrict__ delta, const bf16* __restrict__ dout, const bf16* __restrict__ out,
                            int rows, int head_dim) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = blockIdx.x * 8 + warp; r < rows; r += gridDim.x * 8) {  // warp-uniform
        float acc = 0.f;
        for (int c = lane * 8; c < head_dim; c += 256) {
            float a[8], b[8];
            load16(dout + (size_t)r * head_dim + c, a);
            load16(out + (size_t)r * head_dim + c, b);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc += a[i] * b[i];
        }
        acc = warp_sum(acc);
        if (lane == 0) delta[r] = acc;
    }
}

// ---------------------------------------------------------------------------------------
// attention_dkdv_d{DT}_backward_bf16: dK and dV of one tile of BC = 64 keys of one slot
//   and one kv head, summed over the `group` query heads of that kv head and over every
//   query token of the slot that sees those keys.
// ktiles [n, 6] int32: slot, key0, keys (<= 64), token0, tokens, pos0 — keys
//   key0..key0+keys-1 of `slot`, whose queries are the batch tokens token0..+tokens-1 at
//   positions pos0.. (the slot's whole run in the batch).
// Launch: grid (n key tiles, kv_heads, DT / DV), 128 threads = 4 warps; warp w owns keys
//   16w..16w+15 of the tile and accumulates their dK, dV (16 x DV each, f32) in
//   registers. K, V of the tile are staged once; then for each query head of the group
//   and each tile of BR query rows that can see the keys (positions >= key0), the Q,
//   dO rows and their lse, D are staged and each warp computes, transposed (keys as mma
//   rows): Sᵀ = K Qᵀ, Pᵀ = exp2(Sᵀ scale log2e - lse log2e) (causal mask key <= pos),
//   dPᵀ = V dOᵀ, dSᵀ = Pᵀ (dPᵀ - D), then dV += Pᵀ dO and dK += dSᵀ Q with Pᵀ, dSᵀ taken
//   from the accumulators as A fragments. At the end dK is scaled and both are added to
//   the cache gradients (read, add in f32, write bf16; each key belongs to one block).
// Dynamic shared memory: AttnBwdTile<DT>::DKDV_SMEM bytes
//   ((2 BC + 2 BR) (DT + 8) bf16 + 2 BR f32: 20992 B at DT 32, 37376 B at 64, 52480 B at
//   128, 101632 B at 256; above 48 KiB the launcher opts in).
// Writes: dk_cache, dv_cache (+=) at the tile's keys only.
template <int DT>
__device__ void attention_dkdv_bf16(bf16* __restrict__ dk_cache, bf16* __restrict__ dv_cache,
                                    const bf16* __restrict__ dout, const float* __restrict__ lse,
                                    const float* __restrict__ delta, const bf16* __restrict__ q,
                                    const bf16* __restrict__ k_cache, const bf16* __restrict__ v_cache,
                                    const int* __restrict__ ktiles, int heads, int kv_heads, int head_dim,
                                    int max_len, float scale) {
    constexpr int BC = AttnBwdTile<DT>::BC;
    constexpr int BR = AttnBwdTile<DT>::BR;
    constexpr int LD = AttnBwdTile<DT>::LD;
    constexpr int DV = AttnBwdTile<DT>::DV;
    EXTERN_SHARED(bf16, smem);
    bf16* ks = smem;                                         // [BC][LD]
    bf16* vs = ks + BC * LD;                                 // [BC][LD]
    bf16* qs = vs + BC * LD;                                 // [BR][LD]
    bf16* dos = qs + BR * LD;                                // [BR][LD]
    float* lse_s = reinterpret_cast<float*>(dos + BR * LD);  // [BR], log2 units
    float* d_s = lse_s + BR;                                 // [BR]

    const int* kt = ktiles + 6 * blockIdx.x;
    const int slot = kt[0], key0 = kt[1], nkeys = kt[2], token0 = kt[3], ntok = kt[4], pos0 = kt[5];
    const int kvh = blockIdx.y, group = heads / kv_heads;
    const int dv0 = blockIdx.z * DV;  // first output dim of this block
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, tig = lane & 3;
    const float scale_log2 = scale * ATTB_LOG2E;
    const size_t kv_stride = (size_t)kv_heads * head_dim;
    const size_t kv_off = (((size_t)slot * max_len + key0) * kv_heads + kvh) * head_dim;
    const size_t q_stride = (size_t)heads * head_dim;

    attb_stage<DT>(ks, BC, k_cache + kv_off, kv_stride, nkeys, head_dim);
    attb_stage<DT>(vs, BC, v_cache + kv_off, kv_stride, nkeys, head_dim);

    float dk[DV / 8][4], dv[DV / 8][4];
#pragma unroll
    for (int i = 0; i < DV / 8; ++i) {
        dk[i][0] = dk[i][1] = dk[i][2] = dk[i][3] = 0.f;
        dv[i][0] = dv[i][1] = dv[i][2] = dv[i][3] = 0.f;
    }
    const int wkey = warp * 16;                          // the warp's first key in the tile
    const int key_a = key0 + wkey + g, key_b = key_a + 8;  // this lane's two keys (positions)
    const int key_end = key0 + nkeys;
    // Tokens that see key0: positions >= key0, i.e. run index >= key0 - pos0.
    const int qfirst = max(key0 - pos0, 0);
    const int nqt = qfirst < ntok ? (ntok - qfirst + BR - 1) / BR : 0;

    for (int it = 0; it < group * nqt; ++it) {
        const int h = kvh * group + it / nqt;
        const int qr0 = qfirst + (it % nqt) * BR;  // first row of this query tile (run index)
        const int qrows = min(BR, ntok - qr0);
        const int qpos0 = pos0 + qr0;              // its position
        __syncthreads();  // the previous query tile is no longer read
        const size_t row0 = (size_t)(token0 + qr0) * heads + h;
        attb_stage<DT>(qs, BR, q + row0 * head_dim, q_stride, qrows, head_dim);
        attb_stage<DT>(dos, BR, dout + row0 * head_dim, q_stride, qrows, head_dim);
        for (int r = threadIdx.x; r < BR; r += ATTB_THREADS) {
            const bool ok = r < qrows;
            lse_s[r] = ok ? lse[row0 + (size_t)r * heads] * ATTB_LOG2E : 0.f;
            d_s[r] = ok ? delta[row0 + (size_t)r * heads] : 0.f;
        }
        __syncthreads();

        // Warp-uniform: skip when the warp holds no key, or its first key comes after
        // the last query position of the tile (everything masked).
        if (wkey < nkeys && key0 + wkey <= qpos0 + qrows - 1) {
            float s[BR / 8][4], dp[BR / 8][4];
            attb_abt<DT, BR>(s, ks + wkey * LD, qs);    // Sᵀ = K Qᵀ  (16 keys x BR queries)
            attb_abt<DT, BR>(dp, vs + wkey * LD, dos);  // dPᵀ = V dOᵀ
#pragma unroll
            for (int nt = 0; nt < BR / 8; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int r = nt * 8 + tig * 2 + (e & 1);  // query row in the tile
                    const int key = e >= 2 ? key_b : key_a;
                    const bool ok = r < qrows && key <= qpos0 + r && key < key_end;
                    const float p = ok ? exp2f(s[nt][e] * scale_log2 - lse_s[r]) : 0.f;
                    s[nt][e] = p;                             // Pᵀ
                    dp[nt][e] = p * (dp[nt][e] - d_s[r]);     // dSᵀ
                }
            }
            attb_xb<DT, BR>(dv, s, dos + dv0);  // dV += Pᵀ dO
            attb_xb<DT, BR>(dk, dp, qs + dv0);  // dK += dSᵀ Q
        }
    }

    // Add into the cache gradients: this lane's keys wkey+g, wkey+g+8, dims
    // dv0 + 8dt + 2tig, +1.
    if (wkey < nkeys) {
#pragma unroll
        for (int dt = 0; dt < DV / 8; ++dt) {
            const int col = dv0 + dt * 8 + tig * 2;
            if (col >= head_dim) continue;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int kr = wkey + g + 8 * half;
                if (kr >= nkeys) continue;
                const size_t at = kv_off + (size_t)kr * kv_stride + col;
                uint32_t* pk = reinterpret_cast<uint32_t*>(dk_cache + at);
                uint32_t* pv = reinterpret_cast<uint32_t*>(dv_cache + at);
                const uint32_t ok = *pk, ov = *pv;
                *pk = pack_f32x2_bf16(bf16lo_f32(ok) + scale * dk[dt][2 * half],
                                      bf16hi_f32(ok) + scale * dk[dt][2 * half + 1]);
                *pv = pack_f32x2_bf16(bf16lo_f32(ov) + dv[dt][2 * half], bf16hi_f32(ov) + dv[dt][2 * half + 1]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// attention_dq_d{DT}_backward_bf16: dq of one tile of up to 64 query rows and one head.
// tiles [n, 4] int32: token_start, rows (<= 64), slot, pos0 — as attention_prefill.
// Launch: grid (n tiles, heads, DT / DV), 128 threads = 4 warps; warp w owns query rows
//   16w..16w+15 and accumulates their dQ (16 x DV, f32) in registers. The block's Q and
//   dO rows are staged in shared memory once (the A operands are read from there, which
//   keeps registers for the accumulators); lse and D of the lane's two rows sit in
//   registers. For each tile of QC keys (0..pos0 + rows - 1, K and V staged): S = Q Kᵀ,
//   P = exp2(S scale log2e - lse log2e) with the causal mask, dP = dO Vᵀ,
//   dS = P (dP - D), dQ += dS K (dS from the accumulators as the A fragment). Finally
//   dq = scale dQ as bf16.
// Dynamic shared memory: AttnBwdTile<DT>::DQ_SMEM bytes ((2 QC + 128) (DT + 8) bf16,
//   QC = 64 at DT <= 64, else 32: 20480 B at DT 32, 36864 B at 64, 52224 B at 128,
//   101376 B at 256).
// Writes: dq (=).
template <int DT>
__device__ void attention_dq_bf16(bf16* __restrict__ dq, const bf16* __restrict__ dout,
                                  const float* __restrict__ lse, const float* __restrict__ delta,
                                  const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                                  const bf16* __restrict__ v_cache, const int* __restrict__ tiles, int heads,
                                  int kv_heads, int head_dim, int max_len, float scale) {
    constexpr int QC = AttnBwdTile<DT>::QC;
    constexpr int LD = AttnBwdTile<DT>::LD;
    constexpr int ROWS = AttnBwdTile<DT>::QR;
    constexpr int DV = AttnBwdTile<DT>::DV;
    EXTERN_SHARED(bf16, smem);
    bf16* ks = smem;            // [QC][LD]
    bf16* vs = ks + QC * LD;    // [QC][LD]
    bf16* qs = vs + QC * LD;    // [ROWS][LD]
    bf16* dos = qs + ROWS * LD; // [ROWS][LD]

    const int tile = blockIdx.x, head = blockIdx.y;
    const int token0 = tiles[4 * tile + 0], rows = tiles[4 * tile + 1];
    const int slot = tiles[4 * tile + 2], pos0 = tiles[4 * tile + 3];
    const int kvh = head / (heads / kv_heads);
    const int dv0 = blockIdx.z * DV;  // first output dim of this block
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, tig = lane & 3;
    const float scale_log2 = scale * ATTB_LOG2E;
    const size_t q_stride = (size_t)heads * head_dim;
    const size_t row0 = (size_t)token0 * heads + head;
    attb_stage<DT>(qs, ROWS, q + row0 * head_dim, q_stride, rows, head_dim);
    attb_stage<DT>(dos, ROWS, dout + row0 * head_dim, q_stride, rows, head_dim);

    const int row_a = warp * 16 + g, row_b = row_a + 8;  // this lane's two rows
    const int qpos_a = pos0 + row_a, qpos_b = pos0 + row_b;
    const float lse_a = row_a < rows ? lse[row0 + (size_t)row_a * heads] * ATTB_LOG2E : 0.f;
    const float lse_b = row_b < rows ? lse[row0 + (size_t)row_b * heads] * ATTB_LOG2E : 0.f;
    const float d_a = row_a < rows ? delta[row0 + (size_t)row_a * heads] : 0.f;
    const float d_b = row_b < rows ? delta[row0 + (size_t)row_b * heads] : 0.f;
    // The warp's last row that exists (its position bounds the keys it needs).
    const int wlast = min(rows - 1, warp * 16 + 15);

    float acc[DV / 8][4];
#pragma unroll
    for (int i = 0; i < DV / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;

    const int kv_len = pos0 + rows;
    const size_t kv_stride = (size_t)kv_heads * head_dim;
    const size_t kv_off = ((size_t)slot * max_len * kv_heads + kvh) * head_dim;
    for (int kb = 0; kb < kv_len; kb += QC) {
        __syncthreads();  // the previous K/V tile is no longer read
        attb_stage<DT>(ks, QC, k_cache + kv_off + kb * kv_stride, kv_stride, kv_len - kb, head_dim);
        attb_stage<DT>(vs, QC, v_cache + kv_off + kb * kv_stride, kv_stride, kv_len - kb, head_dim);
        __syncthreads();
        // Warp-uniform: skip when the warp has no row, or all its keys here are masked.
        if (warp * 16 < rows && kb <= pos0 + wlast) {
            float s[QC / 8][4], dp[QC / 8][4];
            attb_abt<DT, QC>(s, qs + warp * 16 * LD, ks);    // S = Q Kᵀ  (16 rows x QC keys)
            attb_abt<DT, QC>(dp, dos + warp * 16 * LD, vs);  // dP = dO Vᵀ
#pragma unroll
            for (int nt = 0; nt < QC / 8; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = kb + nt * 8 + tig * 2 + (e & 1);
                    const bool upper = e >= 2;
                    const bool ok = upper ? (row_b < rows && key <= qpos_b) : (row_a < rows && key <= qpos_a);
                    const float p = ok ? exp2f(s[nt][e] * scale_log2 - (upper ? lse_b : lse_a)) : 0.f;
                    s[nt][e] = p * (dp[nt][e] - (upper ? d_b : d_a));  // dS
                }
            }
            attb_xb<DT, QC>(acc, s, ks + dv0);  // dQ += dS K
        }
    }

#pragma unroll
    for (int dt = 0; dt < DV / 8; ++dt) {
        const int col = dv0 + dt * 8 + tig * 2;
        if (col >= head_dim) continue;
        if (row_a < rows)
            *reinterpret_cast<uint32_t*>(dq + (row0 + (size_t)row_a * heads) * head_dim + col) =
                pack_f32x2_bf16(scale * acc[dt][0], scale * acc[dt][1]);
        if (row_b < rows)
            *reinterpret_cast<uint32_t*>(dq + (row0 + (size_t)row_b * heads) * head_dim + col) =
                pack_f32x2_bf16(scale * acc[dt][2], scale * acc[dt][3]);
    }
}

extern "C" __global__ void __launch_bounds__(ATTB_THREADS, 1)
attention_dkdv_d32_backward_bf16(bf16* dk_cache, bf16* dv_cache, const bf16* dout, const float* lse,
                                 const float* delta, const bf16* q, const bf16* k_cache, const bf16* v_cache,
                                 const int* ktiles, int heads, int kv_heads, int head_dim, int max_len,
                                 float scale) {
    attention_dkdv_bf16<32>(dk_cache, dv_cache, dout, lse, delta, q, k_cache, v_cache, ktiles, heads, kv_heads,
                            head_dim, max_len, scale);
}

extern "C" __global__ void __launch_bounds__(ATTB_THREADS, 1)
attention_dkdv_d64_backward_bf16(bf16* dk_cache, bf16* dv_cache, const bf16* dout, const float* lse,
                                 const float* delta, const bf16* q, const bf16* k_cache, const bf16* v_cache,
                                 const int* ktiles, int heads, int kv_heads, int head_dim, int max_len,
                                 float scale) {
    attention_dkdv_bf16<64>(dk_cache, dv_cache, dout, lse, delta, q, k_cache, v_cache, ktiles, heads, kv_heads,
                            head_dim, max_len, scale);
}

extern "C" __global__ void __launch_bounds__(ATTB_THREADS, 1)
attention_dkdv_d128_backward_bf16(bf16* dk_cache, bf16* dv_cache, const bf16* dout, const float* lse,
                                  const float* delta, const bf16* q, const bf16* k_cache, const bf16* v_cache,
                                  const int* ktiles, int heads, int kv_heads, int head_dim, int max_len,
                                  float scale) {
    attention_dkdv_bf16<128>(dk_cache, dv_cache, dout, lse, delta, q, k_cache, v_cache, ktiles, heads, kv_heads,
                             head_dim, max_len, scale);
}

extern "C" __global__ void __launch_bounds__(ATTB_THREADS, 1)
attention_dkdv_d256_backward_bf16(bf16* dk_cache, bf16* dv_cache, const bf16* dout, const float* lse,
                                  const float* delta, const bf16* q, const bf16* k_cache, const bf16* v_cache,
                                  const int* ktiles, int heads, int kv_heads, int head_dim, int max_len,
                                  float scale) {
    attention_dkdv_bf16<256>(dk_cache, dv_cache, dout, lse, delta, q, k_cache, v_cache, ktiles, heads, kv_heads,
                             head_dim, max_len, scale);
}

extern "C" __global__ void __launch_bounds__(ATTB_THREADS, 1)
attention_dq_d32_backward_bf16(bf16* dq, const bf16* dout, const float* lse, const float* delta, const bf16* q,
                               const bf16* k_cache, const bf16* v_cache, const int* tiles, int heads,
                               int kv_heads, int head_dim, int max_len, float scale) {
    attention_dq_bf16<32>(dq, dout, lse, delta, q, k_cache, v_cache, tiles, heads, kv_heads, head_dim, max_len,
                          scale);
}

extern "C" __global__ void __launch_bounds__(ATTB_THREADS, 1)
attention_dq_d64_backward_bf16(bf16* dq, const bf16* dout, const float* lse, const float* delta, const bf16* q,
                               const bf16* k_cache, const bf16* v_cache, const int* tiles, int heads,
                               int kv_heads, int head_dim, int max_len, float scale) {
    attention_dq_bf16<64>(dq, dout, lse, delta, q, k_cache, v_cache, tiles, heads, kv_heads, head_dim, max_len,
                          scale);
}

extern "C" __global__ void __launch_bounds__(ATTB_THREADS, 1)
attention_dq_d128_backward_bf16(bf16* dq, const bf16* dout, const float* lse, const float* delta, const bf16* q,
                                const bf16* k_cache, const bf16* v_cache, const int* tiles, int heads,
                                int kv_heads, int head_dim, int max_len, float scale) {
    attention_dq_bf16<128>(dq, dout, lse, delta, q, k_cache, v_cache, tiles, heads, kv_heads, head_dim, max_len,
                           scale);
}

extern "C" __global__ void __launch_bounds__(ATTB_THREADS, 1)
attention_dq_d256_backward_bf16(bf16* dq, const bf16* dout, const float* lse, const float* delta, const bf16* q,
                                const bf16* k_cache, const bf16* v_cache, const int* tiles, int heads,
                                int kv_heads, int head_dim, int max_len, float scale) {
    attention_dq_bf16<256>(dq, dout, lse, delta, q, k_cache, v_cache, tiles, heads, kv_heads, head_dim, max_len,
                           scale);
}
