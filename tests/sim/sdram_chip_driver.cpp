// Plays command sequences into the SDRAM chip model (sim/verilator/sdram_chip.h) for
// tests/sim/test_sdram_chip.py.
//
//   sdram_chip_driver legal                  legal traffic on every chip part, CL2 and CL3;
//                                            exit 0 when every read returned the data written
//                                            and the chip saw no violation
//   sdram_chip_driver check NAME violate     a minimal sequence that breaks exactly check NAME
//   sdram_chip_driver check NAME fixed       the same sequence made legal (one edge later, the
//                                            missing command added, ...)
//   sdram_chip_driver list                   the names of the checks with a sequence
//
// Every violation is printed as "VIOLATION <check> <message>"; the test compares them.

#include "sdram_chip.h"

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace celosia::sdram;

namespace {

constexpr unsigned MODE_BL1 = 0, MODE_BL2 = 1, MODE_BL4 = 2, MODE_BL8 = 3, MODE_FULL_PAGE = 7;
constexpr unsigned MODE_INTERLEAVED = 1 << 3, MODE_SINGLE_WRITE = 1 << 9;
constexpr unsigned A10 = 1 << SdramChip::AUTO_PRECHARGE_BIT;
constexpr unsigned BOTH_BYTES = 3;

// A controller played by hand: one call per command edge, NOPs in between, write data
// queued for the burst edges after a WRITE, and a shadow of what the array should hold.
struct Bench {
    SdramChip chip;
    const Timing &t;
    std::deque<std::pair<uint16_t, unsigned>> wdata;   // (data, dqm) for the next edges
    std::deque<unsigned> dqm_plan;                      // DQM for the next edges (no data)
    std::deque<uint16_t> expected;                      // read data still to come
    std::map<uint64_t, uint16_t> shadow;
    unsigned burst = 1, cl = 0;
    bool single_write = false;
    uint64_t reads_checked = 0;
    int mismatches = 0;

    Bench(const char *part, double tck_ns) : chip(*find_part(part), tck_ns), t(chip.timing()) {
        chip.on_violation = [](const Violation &v) {
            std::printf("VIOLATION %s %s\n", v.check.c_str(), v.message.c_str());
        };
    }

    // One edge: queued write data (with its DQM) goes out unless the pins carry their own;
    // otherwise the next planned DQM does.
    void edge(Pins p) {
        unsigned planned = 0;
        if (!dqm_plan.empty()) {
            planned = dqm_plan.front();
            dqm_plan.pop_front();
        }
        if (!p.dq_oe && !wdata.empty()) {
            p.dq = wdata.front().first;
            p.dqm = wdata.front().second;
            p.dq_oe = true;
            wdata.pop_front();
        } else if (!p.dq_oe) {
            p.dqm |= planned;
        }
        Dq d = chip.edge(p);
        if (d.driven() && d.lanes == BOTH_BYTES) {
            if (expected.empty()) {
                std::printf("unexpected read data 0x%04x at edge %lld\n", d.value,
                            (long long)chip.edge_count() - 1);
                mismatches++;
            } else {
                if (d.value != expected.front()) {
                    std::printf("read 0x%04x, expected 0x%04x at edge %lld\n", d.value,
                                expected.front(), (long long)chip.edge_count() - 1);
                    mismatches++;
                }
                expected.pop_front();
                reads_checked++;
            }
        }
    }
    static Pins command(bool ras_n, bool cas_n, bool we_n, unsigned ba = 0, unsigned a = 0) {
        Pins p;
        p.cs_n = false;
        p.ras_n = ras_n;
        p.cas_n = cas_n;
        p.we_n = we_n;
        p.ba = ba;
        p.a = a;
        return p;
    }
    void nop(int64_t n = 1) { for (int64_t i = 0; i < n; i++) edge(command(1, 1, 1)); }
    // The next command `k` edges after the last one.
    void wait(int64_t k) { nop(k - 1); }

