// mma.cpp — emulated bodies of the tensor-core and async-copy wrappers of common.cuh.
//
// mma_m16n8k16_bf16_f32: every lane publishes its A (4 x b32) and B (2 x b32)
// fragments; after the warp's exchange each lane computes its own four outputs from
// the published fragments, in f32 (bf16 products are exact in f32), so one
// instruction costs one exchange. Fragment layout (PTX ISA, g = lane / 4, t = lane % 4,
// the lower-index element in the low 16 bits):
//   A[r][k]: lane (r % 8) * 4 + (k % 8) / 2, register (r >= 8) + 2 * (k >= 8), half k % 2
//   B[k][n]: lane n * 4 + (k % 8) / 2,       register (k >= 8),                half k % 2
//   C[r][n]: lane (r % 8) * 4 + n / 2,       element 2 * (r >= 8) + n % 2
// ldmatrix (.m8n8 .b16): lanes 8j..8j+7 each read one 16-byte row of matrix j and
// publish it; lane l then takes row l/4, columns 2(l%4), 2(l%4)+1 of each matrix (or,
// with .trans, rows 2(l%4), 2(l%4)+1 of column l/4).
// cp.async: copies are queued per thread and done, oldest group first, by
// cp_async_wait<N> (leaving N groups in flight) or at the end of the block.

#include "runtime.h"

namespace {

float bf16_at(uint32_t reg, int half) { return emu::bf16_bits_to_f32((unsigned short)(reg >> (16 * half))); }

struct MmaIn {
    uint32_t a[4], b[2];
};
struct MmaRead {
    unsigned lane;
    float c[4], d[4];
    bool partial;
};

void mma_reader(emu::Slots s, unsigned parts, void* p) {
    MmaRead* r = static_cast<MmaRead*>(p);
    if (parts != 0xffffffffu) {
        r->partial = true;
        return;
    }
    auto frag = [&](unsigned l) {
        MmaIn in;
        memcpy(&in, s[l], sizeof in);
        return in;
    };
    const unsigned g = r->lane >> 2, t = r->lane & 3;
    for (int i = 0; i < 4; ++i) {
        const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float acc = r->c[i];
        for (int k = 0; k < 16; ++k) {
            const MmaIn a = frag((row % 8) * 4 + (k % 8) / 2);
            const MmaIn b = frag(col * 4 + (k % 8) / 2);
            acc += bf16_at(a.a[(row >= 8) + 2 * (k >= 8)], k & 1) * bf16_at(b.b[k >= 8], k & 1);
        }
        r->d[i] = acc;
    }
}

// One ldmatrix of `num` 8x8 matrices.
void ldmatrix(const char* op, uint32_t* r, const void* row_addr, int num, bool trans) {
    emu::Ctx* c = emu::ctx_or_die(op);
    const unsigned lane = c->lane;
    unsigned char row[16] = {0};
    if (lane < 8u * num) {
        if ((uintptr_t)row_addr & 15)
            emu::fail_throw(c->L, emu::where(c->L) + ": " + op + ": " + emu::lane_name(c) +
                                      " gives a row address that is not 16-byte aligned");
        memcpy(row, row_addr, 16);
    }
    struct Read {
        unsigned lane;
        int num;
        bool trans, partial;
        uint32_t* r;
    } rd{lane, num, trans, false, r};
    emu::exchange(op, nullptr, 0, 0xffffffffu, row, 16,
                  [](emu::Slots s, unsigned parts, void* p) {
                      Read* q = static_cast<Read*>(p);
                      if (parts != 0xffffffffu) {
                          q->partial = true;
                          return;
                      }
                      const unsigned l = q->lane;
                      for (int j = 0; j < q->num; ++j) {
                          if (!q->trans) {
                              memcpy(&q->r[j], s[8 * j + l / 4] + 4 * (l % 4), 4);
                          } else {
                              unsigned short lo, hi;
                              memcpy(&lo, s[8 * j + 2 * (l % 4)] + 2 * (l / 4), 2);
                              memcpy(&hi, s[8 * j + 2 * (l % 4) + 1] + 2 * (l / 4), 2);
                              q->r[j] = (uint32_t)lo | ((uint32_t)hi << 16);
                          }
                      }
                  },
                  &rd);
    if (rd.partial)
        emu::fail_throw(c->L, emu::where(c->L) + ": " + op + " needs all 32 lanes of warp " +
                                  std::to_string(c->warp));
}

void cp_queue(const char* op, void* smem, const void* gmem, int bytes) {
    emu::Ctx* c = emu::ctx_or_die(op);
    if (((uintptr_t)smem | (uintptr_t)gmem) & 15)
        emu::fail_throw(c->L, emu::where(c->L) + ", thread " + std::to_string(c->tid) + ": " + op +
                                  " with an address that is not 16-byte aligned");
    if (bytes < 0 || bytes > 16)
        emu::fail_throw(c->L, emu::where(c->L) + ": " + op + " with src_bytes " + std::to_string(bytes) +
                                  " (0..16)");
    c->open.push_back({smem, gmem, bytes});
}

void cp_do(const std::vector<emu::CpCopy>& g) {
    for (const emu::CpCopy& x : g) {
        if (x.bytes) memcpy(x.dst, x.src, x.bytes);
        if (x.bytes < 16) memset(static_cast<unsigned char*>(x.dst) + x.bytes, 0, 16 - x.bytes);
    }
}

}  // namespace

