// Small backward kernels that only move or sum data: the KV-cache gather (backward of
// kv_write), the row scatter (backward of the embedding / row gather), and the
// deterministic column sums behind the bias and RMSNorm-weight gradients.
//
// Math:
//   kv_write_backward:  x[t, :] = cache[slot[t], pos[t], :]
//   embedding_backward: dst[idx[r], :] = src[r, :]          (idx must not repeat)
//   embedding_grad:     dtable[uniq[u], :] += sum_{k in [starts[u], starts[u+1])}
//                       dx[order[k], :], f32 accumulation (the gradient of a trained
//                       embedding table, whose ids repeat: the host sorts the tokens
//                       by id, stably, so each row's tokens are summed in increasing
//                       token order, as the CPU reference adds them).
//   column_sum:         out[p, c] (= or +=) sum_{r in part p} x[r, c], rows taken in
//                       increasing order, part p = rows [p * rows_per_part,
//                       min(rows, (p + 1) * rows_per_part)); f32 accumulation.
// Shapes: x [tokens, row], cache [slots, max_len, row] (row = kv_heads * head_dim);
//   src [rows, dim], dst [dst_rows, dim]; embedding_grad dx [tokens, dim] (bf16 or
//   f32), order [tokens], uniq [n_uniq], starts [n_uniq + 1], dtable [vocab, dim] f32;
//   column_sum x [rows, cols], out [parts, cols]
//   f32. Indices are int32. The `_X_to_Y` variants read X and write Y (rounded to
//   nearest even when Y is bf16); `_bf16` / `_f32` read and write that type.
// Saves: nothing.
// Launch: kv_write_backward / embedding_backward: grid-stride over rows (any grid,
//   one row per block per step), 128 threads; rows whose source and destination are
//   16-byte aligned with a multiple of 8 elements move 8 elements per access, others
//   go element by element. embedding_grad: grid-stride over unique ids, 128 threads
//   striding the columns. column_sum: grid (ceil(cols / (threads * V)), parts),
//   any multiple of 32 threads, V = 8 (bf16) or 4 (f32) columns per thread when cols
//   % V == 0 and x is 16-byte aligned, else 1. Deterministic: every output element
//   is one thread's sum in a fixed order (no atomics), so the result depends only on
//   the shapes and rows_per_part, never on scheduling.
// Writes: x (=), dst rows idx[r] (=, other rows untouched), dtable rows uniq[u] (+=),
//   out (= or += by `accumulate`).

template <class A, class B>
struct bw_same {
    static constexpr bool value = false;
};
template <class A>
struct bw_same<A, A> {
    static constexpr bool value = true;
};

// Eight elements through f32 registers (exact for bf16 -> f32 -> bf16 and f32 -> f32).
__device__ __forceinline__ void bw_load8(const float* p, float (&v)[8]) {
    float a[4], b[4];
    load16(p, a);
    load16(p + 4, b);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = a[i], v[i + 4] = b[i];
}
__device__ __forceinline__ void bw_load8(const bf16* p, float (&v)[8]) { load16(p, v); }
__device__ __forceinline__ void bw_store8(float* p, const float (&v)[8]) {
    const float a[4] = {v[0], v[1], v[2], v[3]}, b[4] = {v[4], v[5], v[6], v[7]};
    store16(p, a);
    store16(p + 4, b);
}
__device__ __forceinline__ void bw_store8(bf16* p, const float (&v)[8]) { store16(p, v); }

// One row of n elements, block-cooperative: dst[i] = TD(src[i]).
template <class TD, class TS>
__device__ __forceinline__ void bw_copy_row(TD* __restrict__ dst, const TS* __restrict__ src, int n) {
    if (n % 8 == 0 && is_aligned16(dst) && is_aligned16(src)) {
        if (bw_same<TD, TS>::value) {
            // Same type: a plain 16-byte copy.
            const uint4* s4 = reinterpret_cast<const uint4*>(src);
            uint4* d4 = reinterpret_cast<uint4*>(dst);
            const int n4 = n / (int)(16 / sizeof(TD));
            for (int i = threadIdx.x; i < n4; i += blockDim.x) d4[i] = s4[i];
        } else {
            for (int i = threadIdx.x; i < n / 8; i += blockDim.x) {
                float v[8];
                bw_load8(src + 8 * i, v);
                bw_store8(dst + 8 * i, v);
            }
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = from_f32<TD>(to_f32(src[i]));
    }
}

template <class TX, class TC>
__device__ __forceinline__ void kv_gather_rows(TX* __restrict__ x, const TC* __restrict__ cache,
                                               const int* __restrict__ slot, const int* __restrict__ pos,
                                               int tokens, int row, int max_len) {
    for (int t = blockIdx.x; t < tokens; t += gridDim.x) {
        const TC* src = cache + ((size_t)slot[t] * max_len + pos[t]) * row;
        bw_copy_row(x + (size_t)t * row, src, row);
    }
}

extern "C" __global__ void __launch_bounds__(128)
kv_write_backward_bf16(bf16* x, const bf16* cache, const int* slot, const int* pos, int tokens, int row,
                       int max_len) {
    kv_gather_rows(x, cache, slot, pos, tokens, row, max_len);
}

extern "C" __global__ void __launch_bounds__(128)
kv_write_backward_f32(float* x, const float* cache, const int* slot, const int* pos, int tokens, int row,
                      int max_len) {
    kv_gather_rows(x, cache, slot, pos, tokens, row, max_len);
}

extern "C" __global__ void __launch_bounds__(128)
kv_write_backward_f32_to_bf16(bf16* x, const float* cache, const int* slot, const int* pos, int tokens,
                              int row, int max_len) {
    kv_gather_rows(x, cache, slot, pos, tokens, row, max_len);
}

extern "C" __global__ void __launch_bounds__(128)
kv_write_backward_bf16_to_f32(float* x, const bf16* cache, const int* slot, const int* pos, int tokens,
                              int row, int max_len) {
    kv_gather_rows(x, cache, slot, pos, tokens, row, max_len);
}

template <class TD, class TS>
__device__ __forceinline__ void scatter_rows_of(TD* __restrict__ dst, const TS* __restrict__ src,
                                                const int* __restrict__ idx, int rows, int dim) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x)
        bw_copy_row(dst + (size_t)idx[r] * dim, src + (size_t)r * dim, dim);
}

