// emu.h — host emulation of the CUDA device language, included by common.cuh when
// neither __CUDACC__ nor __CUDACC_RTC__ is defined (DESIGN.md §3 "Host emulation").
//
// A launch (launch.cpp) creates the block's threads once, as real OS threads, and
// each thread loops over the blocks with a barrier between blocks, so only one block
// is alive at a time and function-level `static` storage serves as `__shared__`.
// This header gives kernels what they use on a GPU:
//   * keywords that compile away (__global__, __device__, __forceinline__, ...);
//   * threadIdx / blockIdx / blockDim / gridDim as thread-locals;
//   * __syncthreads() — our own barrier that names the kernel, the block and the
//     threads that never arrived instead of hanging;
//   * vector types, math intrinsics, atomics (GCC __atomic builtins);
//   * bf16.h (bf16 / half), warp.h (shuffles, votes, mma / ldmatrix / cp.async).
// Everything here is C++17 and must stay light: every kernel TU includes it.

#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>

// ---- keywords ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static  // one block alive at a time: statics are the block's shared memory
#define __constant__ static
// __restrict__ is native to g++; `#pragma unroll` is ignored (-Wno-unknown-pragmas).

// ---- built-in vector types ----
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};
struct __align__(8) float2 {
    float x, y;
};
struct __align__(16) float4 {
    float x, y, z, w;
};
struct __align__(8) int2 {
    int x, y;
};
struct __align__(16) int4 {
    int x, y, z, w;
};
struct __align__(8) uint2 {
    unsigned int x, y;
};
struct __align__(16) uint4 {
    unsigned int x, y, z, w;
};
struct __align__(16) double2 {
    double x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

// ---- the executing thread's coordinates (set by the launcher) ----
#define EMU_TLS __thread __attribute__((tls_model("initial-exec")))
extern EMU_TLS uint3 threadIdx;
extern EMU_TLS uint3 blockIdx;
extern EMU_TLS dim3 blockDim;
extern EMU_TLS dim3 gridDim;
constexpr int warpSize = 32;

namespace emu {
// Block barrier; `file:line` name the call site in error messages.
void syncthreads(const char* file, int line);
// __syncthreads_count / _and / _or: mode 0 count, 1 and, 2 or.
int syncthreads_reduce(const char* file, int line, int pred, int mode);
// The launch's dynamic shared memory (LaunchConfig::shared_bytes, 16-byte aligned).
unsigned char* dynamic_smem();
// Abort the launch with a message (reported as the launch's error).
[[noreturn]] void trap(const char* what, const char* file, int line);
unsigned long long clock_ticks();
}  // namespace emu

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncthreads_count(p) ::emu::syncthreads_reduce(__FILE__, __LINE__, (p), 0)
#define __syncthreads_and(p) ::emu::syncthreads_reduce(__FILE__, __LINE__, (p), 1)
#define __syncthreads_or(p) ::emu::syncthreads_reduce(__FILE__, __LINE__, (p), 2)
#define __trap() ::emu::trap("__trap()", __FILE__, __LINE__)
#define EXTERN_SHARED(type, name) type* name = reinterpret_cast<type*>(::emu::dynamic_smem())

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline long long clock64() { return (long long)::emu::clock_ticks(); }
template <class T>
inline T __ldg(const T* p) { return *p; }

// ---- math intrinsics (the <math.h> names expf, fmaxf, sincosf, ... come as they are) ----
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x), *c = cosf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x != x ? 0.f : fminf(fmaxf(x, 0.f), 1.f); }
inline float __int_as_float(int v) { float f; memcpy(&f, &v, 4); return f; }
inline float __uint_as_float(unsigned v) { float f; memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; memcpy(&v, &f, 4); return v; }
inline unsigned __float_as_uint(float f) { unsigned v; memcpy(&v, &f, 4); return v; }
inline long long __double_as_longlong(double d) { long long v; memcpy(&v, &d, 8); return v; }
inline double __longlong_as_double(long long v) { double d; memcpy(&d, &v, 8); return d; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
#define EMU_MINMAX(T)                                  \
    inline T min(T a, T b) { return b < a ? b : a; } \
    inline T max(T a, T b) { return a < b ? b : a; }
EMU_MINMAX(int)
EMU_MINMAX(unsigned)
EMU_MINMAX(long)
EMU_MINMAX(unsigned long)
EMU_MINMAX(long long)
EMU_MINMAX(unsigned long long)
#undef EMU_MINMAX
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- atomics (relaxed on a GPU; sequentially consistent here) ----
namespace emu {
template <class T, class F>
inline T atomic_update(T* p, F f) {  // CAS loop: *p = f(*p), returns the old value
    T old, next;
    __atomic_load(p, &old, __ATOMIC_SEQ_CST);
    do {
        next = f(old);
    } while (!__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}
}  // namespace emu
#define EMU_ATOMIC_INT(T)                                                                                     \
    inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }                    \
    inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }                    \
    inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }                    \
    inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }                      \
    inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }                    \
    inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }                  \
    inline T atomicMax(T* p, T v) { return ::emu::atomic_update(p, [v](T o) { return o < v ? v : o; }); }    \
    inline T atomicMin(T* p, T v) { return ::emu::atomic_update(p, [v](T o) { return v < o ? v : o; }); }    \
    inline T atomicCAS(T* p, T cmp, T v) {                                                                    \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                  \
        return cmp;                                                                                           \
    }
EMU_ATOMIC_INT(int)
EMU_ATOMIC_INT(unsigned int)
EMU_ATOMIC_INT(unsigned long long)
EMU_ATOMIC_INT(long long)
#undef EMU_ATOMIC_INT
inline unsigned short atomicCAS(unsigned short* p, unsigned short cmp, unsigned short v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
inline float atomicAdd(float* p, float v) { return emu::atomic_update(p, [v](float o) { return o + v; }); }
inline double atomicAdd(double* p, double v) { return emu::atomic_update(p, [v](double o) { return o + v; }); }
inline float atomicExch(float* p, float v) {
    float old;
    __atomic_exchange(p, &v, &old, __ATOMIC_SEQ_CST);
    return old;
}
inline float atomicMax(float* p, float v) { return emu::atomic_update(p, [v](float o) { return fmaxf(o, v); }); }
inline float atomicMin(float* p, float v) { return emu::atomic_update(p, [v](float o) { return fminf(o, v); }); }
inline unsigned atomicInc(unsigned* p, unsigned lim) {
    return emu::atomic_update(p, [lim](unsigned o) { return o >= lim ? 0u : o + 1; });
}
inline unsigned atomicDec(unsigned* p, unsigned lim) {
    return emu::atomic_update(p, [lim](unsigned o) { return (o == 0 || o > lim) ? lim : o - 1; });
}

#include "bf16.h"
#include "warp.h"