void mma_m16n8k16_bf16_f32(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    emu::Ctx* x = emu::ctx_or_die("mma_m16n8k16_bf16_f32");
    MmaIn in;
    memcpy(in.a, a, sizeof in.a);
    memcpy(in.b, b, sizeof in.b);
    MmaRead r;
    r.lane = x->lane, r.partial = false;
    memcpy(r.c, c, sizeof r.c);
    emu::exchange("mma_m16n8k16_bf16_f32", nullptr, 0, 0xffffffffu, &in, sizeof in, mma_reader, &r);
    if (r.partial)
        emu::fail_throw(x->L, emu::where(x->L) + ": mma_m16n8k16_bf16_f32 needs all 32 lanes of warp " +
                                  std::to_string(x->warp));
    memcpy(d, r.d, sizeof r.d);
}

void ldmatrix_x4(uint32_t r[4], const void* p) { ldmatrix("ldmatrix_x4", r, p, 4, false); }
void ldmatrix_x4_trans(uint32_t r[4], const void* p) { ldmatrix("ldmatrix_x4_trans", r, p, 4, true); }
void ldmatrix_x2(uint32_t r[2], const void* p) { ldmatrix("ldmatrix_x2", r, p, 2, false); }
void ldmatrix_x2_trans(uint32_t r[2], const void* p) { ldmatrix("ldmatrix_x2_trans", r, p, 2, true); }

void cp_async_16(void* smem, const void* gmem) { cp_queue("cp_async_16", smem, gmem, 16); }
void cp_async_16_zfill(void* smem, const void* gmem, int src_bytes) {
    cp_queue("cp_async_16_zfill", smem, gmem, src_bytes);
}
void cp_async_commit() {
    emu::Ctx* c = emu::ctx_or_die("cp_async_commit");
    c->groups.push_back(std::move(c->open));
    c->open.clear();
}

namespace emu {
void cp_async_wait_groups(int n) {
    Ctx* c = ctx_or_die("cp_async_wait");
    while ((int)c->groups.size() > n) {
        cp_do(c->groups.front());
        c->groups.pop_front();
    }
}
void cp_async_flush(Ctx* c) {
    for (const auto& g : c->groups) cp_do(g);
    cp_do(c->open);
    c->groups.clear();
    c->open.clear();
}
}  // namespace emu