    void active(unsigned b, unsigned row) { edge(command(0, 1, 1, b, row)); }
    void precharge(unsigned b) { edge(command(0, 1, 0, b, 0)); }
    void precharge_all() { edge(command(0, 1, 0, 0, A10)); }
    void refresh() { edge(command(0, 0, 1)); }
    void burst_terminate() { edge(command(1, 1, 0)); }
    void load_mode(unsigned value) {
        edge(command(0, 0, 0, 0, value));
        cl = value >> 4 & 7;
        static const unsigned lengths[8] = {1, 2, 4, 8, 0, 0, 0, 0};
        burst = lengths[value & 7];
        single_write = value & MODE_SINGLE_WRITE;
    }

    uint64_t key(unsigned b, unsigned row, unsigned col) const {
        return (uint64_t(b) << 32) | (uint64_t(row) << 16) | col;
    }
    unsigned burst_col(unsigned start, unsigned i, unsigned length) const {
        if (length == 0) return (start + i) % chip.part().geometry.cols();
        return (start & ~(length - 1)) | ((start + i) & (length - 1));
    }
    // READ of `words` words (the whole burst, or fewer when the next command cuts it).
    void read(unsigned b, unsigned row, unsigned col, unsigned words, bool ap = false) {
        for (unsigned i = 0; i < words; i++) expected.push_back(shadow[key(b, row, burst_col(col, i, burst))]);
        edge(command(1, 0, 1, b, col | (ap ? A10 : 0)));
    }
    // WRITE of data[i] under dqm[i] (missing dqm: 0) from this edge on.
    void write(unsigned b, unsigned row, unsigned col, const std::vector<uint16_t> &data,
               bool ap = false, std::vector<unsigned> dqm = {}) {
        dqm.resize(data.size(), 0);
        unsigned length = single_write ? 1 : burst;
        for (size_t i = 0; i < data.size(); i++) {
            uint16_t &w = shadow[key(b, row, burst_col(col, unsigned(i), length))];
            if (!(dqm[i] & 1)) w = uint16_t((w & 0xff00) | (data[i] & 0x00ff));
            if (!(dqm[i] & 2)) w = uint16_t((w & 0x00ff) | (data[i] & 0xff00));
        }
        for (size_t i = 1; i < data.size(); i++) wdata.push_back({data[i], dqm[i]});
        Pins p = command(1, 0, 0, b, col | (ap ? A10 : 0));
        p.dq = data[0];
        p.dq_oe = true;
        p.dqm = dqm[0];
        edge(p);
    }

