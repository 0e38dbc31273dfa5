// common.cuh — prepended to every kernels/*.cu (build.rs does it, with #line
// markers), so kernel files never include it themselves.
//
// Two worlds, one source:
//   * NVRTC / nvcc (__CUDACC_RTC__ / __CUDACC__): real device code. bf16 comes from
//     cuda_bf16.h; the tensor-core and async-copy wrappers are inline PTX.
//   * anything else: the host emulator (kernels/emu/emu.h) supplies threadIdx & co.,
//     __syncthreads, warp shuffles, atomics, bf16/half classes and emulated bodies of
//     the same wrappers, so the kernels run unmodified on the CPU (see DESIGN.md §3).
// Below the #if both worlds share the helpers: conversions, 16-byte vector loads,
// warp and block reductions.
//
// Rules for kernel authors (so a kernel runs in both worlds):
//   * declare kernels literally, `extern "C" __global__ void [__launch_bounds__(n)]
//     name(args)`, arguments pointers, int, unsigned, float or unsigned long long
//     (build.rs parses them; a static_assert checks the parse); one kernel per dtype,
//     e.g. thin wrappers around a template __device__ function.
//   * inline PTX only inside wrappers here (each has an emulated body); use them.
//   * static shared memory: `__shared__ T x[N];` inside the kernel or a __device__
//     function, no initialiser (it is a `static` on the host: one block runs at a
//     time). Its contents are undefined when a block starts, in both worlds.
//   * dynamic shared memory: `EXTERN_SHARED(float, smem);` (never `extern __shared__`):
//     LaunchConfig::shared_bytes, 16-byte aligned, 0xFF-filled per block on the host.
//   * every thread of a block reaches every __syncthreads, at the same call site (no
//     early return of some threads before a barrier); the emulator names violators.
//   * warp collectives name their lanes in the mask; a full mask needs all 32 lanes
//     (blockDim.x % 32 == 0). Reading a lane that did not take part is an error on
//     the host. mma / ldmatrix need the whole warp.
//   * the host has no other `static` state per thread: use locals for per-thread data.

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)

#include <cuda_bf16.h>

typedef unsigned int uint32_t;
typedef unsigned short uint16_t;

// Dynamic shared memory, as a typed pointer `name` (16-byte aligned).
#define EXTERN_SHARED(type, name)                                   \
    extern __shared__ __align__(16) unsigned char onelayer_smem_[]; \
    type* name = reinterpret_cast<type*>(onelayer_smem_)

// Shared-memory address of a generic pointer, for ldmatrix / cp.async.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    uint32_t a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// D = A·B + C on tensor cores, one warp: A 16x16 (row), B 16x8 (col), f32 accumulate.
// Fragments (PTX ISA "mma.m16n8k16"), g = lane / 4, t = lane % 4, low half first:
//   a[0] = A[g][2t..2t+1]   a[1] = A[g+8][2t..]   a[2] = A[g][2t+8..]   a[3] = A[g+8][2t+8..]
//   b[0] = B[2t..2t+1][g]   b[1] = B[2t+8..2t+9][g]
//   c/d  = {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]}
__device__ __forceinline__ void mma_m16n8k16_bf16_f32(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                      const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

// ldmatrix (m8n8, b16): lanes 8j..8j+7 give the row addresses (16-byte aligned, shared
// memory) of matrix j; lane l receives r[j] = row l/4, columns 2(l%4), 2(l%4)+1 of
// matrix j (with .trans: rows 2(l%4), 2(l%4)+1 of column l/4). x2 reads lanes 0-15.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row_addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row_addr)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row_addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row_addr)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row_addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(row_addr)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row_addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(row_addr)));
}

// cp.async: 16 bytes global -> shared without registers (both 16-byte aligned).
// Visible to the issuing thread after cp_async_wait, to the block after that plus
// __syncthreads. `_zfill` copies src_bytes (0..16) and zero-fills the rest.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#else  // host emulation

#include "emu/emu.h"

#endif

typedef __nv_bfloat16 bf16;

// ---- conversions (f32 math, bf16 storage) ----
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float v) { return __float2bfloat16(v); }
// The value after a round trip through T (identity for float).
template <class T>
__device__ __forceinline__ float round_to(float v) { return to_f32(from_f32<T>(v)); }

// Two bf16 in one 32-bit register, `lo` in the low half (the mma / ldmatrix order).
__device__ __forceinline__ uint32_t pack_bf16x2(bf16 lo, bf16 hi) {
    return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
}
__device__ __forceinline__ uint32_t pack_f32x2_bf16(float lo, float hi) {
    return pack_bf16x2(__float2bfloat16(lo), __float2bfloat16(hi));
}
__device__ __forceinline__ float bf16lo_f32(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16hi_f32(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }

// ---- 16-byte vector access (the address must be 16-byte aligned) ----
__device__ __forceinline__ bool is_aligned16(const void* p) { return ((unsigned long long)p & 15ull) == 0; }
// Elements of T per 16 bytes.
template <class T>
struct Vec16 {
    static constexpr int N = 16 / sizeof(T);
};
__device__ __forceinline__ void load16(const float* p, float (&v)[4]) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void load16(const bf16* p, float (&v)[8]) {
    const uint4 q = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) v[2 * i] = bf16lo_f32(w[i]), v[2 * i + 1] = bf16hi_f32(w[i]);
}
__device__ __forceinline__ void store16(float* p, const float (&v)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store16(bf16* p, const float (&v)[8]) {
    *reinterpret_cast<uint4*>(p) = make_uint4(pack_f32x2_bf16(v[0], v[1]), pack_f32x2_bf16(v[2], v[3]),
                                              pack_f32x2_bf16(v[4], v[5]), pack_f32x2_bf16(v[6], v[7]));
}

// ---- reductions ----
// Over the 32 lanes of a full warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Over a 1-D block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result, summed in the same order by all. Contains two __syncthreads: all threads
// must call it, and it may be called again right away.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float red[32];
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += red[w];
    __syncthreads();
    return t;
}
__device__ __forceinline__ float block_max(float v) {
    __shared__ float red[32];
    v = warp_max(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = red[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) t = fmaxf(t, red[w]);
    __syncthreads();
    return t;
}

// ---- counter-based random numbers (the same functions as src/sampling.rs) ----
// splitmix64's finaliser.
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in (0, 1) from 24 hashed bits of (seed, stream, i).
__device__ __forceinline__ float hash_uniform(unsigned long long seed, unsigned long long stream, unsigned int i) {
    const unsigned long long z = mix64(seed ^ mix64(stream ^ mix64((unsigned long long)i)));
    return ((float)(z >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

