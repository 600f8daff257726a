// LiteDRAM's generated core (fpga/sdram.py: litedram_core.v with its GENSDRPHY, the ECP5
// cells modelled by ecp5_cells.v) on the SDRAM chip model (sdram_chip.h): the power-up
// sequence, then AXI traffic on the user port; checks every word read against what was
// written and prints one JSON object.
//
//   sdram_harness_top STEPS PART TCK_NS SEED RANDOM_WORDS BURSTS BURST_BEATS
//
// The top is sim/verilator_sdram.py's SdramHarnessTop (the core's ports under their own
// names). STEPS is a file of "write ADDRESS VALUE" / "wait CYCLES 0" lines (fpga/sdram.py
// init_sequence) played on the Wishbone control port; built with
// -DCELOSIA_SDRAM_GATEWARE_INIT the top initialises the chip itself and STEPS is unused.
// Then RANDOM_WORDS single-beat writes of random data under random byte strobes to random
// addresses, read back in a shuffled order; then BURSTS write bursts of BURST_BEATS beats to
// consecutive addresses, read back as bursts, timed: bytes per cycle from the first address
// handshake to the last response.
//
// The chip's clock is the core's delayed by half a period (inverted, or a 180-degree PLL
// output forwarded to the pin): the chip samples the pins half a cycle after the core's
// output registers change, and the core's input registers take the chip's read data half a
// cycle before the chip's edge it is due at, in the middle of the window the chip drives it
// (tAC after the edge before to tOH after its own edge): SdramChip::driving(). GENSDRPHY's
// read latency (CL + 2 core cycles from the controller's command to the data) is right for
// exactly this; sampling at or after the chip's edge instead returns every read one SDRAM
// word late.

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "celosia_verilated.h"
#include "sdram_chip.h"

using celosia::sdram::Dq;
using celosia::sdram::Pins;
using celosia::sdram::SdramChip;

namespace {

constexpr uint64_t STALL_LIMIT = 200000;    // cycles without progress: the run hangs
constexpr uint64_t INIT_LIMIT = 1000000;    // cycles for a gateware sequencer's power-up
constexpr unsigned AXI_BURST_INCR = 1;

struct Bench {
    VerilatedContext ctx;
    CELOSIA_CLASS top{&ctx};
    SdramChip chip;
    // The user port's beat (AXI size: log2 of it).
    const unsigned beat_bytes = unsigned(celosia::sig_bytes(top.user_port_axi_0_wdata));
    const unsigned axi_size = unsigned(__builtin_ctz(beat_bytes));
    uint64_t cycle = 0;
    std::string violation;
    std::vector<std::string> recent = std::vector<std::string>(12);  // the last commands
    size_t recent_next = 0;

    void print_recent() const {
        for (size_t i = 0; i < recent.size(); i++) {
            const std::string &line = recent[(recent_next + i) % recent.size()];
            if (!line.empty()) std::fprintf(stderr, "  %s\n", line.c_str());
        }
    }

    Bench(const celosia::sdram::Part &part, double tck) : chip(part, tck) {
        chip.on_violation = [this](const celosia::sdram::Violation &v) {
            if (violation.empty()) violation = v.message;
        };
    }

