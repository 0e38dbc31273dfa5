// warp.h — warp collectives, tensor-core / async-copy wrappers and the launch entry
// point of the host emulator.
//
// A warp collective is "publish, barrier, read": each lane writes its value into its
// slot of the warp's exchange buffer and waits until every lane named in `mask`
// (that exists and has not exited) has arrived; then each lane reads what it needs
// (warp.cpp). Lanes that disagree on the operation, its call site or the mask, a
// lane missing from its own mask, and a read from a lane that did not take part
// are reported as launch errors, as is a collective that waits too long.
//
// __activemask() returns the warp's lanes that exist and have not exited (the emulator
// does not track divergence). Values up to 16 bytes can be shuffled.
//
// The mma / ldmatrix wrappers have the same signatures as the inline-PTX ones in
// common.cuh and follow the PTX ISA's per-lane fragment layouts; one instruction
// costs one exchange. cp.async copies are queued per thread and performed at
// cp_async_wait (or at the end of the block), so a missing wait shows up as stale
// shared memory, as it can on a GPU.

#pragma once

#include <cstddef>
#include <cstdint>
#include <tuple>
#include <utility>

namespace emu {
// Shuffle modes (PTX shfl.sync): idx, up, down, bfly.
enum ShflMode { SHFL_IDX = 0, SHFL_UP = 1, SHFL_DOWN = 2, SHFL_BFLY = 3 };
// Exchange `bytes` (<= 16) of `in`; `out` gets the value of the lane PTX's rules pick
// for (mode, b, c). `c` packs the segment mask (bits 12:8) and clamp (bits 4:0).
void shfl(const char* op, const char* file, int line, unsigned mask, int mode, const void* in, void* out,
          unsigned bytes, int b, unsigned c);
// Vote: mode 0 ballot (returns the mask of lanes with pred != 0), 1 any, 2 all.
unsigned vote(const char* op, const char* file, int line, unsigned mask, int pred, int mode);
void syncwarp(const char* file, int line, unsigned mask);
// __reduce_{add,min,max}_sync on unsigned / int: mode 0 add, 1 min, 2 max, 3 and, 4 or, 5 xor.
unsigned reduce_u32(const char* op, const char* file, int line, unsigned mask, unsigned v, int mode, bool sgn);
unsigned activemask();

template <class T>
inline T shfl_t(const char* op, const char* file, int line, unsigned mask, int mode, T var, int b, unsigned c) {
    static_assert(sizeof(T) <= 16, "warp shuffle of a value wider than 16 bytes");
    T out;
    shfl(op, file, line, mask, mode, &var, &out, sizeof(T), b, c);
    return out;
}
// The PTX `c` operand CUDA's intrinsics pass for a given width.
inline unsigned shfl_c(int width, bool clamp_high) {
    return ((unsigned)(32 - width) << 8) | (clamp_high ? 0x1fu : 0u);
}
}  // namespace emu

#define EMU_SHFL_WIDTH(w, ...) (w)
#define __shfl_sync(mask, var, src, ...)                                                         \
    ::emu::shfl_t("__shfl_sync", __FILE__, __LINE__, (mask), ::emu::SHFL_IDX, (var), (src),      \
                  ::emu::shfl_c(EMU_SHFL_WIDTH(__VA_ARGS__ __VA_OPT__(, ) 32), true))
#define __shfl_up_sync(mask, var, delta, ...)                                                    \
    ::emu::shfl_t("__shfl_up_sync", __FILE__, __LINE__, (mask), ::emu::SHFL_UP, (var), (delta),  \
                  ::emu::shfl_c(EMU_SHFL_WIDTH(__VA_ARGS__ __VA_OPT__(, ) 32), false))
#define __shfl_down_sync(mask, var, delta, ...)                                                       \
    ::emu::shfl_t("__shfl_down_sync", __FILE__, __LINE__, (mask), ::emu::SHFL_DOWN, (var), (delta),   \
                  ::emu::shfl_c(EMU_SHFL_WIDTH(__VA_ARGS__ __VA_OPT__(, ) 32), true))
#define __shfl_xor_sync(mask, var, lane_mask, ...)                                                     \
    ::emu::shfl_t("__shfl_xor_sync", __FILE__, __LINE__, (mask), ::emu::SHFL_BFLY, (var), (lane_mask), \
                  ::emu::shfl_c(EMU_SHFL_WIDTH(__VA_ARGS__ __VA_OPT__(, ) 32), true))
