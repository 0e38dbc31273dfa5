// launch.cpp — the emulator's launcher and block barrier.
//
// run_launch puts blockDim OS threads (pthreads from a pool kept between launches) to
// work; each runs the kernel for block 0, 1, ... in turn, meeting the others at a
// between-blocks barrier, so one block is alive at a time and `static` storage is that
// block's shared memory. Launches are serialised by a global mutex for the same reason.
//
// __syncthreads counts arrivals under a mutex and waits on a Gate (runtime.h). It
// fails the launch, with the kernel, the block and the threads involved, when
//   * some threads exited the kernel and all the others wait at a barrier (reported
//     once every thread has either arrived or exited, so the lists are complete),
//   * threads wait at different __syncthreads call sites (reported once all arrived),
//   * nobody new arrives for `timeout` (a deadlock, e.g. with a warp collective).
// Waiting threads then unwind (LaunchAbort); a watchdog in the launcher aborts the
// process only if threads neither finish nor reach a barrier (an endless loop).

#include <pthread.h>
#include <sched.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <climits>
#include <thread>
#include <cstdlib>
#include <map>
#include <new>
#include <stdexcept>

#include "runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
// Rust's statics are not ours to report.
extern "C" const char* __asan_default_options() { return "detect_leaks=0"; }
#endif

EMU_TLS uint3 threadIdx;
EMU_TLS uint3 blockIdx;
EMU_TLS dim3 blockDim;
EMU_TLS dim3 gridDim;

