// Transaction-level harness for the Verilated Celosia accelerator (hdl/accelerator.py): an
// AXI4 slave memory serving the accelerator's AXI4 master from a flat C++ image, and an
// AXI4-Lite master for its CSRs. The host (Python, through ctypes) writes the image, the CSRs
// and then lets this file clock the design in bulk until the program stops.
//
// Memory model: reads (any INCR burst length) answer in order, `latency` cycles after the
// address at the earliest; a write lands in the image when its data beat is accepted and is
// acknowledged on B the next cycle; every channel's ready (and read data valid) can drop at
// random with probability `stall`/65536. Write data may arrive before its address (AXI
// allows it); a write lands when both have arrived, and its B follows the next cycle. A beat outside the image sets the error flag and
// stops the run.
//
// Verilator spells the double underscores of Amaranth's port names (m_axi__arvalid) as ___05F.

#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>

#include "verilated.h"
#define CELOSIA_STR2(x) #x
#define CELOSIA_STR(x) CELOSIA_STR2(x)
#define CELOSIA_CAT2(a, b) a##b
#define CELOSIA_CAT(a, b) CELOSIA_CAT2(a, b)
#define CELOSIA_CLASS CELOSIA_CAT(V, CELOSIA_TOP)
#include CELOSIA_STR(CELOSIA_HEADER)

#define M(name) top->m_axi___05F##name
#define S(name) top->s_axil___05F##name

namespace {

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

struct ReadBeat {
    uint64_t due;
    uint64_t addr;
    bool last;
};

struct Harness {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<CELOSIA_CLASS> top;
    std::vector<uint8_t> mem;
    unsigned port_bytes;
    uint64_t cycle = 0;
    uint64_t reads = 0, writes = 0, read_bursts = 0;
    unsigned latency = 4;
    uint32_t rng = 1, stall = 0;
    std::deque<ReadBeat> rq;
    std::deque<uint64_t> awq;   // write addresses waiting for their data
    std::deque<std::vector<uint8_t>> wq;   // write data (and strobes) waiting for an address
    std::deque<uint64_t> bq;    // due cycles of write responses
    int error = 0;
    uint64_t error_addr = 0;

    Harness(uint64_t mem_bytes, unsigned port_bytes)
        : ctx(new VerilatedContext), mem(mem_bytes, 0), port_bytes(port_bytes) {
        top.reset(new CELOSIA_CLASS(ctx.get()));
    }

    uint32_t next_random() {
        rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5;
        return rng;
    }
    bool go() { return !(stall && (next_random() & 0xffff) < stall); }

    bool in_bounds(uint64_t addr) const {
        return addr % port_bytes == 0 && addr + port_bytes <= mem.size();
    }

    void idle_host() {
        S(awvalid) = 0; S(wvalid) = 0; S(bready) = 0; S(arvalid) = 0; S(rready) = 0;
        S(awprot) = 0; S(arprot) = 0;
    }

    void reset(int cycles) {
        top->rst = 1;
        idle_host();
        M(arready) = 0; M(awready) = 0; M(wready) = 0; M(rvalid) = 0; M(bvalid) = 0;
        M(rid) = 0; M(bid) = 0; M(rresp) = 0; M(bresp) = 0;
        for (int i = 0; i < cycles; i++) { top->clk = 0; top->eval(); top->clk = 1; top->eval(); }
        top->clk = 0;
        top->rst = 0;
        top->eval();
        rq.clear(); awq.clear(); wq.clear(); bq.clear();
        error = 0;
    }

    // One clock cycle: drive the slave side, settle, sample handshakes, clock edge.
    void step() {
        bool ar_go = go(), aw_go = go(), w_go = go();
        M(arready) = ar_go;
        M(awready) = aw_go;
        bool rv = !rq.empty() && rq.front().due <= cycle && go();
        M(rvalid) = rv;
        if (rv) {
            const ReadBeat &b = rq.front();
            put_bytes(M(rdata), mem.data() + b.addr, port_bytes);
            M(rlast) = b.last;
        }
        M(bvalid) = !bq.empty() && bq.front() <= cycle;
        M(wready) = w_go;
        top->eval();

        if (M(arvalid) && M(arready)) {
            uint64_t addr = M(araddr);
            unsigned len = M(arlen) + 1u;
            for (unsigned i = 0; i < len; i++) {
                uint64_t a = addr + uint64_t(i) * port_bytes;
                if (!in_bounds(a)) { error = 1; error_addr = a; return; }
                rq.push_back(ReadBeat{cycle + latency, a, i + 1 == len});
            }
            reads += len;
            read_bursts++;
        }
        if (rv && M(rready)) rq.pop_front();
        if (M(bvalid) && M(bready)) bq.pop_front();
        if (M(awvalid) && M(awready)) awq.push_back(M(awaddr));
        if (M(wvalid) && M(wready)) {
            std::vector<uint8_t> beat(port_bytes + (port_bytes + 7) / 8);
            get_bytes(M(wdata), beat.data(), port_bytes);
            get_bytes(M(wstrb), beat.data() + port_bytes, (port_bytes + 7) / 8);
            wq.push_back(std::move(beat));
        }
        // A write lands when both its address and its data have arrived.
        while (!awq.empty() && !wq.empty()) {
            uint64_t addr = awq.front();
            awq.pop_front();
            if (!in_bounds(addr)) { error = 2; error_addr = addr; return; }
            const uint8_t *data = wq.front().data(), *strb = data + port_bytes;
            for (unsigned i = 0; i < port_bytes; i++)
                if (strb[i / 8] >> (i % 8) & 1) mem[addr + i] = data[i];
            wq.pop_front();
            bq.push_back(cycle + 1);
            writes++;
        }
        top->clk = 1;
        top->eval();
        top->clk = 0;
        cycle++;
    }