#define __ballot_sync(mask, pred) ::emu::vote("__ballot_sync", __FILE__, __LINE__, (mask), (pred), 0)
#define __any_sync(mask, pred) ((int)::emu::vote("__any_sync", __FILE__, __LINE__, (mask), (pred), 1))
#define __all_sync(mask, pred) ((int)::emu::vote("__all_sync", __FILE__, __LINE__, (mask), (pred), 2))
#define __syncwarp(...) ::emu::syncwarp(__FILE__, __LINE__, EMU_SHFL_WIDTH(__VA_ARGS__ __VA_OPT__(, ) 0xffffffffu))
#define __activemask() ::emu::activemask()
#define __reduce_add_sync(mask, v) ::emu::reduce_u32("__reduce_add_sync", __FILE__, __LINE__, (mask), (v), 0, false)
#define __reduce_min_sync(mask, v) ::emu::reduce_u32("__reduce_min_sync", __FILE__, __LINE__, (mask), (v), 1, EMU_SIGNED(v))
#define __reduce_max_sync(mask, v) ::emu::reduce_u32("__reduce_max_sync", __FILE__, __LINE__, (mask), (v), 2, EMU_SIGNED(v))
#define __reduce_and_sync(mask, v) ::emu::reduce_u32("__reduce_and_sync", __FILE__, __LINE__, (mask), (v), 3, false)
#define __reduce_or_sync(mask, v) ::emu::reduce_u32("__reduce_or_sync", __FILE__, __LINE__, (mask), (v), 4, false)
#define __reduce_xor_sync(mask, v) ::emu::reduce_u32("__reduce_xor_sync", __FILE__, __LINE__, (mask), (v), 5, false)
#define EMU_SIGNED(v) std::is_signed<decltype(v)>::value

// ---- tensor-core and async-copy wrappers (see common.cuh for the layouts) ----
void mma_m16n8k16_bf16_f32(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]);
void ldmatrix_x4(uint32_t r[4], const void* row_addr);
void ldmatrix_x4_trans(uint32_t r[4], const void* row_addr);
void ldmatrix_x2(uint32_t r[2], const void* row_addr);
void ldmatrix_x2_trans(uint32_t r[2], const void* row_addr);
void cp_async_16(void* smem, const void* gmem);
void cp_async_16_zfill(void* smem, const void* gmem, int src_bytes);
void cp_async_commit();
namespace emu {
void cp_async_wait_groups(int n);
}
template <int N>
inline void cp_async_wait() {
    emu::cp_async_wait_groups(N);
}

// ---- launching (used by the trampolines build.rs generates) ----
extern "C" {
// Must match `EmuLaunch` in src/backend/cuda/emu.rs.
struct EmuLaunch {
    uint32_t grid[3];
    uint32_t block[3];
    uint32_t shared_bytes;
    uint32_t timeout_ms;  // barrier timeout; 0: ONELAYER_EMU_TIMEOUT_MS or 5000
    char* error;          // out: NUL-terminated message, empty on success
    uint32_t error_cap;
};
}

namespace emu {
// Run `body(ctx)` on every thread of every block; errors go to cfg->error.
void run_launch(const EmuLaunch* cfg, const char* kernel, void (*body)(void*), void* ctx);

// Parameter kinds as build.rs spells them: P pointer, I int, U unsigned, F float, Q u64.
template <class T>
constexpr char kind_of() {
    if constexpr (std::is_pointer<T>::value) return 'P';
    else if constexpr (std::is_same<T, int>::value) return 'I';
    else if constexpr (std::is_same<T, unsigned>::value) return 'U';
    else if constexpr (std::is_same<T, float>::value) return 'F';
    else if constexpr (std::is_same<T, unsigned long long>::value || std::is_same<T, unsigned long>::value) return 'Q';
    else return '?';
}
template <class... A>
constexpr bool sig_is(void (*)(A...), const char* want) {
    const char got[] = {kind_of<A>()..., '\0'};
    for (std::size_t i = 0; i < sizeof...(A) + 1; ++i)
        if (got[i] != want[i]) return false;
    return true;
}

template <class... A>
struct Bound {
    void (*kernel)(A...);
    std::tuple<std::decay_t<A>...> args;
    static void run(void* p) {
        Bound* b = static_cast<Bound*>(p);
        std::apply(b->kernel, b->args);
    }
};
// args[i] points at the i-th argument's value (cuLaunchKernel's kernelParams).
template <class... A, std::size_t... I>
inline void launch_impl(const EmuLaunch* cfg, const char* name, void (*k)(A...), void** args,
                        std::index_sequence<I...>) {
    Bound<A...> b{k, std::tuple<std::decay_t<A>...>(*static_cast<std::decay_t<A>*>(args[I])...)};
    run_launch(cfg, name, &Bound<A...>::run, &b);
}
template <class... A>
inline void launch(const EmuLaunch* cfg, const char* name, void (*k)(A...), void** args) {
    launch_impl(cfg, name, k, args, std::index_sequence_for<A...>{});
}
}  // namespace emu
