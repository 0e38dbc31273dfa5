// warp.cpp — warp collectives of the emulator: shuffles, votes, __syncwarp, and the
// mma / ldmatrix / cp.async wrappers.
//
// exchange() is the one primitive: publish this lane's bytes into its slot (under the
// warp's mutex), wait at the warp's Gate until every expected lane (named in the mask,
// existing, not exited) has published, then read. Two buffers alternate between
// phases; a lane starting a phase waits until the readers of the phase before last
// are done with its buffer.
//
// Layouts follow the PTX ISA (mma.m16n8k16 .bf16 fragments, ldmatrix .m8n8 .b16);
// they are spelled out in common.cuh next to the inline-PTX versions.

#include <sched.h>

#include <algorithm>

#include "runtime.h"

namespace emu {

std::string lane_name(const Ctx* c) {
    return "lane " + std::to_string(c->lane) + " of warp " + std::to_string(c->warp) + " (thread " +
           std::to_string(c->tid) + ")";
}

// Under W.m: end the open phase once every expected lane has published.
static void complete_if_ready(Warp& W) {
    const unsigned expected = W.mask & W.existing & ~W.exited;
    if (W.arrived == 0 || (W.arrived & expected) != expected) return;
    const unsigned b = W.gate.gen.load() & 1;
    W.participants[b] = W.arrived;
    W.readers[b] = __builtin_popcount(W.arrived);
    W.arrived = 0, W.mask = 0;
    gate_open(W.gate);
}

unsigned exchange(const char* op, const char* file, int line, unsigned mask, const void* mine,
                         unsigned bytes, Reader rd, void* rctx) {
    Ctx* c = ctx_or_die(op);
    Launch* L = c->L;
    Warp& W = *L->warps[c->warp];
    const unsigned me = 1u << c->lane;
    if (!(mask & me))
        fail_throw(L, where(L) + ": " + lane_name(c) + " calls " + op + " at " + site(file, line) +
                          " with a mask that does not include itself");
    std::unique_lock<std::mutex> lk(W.m);
    auto timed_out = [&](long long since, const char* what) {
        std::string msg = where(L) + ": " + op + (file ? " at " + site(file, line) : std::string()) + " in warp " +
                          std::to_string(c->warp) + " " + what + ": " + describe_threads(L) + " (a deadlock?)";
        lk.unlock();
        fail_throw(L, msg);
    };
    // The buffer of the coming phase must be free of the readers of the phase before
    // last (lanes that woke up but have not read yet: a short wait).
    const long long wait_from = now_ns();
    while (W.readers[W.gate.gen.load() & 1].load() != 0) {
        lk.unlock();
        sched_yield();
        if (L->aborted) throw LaunchAbort{};
        lk.lock();
        if (now_ns() > wait_from + L->timeout_ns) timed_out(wait_from, "timed out");
    }
    if (L->aborted) throw LaunchAbort{};
    const unsigned my = W.gate.gen.load(), b = my & 1;
    if (W.arrived == 0) {
        W.mask = mask, W.op = op, W.file = file, W.line = line;
    } else if (W.mask != mask || strcmp(W.op, op) != 0 || !same_site(W.file, W.line, file, line)) {
        char m1[16], m2[16];
        snprintf(m1, sizeof m1, "0x%08x", W.mask);
        snprintf(m2, sizeof m2, "0x%08x", mask);
        std::string msg = where(L) + ": warp " + std::to_string(c->warp) + " diverged: lanes " +
                          std::to_string(__builtin_ctz(W.arrived)) + ".. wait in " + W.op + " at " +
                          site(W.file, W.line) + " (mask " + m1 + ") while " + lane_name(c) + " calls " + op +
                          " at " + site(file, line) + " (mask " + m2 + ")";
        lk.unlock();
        fail_throw(L, msg);
    }
    if (bytes) memcpy(W.buf[b][c->lane], mine, bytes);
    W.arrived |= me;
    W.last_ns = now_ns();
    L->info[c->tid].set(IN_WARP, op, file, line);
    L->progress++;
    complete_if_ready(W);
    lk.unlock();
    while (!gate_wait(W.gate, my, L, &W.last_ns)) {
        lk.lock();  // nobody arrived for `timeout`: confirm, then report
        if (W.gate.gen.load() == my && now_ns() >= W.last_ns + L->timeout_ns) timed_out(W.last_ns, "timed out");
        lk.unlock();
    }
    // The buffer stays as it is until every participant has read it.
    const unsigned parts = W.participants[b];
    rd(W.buf[b], parts, rctx);
    W.readers[b].fetch_sub(1);
    L->info[c->tid].set(RUNNING);
    return parts;
}

void warp_exit(Launch* L, Ctx* c) {
    Warp& W = *L->warps[c->warp];
    std::lock_guard<std::mutex> g(W.m);
    W.exited |= 1u << c->lane;
    complete_if_ready(W);  // the others no longer wait for this lane
}

void warp_reset(Launch* L) {
    for (auto& w : L->warps) {
        std::lock_guard<std::mutex> g(w->m);
        w->exited = 0, w->arrived = 0, w->mask = 0;
        w->readers[0] = w->readers[1] = 0;
    }
}

// ---- shuffles and votes ----

struct ShflRead {
    unsigned src, bytes;
    void* out;
    bool missing;
};

void shfl(const char* op, const char* file, int line, unsigned mask, int mode, const void* in, void* out,
          unsigned bytes, int b, unsigned c) {
    Ctx* x = ctx_or_die(op);
    const int lane = (int)x->lane, bval = b & 31, segmask = (c >> 8) & 31, clamp = c & 31;
    const int max_lane = (lane & segmask) | (clamp & ~segmask), min_lane = lane & segmask;
    int j = lane;
    bool ok = false;
    switch (mode) {
        case SHFL_UP: j = lane - bval, ok = j >= max_lane; break;
        case SHFL_DOWN: j = lane + bval, ok = j <= max_lane; break;
        case SHFL_BFLY: j = lane ^ bval, ok = j <= max_lane; break;
        default: j = min_lane | (bval & ~segmask), ok = j <= max_lane; break;
    }
    if (!ok) j = lane;
    ShflRead r{(unsigned)j, bytes, out, false};
    exchange(op, file, line, mask, in, bytes,
             [](Slots s, unsigned parts, void* p) {
                 ShflRead* r = static_cast<ShflRead*>(p);
                 if (parts & (1u << r->src)) memcpy(r->out, s[r->src], r->bytes);
                 else r->missing = true;
             },
             &r);
    if (r.missing)
        fail_throw(x->L, where(x->L) + ": " + lane_name(x) + " reads lane " + std::to_string(j) + " in " + op +
                             " at " + site(file, line) + ", which did not take part (exited, absent or not in the mask)");
}

struct Fold {
    unsigned result;
    int mode;  // vote: 0 ballot 1 any 2 all; reduce: 0 add 1 min 2 max 3 and 4 or 5 xor
    bool sgn, vote;
};

static void fold_reader(Slots s, unsigned parts, void* p) {
    Fold* f = static_cast<Fold*>(p);
    unsigned acc = 0;
    bool first = true;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(parts & (1u << l))) continue;
        unsigned v;
        memcpy(&v, s[l], 4);
        if (f->vote) {
            if (v) acc |= 1u << l;
            continue;
        }
        if (first) {
            acc = v, first = false;
            continue;
        }
        switch (f->mode) {
            case 0: acc += v; break;
            case 1: acc = f->sgn ? (unsigned)std::min((int)acc, (int)v) : std::min(acc, v); break;
            case 2: acc = f->sgn ? (unsigned)std::max((int)acc, (int)v) : std::max(acc, v); break;
            case 3: acc &= v; break;
            case 4: acc |= v; break;
            default: acc ^= v; break;
        }
    }
    if (f->vote && f->mode == 1) acc = acc != 0;
    if (f->vote && f->mode == 2) acc = acc == parts;
    f->result = acc;
}

unsigned vote(const char* op, const char* file, int line, unsigned mask, int pred, int mode) {
    Fold f{0, mode, false, true};
    const unsigned v = pred != 0;
    exchange(op, file, line, mask, &v, 4, fold_reader, &f);
    return f.result;
}

unsigned reduce_u32(const char* op, const char* file, int line, unsigned mask, unsigned v, int mode, bool sgn) {
    Fold f{0, mode, sgn, false};
    exchange(op, file, line, mask, &v, 4, fold_reader, &f);
    return f.result;
}

void syncwarp(const char* file, int line, unsigned mask) {
    exchange("__syncwarp", file, line, mask, nullptr, 0, [](Slots, unsigned, void*) {}, nullptr);
}

unsigned activemask() {
    Ctx* c = ctx_or_die("__activemask");
    Warp& W = *c->L->warps[c->warp];
    std::lock_guard<std::mutex> g(W.m);
    return W.existing & ~W.exited;
}

}  // namespace emu