extern "C" __global__ void __launch_bounds__(128)
embedding_backward_bf16(bf16* dst, const bf16* src, const int* idx, int rows, int dim) {
    scatter_rows_of(dst, src, idx, rows, dim);
}

extern "C" __global__ void __launch_bounds__(128)
embedding_backward_f32(float* dst, const float* src, const int* idx, int rows, int dim) {
    scatter_rows_of(dst, src, idx, rows, dim);
}

extern "C" __global__ void __launch_bounds__(128)
embedding_backward_f32_to_bf16(bf16* dst, const float* src, const int* idx, int rows, int dim) {
    scatter_rows_of(dst, src, idx, rows, dim);
}

extern "C" __global__ void __launch_bounds__(128)
embedding_backward_bf16_to_f32(float* dst, const bf16* src, const int* idx, int rows, int dim) {
    scatter_rows_of(dst, src, idx, rows, dim);
}

template <class TS>
__device__ __forceinline__ void embedding_grad_of(float* __restrict__ dtable, const TS* __restrict__ dx,
                                                  const int* __restrict__ order, const int* __restrict__ uniq,
                                                  const int* __restrict__ starts, int n_uniq, int dim) {
    for (int u = blockIdx.x; u < n_uniq; u += gridDim.x) {
        float* dst = dtable + (size_t)uniq[u] * dim;
        const int k0 = starts[u], k1 = starts[u + 1];
        for (int c = threadIdx.x; c < dim; c += blockDim.x) {
            float acc = 0.f;
            for (int k = k0; k < k1; ++k) acc += to_f32(dx[(size_t)order[k] * dim + c]);
            dst[c] += acc;
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
embedding_grad_bf16(float* dtable, const bf16* dx, const int* order, const int* uniq, const int* starts, int n_uniq,
                    int dim) {
    embedding_grad_of(dtable, dx, order, uniq, starts, n_uniq, dim);
}

extern "C" __global__ void __launch_bounds__(128)
embedding_grad_f32(float* dtable, const float* dx, const int* order, const int* uniq, const int* starts, int n_uniq,
                   int dim) {
    embedding_grad_of(dtable, dx, order, uniq, starts, n_uniq, dim);
}

// Column sums: V adjacent columns per thread, the part's rows in order.
__device__ __forceinline__ void col_add(float (&acc)[1], const bf16* p) { acc[0] += to_f32(p[0]); }
__device__ __forceinline__ void col_add(float (&acc)[1], const float* p) { acc[0] += p[0]; }
__device__ __forceinline__ void col_add(float (&acc)[8], const bf16* p) {
    float v[8];
    load16(p, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] += v[j];
}
__device__ __forceinline__ void col_add(float (&acc)[4], const float* p) {
    float v[4];
    load16(p, v);
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[j] += v[j];
}

template <class T, int V>
__device__ __forceinline__ void column_sum_part(float* __restrict__ out, const T* __restrict__ x, int rows,
                                                int cols, int rows_per_part, int accumulate) {
    const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (c0 >= cols) return;  // no barriers in this kernel
    const int part = blockIdx.y;
    const int r0 = part * rows_per_part;
    const int r1 = min(rows, r0 + rows_per_part);
    float acc[V];
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = 0.f;
    for (int r = r0; r < r1; ++r) col_add(acc, x + (size_t)r * cols + c0);
    float* o = out + (size_t)part * cols + c0;
#pragma unroll
    for (int j = 0; j < V; ++j) o[j] = accumulate ? o[j] + acc[j] : acc[j];
}

extern "C" __global__ void __launch_bounds__(256)
column_sum_bf16(float* out, const bf16* x, int rows, int cols, int rows_per_part, int accumulate) {
    if (cols % 8 == 0 && is_aligned16(x))
        column_sum_part<bf16, 8>(out, x, rows, cols, rows_per_part, accumulate);
    else
        column_sum_part<bf16, 1>(out, x, rows, cols, rows_per_part, accumulate);
}

extern "C" __global__ void __launch_bounds__(256)
column_sum_f32(float* out, const float* x, int rows, int cols, int rows_per_part, int accumulate) {
    if (cols % 4 == 0 && is_aligned16(x))
        column_sum_part<float, 4>(out, x, rows, cols, rows_per_part, accumulate);
    else
        column_sum_part<float, 1>(out, x, rows, cols, rows_per_part, accumulate);
}
