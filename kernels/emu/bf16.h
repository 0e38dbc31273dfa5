// bf16.h — host versions of cuda_bf16.h / cuda_fp16.h for the emulator.
//
// __nv_bfloat16 and __half are 2-byte structs holding the bits in `__x` (as CUDA's
// do), trivially default-constructible so `__shared__` arrays of them are plain
// zero-initialised statics. Conversions from float round to nearest even, exactly
// as CUDA's __float2bfloat16 / __float2half (NaN becomes the canonical 0x7fff);
// conversions to float are exact. Like CUDA, both convert implicitly from and to
// float; kernels should still do their math in float and convert explicitly.

#pragma once

#include <cstdint>
#include <cstring>

namespace emu {
inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned short f32_to_bf16_bits(float f) {
    const uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;  // NaN
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_f32(unsigned short b) { return bits_f32((uint32_t)b << 16); }
inline unsigned short f32_to_f16_bits(float f) {
    const uint32_t u = f32_bits(f);
    const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7fff;                     // NaN
    if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to +-inf
    if (a <= 0x33000000u) return (unsigned short)sign;      // |f| <= 2^-25: rounds to 0
    uint32_t h, rem, halfway;
    if (a >= 0x38800000u) {  // normal half
        h = (a >> 13) - (112u << 10);
        rem = a & 0x1fffu;
        halfway = 0x1000u;
    } else {  // subnormal half: value = mant * 2^(e-150), unit 2^-24
        const uint32_t e = a >> 23, mant = (a & 0x7fffffu) | 0x800000u, shift = 126u - e;
        h = mant >> shift;
        rem = mant & ((1u << shift) - 1u);
        halfway = 1u << (shift - 1u);
    }
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;  // carries into the exponent
    return (unsigned short)(sign | h);
}
inline float f16_bits_to_f32(unsigned short h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
    if (e != 0) return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
    const float v = (float)m * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return sign ? -v : v;
}
}  // namespace emu

struct __nv_bfloat16_raw {
    unsigned short x;
};
struct __align__(2) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(emu::f32_to_bf16_bits(f)) {}
    __nv_bfloat16(__nv_bfloat16_raw r) : __x(r.x) {}
    operator float() const { return emu::bf16_bits_to_f32(__x); }
};
struct __align__(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return __nv_bfloat16_raw{b}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 v) { return v.__x; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __ushort_as_bfloat16(emu::f32_to_bf16_bits(f)); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 v) { return emu::bf16_bits_to_f32(v.__x); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) { return {lo, hi}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return {__float2bfloat16(lo), __float2bfloat16(hi)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 v) { return v.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 v) { return v.y; }

struct __half_raw {
    unsigned short x;
};
struct __align__(2) __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(emu::f32_to_f16_bits(f)) {}
    __half(__half_raw r) : __x(r.x) {}
    operator float() const { return emu::f16_bits_to_f32(__x); }
};
struct __align__(4) __half2 {
    __half x, y;
};
typedef __half half;
typedef __half2 half2;

inline __half __ushort_as_half(unsigned short b) { return __half_raw{b}; }
inline unsigned short __half_as_ushort(__half v) { return v.__x; }
inline __half __float2half(float f) { return __ushort_as_half(emu::f32_to_f16_bits(f)); }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float __half2float(__half v) { return emu::f16_bits_to_f32(v.__x); }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half(lo), __float2half(hi)}; }
inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
inline float2 __half22float2(__half2 v) { return {__half2float(v.x), __half2float(v.y)}; }
inline __half2 __halves2half2(__half lo, __half hi) { return {lo, hi}; }
