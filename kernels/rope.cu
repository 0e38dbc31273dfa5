// Rotary position embedding, half-split form (transformers' rotate_half), in place.
//
// Math: per token t and head, with i < head_dim / 2 and a = pos[t] * inv_freq[i]
//   (f32 product, as transformers): (x[i], x[i + half]) <-
//   (x[i] cos a - x[i + half] sin a, x[i + half] cos a + x[i] sin a), f32 math.
// Shapes: x [tokens, heads, head_dim] bf16; pos [tokens] int32; inv_freq [head_dim/2]
//   f32 (computed once on the host exactly as the CPU reference does).
// Saves: nothing (backward is the rotation by -a).
// Launch: grid (tokens), 128 threads striding over heads * half pairs.
// Writes: x (= in place).

extern "C" __global__ void __launch_bounds__(128)
rope_forward_bf16(bf16* x, const int* pos, const float* inv_freq, int tokens, int heads, int head_dim) {
    const int t = blockIdx.x;
    const int half = head_dim / 2;
    const float p = (float)pos[t];
    bf16* row = x + (size_t)t * heads * head_dim;
    for (int k = threadIdx.x; k < heads * half; k += blockDim.x) {
        const int h = k / half, i = k % half;
        float s, c;
        sincosf(p * inv_freq[i], &s, &c);
        bf16* xh = row + h * head_dim;
        const float a = __bfloat162float(xh[i]), b = __bfloat162float(xh[i + half]);
        xh[i] = __float2bfloat16(a * c - b * s);
        xh[i + half] = __float2bfloat16(b * c + a * s);
    }
}
