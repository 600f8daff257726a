// Transaction-level harness for the Verilated Celosia accelerator (hdl/accelerator.py): an
// AXI4 slave memory serving the accelerator's AXI4 master from a flat C++ image, and an
// AXI4-Lite master for its CSRs. The host (Python, through ctypes) writes the image, the CSRs
// and then lets this file clock the design in bulk until the program stops.
//
// Memory model: reads (any INCR burst length) answer in order, `latency` cycles after the
// address at the earliest; a write lands in the image when its data beat is accepted and is
// acknowledged on B the next cycle; every channel's ready (and read data valid) can drop at
// random with probability `stall`/65536. Write data may arrive before its address (AXI
// allows it); a write lands when both have arrived, and its B follows the next cycle. A beat
// outside the image sets the error flag and stops the run.
//
// Waveforms: in a trace build (see celosia_verilated.h) accel_trace_open() dumps the cycles
// of a window, CSR transactions included, until accel_trace_close().

#include <deque>
#include <vector>

#include "celosia_verilated.h"

#define M(name) top->m_axi___05F##name
#define S(name) top->s_axil___05F##name

namespace {

using namespace celosia;

struct ReadBeat {
    uint64_t due;
    uint64_t addr;
    bool last;
};

struct Harness {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<CELOSIA_CLASS> top;
    FlatMemory mem;
    Tracer tracer;
    uint64_t trace_from = 0, trace_to = 0;     // cycles [from, to) go into the waveform
    unsigned port_bytes;
    uint64_t cycle = 0;
    uint64_t reads = 0, writes = 0, read_bursts = 0;
    unsigned latency = 4;
    Random rng;
    uint32_t stall = 0;
    std::deque<ReadBeat> rq;
    std::deque<uint64_t> awq;   // write addresses waiting for their data
    std::deque<std::vector<uint8_t>> wq;   // write data (and strobes) waiting for an address
    std::deque<uint64_t> bq;    // due cycles of write responses
    int error = 0;
    uint64_t error_addr = 0;

    Harness(uint64_t mem_bytes, unsigned port_bytes)
        : ctx(new VerilatedContext), mem(mem_bytes, port_bytes), port_bytes(port_bytes) {
        Tracer::prepare(ctx.get());
        top.reset(new CELOSIA_CLASS(ctx.get()));
    }

    bool go() { return !rng.chance(stall); }

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
        // One more edge: a simulation top that registers its reset input (the model's reset
        // then leaves the combinational logic's inputs) leaves reset on it.
        top->clk = 1; top->eval(); top->clk = 0; top->eval();
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
            put_bytes(M(rdata), mem.beat(b.addr), port_bytes);
            M(rlast) = b.last;
        }
        M(bvalid) = !bq.empty() && bq.front() <= cycle;
        M(wready) = w_go;
        top->eval();
        bool traced = cycle >= trace_from && cycle < trace_to;
        if (traced) tracer.dump(2 * cycle);

        if (M(arvalid) && M(arready)) {
            uint64_t addr = M(araddr);
            unsigned len = M(arlen) + 1u;
            for (unsigned i = 0; i < len; i++) {
                uint64_t a = addr + uint64_t(i) * port_bytes;
                if (!mem.in_bounds(a)) { error = 1; error_addr = a; return; }
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
            if (!mem.in_bounds(addr)) { error = 2; error_addr = addr; return; }
            const uint8_t *data = wq.front().data();
            mem.write(addr, data, data + port_bytes);
            wq.pop_front();
            bq.push_back(cycle + 1);
            writes++;
        }
        top->clk = 1;
        top->eval();
        if (traced) tracer.dump(2 * cycle + 1);
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

    // Clock until STATUS.busy falls (polled every `poll` cycles) or max_cycles pass; with a
    // `watch_addr`, also stop once that register reads at least `target` (polled likewise).
    // Returns cycles run, or -1 on a memory error.
    int64_t run(uint64_t max_cycles, unsigned poll, uint32_t status_addr,
                int64_t watch_addr = -1, uint32_t target = 0) {
        uint64_t start = cycle;
        if (poll == 0) poll = 1;
        while (cycle - start < max_cycles) {
            uint64_t chunk = poll;
            if (chunk > max_cycles - (cycle - start)) chunk = max_cycles - (cycle - start);
            for (uint64_t i = 0; i < chunk && !error; i++) step();
            if (error) return -1;
            int64_t s = csr_read(status_addr);
            if (s < 0) return -1;
            if (!(s & 1)) break;
            if (watch_addr >= 0) {
                int64_t v = csr_read(uint32_t(watch_addr));
                if (v < 0) return -1;
                if (uint32_t(v) >= target) break;
            }
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
uint8_t *accel_mem(void *h) { return static_cast<Harness *>(h)->mem.bytes.data(); }
void accel_reset(void *h, int cycles) { static_cast<Harness *>(h)->reset(cycles); }
void accel_model(void *hp, unsigned latency, uint32_t seed, uint32_t stall) {
    Harness *h = static_cast<Harness *>(hp);
    h->latency = latency;
    h->rng.seed(seed);
    h->stall = stall;
}
int64_t accel_csr_read(void *h, uint32_t addr) { return static_cast<Harness *>(h)->csr_read(addr); }
int64_t accel_csr_write(void *h, uint32_t addr, uint32_t value) {
    return static_cast<Harness *>(h)->csr_write(addr, value);
}
int64_t accel_run(void *h, uint64_t max_cycles, unsigned poll, uint32_t status_addr) {
    return static_cast<Harness *>(h)->run(max_cycles, poll, status_addr);
}
int64_t accel_run_until(void *h, uint64_t max_cycles, unsigned poll, uint32_t status_addr,
                        uint32_t watch_addr, uint32_t target) {
    return static_cast<Harness *>(h)->run(max_cycles, poll, status_addr, watch_addr, target);
}
// Record cycles [from, to) (counted from the model's construction) into the waveform file;
// 1 when it opened (a trace build), else 0.
int accel_trace_open(void *hp, const char *path, uint64_t from, uint64_t to) {
    Harness *h = static_cast<Harness *>(hp);
    h->trace_from = from;
    h->trace_to = to;
    return h->tracer.open(h->ctx.get(), h->top.get(), path) ? 1 : 0;
}
void accel_trace_close(void *hp) { static_cast<Harness *>(hp)->tracer.close(); }
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
