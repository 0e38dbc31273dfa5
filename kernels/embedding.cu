// Embedding gather (also the generic row gather: hidden rows picked for the LM head).
//
// Math: out[t, :] = table[ids[t], :].
// Shapes: ids [tokens] int32; table [rows, dim] bf16; out [tokens, dim] bf16.
// Saves: nothing (the backward of a frozen embedding is never needed).
// Launch: grid (tokens), 128 threads; 16-byte copies when dim % 8 == 0 (rows are
//   then 16-byte aligned), else element by element.
// Writes: out (=).

extern "C" __global__ void __launch_bounds__(128)
embedding_forward_bf16(bf16* out, const int* ids, const bf16* table, int tokens, int dim) {
    const int t = blockIdx.x;
    const bf16* src = table + (size_t)ids[t] * dim;
    bf16* dst = out + (size_t)t * dim;
    if (dim % 8 == 0) {
        const uint4* s4 = reinterpret_cast<const uint4*>(src);
        uint4* d4 = reinterpret_cast<uint4*>(dst);
        for (int i = threadIdx.x; i < dim / 8; i += blockDim.x) d4[i] = s4[i];
    } else {
        for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = src[i];
    }
}