    // One clock cycle. The caller has set the core's inputs for this cycle; `before` runs
    // after the combinational outputs settled and before the core's rising edge (to see
    // handshakes). The chip's rising edge comes half a period after the core's: it sees the
    // pins the core's output registers took at the core's edge, and the DQ it drives is what
    // the core's input registers take at the next one.
    template <typename F>
    void tick(F before) {
        top.clk = 0;
        top.eval();
        before();
        top.clk = 1;
        top.eval();
        cycle++;
        Pins p;
        p.cke = top.sdram_cke;
        p.cs_n = top.sdram_cs_n;
        p.ras_n = top.sdram_ras_n;
        p.cas_n = top.sdram_cas_n;
        p.we_n = top.sdram_we_n;
        p.ba = top.sdram_ba;
        p.a = top.sdram_a;
        p.dqm = top.sdram_dm;
        p.dq = top.sdram_dq__out;
        p.dq_oe = top.sdram_dq__en != 0;
        if (p.dq_oe && top.sdram_dq__en != 0xffff && violation.empty())
            violation = "the core drives only some DQ pads";
        celosia::sdram::Command c = celosia::sdram::decode(p);
        if (c != celosia::sdram::Command::NOP && c != celosia::sdram::Command::DESELECT) {
            char line[96];
            std::snprintf(line, sizeof line, "edge %lld: %s bank %u a 0x%x",
                          (long long)chip.edge_count(), celosia::sdram::command_name(c), p.ba, p.a);
            recent[recent_next++ % recent.size()] = line;
        }
        chip.edge(p);
        Dq d = chip.driving();
        uint16_t bus = p.dq_oe ? p.dq : 0;
        for (unsigned lane = 0; lane < 2; lane++)
            if (d.lanes >> lane & 1) {
                uint16_t mask = uint16_t(0xff << (8 * lane));
                bus = uint16_t((bus & ~mask) | (d.value & mask));
            }
        top.sdram_dq = bus;
    }
    void tick() { tick([] {}); }