    // AXI4-Lite transactions (the design keeps running meanwhile). -1 on a memory error.
    int64_t csr_write(uint32_t addr, uint32_t value) {
        S(awaddr) = addr; S(wdata) = value; S(wstrb) = 0xf;
        S(awvalid) = 1; S(wvalid) = 1; S(bready) = 1;
        for (int n = 0; n < 1000 && !error; n++) {
            top->eval();
            bool aw = S(awvalid) && S(awready), w = S(wvalid) && S(wready);
            bool b = S(bvalid);
            step();
            if (aw) S(awvalid) = 0;
            if (w) S(wvalid) = 0;
            if (b) { idle_host(); return 0; }
        }
        idle_host();
        return -1;
    }

    int64_t csr_read(uint32_t addr) {
        S(araddr) = addr; S(arvalid) = 1; S(rready) = 1;
        for (int n = 0; n < 1000 && !error; n++) {
            top->eval();
            bool ar = S(arvalid) && S(arready);
            if (S(rvalid)) {
                uint32_t data = S(rdata);
                step();
                idle_host();
                return data;
            }
            step();
            if (ar) S(arvalid) = 0;
        }
        idle_host();
        return -1;
    }

    // Clock until STATUS.busy falls (polled every `poll` cycles) or max_cycles pass.
    // Returns cycles run, or -1 on a memory error.
    int64_t run(uint64_t max_cycles, unsigned poll, uint32_t status_addr) {
        uint64_t start = cycle;
        while (cycle - start < max_cycles) {
            uint64_t chunk = poll;
            if (chunk > max_cycles - (cycle - start)) chunk = max_cycles - (cycle - start);
            for (uint64_t i = 0; i < chunk && !error; i++) step();
            if (error) return -1;
            int64_t s = csr_read(status_addr);
            if (s < 0) return -1;
            if (!(s & 1)) break;
        }
        return int64_t(cycle - start);
    }
};

}  // namespace

extern "C" {

void *accel_new(uint64_t mem_bytes, unsigned port_bytes) {
    Harness *h = new Harness(mem_bytes, port_bytes);
    h->reset(4);
    return h;
}
void accel_free(void *h) { delete static_cast<Harness *>(h); }
uint8_t *accel_mem(void *h) { return static_cast<Harness *>(h)->mem.data(); }
void accel_reset(void *h, int cycles) { static_cast<Harness *>(h)->reset(cycles); }
void accel_model(void *hp, unsigned latency, uint32_t seed, uint32_t stall) {
    Harness *h = static_cast<Harness *>(hp);
    h->latency = latency;
    h->rng = seed ? seed : 1;
    h->stall = stall;
}
int64_t accel_csr_read(void *h, uint32_t addr) { return static_cast<Harness *>(h)->csr_read(addr); }
int64_t accel_csr_write(void *h, uint32_t addr, uint32_t value) {
    return static_cast<Harness *>(h)->csr_write(addr, value);
}
int64_t accel_run(void *h, uint64_t max_cycles, unsigned poll, uint32_t status_addr) {
    return static_cast<Harness *>(h)->run(max_cycles, poll, status_addr);
}
uint64_t accel_counter(void *hp, int which) {
    Harness *h = static_cast<Harness *>(hp);
    switch (which) {
        case 0: return h->cycle;
        case 1: return h->reads;
        case 2: return h->writes;
        case 3: return h->read_bursts;
        case 4: return uint64_t(h->error);
        case 5: return h->error_addr;
        default: return 0;
    }
}

}  // extern "C"
