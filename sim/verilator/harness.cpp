// Transaction-level harness for a Verilated Celosia core with a command stream, a done stream
// and a simple memory master port (rd_req / rd_resp / wr). The host hands over a flat memory
// image and packed commands; this file clocks the design in bulk and serves the port from a
// C++ memory model with a fixed read latency and optional random stalls.
//
// The shared pieces (the Verilated class, signal byte access, the memory image, stall
// injection) are in celosia_verilated.h.

#include <deque>
#include <vector>

#include "celosia_verilated.h"

namespace {

using namespace celosia;

struct Response {
    uint64_t due;
    std::vector<uint8_t> data;
};

struct Harness {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<CELOSIA_CLASS> top;
    FlatMemory mem;
    unsigned port_bytes;
    uint64_t cycle = 0;
    uint64_t reads = 0, writes = 0;
    unsigned latency = 2;
    Random rng;
    uint32_t req_stall = 0, resp_gap = 0, wr_stall = 0;   // stall chances in 1/65536
    std::deque<Response> pending;
    int error = 0;
    std::vector<uint8_t> scratch;

    Harness(uint64_t mem_bytes, unsigned port_bytes)
        : ctx(new VerilatedContext), mem(mem_bytes, port_bytes), port_bytes(port_bytes) {
        top.reset(new CELOSIA_CLASS(ctx.get()));
        scratch.resize(sig_bytes(top->mem___05Fwr___05Fpayload) + 8);
    }

    bool chance(uint32_t p) { return rng.chance(p); }

    void tick() {
        top->clk = 1;
        top->eval();
        top->clk = 0;
        cycle++;
    }

    void reset(int cycles) {
        top->rst = 1;
        top->cmd___05Fvalid = 0;
        top->done___05Fready = 0;
        top->mem___05Frd_req___05Fready = 0;
        top->mem___05Frd_resp___05Fvalid = 0;
        top->mem___05Fwr___05Fready = 0;
        for (int i = 0; i < cycles; i++) { top->eval(); tick(); }
        top->rst = 0;
        top->eval();
        tick();             // a top that registers its reset leaves reset on this edge
        top->eval();
        pending.clear();
    }

    // Drive the memory port's inputs for this cycle.
    void drive_port() {
        top->mem___05Frd_req___05Fready = !chance(req_stall);
        top->mem___05Fwr___05Fready = !chance(wr_stall);
        bool resp_valid = !pending.empty() && pending.front().due <= cycle && !chance(resp_gap);
        top->mem___05Frd_resp___05Fvalid = resp_valid;
        if (resp_valid) put_bytes(top->mem___05Frd_resp___05Fpayload, pending.front().data.data(), port_bytes);
    }

    void sample_port() {
        if (top->mem___05Frd_req___05Fvalid && top->mem___05Frd_req___05Fready) {
            uint64_t addr = top->mem___05Frd_req___05Fpayload;
            if (!mem.in_bounds(addr)) { error = 1; return; }
            pending.push_back(Response{cycle + latency,
                std::vector<uint8_t>(mem.beat(addr), mem.beat(addr) + port_bytes)});
            reads++;
        }
        if (top->mem___05Frd_resp___05Fvalid && top->mem___05Frd_resp___05Fready) pending.pop_front();
        if (top->mem___05Fwr___05Fvalid && top->mem___05Fwr___05Fready) {
            // Payload: addr (4 bytes), data (port_bytes), strobes (port_bytes bits).
            get_bytes(top->mem___05Fwr___05Fpayload, scratch.data(), 4 + port_bytes + (port_bytes + 7) / 8);
            uint32_t addr;
            std::memcpy(&addr, scratch.data(), 4);
            if (!mem.in_bounds(addr)) { error = 2; return; }
            const uint8_t *data = scratch.data() + 4;
            mem.write(addr, data, data + port_bytes);
            writes++;
        }
    }

    // Issue one command and clock until done; returns cycles from acceptance to done.
    int64_t run_command(const uint8_t *cmd, size_t len, uint64_t max_cycles, int *code) {
        put_bytes(top->cmd___05Fpayload, cmd, len);
        top->cmd___05Fvalid = 1;
        top->done___05Fready = 0;
        bool accepted = false;
        uint64_t start = 0;
        for (uint64_t n = 0; n < max_cycles; n++) {
            drive_port();
            top->eval();
            sample_port();
            if (error) return -2;
            if (!accepted && top->cmd___05Fvalid && top->cmd___05Fready) {
                accepted = true;
                start = cycle;
                tick();
                top->cmd___05Fvalid = 0;
                top->done___05Fready = 1;
                continue;
            }
            if (accepted && top->done___05Fvalid && top->done___05Fready) {
                *code = top->done___05Fpayload;
                uint64_t cycles = cycle - start;
                tick();
                top->done___05Fready = 0;
                top->eval();
                return int64_t(cycles);
            }
            tick();
        }
        return -1;
    }
};

}  // namespace

extern "C" {

void *celosia_new(uint64_t mem_bytes, unsigned port_bytes) {
    Harness *h = new Harness(mem_bytes, port_bytes);
    h->reset(4);
    return h;
}
void celosia_free(void *h) { delete static_cast<Harness *>(h); }
uint8_t *celosia_mem(void *h) { return static_cast<Harness *>(h)->mem.bytes.data(); }
uint64_t celosia_mem_size(void *h) { return static_cast<Harness *>(h)->mem.bytes.size(); }
void celosia_reset(void *h, int cycles) { static_cast<Harness *>(h)->reset(cycles); }
void celosia_port_model(void *hp, unsigned latency, uint32_t seed, uint32_t req_stall,
                        uint32_t resp_gap, uint32_t wr_stall) {
    Harness *h = static_cast<Harness *>(hp);
    h->latency = latency;
    h->rng.seed(seed);
    h->req_stall = req_stall; h->resp_gap = resp_gap; h->wr_stall = wr_stall;
}
int64_t celosia_run_command(void *h, const uint8_t *cmd, uint64_t len, uint64_t max_cycles,
                            int *code) {
    return static_cast<Harness *>(h)->run_command(cmd, len, max_cycles, code);
}
uint64_t celosia_counter(void *hp, int which) {
    Harness *h = static_cast<Harness *>(hp);
    switch (which) {
        case 0: return h->cycle;
        case 1: return h->reads;
        case 2: return h->writes;
        default: return 0;
    }
}

}  // extern "C"