    // One access on the byte port (the UART bridge's way in); false if it hangs.
    bool byte_access(uint32_t addr, bool we, uint8_t wdata, uint8_t &rdata) {
        top.side_valid = 1;
        top.side_addr = addr;
        top.side_we = we;
        top.side_wdata = wdata;
        bool taken = false, answered = false;
        for (uint64_t i = 0; i < STALL_LIMIT && !taken && !failed(); i++) tick([&] { taken = top.side_ready; });
        top.side_valid = 0;
        if (!taken || we) return taken;
        for (uint64_t i = 0; i < STALL_LIMIT && !answered && !failed(); i++)
            tick([&] { answered = top.side_rvalid; rdata = top.side_rdata; });
        return answered;
    }
    bool failed() const { return !violation.empty(); }

#ifndef CELOSIA_SDRAM_GATEWARE_INIT
    // One Wishbone write (classic cycle: hold until ack).
    bool wb_write(uint32_t byte_addr, uint32_t value) {
        top.wb_ctrl_adr = byte_addr >> 2;
        top.wb_ctrl_dat_w = value;
        top.wb_ctrl_sel = 0xf;
        top.wb_ctrl_we = 1;
        top.wb_ctrl_cyc = 1;
        top.wb_ctrl_stb = 1;
        bool acked = false;
        for (uint64_t i = 0; i < 64 && !acked && !failed(); i++) tick([&] { acked = top.wb_ctrl_ack; });
        top.wb_ctrl_cyc = 0;
        top.wb_ctrl_stb = 0;
        top.wb_ctrl_we = 0;
        tick();
        return acked;
    }
#endif
};

struct Burst { uint32_t addr; unsigned beats; };

// AXI write then read of `bursts`; `memory` is the expected content (address -> byte).
// What one phase of AXI traffic did. It is created when the phase starts; moved() notes the
// cycles with a handshake and says whether the phase has hung, done() takes the time.
struct AxiResult {
    uint64_t cycles = 0, beats = 0, mismatches = 0;
    bool hung = false;
    const Bench &b;
    uint64_t start = b.cycle, last_progress = b.cycle;
    explicit AxiResult(const Bench &bench) : b(bench) {}
    bool stalled(bool moved) {
        if (moved) last_progress = b.cycle;
        hung = b.cycle - last_progress > STALL_LIMIT;
        return hung;
    }
    AxiResult &done() { cycles = b.cycle - start; return *this; }
};

// Offers burst i on an address channel (AW or AR), nothing once all went. One ID for all:
// responses come in order.
template <typename V, typename A, typename L, typename S, typename K, typename I>
void offer_address(V &valid, A &addr, L &len, S &size, K &kind, I &id,
                   const std::vector<Burst> &bursts, size_t i, unsigned axi_size) {
    valid = i < bursts.size();
    if (i >= bursts.size()) return;
    addr = bursts[i].addr;
    len = bursts[i].beats - 1;
    size = axi_size;
    kind = AXI_BURST_INCR;
    id = 0;
}

AxiResult axi_writes(Bench &b, const std::vector<Burst> &bursts,
                     const std::vector<uint8_t> &data, const std::vector<uint64_t> &strobes,
                     std::map<uint32_t, uint8_t> &memory) {
    AxiResult r(b);
    size_t aw = 0, w = 0, beat_in_burst = 0, responses = 0, word = 0;
    auto &t = b.top;
    t.user_port_axi_0_bready = 1;
    while (responses < bursts.size() && !b.failed()) {
        offer_address(t.user_port_axi_0_awvalid, t.user_port_axi_0_awaddr,
                      t.user_port_axi_0_awlen, t.user_port_axi_0_awsize,
                      t.user_port_axi_0_awburst, t.user_port_axi_0_awid, bursts, aw, b.axi_size);
        t.user_port_axi_0_wvalid = w < bursts.size();
        if (w < bursts.size()) {
            celosia::put_bytes(t.user_port_axi_0_wdata, &data[word * b.beat_bytes], b.beat_bytes);
            t.user_port_axi_0_wstrb = strobes[word];
            t.user_port_axi_0_wlast = beat_in_burst + 1 == bursts[w].beats;
        }
        bool aw_go = false, w_go = false, b_go = false;
        b.tick([&] {
            aw_go = t.user_port_axi_0_awvalid && t.user_port_axi_0_awready;
            w_go = t.user_port_axi_0_wvalid && t.user_port_axi_0_wready;
            b_go = t.user_port_axi_0_bvalid;
        });
        if (aw_go) aw++;
        if (w_go) {
            uint32_t addr = bursts[w].addr + unsigned(beat_in_burst) * b.beat_bytes;
            for (unsigned i = 0; i < b.beat_bytes; i++)
                if (strobes[word] >> i & 1) memory[addr + i] = data[word * b.beat_bytes + i];
            word++;
            r.beats++;
            if (++beat_in_burst == bursts[w].beats) { beat_in_burst = 0; w++; }
        }
        if (b_go) responses++;
        if (r.stalled(aw_go || w_go || b_go)) break;
    }
    t.user_port_axi_0_awvalid = 0;
    t.user_port_axi_0_wvalid = 0;
    return r.done();
}

AxiResult axi_reads(Bench &b, const std::vector<Burst> &bursts,
                    const std::map<uint32_t, uint8_t> &memory) {
    AxiResult r(b);
    size_t ar = 0, rb = 0, beat_in_burst = 0;
    auto &t = b.top;
    t.user_port_axi_0_rready = 1;
    while (rb < bursts.size() && !b.failed()) {
        offer_address(t.user_port_axi_0_arvalid, t.user_port_axi_0_araddr,
                      t.user_port_axi_0_arlen, t.user_port_axi_0_arsize,
                      t.user_port_axi_0_arburst, t.user_port_axi_0_arid, bursts, ar, b.axi_size);
        bool ar_go = false, r_go = false;
        std::vector<uint8_t> rdata(b.beat_bytes);
        bool rlast = false;
        b.tick([&] {
            ar_go = t.user_port_axi_0_arvalid && t.user_port_axi_0_arready;
            r_go = t.user_port_axi_0_rvalid;
            celosia::get_bytes(t.user_port_axi_0_rdata, rdata.data(), b.beat_bytes);
            rlast = t.user_port_axi_0_rlast;
        });
        if (ar_go) ar++;
        if (r_go) {
            uint32_t addr = bursts[rb].addr + unsigned(beat_in_burst) * b.beat_bytes;
            for (unsigned i = 0; i < b.beat_bytes; i++) {
                auto it = memory.find(addr + i);
                uint8_t expect = it == memory.end() ? 0 : it->second;
                if (rdata[i] != expect && r.mismatches++ < 5)
                    std::fprintf(stderr, "read 0x%02x at byte 0x%06x, expected 0x%02x\n",
                                 rdata[i], addr + i, expect);
            }
            bool last = ++beat_in_burst == bursts[rb].beats;
            if (rlast != last && r.mismatches++ < 5)
                std::fprintf(stderr, "rlast %d on beat %zu of %u\n", rlast, beat_in_burst,
                             bursts[rb].beats);
            r.beats++;
            if (last) { beat_in_burst = 0; rb++; }
        }
        if (r.stalled(ar_go || r_go)) break;
    }
    t.user_port_axi_0_arvalid = 0;
    return r.done();
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 8) {
        std::fprintf(stderr, "usage: %s STEPS PART TCK_NS SEED RANDOM_WORDS BURSTS BEATS\n",
                     argv[0]);
        return 2;
    }
    const celosia::sdram::Part *part = celosia::sdram::find_part(argv[2]);
    if (!part) { std::fprintf(stderr, "unknown part %s\n", argv[2]); return 2; }
    Bench b(*part, std::atof(argv[3]));
    celosia::Random rng;
    rng.seed(uint32_t(std::strtoul(argv[4], nullptr, 0)));
    unsigned random_words = unsigned(std::atoi(argv[5]));
    unsigned bursts_n = unsigned(std::atoi(argv[6])), beats = unsigned(std::atoi(argv[7]));
    uint32_t mem_bytes = uint32_t(part->geometry.bytes());
    const uint64_t all_bytes = b.beat_bytes >= 64 ? ~uint64_t(0) : (uint64_t(1) << b.beat_bytes) - 1;
    auto random_bytes = [&](std::vector<uint8_t> &v) {
        for (unsigned i = 0; i < b.beat_bytes; i++) v.push_back(uint8_t(rng.next()));
    };

