// Rotary position embedding, half-split form (transformers' rotate_half), in place,
// and its backward (the rotation by the negated angle).
//
// Math: per token t and head, with i < head_dim / 2 and a = pos[t] * inv_freq[i]
//   (f32 product, as transformers), s = sign * sin a (sign +1 forward, -1 backward):
//   (x[i], x[i + half]) <- (x[i] cos a - x[i + half] s, x[i + half] cos a + x[i] s),
//   f32 math. The backward applies the transpose of the forward rotation, which is
//   its inverse, to dy in place.
// Shapes: x [tokens, heads, head_dim] bf16 (the backward also f32); pos [tokens] int32;
//   inv_freq [head_dim/2] f32 (computed once on the host exactly as the CPU reference).
// Saves: nothing (backward is the rotation by -a).
// Launch: grid (tokens), 128 threads striding over heads * half pairs (the backward
//   loops over tokens, so any grid works); the backward takes V = 16 / sizeof(T) adjacent pairs per step with 16-byte loads when half % V
//   == 0 and x is 16-byte aligned, else one pair.
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

template <class T>
__device__ __forceinline__ void rope_inverse(T* __restrict__ x, const int* __restrict__ pos,
                                             const float* __restrict__ inv_freq, int tokens, int heads,
                                             int head_dim) {
    constexpr int V = Vec16<T>::N;
    const int half = head_dim / 2;
    for (int t = blockIdx.x; t < tokens; t += gridDim.x) {
        const float p = (float)pos[t];
        T* row = x + (size_t)t * heads * head_dim;
        if (half % V == 0 && is_aligned16(x)) {
            const int chunks = half / V;
            for (int k = threadIdx.x; k < heads * chunks; k += blockDim.x) {
                const int h = k / chunks, i0 = (k % chunks) * V;
                T* xh = row + h * head_dim;
                float a[V], b[V];
                load16(xh + i0, a);
                load16(xh + i0 + half, b);
#pragma unroll
                for (int j = 0; j < V; ++j) {
                    float s, c;
                    sincosf(p * inv_freq[i0 + j], &s, &c);
                    s = -s;
                    const float u = a[j] * c - b[j] * s, w = b[j] * c + a[j] * s;
                    a[j] = u, b[j] = w;
                }
                store16(xh + i0, a);
                store16(xh + i0 + half, b);
            }
        } else {
            for (int k = threadIdx.x; k < heads * half; k += blockDim.x) {
                const int h = k / half, i = k % half;
                float s, c;
                sincosf(p * inv_freq[i], &s, &c);
                s = -s;
                T* xh = row + h * head_dim;
                const float a = to_f32(xh[i]), b = to_f32(xh[i + half]);
                xh[i] = from_f32<T>(a * c - b * s);
                xh[i + half] = from_f32<T>(b * c + a * s);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
rope_backward_bf16(bf16* dx, const int* pos, const float* inv_freq, int tokens, int heads, int head_dim) {
    rope_inverse<bf16>(dx, pos, inv_freq, tokens, heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(128)
rope_backward_f32(float* dx, const int* pos, const float* inv_freq, int tokens, int heads, int head_dim) {
    rope_inverse<float>(dx, pos, inv_freq, tokens, heads, head_dim);
}
