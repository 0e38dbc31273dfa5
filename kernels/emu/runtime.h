// runtime.h — the emulator's private state, shared by launch.cpp and warp.cpp (never
// included by kernels).
//
// One `Launch` per kernel launch: the block's threads (one `Ctx` each), the block
// barrier, one `Warp` exchange per 32 threads, the dynamic shared memory and the
// first error. Each thread records what it is doing (`ThreadInfo`) so that a barrier
// that times out, or a thread that exits while others wait for it, can be reported
// by name: kernel, block, and thread ranges with the call site they are stuck at.

#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "emu.h"

namespace emu {

using Clock = std::chrono::steady_clock;
constexpr unsigned SLOT = 64;  // bytes per lane in a warp exchange buffer

long long now_ns();

// What threads wait on: a generation number that opening the gate increments.
// Waiters yield the CPU a few dozen times, then sleep on the word (a futex on Linux)
// in slices of at most 100 ms; with hundreds of threads per block this costs about a
// tenth of a condition variable's broadcast (every waiter retaking one mutex).
struct Gate {
    std::atomic<unsigned> gen{0};
    std::atomic<unsigned> sleepers{0};
};
void gate_open(Gate& g);
struct Launch;
// Until g.gen != my (true), or (false) `*last_ns` + the launch's timeout has passed
// with no new arrival; never false when last_ns is null. Throws LaunchAbort once the
// launch has failed.
bool gate_wait(Gate& g, unsigned my, Launch* L, const std::atomic<long long>* last_ns);

// Thrown inside kernel threads to unwind them once the launch has failed.
struct LaunchAbort {};

enum State : int { RUNNING = 0, AT_SYNC, IN_WARP, EXITED, DONE };

struct ThreadInfo {
    std::atomic<int> state{RUNNING};
    std::atomic<const char*> op{nullptr};
    std::atomic<const char*> file{nullptr};
    std::atomic<int> line{0};
    void set(State s, const char* o = nullptr, const char* f = nullptr, int l = 0) {
        op.store(o), file.store(f), line.store(l), state.store(s);
    }
};

// A warp's exchange: one open phase at a time, two buffers used alternately so that
// lanes may publish the next operation while slow lanes still read the previous one.
struct Warp {
    std::mutex m;  // guards the open phase's bookkeeping
    unsigned existing = 0;  // lanes that exist (the last warp of a block may be partial)
    unsigned exited = 0;    // lanes that left the kernel in the current block
    Gate gate;              // opens when a phase completes; gen = phases completed
    unsigned mask = 0, arrived = 0;  // the open phase
    const char* op = nullptr;
    const char* file = nullptr;
    int line = 0;
    unsigned participants[2] = {0, 0};
    std::atomic<unsigned> readers[2] = {{0}, {0}};  // lanes yet to read each buffer
    std::atomic<long long> last_ns{0};               // last arrival
    alignas(16) unsigned char buf[2][32][SLOT];
};

struct CpCopy {
    void* dst;
    const void* src;
    int bytes;
};

// Per kernel thread.
struct Ctx {
    Launch* L = nullptr;
    unsigned tid = 0, lane = 0, warp = 0;
    std::vector<CpCopy> open;                 // cp.async not yet committed
    std::deque<std::vector<CpCopy>> groups;   // committed groups, oldest first
};

struct Launch {
    const char* kernel = "";
    dim3 grid{1, 1, 1}, block{1, 1, 1};
    unsigned nthreads = 0, nwarps = 0;
    unsigned long long nblocks = 0, cur_block = 0;
    Clock::duration timeout{};
    long long timeout_ns = 0;
    unsigned char* smem = nullptr;
    size_t smem_bytes = 0;
    void (*body)(void*) = nullptr;
    void* ctx = nullptr;
    std::vector<std::unique_ptr<Warp>> warps;
    std::unique_ptr<ThreadInfo[]> info;

    std::mutex m;    // guards the arrival bookkeeping below
    Gate sync_gate;  // __syncthreads
    unsigned sync_arrived = 0, exited = 0;
    const char* sync_file = nullptr;
    int sync_line = 0;
    bool sync_diverged = false;
    int sync_acc[2] = {0, 0};
    std::atomic<long long> sync_last_ns{0};
    Gate end_gate;  // between blocks
    unsigned done = 0, finished = 0;
    std::condition_variable fin_cv;  // threads that finished the launch (for the launcher)

    std::atomic<bool> aborted{false};
    std::atomic<unsigned long long> progress{0};
    std::mutex err_m;
    std::string error;
};

extern EMU_TLS Ctx* tctx;

// The calling kernel thread's context; aborts the process outside a kernel.
Ctx* ctx_or_die(const char* what);
// Record the launch's first error, stop it and wake every waiter. No lock held.
void fail(Launch* L, const std::string& msg);
[[noreturn]] void fail_throw(Launch* L, const std::string& msg);
// "kernel K, block (x,y,z)"
std::string where(const Launch* L);
// "kernels/foo.cu:12"
std::string site(const char* file, int line);
bool same_site(const char* f1, int l1, const char* f2, int l2);
// "0-15, 17, 20-31"
std::string ranges(const std::vector<unsigned>& ids);
// Every thread of the block grouped by what it is doing.
std::string describe_threads(const Launch* L);

// warp.cpp
using Slots = const unsigned char (*)[SLOT];
using Reader = void (*)(Slots slots, unsigned participants, void* rctx);
// Publish `bytes` (<= SLOT) of `mine`, wait for the lanes of `mask`, then run `rd` on
// the published slots (under the warp's lock). Returns the lanes that took part.
unsigned exchange(const char* op, const char* file, int line, unsigned mask, const void* mine, unsigned bytes,
                  Reader rd, void* rctx);
// "lane 3 of warp 1 (thread 35)"
std::string lane_name(const Ctx* c);
void warp_exit(Launch* L, Ctx* c);
void warp_reset(Launch* L);
void cp_async_flush(Ctx* c);

}  // namespace emu
