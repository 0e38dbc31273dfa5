// Test kernels for the host emulator (and, on a GPU, for the wrappers in common.cuh);
// never launched by the engine. Exercised by tests/emu_selftest.rs.
//
//   emu_test_missing_sync   some threads return before a __syncthreads (a bug, on
//                           purpose): the emulator must name them, not hang.
//   emu_test_deadlock       half of warp 0 waits in __syncwarp for lanes that wait at
//                           __syncthreads: must time out with a message, not hang.
//   emu_test_divergent_sync threads reach two different __syncthreads.
//   emu_test_warp_ops       shuffles (all modes, widths), votes, reductions per lane.
//   emu_test_block_ops      block_sum / block_max / __syncthreads_count per block.
//   emu_test_mma            ldmatrix (x4, x2, x2.trans, x4.trans) + mma vs. fragments
//                           built by hand, tiles staged with cp.async.
//   emu_test_atomics        atomicAdd / atomicMax / atomicCAS across blocks.
//   emu_test_convert        bf16 and half rounding of f32 values.
//   emu_test_dynamic_smem   EXTERN_SHARED: reverse each block's chunk.
//   emu_test_out_of_bounds  writes one element past the end (guard zone check).

extern "C" __global__ void emu_test_missing_sync(float* out, int n) {
    __shared__ float s[1024];
    const int t = threadIdx.x;
    if (t >= n) return;  // BUG on purpose: threads n.. never reach the barrier
    s[t] = (float)t;
    __syncthreads();
    out[t] = s[(t + 1) % n];
}

extern "C" __global__ void emu_test_deadlock(float* out) {
    if (threadIdx.x < 16) __syncwarp();  // waits for lanes 16-31, which wait below
    __syncthreads();
    out[threadIdx.x] = 1.f;
}

extern "C" __global__ void emu_test_divergent_sync(float* out) {
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.f;
}

// out[tid * 12 + k]; the value of lane l of warp w is 100 * w + l.
extern "C" __global__ void emu_test_warp_ops(int* out) {
    const int tid = threadIdx.x, lane = tid & 31;
    const int v = 100 * (tid >> 5) + lane;
    int* o = out + tid * 12;
    o[0] = __shfl_sync(0xffffffffu, v, (lane * 7) % 32);
    o[1] = __shfl_sync(0xffffffffu, v, lane + 3, 8);
    o[2] = __shfl_up_sync(0xffffffffu, v, 3);
    o[3] = __shfl_up_sync(0xffffffffu, v, 2, 16);
    o[4] = __shfl_down_sync(0xffffffffu, v, 5);
    o[5] = __shfl_down_sync(0xffffffffu, v, 3, 8);
    o[6] = __shfl_xor_sync(0xffffffffu, v, 9);
    o[7] = __shfl_xor_sync(0xffffffffu, v, 4, 8);
    o[8] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
    o[9] = __any_sync(0xffffffffu, lane == 31) + 2 * __all_sync(0xffffffffu, lane < 31);
    o[10] = (int)__reduce_add_sync(0xffffffffu, (unsigned)v);
    __syncwarp();
    // A collective of the lower half-warp only.
    o[11] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, v, 1) : -1;
}

// out[block * 3 + {0,1,2}] = sum, max of in[block*blockDim .. +blockDim], count of > 0.
extern "C" __global__ void emu_test_block_ops(float* out, const float* in) {
    const float x = in[blockIdx.x * blockDim.x + threadIdx.x];
    const float s = block_sum(x);
    const float m = block_max(x);
    const int c = __syncthreads_count(x > 0.f);
    if (threadIdx.x == 0) {
        out[blockIdx.x * 3 + 0] = s;
        out[blockIdx.x * 3 + 1] = m;
        out[blockIdx.x * 3 + 2] = (float)c;
    }
}