    // The datasheet power-up sequence, every gap at its minimum.
    void init(unsigned mode) {
        Pins off;                   // CKE low for the first half of the power-up wait
        off.cke = false;
        for (int64_t i = 0; i < t.init / 2; i++) edge(off);
        nop(t.init - t.init / 2);
        precharge_all();
        wait(t.tRP);
        for (unsigned i = 0; i < t.init_refreshes; i++) {
            refresh();
            wait(t.tRFC);
        }
        load_mode(mode);
        wait(t.tMRD);
    }
    unsigned mode(unsigned cl_, unsigned bl) const { return cl_ << 4 | bl; }
};

std::vector<uint16_t> pattern(uint32_t seed, unsigned n) {
    std::vector<uint16_t> v(n);
    for (unsigned i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = uint16_t(seed >> 16);
    }
    return v;
}

// --- Legal traffic ---------------------------------------------------------------------------

// Writes then reads back on one part at one clock and CAS latency; returns the reads checked.
uint64_t legal_traffic(const char *part, double tck_ns, unsigned cl, bool &ok) {
    Bench b(part, tck_ns);
    const Timing &t = b.t;
    unsigned rows = b.chip.part().geometry.rows(), cols = b.chip.part().geometry.cols();
    b.init(b.mode(cl, MODE_BL8));

    // BL8 in two banks: write, read back, explicit precharge.
    b.active(0, 100);
    b.wait(t.tRRD);
    b.active(3, rows - 1);
    b.wait(t.tRCD);
    b.write(0, 100, 8, pattern(1, 8));
    b.wait(8);
    b.write(3, rows - 1, cols - 8, pattern(2, 8), false, {0, 1, 2, 0, 3, 0, 0, 1});
    b.wait(8);
    b.read(0, 100, 8, 8);
    b.wait(8);
    b.read(3, rows - 1, cols - 5, 8);      // starts mid-burst: wraps inside the 8-word block
    b.wait(8 + cl);
    b.wait(t.tWR);
    b.precharge_all();
    b.wait(t.tRP);

    // Auto precharge: write then read the same row, each burst closing the row.
    b.active(1, 7);
    b.wait(t.tRCD);
    b.write(1, 7, 0, pattern(3, 8), true);
    b.wait(std::max<int64_t>(8 + t.tWR + t.tRP, t.tRC));
    b.active(1, 7);
    b.wait(t.tRCD);
    b.read(1, 7, 0, 8, true);
    b.wait(std::max<int64_t>(8 + t.tRP, t.tRC));

    // Refresh in the middle of traffic.
    b.refresh();
    b.wait(t.tRFC);

    // Burst lengths 1, 2 and 4, back-to-back column commands cutting nothing short.
    const unsigned lengths[] = {MODE_BL1, MODE_BL2, MODE_BL4};
    for (unsigned code : lengths) {
        unsigned n = 1u << code;
        b.load_mode(b.mode(cl, code));
        b.wait(t.tMRD);
        b.active(2, 4000 + code);
        b.wait(t.tRCD);
        for (unsigned c = 0; c < 4; c++) { b.write(2, 4000 + code, 16 + n * c, pattern(10 + c, n)); b.wait(n); }
        for (unsigned c = 0; c < 4; c++) { b.read(2, 4000 + code, 16 + n * c, n); b.wait(n); }
        b.wait(cl + t.tRAS);
        b.precharge(2);
        b.wait(t.tRP);
        if (code == MODE_BL1) {     // READ with auto precharge right after tRCD: tRAS lockout
            b.active(3, 9);
            b.wait(t.tRCD);
            b.read(3, 9, 0, 1, true);
            b.wait(std::max(t.tRC, t.tRAS_tRP) - t.tRCD);
            b.active(3, 9);
            b.wait(t.tRAS);
            b.precharge(3);
            b.wait(t.tRP);
        }
    }

    // Full page: a write burst crossing the end of the row, stopped by BURST TERMINATE;
    // a read cut by a READ to another bank, which is cut by a PRECHARGE.
    b.load_mode(b.mode(cl, MODE_FULL_PAGE));
    b.wait(t.tMRD);
    b.active(0, 5);
    b.wait(t.tRRD);
    b.active(1, 6);
    b.wait(t.tRCD);
    b.write(1, 6, 0, pattern(20, 40));
    b.wait(40);
    b.write(0, 5, cols - 20, pattern(21, 40));
    b.wait(40);
    b.burst_terminate();
    b.wait(t.tWR);
    b.read(0, 5, cols - 30, 30);
    b.wait(30);
    b.read(1, 6, 3, 12);
    b.wait(12);
    b.precharge_all();              // ends the read: CL words still come out
    b.wait(cl + t.tRP);

    // Read to write, DQM masking the read data the write would collide with (DQM read
    // latency 2: the mask goes out two edges before the data it hides); a write cut short by
    // a read; single-location write bursts.
    b.load_mode(b.mode(cl, MODE_BL4));
    b.wait(t.tMRD);
    b.active(2, 77);
    b.wait(t.tRCD);
    b.write(2, 77, 0, pattern(30, 4));
    b.wait(4);
    b.read(2, 77, 0, 1);            // edge r: its word comes out at r + CL
    for (unsigned e = 1; e <= cl; e++) {
        Pins p = Bench::command(1, 1, 1);
        p.dqm = e + 1 >= cl ? BOTH_BYTES : 0;     // hides the words due r+CL+1 .. r+2CL
        b.edge(p);
    }
    std::vector<unsigned> masked(4, 0);
    for (unsigned j = 0; j + 3 <= cl; j++) masked[j] = BOTH_BYTES;
    b.write(2, 77, 4, pattern(31, 4), false, masked);   // edge r + CL + 1
    b.wait(4);
    b.write(2, 77, 8, pattern(32, 2));      // cut by the READ two edges later
    b.wait(2);
    b.read(2, 77, 8, 4);                    // words 8, 9 written; 10, 11 untouched
    b.wait(4 + cl);
    b.precharge(2);
    b.wait(t.tRP);
    b.load_mode(b.mode(cl, MODE_BL4) | MODE_SINGLE_WRITE);
    b.wait(t.tMRD);
    b.active(2, 78);
    b.wait(t.tRCD);
    std::vector<uint16_t> words = pattern(33, 4);
    for (unsigned c = 0; c < 4; c++) { b.write(2, 78, 40 + c, {words[c]}); b.wait(1); }
    b.read(2, 78, 40, 4);
    b.wait(4 + cl + t.tWR);
    b.precharge(2);
    b.wait(t.tRP);

    // Distributed refresh at the average interval for a while.
    const int64_t interval = t.tREF / t.refresh_rows;
    for (int i = 0; i < 50; i++) {
        b.refresh();
        b.wait(interval);
    }
    b.nop(cl + 1);
    ok = b.mismatches == 0 && b.expected.empty() && !b.chip.failed();
    return b.reads_checked;
}

// --- One sequence per check ------------------------------------------------------------------

// The sequences run on an IS42S16160G-7 at 100 MHz (tRCD 2, tRP 2, tRAS 4, tRC 6, tRRD 2,
// tWR 2, tMRD 2, tRFC 6 edges) unless they need other numbers; each returns after the edge
// that breaks the check (or its legal twin).
constexpr const char *PART = "IS42S16160G-7";
constexpr double TCK = 10.0;

using Scenario = std::function<void(bool violate)>;

// A chip initialised with BL4.
std::unique_ptr<Bench> ready(const char *part = PART, double tck = TCK, unsigned cl = 2) {
    auto b = std::make_unique<Bench>(part, tck);
    b->init(b->mode(cl, MODE_BL4));
    return b;
}

std::map<std::string, Scenario> scenarios() {
    std::map<std::string, Scenario> s;
    s["init"] = [](bool v) {
        Bench b(PART, TCK);
        b.nop(b.t.init - (v ? 1 : 0));
        b.precharge_all();
    };
    s["cke"] = [](bool v) {
        auto b = ready();
        Pins p = Bench::command(1, 1, 1);
        p.cke = !v;
        b->edge(p);
    };
    s["mode"] = [](bool v) {
        auto b = ready();
        b->load_mode(b->mode(2, MODE_BL4) | (v ? MODE_INTERLEAVED : 0));
    };
    s["tCK"] = [](bool v) {             // -6 at 7.5 ns: CL2 needs 10 ns, CL3 6 ns
        Bench b("IS42S16160G-6", 7.5);
        b.init(b.mode(v ? 2 : 3, MODE_BL4));
    };
    s["tRCD"] = [](bool v) {
        auto b = ready();
        b->active(0, 1);
        b->wait(b->t.tRCD - v);
        b->read(0, 1, 0, 0);
    };
    s["tRP"] = [](bool v) {
        auto b = ready();
        b->active(0, 1);
        b->wait(b->t.tRAS + 2);         // so that tRC holds either way
        b->precharge(0);
        b->wait(b->t.tRP - v);
        b->active(0, 2);
    };
    s["tRAS"] = [](bool v) {
        auto b = ready();
        b->active(0, 1);
        b->wait(b->t.tRAS - v);
        b->precharge(0);
    };
    s["tRAS_max"] = [](bool v) {
        auto b = ready();
        b->chip.timing().refresh_gap = 0;   // no refresh can happen with the row open
        b->active(0, 1);
        b->wait(b->t.tRAS_max + v);
        b->precharge(0);
    };
    s["tRC"] = [](bool v) {            // at 7.5 ns: tRAS 5 + tRP 2 < tRC 8
        auto b = ready(PART, 7.5, 3);
        b->active(0, 1);
        b->wait(b->t.tRAS);
        b->precharge(0);
        b->wait(b->t.tRC - b->t.tRAS - v);
        b->active(0, 2);
    };
    s["tRRD"] = [](bool v) {
        auto b = ready();
        b->active(0, 1);
        b->wait(b->t.tRRD - v);
        b->active(1, 1);
    };
    s["tWR"] = [](bool v) {
        auto b = ready();
        b->active(0, 1);
        b->wait(b->t.tRCD);
        b->write(0, 1, 0, pattern(1, 4));
        b->wait(3 + b->t.tWR - v);      // from the last of the four data edges
        b->precharge(0);
    };
    s["tMRD"] = [](bool v) {
        auto b = ready();
        b->load_mode(b->mode(3, MODE_BL8));
        b->wait(b->t.tMRD - v);
        b->active(0, 1);
    };
    s["tRFC"] = [](bool v) {
        auto b = ready();
        b->refresh();
        b->wait(b->t.tRFC - v);
        b->active(0, 1);
    };
    s["tREF"] = [](bool v) {           // 8192 refreshes 8.0 us apart take 65.5 ms
        auto b = ready();
        const Timing &t = b->t;
        int64_t interval = t.tREF / t.refresh_rows + (v ? 20 : 0);
        for (unsigned i = 0; i <= t.refresh_rows + 1; i++) {
            b->refresh();
            b->wait(interval);
        }
    };
    s["tREFI"] = [](bool v) {
        auto b = ready();
        b->refresh();
        b->wait(b->t.refresh_gap + v);
        b->refresh();
    };
    s["bank_idle"] = [](bool v) {
        auto b = ready();
        b->active(0, 1);
        b->wait(b->t.tRCD);
        b->read(v ? 1 : 0, 1, 0, 0);
    };
    s["bank_open"] = [](bool v) {
        auto b = ready();
        b->active(0, 1);
        b->wait(b->t.tRAS);
        if (v) b->nop(); else b->precharge(0);
        b->wait(b->t.tRC - b->t.tRAS);
        b->active(0, 2);
    };
    s["bank_busy"] = [](bool v) {      // a READ into bank 0's auto-precharge burst
        auto b = ready();
        b->active(1, 1);
        b->wait(b->t.tRRD);
        b->active(0, 1);
        b->wait(b->t.tRCD);
        b->read(0, 1, 0, 0, true);
        b->wait(1);
        b->read(v ? 0 : 1, 1, 0, 0);
    };
    s["contention"] = [](bool v) {     // a WRITE into the read data, unless DQM hides it
        auto b = ready();
        b->active(0, 1);
        b->wait(b->t.tRCD);
        b->read(0, 1, 0, 1);            // edge r, CL 2: data due r+2, r+3, r+4 (cut at r+3)
        b->dqm_plan = {v ? 0u : BOTH_BYTES, v ? 0u : BOTH_BYTES};   // hide r+3, r+4
        b->wait(3);
        b->write(0, 1, 0, pattern(1, 4));
        b->wait(4);
    };
    s["write_data"] = [](bool v) {     // the last two words neither driven nor masked
        auto b = ready();
        b->active(0, 1);
        b->wait(b->t.tRCD);
        b->write(0, 1, 0, pattern(1, 2));
        b->dqm_plan = {0, v ? 0u : BOTH_BYTES, v ? 0u : BOTH_BYTES};    // edges 1, 2, 3
        b->wait(4);
    };
    return s;
}

}  // namespace