    // Reset, then the power-up sequence.
    b.top.rst = 1;
    for (int i = 0; i < 8; i++) b.tick();
    b.top.rst = 0;
    bool acked = true;
#ifdef CELOSIA_SDRAM_GATEWARE_INIT
    // The top's own sequencer initialises the chip.
    while (!b.top.init_done && !b.failed() && b.cycle < INIT_LIMIT) b.tick();
#else
    std::ifstream steps(argv[1]);
    std::string kind;
    uint64_t x, y;
    while (steps >> kind >> x >> y && !b.failed()) {
        if (kind == "write") acked = b.wb_write(uint32_t(x), uint32_t(y)) && acked;
        else for (uint64_t i = 0; i < x; i++) b.tick();
    }
#endif
    uint64_t init_cycles = b.cycle;
    bool init_done = b.top.init_done;

    // Random single words, then long bursts.
    std::map<uint32_t, uint8_t> memory;
    std::vector<Burst> singles;
    std::vector<uint8_t> data;
    std::vector<uint64_t> strobes;
    for (unsigned i = 0; i < random_words; i++) {
        singles.push_back({(rng.next() % mem_bytes) & ~(b.beat_bytes - 1), 1});
        random_bytes(data);
        strobes.push_back(i % 4 ? all_bytes : (uint64_t(rng.next()) << 32 | rng.next()) & all_bytes);
    }
    AxiResult ws = axi_writes(b, singles, data, strobes, memory);
    std::vector<Burst> shuffled = singles;
    for (size_t i = shuffled.size(); i > 1; i--) std::swap(shuffled[i - 1], shuffled[rng.next() % i]);
    AxiResult rs = axi_reads(b, shuffled, memory);

