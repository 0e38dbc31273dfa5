// Write the new tokens' keys or values into the KV cache.
//
// Math: cache[slot[t], pos[t], :, :] = x[t, :, :].
// Shapes: x [tokens, kv_heads * head_dim] bf16; cache [slots, max_len, kv_heads *
//   head_dim] bf16; slot, pos [tokens] int32.
// Launch: grid (tokens), 128 threads; 16-byte copies when row = kv_heads * head_dim
//   is a multiple of 8 (always, for head_dim a multiple of 16), else element-wise.
// Writes: cache rows (=).

extern "C" __global__ void __launch_bounds__(128)
kv_write_forward_bf16(bf16* cache, const bf16* x, const int* slot, const int* pos, int tokens, int row,
                      int max_len) {
    const int t = blockIdx.x;
    const bf16* src = x + (size_t)t * row;
    bf16* dst = cache + ((size_t)slot[t] * max_len + pos[t]) * row;
    if (row % 8 == 0) {
        const uint4* s4 = reinterpret_cast<const uint4*>(src);
        uint4* d4 = reinterpret_cast<uint4*>(dst);
        for (int i = threadIdx.x; i < row / 8; i += blockDim.x) d4[i] = s4[i];
    } else {
        for (int i = threadIdx.x; i < row; i += blockDim.x) dst[i] = src[i];
    }
}

// Paged variant: cache [blocks * block_size, row] bf16; rows [tokens] int32, the
// physical row of each token (block * block_size + offset). Same launch and copies.
extern "C" __global__ void __launch_bounds__(128)
kv_write_paged_forward_bf16(bf16* cache, const bf16* x, const int* rows, int tokens, int row) {
    const int t = blockIdx.x;
    const bf16* src = x + (size_t)t * row;
    bf16* dst = cache + (size_t)rows[t] * row;
    if (row % 8 == 0) {
        const uint4* s4 = reinterpret_cast<const uint4*>(src);
        uint4* d4 = reinterpret_cast<uint4*>(dst);
        for (int i = threadIdx.x; i < row / 8; i += blockDim.x) d4[i] = s4[i];
    } else {
        for (int i = threadIdx.x; i < row; i += blockDim.x) dst[i] = src[i];
    }
}