// One warp per block. a [16][16] (row-major, m x k), bt [8][16] (n x k: B transposed),
// b [16][16] (k x n), c [16][16] f32. d [5][16][8]... see tests/emu_selftest.rs:
//   d0 = A·B0 + C0 with fragments built by hand from global memory (B0 = b[:, 0:8])
//   d1 = same through ldmatrix_x4 (A) and ldmatrix_x2 (bt)
//   d2 = same through ldmatrix_x4 (A) and ldmatrix_x2_trans (b)
//   d3, d4 = A·B[:, 0:8] + C0 and A·B[:, 8:16] + C1 through ldmatrix_x4_trans (b)
// Block k adds k to every element of C (so blocks differ).
extern "C" __global__ void emu_test_mma(float* d, const bf16* a, const bf16* bt, const bf16* b, const float* c) {
    __shared__ __align__(16) bf16 sa[16 * 16];
    __shared__ __align__(16) bf16 sbt[8 * 16];
    __shared__ __align__(16) bf16 sb[16 * 16];
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    // Stage with cp.async: 32 + 16 + 32 chunks of 16 bytes.
    for (int i = lane; i < 80; i += 32) {
        if (i < 32) cp_async_16(sa + 8 * i, a + 8 * i);
        else if (i < 48) cp_async_16(sbt + 8 * (i - 32), bt + 8 * (i - 32));
        else cp_async_16(sb + 8 * (i - 48), b + 8 * (i - 48));
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    const float add = (float)blockIdx.x;
    float c0[4], c1[4];
    for (int i = 0; i < 4; ++i) {
        const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        c0[i] = c[row * 16 + col] + add;
        c1[i] = c[row * 16 + col + 8] + add;
    }
    float* db = d + blockIdx.x * 5 * 128;
    auto store = [&](int k, const float (&v)[4]) {
        for (int i = 0; i < 4; ++i) db[k * 128 + (g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = v[i];
    };
    // d0: hand-built fragments.
    {
        uint32_t fa[4] = {pack_bf16x2(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]),
                          pack_bf16x2(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]),
                          pack_bf16x2(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]),
                          pack_bf16x2(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9])};
        uint32_t fb[2] = {pack_bf16x2(b[(2 * t) * 16 + g], b[(2 * t + 1) * 16 + g]),
                          pack_bf16x2(b[(2 * t + 8) * 16 + g], b[(2 * t + 9) * 16 + g])};
        float r[4];
        mma_m16n8k16_bf16_f32(r, fa, fb, c0);
        store(0, r);
    }
    // A through ldmatrix_x4: matrix j = lanes 8j..8j+7: rows (j & 1) * 8 + l % 8, cols (j >> 1) * 8.
    uint32_t fa[4];
    const int j = lane >> 3;
    ldmatrix_x4(fa, sa + ((j & 1) * 8 + (lane & 7)) * 16 + (j >> 1) * 8);
    {
        uint32_t fb[2];  // bt rows n = l % 8, k half (l / 8) * 8 (lanes 16-31 ignored)
        ldmatrix_x2(fb, sbt + (lane & 7) * 16 + ((lane >> 3) & 1) * 8);
        float r[4];
        mma_m16n8k16_bf16_f32(r, fa, fb, c0);
        store(1, r);
    }
    {
        uint32_t fb[2];  // b rows k = (l / 8) * 8 + l % 8, cols 0..7, transposed
        ldmatrix_x2_trans(fb, sb + (lane & 15) * 16);
        float r[4];
        mma_m16n8k16_bf16_f32(r, fa, fb, c0);
        store(2, r);
    }
    {
        uint32_t fb[4];  // matrices: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15)
        ldmatrix_x4_trans(fb, sb + ((j & 1) * 8 + (lane & 7)) * 16 + (j >> 1) * 8);
        float r[4];
        mma_m16n8k16_bf16_f32(r, fa, fb, c0);
        store(3, r);
        mma_m16n8k16_bf16_f32(r, fa, fb + 2, c1);
        store(4, r);
    }
}

// sums[0] += in[i] (f32); maxes[0] = max in[i] as int; count[0] counts, via CAS.
extern "C" __global__ void emu_test_atomics(float* sum, int* mx, unsigned* count, const float* in, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        atomicAdd(sum, in[i]);
        atomicMax(mx, (int)in[i]);
        unsigned old = *(volatile unsigned*)count, seen;
        do {
            seen = old;
            old = atomicCAS(count, seen, seen + 1);
        } while (old != seen);
    }
}

extern "C" __global__ void emu_test_convert(unsigned short* bf, unsigned short* hf, const float* x, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        bf[i] = __bfloat16_as_ushort(__float2bfloat16(x[i]));
        hf[i] = __half_as_ushort(__float2half(x[i]));
    }
}

// shared_bytes = blockDim.x * 4.
extern "C" __global__ void emu_test_dynamic_smem(float* out, const float* in) {
    EXTERN_SHARED(float, buf);
    const int base = blockIdx.x * blockDim.x;
    buf[threadIdx.x] = in[base + threadIdx.x];
    __syncthreads();
    out[base + threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}

extern "C" __global__ void emu_test_out_of_bounds(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = 1.f;  // BUG on purpose: i == n is one past the end
}