    // Bytes through the byte port: half into words the AXI port wrote, read back through
    // both ports.
    uint64_t byte_start = b.cycle, byte_mismatches = 0;
    bool byte_hung = false;
    std::vector<uint32_t> byte_addrs;
    for (unsigned i = 0; i < random_words && !b.failed(); i++) {
        uint32_t addr = i % 2 ? singles[rng.next() % singles.size()].addr + rng.next() % b.beat_bytes
                              : rng.next() % mem_bytes;
        uint8_t value = uint8_t(rng.next()), unused;
        byte_hung |= !b.byte_access(addr, true, value, unused);
        memory[addr] = value;
        byte_addrs.push_back(addr);
    }
    for (size_t i = byte_addrs.size(); i > 1; i--) std::swap(byte_addrs[i - 1], byte_addrs[rng.next() % i]);
    std::vector<Burst> byte_beats;
    for (uint32_t addr : byte_addrs) {
        if (b.failed()) break;
        uint8_t got = 0;
        byte_hung |= !b.byte_access(addr, false, 0, got);
        auto it = memory.find(addr);
        uint8_t expect = it == memory.end() ? 0 : it->second;
        if (got != expect && byte_mismatches++ < 5)
            std::fprintf(stderr, "byte port read 0x%02x at 0x%06x, expected 0x%02x\n", got, addr, expect);
        byte_beats.push_back({addr & ~(b.beat_bytes - 1), 1});
    }
    uint64_t byte_cycles = b.cycle - byte_start;
    AxiResult bs = axi_reads(b, byte_beats, memory);

    std::vector<Burst> bursts;
    data.clear();
    strobes.clear();
    uint32_t base = (rng.next() % (mem_bytes / 2)) & ~0xfffu;
    for (unsigned i = 0; i < bursts_n; i++) bursts.push_back({base + i * beats * b.beat_bytes, beats});
    for (unsigned i = 0; i < bursts_n * beats; i++) {
        random_bytes(data);
        strobes.push_back(all_bytes);
    }
    AxiResult wb = axi_writes(b, bursts, data, strobes, memory);
    AxiResult rb = axi_reads(b, bursts, memory);
    for (int i = 0; i < 100; i++) b.tick();     // let refresh and the chip's checks run on

    if (b.failed()) {
        std::fprintf(stderr, "%s\nthe last commands:\n", b.violation.c_str());
        b.print_recent();
    }
    bool ok = !b.failed() && acked && init_done && !ws.hung && !rs.hung && !wb.hung && !rb.hung
              && !bs.hung && !byte_hung && rs.mismatches == 0 && rb.mismatches == 0
              && bs.mismatches == 0 && byte_mismatches == 0;
    auto rate = [&](const AxiResult &r) { return r.cycles ? double(r.beats * b.beat_bytes) / r.cycles : 0.0; };
    std::string v;
    for (char c : b.violation) v += c == '"' ? '\'' : c;
    std::printf("{\"ok\": %s, \"violation\": \"%s\", \"init_done\": %s, \"wishbone_acked\": %s, "
                "\"init_cycles\": %" PRIu64 ", \"cycles\": %" PRIu64 ", \"refreshes\": %" PRIu64 ", "
                "\"random_words\": %u, \"random_mismatches\": %" PRIu64 ", "
                "\"burst_bytes\": %" PRIu64 ", \"burst_mismatches\": %" PRIu64 ", "
                "\"hung\": %s, \"write_bytes_per_cycle\": %.4f, \"read_bytes_per_cycle\": %.4f, "
                "\"write_cycles\": %" PRIu64 ", \"read_cycles\": %" PRIu64 ", "
                "\"random_write_cycles\": %" PRIu64 ", \"random_read_cycles\": %" PRIu64 ", "
                "\"byte_accesses\": %zu, \"byte_mismatches\": %" PRIu64 ", "
                "\"byte_cycles\": %" PRIu64 "}\n",
                ok ? "true" : "false", v.c_str(), init_done ? "true" : "false",
                acked ? "true" : "false", init_cycles, b.cycle, b.chip.refreshes(), random_words,
                rs.mismatches, wb.beats * b.beat_bytes, rb.mismatches,
                (ws.hung || rs.hung || wb.hung || rb.hung || bs.hung || byte_hung) ? "true" : "false",
                rate(wb), rate(rb),
                wb.cycles, rb.cycles, ws.cycles, rs.cycles, 2 * byte_addrs.size(),
                byte_mismatches + bs.mismatches, byte_cycles);
    return ok ? 0 : 1;
}