namespace emu {

EMU_TLS Ctx* tctx;

long long now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// Sleep while *w == v, at most `ns` (forever if ns < 0).
static void futex_wait(std::atomic<unsigned>* w, unsigned v, long long ns) {
#if defined(__linux__)
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    syscall(SYS_futex, reinterpret_cast<unsigned*>(w), FUTEX_WAIT_PRIVATE, v, ns < 0 ? nullptr : &ts, nullptr, 0);
#else
    if (w->load() == v) std::this_thread::sleep_for(std::chrono::microseconds(50));
    (void)ns;
#endif
}

// Wake the sleepers without opening (they re-check `aborted`).
static void gate_wake(Gate& g) {
#if defined(__linux__)
    if (g.sleepers.load() != 0)
        syscall(SYS_futex, reinterpret_cast<unsigned*>(&g.gen), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
#else
    (void)g;
#endif
}

void gate_open(Gate& g) {
    g.gen.fetch_add(1);
    gate_wake(g);
}

bool gate_wait(Gate& g, unsigned my, Launch* L, const std::atomic<long long>* last_ns) {
    for (int i = 0; i < 100; ++i) {  // most phases end within a few scheduling rounds
        if (g.gen.load(std::memory_order_acquire) != my) return true;
        if (L->aborted) throw LaunchAbort{};
        sched_yield();
    }
    for (;;) {
        if (g.gen.load(std::memory_order_acquire) != my) return true;
        if (L->aborted) throw LaunchAbort{};
        long long slice = 100000000;  // re-check `aborted` at least every 100 ms
        if (last_ns) {
            const long long left = last_ns->load() + L->timeout_ns - now_ns();
            if (left <= 0) return false;
            slice = std::min(slice, left);
        }
        g.sleepers.fetch_add(1);
        futex_wait(&g.gen, my, slice);
        g.sleepers.fetch_sub(1);
    }
}

Ctx* ctx_or_die(const char* what) {
    if (!tctx) {
        fprintf(stderr, "onelayer emulator: %s called outside an emulated kernel\n", what);
        std::abort();
    }
    return tctx;
}

std::string where(const Launch* L) {
    const unsigned long long b = L->cur_block;
    return "kernel " + std::string(L->kernel) + ", block (" + std::to_string(b % L->grid.x) + "," +
           std::to_string(b / L->grid.x % L->grid.y) + "," + std::to_string(b / L->grid.x / L->grid.y) + ")";
}

std::string site(const char* file, int line) {
    if (!file) return "";
    std::string f(file);
    const size_t k = f.rfind("kernels/");
    return (k == std::string::npos ? f : f.substr(k)) + ":" + std::to_string(line);
}

bool same_site(const char* f1, int l1, const char* f2, int l2) {
    return l1 == l2 && (f1 == f2 || (f1 && f2 && strcmp(f1, f2) == 0));
}

std::string ranges(const std::vector<unsigned>& ids) {
    std::string s;
    for (size_t i = 0; i < ids.size();) {
        size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
        if (!s.empty()) s += ", ";
        s += std::to_string(ids[i]);
        if (j > i) s += "-" + std::to_string(ids[j]);
        i = j + 1;
    }
    return s;
}

std::string describe_threads(const Launch* L) {
    std::vector<std::pair<std::string, std::vector<unsigned>>> groups;
    for (unsigned t = 0; t < L->nthreads; ++t) {
        const ThreadInfo& i = L->info[t];
        const char* op = i.op.load();
        const std::string at = i.file.load() ? " at " + site(i.file.load(), i.line.load()) : "";
        std::string what;
        switch (i.state.load()) {
            case AT_SYNC: what = "waiting at __syncthreads" + at; break;
            case IN_WARP: what = std::string("waiting in ") + (op ? op : "a warp operation") + at; break;
            case EXITED:
            case DONE: what = "exited the kernel"; break;
            default: what = "running, at no barrier"; break;
        }
        auto g = std::find_if(groups.begin(), groups.end(), [&](auto& p) { return p.first == what; });
        if (g == groups.end()) groups.push_back({what, {t}});
        else g->second.push_back(t);
    }
    std::string s;
    for (auto& g : groups)
        s += (s.empty() ? "" : "; ") + std::string(g.second.size() == 1 ? "thread " : "threads ") + ranges(g.second) +
             ": " + g.first;
    return s;
}

void fail(Launch* L, const std::string& msg) {
    {
        std::lock_guard<std::mutex> g(L->err_m);
        if (L->error.empty()) L->error = msg;
    }
    L->aborted.store(true);
    { std::lock_guard<std::mutex> g(L->m); }
    L->fin_cv.notify_all();
    // Wake the sleepers; one that misses this wakes within its 100 ms slice.
    gate_wake(L->sync_gate);
    gate_wake(L->end_gate);
    for (auto& w : L->warps) gate_wake(w->gate);
}

void fail_throw(Launch* L, const std::string& msg) {
    fail(L, msg);
    throw LaunchAbort{};
}

[[noreturn]] void trap(const char* what, const char* file, int line) {
    Ctx* c = ctx_or_die(what);
    fail_throw(c->L, where(c->L) + ", thread " + std::to_string(c->tid) + ": " + what + " at " + site(file, line));
}

unsigned long long clock_ticks() {
    return (unsigned long long)std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
        .count();
}

unsigned char* dynamic_smem() { return ctx_or_die("EXTERN_SHARED")->L->smem; }

static std::string exit_violation(const Launch* L) {
    return where(L) + ": __syncthreads at " + site(L->sync_file, L->sync_line) +
           " can never complete: " + describe_threads(L) +
           " (every thread of a block must reach every __syncthreads; no early return before a barrier)";
}

int syncthreads_reduce(const char* file, int line, int pred, int mode) {
    Ctx* c = ctx_or_die("__syncthreads");
    Launch* L = c->L;
    std::unique_lock<std::mutex> lk(L->m);
    if (L->aborted) throw LaunchAbort{};
    const unsigned my = L->sync_gate.gen.load();
    if (L->sync_arrived == 0) {
        L->sync_file = file, L->sync_line = line, L->sync_diverged = false;
        L->sync_acc[my & 1] = mode == 1 ? 1 : 0;
    } else if (!same_site(L->sync_file, L->sync_line, file, line)) {
        L->sync_diverged = true;  // reported once everyone has arrived, with complete lists
    }
    L->info[c->tid].set(AT_SYNC, nullptr, file, line);
    int& acc = L->sync_acc[my & 1];
    acc = mode == 0 ? acc + (pred != 0) : mode == 1 ? (acc && pred) : (acc || pred);
    L->sync_last_ns = now_ns();
    L->progress++;
    if (++L->sync_arrived + L->exited == L->nthreads && L->exited > 0) {
        std::string msg = exit_violation(L);  // settled: every thread waits here or has exited
        lk.unlock();
        fail_throw(L, msg);
    }
    if (L->sync_arrived == L->nthreads && L->sync_diverged) {
        std::string msg = where(L) + ": threads wait at different __syncthreads: " + describe_threads(L) +
                          " (a barrier in divergent code)";
        lk.unlock();
        fail_throw(L, msg);
    }
    if (L->sync_arrived == L->nthreads) {
        L->sync_arrived = 0;
        L->info[c->tid].set(RUNNING);
        const int result = acc;
        gate_open(L->sync_gate);
        return result;
    }
    lk.unlock();
    while (!gate_wait(L->sync_gate, my, L, &L->sync_last_ns)) {
        lk.lock();  // nobody arrived for `timeout`: confirm, then report
        if (L->sync_gate.gen.load() == my && now_ns() >= L->sync_last_ns + L->timeout_ns) {
            std::string msg = where(L) + ": __syncthreads at " + site(file, line) + " timed out: " +
                              describe_threads(L) + " (a deadlock?)";
            lk.unlock();
            fail_throw(L, msg);
        }
        lk.unlock();
    }
    L->info[c->tid].set(RUNNING);
    return L->sync_acc[my & 1];
}

void syncthreads(const char* file, int line) { syncthreads_reduce(file, line, 0, 0); }

// A thread left the kernel body for the current block.
static void thread_exit(Launch* L, Ctx* c) {
    warp_exit(L, c);
    std::unique_lock<std::mutex> lk(L->m);
    L->exited++;
    L->info[c->tid].set(EXITED);
    L->progress++;
    if (L->sync_arrived > 0 && L->sync_arrived + L->exited == L->nthreads && !L->aborted) {
        std::string msg = exit_violation(L);
        lk.unlock();
        fail(L, msg);
    }
}

// Between blocks: the last thread to arrive resets the block state. False once aborted.
static bool block_end(Launch* L, Ctx* c) {
    std::unique_lock<std::mutex> lk(L->m);
    L->info[c->tid].set(DONE);
    L->progress++;
    const unsigned my = L->end_gate.gen.load();
    if (++L->done == L->nthreads) {
        L->done = 0, L->exited = 0, L->sync_arrived = 0;
        warp_reset(L);
        if (L->smem_bytes) memset(L->smem, 0xff, L->smem_bytes);  // shared memory starts undefined
        for (unsigned t = 0; t < L->nthreads; ++t) L->info[t].set(RUNNING);
        L->cur_block++;
        gate_open(L->end_gate);
        return !L->aborted;
    }
    lk.unlock();
    try {
        gate_wait(L->end_gate, my, L, nullptr);
    } catch (LaunchAbort&) {
        return false;
    }
    return !L->aborted;
}

// One kernel thread's whole launch: every block in turn.
static void run_thread(Ctx* c) {
    Launch* L = c->L;
    tctx = c;
    const dim3 b = L->block;
    threadIdx = {c->tid % b.x, c->tid / b.x % b.y, c->tid / (b.x * b.y)};
    blockDim = b;
    gridDim = L->grid;
    for (unsigned long long k = 0; k < L->nblocks; ++k) {
        blockIdx = {(unsigned)(k % L->grid.x), (unsigned)(k / L->grid.x % L->grid.y),
                    (unsigned)(k / L->grid.x / L->grid.y)};
        if (!L->aborted) {
            try {
                L->body(L->ctx);
                cp_async_flush(c);
            } catch (LaunchAbort&) {
            } catch (std::exception& e) {
                fail(L, where(L) + ", thread " + std::to_string(c->tid) + ": " + e.what());
            } catch (...) {
                fail(L, where(L) + ", thread " + std::to_string(c->tid) + ": unknown C++ exception");
            }
        }
        thread_exit(L, c);
        if (!block_end(L, c)) break;
    }
    std::lock_guard<std::mutex> g(L->m);
    L->finished++;
    L->fin_cv.notify_all();
}

// The OS threads that run kernel threads, kept between launches (creating 256 threads
// costs ~10 ms). Worker t runs thread t of each launch; it sleeps on `gen` between jobs.
struct Worker {
    std::atomic<unsigned> gen{0};
    Ctx* job = nullptr;
};
static std::vector<Worker*> g_pool;  // guarded by g_launch; never shrinks

static void* worker_main(void* p) {
    Worker* w = static_cast<Worker*>(p);
    for (unsigned seen = 0;;) {
        unsigned g;
        while ((g = w->gen.load(std::memory_order_acquire)) == seen) futex_wait(&w->gen, seen, -1);
        seen = g;  // the job of generation g; the next launch waits for it to finish
        run_thread(w->job);
        tctx = nullptr;
    }
    return nullptr;
}

// Grow the pool to n workers; false if the system refuses more threads.
static bool pool_reserve(unsigned n) {
    while (g_pool.size() < n) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
#if defined(__SANITIZE_ADDRESS__)
        pthread_attr_setstacksize(&attr, 8u << 20);
#else
        pthread_attr_setstacksize(&attr, 2u << 20);
#endif
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        Worker* w = new Worker;
        pthread_t id;
        const bool ok = pthread_create(&id, &attr, worker_main, w) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) {
            delete w;
            return false;
        }
        g_pool.push_back(w);
    }
    return true;
}