int main(int argc, char **argv) {
    std::string what = argc > 1 ? argv[1] : "";
    if (what == "legal") {
        struct Run { const char *part; double tck; unsigned cl; };
        const Run runs[] = {{"IS42S16160G-7", 10.0, 2}, {"IS42S16160G-7", 7.0, 3},
                            {"IS42S16160G-6", 6.0, 3}, {"MT48LC16M16A2-6A", 7.5, 2},
                            {"MT48LC16M16A2-7E", 10.0, 3}, {"AS4C32M16SB-7", 10.0, 2},
                            {"AS4C32M16SB-7", 7.5, 3}};
        bool all_ok = true;
        for (const Run &r : runs) {
            bool ok = false;
            uint64_t reads = legal_traffic(r.part, r.tck, r.cl, ok);
            std::printf("%s %s tck %.1f ns CL%u: %llu reads checked\n", ok ? "OK" : "FAIL",
                        r.part, r.tck, r.cl, (unsigned long long)reads);
            all_ok = all_ok && ok;
        }
        return all_ok ? 0 : 1;
    }
    auto all = scenarios();
    if (what == "list") {
        for (auto &kv : all) std::printf("%s\n", kv.first.c_str());
        return 0;
    }
    if (what == "check" && argc == 4 && all.count(argv[2])) {
        all[argv[2]](std::string(argv[3]) == "violate");
        std::printf("DONE\n");
        return 0;
    }
    std::fprintf(stderr, "usage: %s legal | list | check NAME violate|fixed\n", argv[0]);
    return 2;
}
