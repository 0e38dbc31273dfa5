// Elementwise ops of the decoder: SwiGLU and its backward, residual add, bias add,
// casts.
//
// Math: swiglu: out = silu(gate) * up, silu(x) = x / (1 + e^-x) (f32 math);
//   swiglu backward, s = sigmoid(gate): dup = dout * gate * s,
//     dgate = dout * up * s * (1 + gate * (1 - s))   (silu'(g) = s (1 + g (1 - s)));
//   add_assign: x += y; bias_add: x[r, c] += bias[c]; casts round to nearest even.
// Shapes: flat [n] (bias_add: x [rows, cols], bias [cols]).
// Saves: swiglu's backward recomputes from gate and up (kept by the caller).
// Launch: grid-stride loops, 256 threads, any grid; swiglu (both directions),
//   add_assign and the casts move 8 elements (16 bytes of bf16) per step when n % 8
//   == 0 and the pointers are 16-byte aligned (allocations are 256-byte aligned), the
//   rest element by element.
// Writes: out / dgate / dup (=), x (+= for the in-place adds).

__device__ __forceinline__ float silu_f(float x) { return x / (1.f + __expf(-x)); }

extern "C" __global__ void __launch_bounds__(256)
swiglu_forward_bf16(bf16* out, const bf16* gate, const bf16* up, int n) {
    const int stride = gridDim.x * blockDim.x;
    const int start = blockIdx.x * blockDim.x + threadIdx.x;
    if (n % 8 == 0) {
        for (int i = start; i < n / 8; i += stride) {
            const uint4 g4 = reinterpret_cast<const uint4*>(gate)[i];
            const uint4 u4 = reinterpret_cast<const uint4*>(up)[i];
            uint4 o4;
            const bf16* g = reinterpret_cast<const bf16*>(&g4);
            const bf16* u = reinterpret_cast<const bf16*>(&u4);
            bf16* o = reinterpret_cast<bf16*>(&o4);
#pragma unroll
            for (int k = 0; k < 8; ++k) o[k] = __float2bfloat16(silu_f(__bfloat162float(g[k])) * __bfloat162float(u[k]));
            reinterpret_cast<uint4*>(out)[i] = o4;
        }
    } else {
        for (int i = start; i < n; i += stride)
            out[i] = __float2bfloat16(silu_f(__bfloat162float(gate[i])) * __bfloat162float(up[i]));
    }
}

extern "C" __global__ void __launch_bounds__(256)
add_assign_bf16(bf16* x, const bf16* y, int n) {
    const int stride = gridDim.x * blockDim.x;
    const int start = blockIdx.x * blockDim.x + threadIdx.x;
    if (n % 8 == 0) {
        for (int i = start; i < n / 8; i += stride) {
            uint4 x4 = reinterpret_cast<const uint4*>(x)[i];
            const uint4 y4 = reinterpret_cast<const uint4*>(y)[i];
            bf16* a = reinterpret_cast<bf16*>(&x4);
            const bf16* b = reinterpret_cast<const bf16*>(&y4);
#pragma unroll
            for (int k = 0; k < 8; ++k) a[k] = __float2bfloat16(__bfloat162float(a[k]) + __bfloat162float(b[k]));
            reinterpret_cast<uint4*>(x)[i] = x4;
        }
    } else {
        for (int i = start; i < n; i += stride)
            x[i] = __float2bfloat16(__bfloat162float(x[i]) + __bfloat162float(y[i]));
    }
}

extern "C" __global__ void __launch_bounds__(256)
bias_add_bf16(bf16* x, const bf16* bias, int rows, int cols) {
    const int stride = gridDim.x * blockDim.x;
    const int n = rows * cols;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        x[i] = __float2bfloat16(__bfloat162float(x[i]) + __bfloat162float(bias[i % cols]));
}

extern "C" __global__ void __launch_bounds__(256)
bias_add_f32(float* x, const bf16* bias, int rows, int cols) {
    const int stride = gridDim.x * blockDim.x;
    const int n = rows * cols;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        x[i] += __bfloat162float(bias[i % cols]);
}

extern "C" __global__ void __launch_bounds__(256)
swiglu_backward_bf16(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up, int n) {
    const int stride = gridDim.x * blockDim.x;
    const int start = blockIdx.x * blockDim.x + threadIdx.x;
    const bool vec = n % 8 == 0 && is_aligned16(dgate) && is_aligned16(dup) && is_aligned16(dout) &&
                     is_aligned16(gate) && is_aligned16(up);
    const int nvec = vec ? n / 8 : 0;
    for (int i = start; i < nvec; i += stride) {
        float d[8], g[8], u[8], dg[8], du[8];
        load16(dout + 8 * i, d);
        load16(gate + 8 * i, g);
        load16(up + 8 * i, u);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float s = 1.f / (1.f + expf(-g[k]));
            du[k] = d[k] * (g[k] * s);
            dg[k] = d[k] * u[k] * s * (1.f + g[k] * (1.f - s));
        }
        store16(dgate + 8 * i, dg);
        store16(dup + 8 * i, du);
    }
    for (int i = nvec * 8 + start; i < n; i += stride) {
        const float d = __bfloat162float(dout[i]), g = __bfloat162float(gate[i]), u = __bfloat162float(up[i]);
        const float s = 1.f / (1.f + expf(-g));
        dup[i] = __float2bfloat16(d * (g * s));
        dgate[i] = __float2bfloat16(d * u * s * (1.f + g * (1.f - s)));
    }
}

extern "C" __global__ void __launch_bounds__(256)
cast_f32_to_bf16(bf16* out, const float* x, int n) {
    const int stride = gridDim.x * blockDim.x;
    const int start = blockIdx.x * blockDim.x + threadIdx.x;
    const int nvec = (n % 8 == 0 && is_aligned16(out) && is_aligned16(x)) ? n / 8 : 0;
    for (int i = start; i < nvec; i += stride) {
        float a[4], b[4], v[8];
        load16(x + 8 * i, a);
        load16(x + 8 * i + 4, b);
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = a[k], v[k + 4] = b[k];
        store16(out + 8 * i, v);
    }
    for (int i = nvec * 8 + start; i < n; i += stride) out[i] = __float2bfloat16(x[i]);
}

extern "C" __global__ void __launch_bounds__(256)
cast_bf16_to_f32(float* out, const bf16* x, int n) {
    const int stride = gridDim.x * blockDim.x;
    const int start = blockIdx.x * blockDim.x + threadIdx.x;
    const int nvec = (n % 8 == 0 && is_aligned16(out) && is_aligned16(x)) ? n / 8 : 0;
    for (int i = start; i < nvec; i += stride) {
        float v[8];
        load16(x + 8 * i, v);
        const float a[4] = {v[0], v[1], v[2], v[3]}, b[4] = {v[4], v[5], v[6], v[7]};
        store16(out + 8 * i, a);
        store16(out + 8 * i + 4, b);
    }
    for (int i = nvec * 8 + start; i < n; i += stride) out[i] = __bfloat162float(x[i]);
}