static void set_error(const EmuLaunch* cfg, const std::string& msg) {
    if (!cfg->error || cfg->error_cap == 0) return;
    const size_t n = std::min<size_t>(msg.size(), cfg->error_cap - 1);
    memcpy(cfg->error, msg.data(), n);
    cfg->error[n] = '\0';
}

static unsigned default_timeout_ms() {
    const char* s = getenv("ONELAYER_EMU_TIMEOUT_MS");
    const long v = s ? strtol(s, nullptr, 10) : 0;
    return v > 0 ? (unsigned)v : 5000u;
}

static std::mutex g_launch;  // one launch at a time: statics are one block's shared memory

void run_launch(const EmuLaunch* cfg, const char* kernel, void (*body)(void*), void* ctx) {
    set_error(cfg, "");
    const unsigned long long threads = (unsigned long long)cfg->block[0] * cfg->block[1] * cfg->block[2];
    if (threads == 0 || threads > 1024 || cfg->block[2] > 64 || cfg->grid[0] == 0 || cfg->grid[1] == 0 ||
        cfg->grid[2] == 0 || cfg->grid[0] > 0x7fffffffu || cfg->grid[1] > 65535 || cfg->grid[2] > 65535) {
        set_error(cfg, "kernel " + std::string(kernel) + ": invalid launch geometry (block must hold 1..1024 threads, "
                       "grid dimensions 1..2^31-1 / 65535 / 65535)");
        return;
    }
    if (cfg->shared_bytes > 227u * 1024u) {
        set_error(cfg, "kernel " + std::string(kernel) + ": " + std::to_string(cfg->shared_bytes) +
                           " bytes of dynamic shared memory (at most 227 KiB per block)");
        return;
    }
    std::lock_guard<std::mutex> serial(g_launch);
    if (!pool_reserve((unsigned)threads)) {
        set_error(cfg, "kernel " + std::string(kernel) + ": cannot create " + std::to_string(threads) +
                           " emulator threads");
        return;
    }
    Launch L;
    L.kernel = kernel;
    L.grid = {cfg->grid[0], cfg->grid[1], cfg->grid[2]};
    L.block = {cfg->block[0], cfg->block[1], cfg->block[2]};
    L.nthreads = (unsigned)threads;
    L.nwarps = (L.nthreads + 31) / 32;
    L.nblocks = (unsigned long long)cfg->grid[0] * cfg->grid[1] * cfg->grid[2];
    L.timeout = std::chrono::milliseconds(cfg->timeout_ms ? cfg->timeout_ms : default_timeout_ms());
    L.timeout_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(L.timeout).count();
    L.body = body, L.ctx = ctx;
    L.smem_bytes = cfg->shared_bytes;
    L.smem = static_cast<unsigned char*>(::operator new(L.smem_bytes, std::align_val_t(128)));
    if (L.smem_bytes) memset(L.smem, 0xff, L.smem_bytes);
    L.info.reset(new ThreadInfo[L.nthreads]);
    for (unsigned w = 0; w < L.nwarps; ++w) {
        L.warps.emplace_back(new Warp);
        const unsigned lanes = std::min(32u, L.nthreads - 32 * w);
        L.warps.back()->existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
    }
    std::vector<Ctx> ctxs(L.nthreads);
    for (unsigned t = 0; t < L.nthreads; ++t) {
        ctxs[t].L = &L, ctxs[t].tid = t, ctxs[t].lane = t % 32, ctxs[t].warp = t / 32;
        g_pool[t]->job = &ctxs[t];
        g_pool[t]->gen.fetch_add(1);  // publishes `job`
#if defined(__linux__)
        syscall(SYS_futex, reinterpret_cast<unsigned*>(&g_pool[t]->gen), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
#endif
    }

    // Watchdog: threads that neither finish nor reach a barrier cannot be unwound.
    const auto stuck = std::max<Clock::duration>(6 * L.timeout, std::chrono::seconds(30));
    const auto grace = std::max<Clock::duration>(2 * L.timeout, std::chrono::seconds(10));
    {
        std::unique_lock<std::mutex> lk(L.m);
        unsigned long long seen = L.progress;
        auto since = Clock::now();
        while (L.finished < L.nthreads) {
            L.fin_cv.wait_for(lk, std::chrono::milliseconds(100));
            const auto now = Clock::now();
            if (L.progress != seen) {
                seen = L.progress, since = now;
            } else if (!L.aborted && now - since > stuck) {
                std::string msg = where(&L) + ": no thread made progress for " +
                                  std::to_string(std::chrono::duration_cast<std::chrono::seconds>(stuck).count()) +
                                  " s: " + describe_threads(&L) + " (an endless loop?)";
                lk.unlock();
                fail(&L, msg);
                lk.lock();
                since = now;
            } else if (L.aborted && now - since > grace) {
                fprintf(stderr, "onelayer emulator: %s\nthreads still running; aborting the process\n",
                        L.error.c_str());
                std::abort();
            }
        }
    }
    ::operator delete(L.smem, std::align_val_t(128));
    if (L.aborted) set_error(cfg, L.error.empty() ? "kernel " + std::string(kernel) + ": aborted" : L.error);
}

}  // namespace emu

extern "C" int emu_asan_enabled() {
#if defined(__SANITIZE_ADDRESS__)
    return 1;
#else
    return 0;
#endif
}

extern "C" void emu_asan_poison(void* p, size_t n) {
#if defined(__SANITIZE_ADDRESS__)
    ASAN_POISON_MEMORY_REGION(p, n);
#else
    (void)p, (void)n;
#endif
}

extern "C" void emu_asan_unpoison(void* p, size_t n) {
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
    (void)p, (void)n;
#endif
}
