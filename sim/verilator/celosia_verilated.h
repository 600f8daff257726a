// Shared by Celosia's Verilator harnesses (harness.cpp, accel_harness.cpp, ...): the
// Verilated class of the top (the top module name comes in as CELOSIA_TOP, its header as
// CELOSIA_HEADER; the class is V<top>), byte access to Verilated signals of any width, a
// small deterministic random source for stall injection, and optional waveform tracing.
//
// Verilator spells the double underscores of Amaranth's port names (cmd__valid) as ___05F.
//
// Tracing: a build with -DCELOSIA_TRACE=1 (Verilator --trace) or -DCELOSIA_TRACE=2
// (--trace-fst) gets a working Tracer; other builds get one whose open() fails, so the
// harness code is the same either way.

#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "verilated.h"
#define CELOSIA_STR2(x) #x
#define CELOSIA_STR(x) CELOSIA_STR2(x)
#define CELOSIA_CAT2(a, b) a##b
#define CELOSIA_CAT(a, b) CELOSIA_CAT2(a, b)
#define CELOSIA_CLASS CELOSIA_CAT(V, CELOSIA_TOP)
#include CELOSIA_STR(CELOSIA_HEADER)

#if defined(CELOSIA_TRACE) && CELOSIA_TRACE == 2
#include "verilated_fst_c.h"
typedef VerilatedFstC CelosiaTraceFile;
#elif defined(CELOSIA_TRACE) && CELOSIA_TRACE == 1
#include "verilated_vcd_c.h"
typedef VerilatedVcdC CelosiaTraceFile;
#endif

namespace celosia {

// --- Bit access to Verilated signals of any width ------------------------------------------

template <typename T>
void put_bytes(T &sig, const uint8_t *src, size_t n) {
    uint64_t v = 0;
    std::memcpy(&v, src, n < sizeof(T) ? n : sizeof(T));
    sig = static_cast<T>(v);
}
template <std::size_t W>
void put_bytes(VlWide<W> &sig, const uint8_t *src, size_t n) {
    for (std::size_t i = 0; i < W; i++) {
        uint32_t word = 0;
        for (std::size_t b = 0; b < 4; b++)
            if (4 * i + b < n) word |= uint32_t(src[4 * i + b]) << (8 * b);
        sig[i] = word;
    }
}
template <typename T>
void get_bytes(const T &sig, uint8_t *dst, size_t n) {
    uint64_t v = sig;
    std::memcpy(dst, &v, n < 8 ? n : 8);
}
template <std::size_t W>
void get_bytes(const VlWide<W> &sig, uint8_t *dst, size_t n) {
    for (std::size_t i = 0; i < n; i++) dst[i] = uint8_t(sig[i / 4] >> (8 * (i % 4)));
}
template <typename T> constexpr size_t sig_bytes(const T &) { return sizeof(T); }
template <std::size_t W> constexpr size_t sig_bytes(const VlWide<W> &) { return 4 * W; }

// --- The memory image behind the design's memory port ---------------------------------------

// A flat byte image served in beats of port_bytes (aligned, wholly inside the image).
struct FlatMemory {
    std::vector<uint8_t> bytes;
    unsigned port_bytes;
    FlatMemory(uint64_t size, unsigned port_bytes) : bytes(size, 0), port_bytes(port_bytes) {}
    bool in_bounds(uint64_t addr) const {
        return addr % port_bytes == 0 && addr + port_bytes <= bytes.size();
    }
    const uint8_t *beat(uint64_t addr) const { return bytes.data() + addr; }
    // Write one beat under its byte strobes (bit i of strb enables byte i).
    void write(uint64_t addr, const uint8_t *data, const uint8_t *strb) {
        for (unsigned i = 0; i < port_bytes; i++)
            if (strb[i / 8] >> (i % 8) & 1) bytes[addr + i] = data[i];
    }
};

// --- Stall injection -------------------------------------------------------------------------

// xorshift32; chance(p) is true with probability p / 65536.
struct Random {
    uint32_t state = 1;
    void seed(uint32_t s) { state = s ? s : 1; }
    uint32_t next() {
        state ^= state << 13; state ^= state >> 17; state ^= state << 5;
        return state;
    }
    bool chance(uint32_t p) { return p && (next() & 0xffff) < p; }
};

// --- Waveforms -------------------------------------------------------------------------------

// Dumps every evaluation of the model at a time stamp the harness gives (two per cycle: the
// settled inputs before the rising edge, then the state after it).
// prepare() goes before the model is constructed.
struct Tracer {
#ifdef CELOSIA_TRACE
    std::unique_ptr<CelosiaTraceFile> file;
    static void prepare(VerilatedContext *ctx) { ctx->traceEverOn(true); }
    bool open(VerilatedContext *, CELOSIA_CLASS *top, const char *path) {
        close();
        file.reset(new CelosiaTraceFile);
        top->trace(file.get(), 99);
        file->open(path);
        if (!file->isOpen()) { file.reset(); return false; }
        return true;
    }
    void dump(uint64_t time) { if (file) file->dump(time); }
    void close() { if (file) { file->close(); file.reset(); } }
#else
    static void prepare(VerilatedContext *) {}
    bool open(VerilatedContext *, CELOSIA_CLASS *, const char *) { return false; }
    void dump(uint64_t) {}
    void close() {}
#endif
    ~Tracer() { close(); }
};

}  // namespace celosia
