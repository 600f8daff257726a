// A cycle-level model of the ULX3S's 16-bit SDR SDRAM chip that checks the protocol.
//
// The harness calls SdramChip::edge() once per rising edge of the SDRAM clock with the pins
// the controller drives at that edge (command, address, DQM, DQ and its output enable, CKE);
// it returns the DQ the chip drives at that edge (read data the controller samples there).
// driving() is the data on the bus between two edges, for a controller that samples half a
// period off the chip's clock (LiteDRAM's GENSDRPHY, sim/verilator/litedram_harness.cpp).
// The model keeps the whole array in memory, so data written is read back.
//
// Modelled: the mode register (CAS latency 2/3, burst length 1/2/4/8/full page, sequential
// bursts, programmed or single-location write bursts), four banks with one open row each,
// ACTIVE, READ and WRITE with and without auto precharge (A10), PRECHARGE of one bank or all
// (A10), AUTO REFRESH, LOAD MODE REGISTER, NOP/DESELECT and BURST TERMINATE. Read data
// appears CL edges after the column access; a new READ, WRITE, BURST TERMINATE or a
// PRECHARGE of the bursting bank ends a burst at its own edge (column accesses before it
// still deliver their data). Write data is taken on the WRITE edge and the following burst
// edges, under DQM (write latency 0); DQM masks read data two edges later (read latency 2).
//
// Not modelled (a command using them is a violation): interleaved bursts, CAS latency 1,
// CKE low (power-down, self refresh, clock suspend).
//
// Every protocol violation is recorded as a Violation naming the check, the edge, the bank
// and row; the first one is kept (first()) and an optional callback is told, so a harness
// stops its run with the message and a test can look at it without aborting. The checks:
//
//   init        a command other than NOP/DESELECT before the power-up wait (t_init) has
//               passed, REFRESH or LOAD MODE before the first PRECHARGE ALL, or ACTIVE, READ,
//               WRITE or BURST TERMINATE before initialisation completed (PRECHARGE ALL,
//               init_refreshes AUTO REFRESH commands and LOAD MODE REGISTER, the last two in
//               either order, as the datasheets allow)
//   cke         CKE low once the first command was given (before it, during power-up, CKE
//               may be low and the chip ignores its inputs)
//   mode        a LOAD MODE value the model does not support (reserved or interleaved burst,
//               CL other than 2/3, test mode bits) or auto precharge with full-page bursts
//   tCK         a CAS latency whose minimum clock period is longer than the clock's
//   tRCD        READ/WRITE earlier than tRCD after the bank's ACTIVE
//   tRP         ACTIVE, AUTO REFRESH or LOAD MODE earlier than tRP after a precharge began
//               (explicit or auto precharge)
//   tRAS        PRECHARGE earlier than tRAS after the bank's ACTIVE
//   tRAS_max    a row open longer than tRAS max
//   tRC         ACTIVE earlier than tRC after the same bank's previous ACTIVE
//   tRRD        ACTIVE earlier than tRRD after an ACTIVE to another bank
//   tWR         PRECHARGE earlier than tWR after the bank's last write data
//   tMRD        any command earlier than tMRD after LOAD MODE REGISTER
//   tRFC        any command earlier than tRFC after AUTO REFRESH
//   tREF        a row of the refresh counter not refreshed for longer than tREF (64 ms): the
//               chip refreshes one row (in all banks) per AUTO REFRESH, cycling through
//               refresh_rows (8192) rows, so the check is that the AUTO REFRESH commands
//               k and k + 8192 are never more than tREF apart (a sliding window, checked on
//               every edge against the oldest of the last 8192 refreshes; the window starts
//               full at the end of initialisation)
//   tREFI       more than refresh_gap edges between two AUTO REFRESH commands (default nine
//               average intervals, 9 x 64 ms / 8192 = 70.3 us: the eight postponed
//               refreshes JEDEC allows, plus one). Datasheets also allow burst refresh
//               (all 8192 at once every 64 ms); a controller doing that sets refresh_gap to
//               0, which turns this check off. It catches a controller that stopped
//               refreshing in a run much shorter than 64 ms.
//   bank_idle   READ/WRITE to a bank with no open row
//   bank_open   ACTIVE to a bank with an open row; AUTO REFRESH or LOAD MODE with a row open
//   bank_busy   a command to a bank while its auto-precharge burst is running
//   contention  the controller drives DQ on an edge where the chip drives read data
//   write_data  a write-burst edge on which the controller does not drive DQ and DQM does
//               not mask both bytes
//
// Auto precharge starts at the edge after the last column access of a read burst (where an
// explicit PRECHARGE would have ended it) and tWR after the last write data of a write burst,
// but never before tRAS (the chips' tRAS lockout); a burst with auto precharge that another
// command ends starts its precharge then (concurrent auto precharge). The bank takes ACTIVE
// tRP after its precharge began; after a lockout-delayed read auto precharge, which begins
// when tRAS ends (between edges), ACTIVE may come tRAS + tRP after the previous ACTIVE,
// rounded up to an edge once (42 + 18 ns at 10 ns: 6 edges, not 5 + 2).

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace celosia {
namespace sdram {

// --- The chips -------------------------------------------------------------------------------

struct Geometry {
    unsigned banks, row_bits, col_bits;         // 16-bit words, two DQM lanes
    uint32_t rows() const { return 1u << row_bits; }
    uint32_t cols() const { return 1u << col_bits; }
    uint64_t words() const { return uint64_t(banks) << (row_bits + col_bits); }
    uint64_t bytes() const { return 2 * words(); }
};

// Datasheet AC characteristics of one speed grade, in ns unless named otherwise.
struct TimingNs {
    double tCK_cl2, tCK_cl3;        // minimum clock period at CAS latency 2 and 3
    double tRCD, tRP, tRAS, tRAS_max, tRC, tRRD, tWR, tRFC;
    unsigned tMRD_ck;               // in clocks
    double tREF_ms;                 // every row refreshed within this
    unsigned refresh_rows;          // AUTO REFRESH commands per tREF (rows of the counter)
    double init_us;                 // power-up wait with NOP before the first command
    unsigned init_refreshes;        // AUTO REFRESH commands the init sequence needs
};

struct Part {
    const char *name;
    Geometry geometry;
    TimingNs ns;
};

// The chips fitted to the ULX3S (amaranth-boards' one SDRAMResource, the same 13 address, 2
// bank and 16 DQ pins on the 12F/25F/45F/85F boards): 32 MB IS42S16160G or MT48LC16M16A2
// (8192 rows x 512 columns x 4 banks) and, on later boards, 64 MB AS4C32M16SB (1024 columns).
// -6 grades are 166 MHz parts, -7/-7E 143 MHz at CL3.
inline const std::vector<Part> &parts() {
    static const std::vector<Part> table = {
        //                                  tCK2  tCK3  tRCD tRP  tRAS  tRASmax  tRC  tRRD tWR tRFC MRD tREF  rows  init ref
        {"IS42S16160G-6",  {4, 13, 9},  {10.0, 6.0, 18, 18, 42, 100000, 60, 12, 12, 60, 2, 64, 8192, 100, 2}},
        {"IS42S16160G-7",  {4, 13, 9},  {10.0, 7.0, 15, 15, 37, 100000, 60, 14, 14, 60, 2, 64, 8192, 100, 2}},
        {"MT48LC16M16A2-6A", {4, 13, 9}, {7.5, 6.0, 18, 18, 42, 120000, 60, 12, 12, 60, 2, 64, 8192, 100, 2}},
        {"MT48LC16M16A2-7E", {4, 13, 9}, {7.5, 7.0, 15, 15, 37, 120000, 60, 14, 14, 66, 2, 64, 8192, 100, 2}},
        {"AS4C32M16SB-7",  {4, 13, 10}, {10.0, 7.0, 21, 21, 42, 100000, 63, 14, 14, 63, 2, 64, 8192, 200, 8}},
    };
    return table;
}

inline const Part *find_part(const std::string &name) {
    for (const Part &p : parts())
        if (name == p.name) return &p;
    return nullptr;
}

// The datasheet timing in edges of a clock of period tck_ns (each rounded up).
struct Timing {
    double tck_ns, tCK_cl2, tCK_cl3;
    unsigned tRCD, tRP, tRAS, tRC, tRRD, tWR, tRFC, tMRD;
    unsigned tRAS_tRP;              // tRAS + tRP rounded up once (auto precharge lockout)
    int64_t tRAS_max, tREF, refresh_gap, init;
    unsigned refresh_rows, init_refreshes;

    static int64_t edges(double ns, double tck_ns) {
        return int64_t(std::ceil(ns / tck_ns - 1e-9));     // 1e-9: 60 ns at 7.5 ns is 8
    }
    static Timing from(const TimingNs &t, double tck_ns) {
        Timing c;
        c.tck_ns = tck_ns;
        c.tCK_cl2 = t.tCK_cl2;
        c.tCK_cl3 = t.tCK_cl3;
        c.tRCD = edges(t.tRCD, tck_ns);
        c.tRP = edges(t.tRP, tck_ns);
        c.tRAS = edges(t.tRAS, tck_ns);
        c.tRAS_tRP = edges(t.tRAS + t.tRP, tck_ns);
        c.tRC = edges(t.tRC, tck_ns);
        c.tRRD = edges(t.tRRD, tck_ns);
        c.tWR = edges(t.tWR, tck_ns);
        c.tRFC = edges(t.tRFC, tck_ns);
        c.tMRD = t.tMRD_ck;
        c.tRAS_max = int64_t(t.tRAS_max / tck_ns);         // a maximum rounds down
        c.tREF = int64_t(t.tREF_ms * 1e6 / tck_ns);
        c.refresh_rows = t.refresh_rows;
        c.refresh_gap = int64_t(POSTPONED_REFRESHES_PLUS_ONE * t.tREF_ms * 1e6
                                 / t.refresh_rows / tck_ns);
        c.init = edges(t.init_us * 1e3, tck_ns);
        c.init_refreshes = t.init_refreshes;
        return c;
    }
    // JEDEC lets a controller postpone up to eight refreshes.
    static constexpr unsigned POSTPONED_REFRESHES_PLUS_ONE = 9;
};

// --- Pins and violations ---------------------------------------------------------------------

struct Pins {
    bool cke = true, cs_n = true, ras_n = true, cas_n = true, we_n = true;
    unsigned ba = 0, a = 0, dqm = 0;    // dqm bit i masks DQ byte i
    uint16_t dq = 0;                    // what the controller drives ...
    bool dq_oe = false;                 // ... when this is set
};

struct Dq {
    uint16_t value = 0;
    unsigned lanes = 0;                 // bit i: the chip drives DQ byte i
    bool driven() const { return lanes != 0; }
};

struct Violation {
    std::string check;      // the name of the check, as in the list above
    int64_t edge;
    int bank, row;          // -1 when the check is not about one bank or row
    std::string message;    // "<check> violated at edge <n> (bank b row r): <detail>"
};

enum class Command { DESELECT, NOP, ACTIVE, READ, WRITE, BURST_TERMINATE, PRECHARGE, REFRESH,
                     LOAD_MODE };

inline const char *command_name(Command c) {
    static const char *names[] = {"DESELECT", "NOP", "ACTIVE", "READ", "WRITE",
                                  "BURST TERMINATE", "PRECHARGE", "AUTO REFRESH", "LOAD MODE"};
    return names[int(c)];
}

inline Command decode(const Pins &p) {
    if (p.cs_n) return Command::DESELECT;
    static const Command by_ras_cas_we[8] = {
        Command::LOAD_MODE, Command::REFRESH, Command::PRECHARGE, Command::ACTIVE,
        Command::WRITE, Command::READ, Command::BURST_TERMINATE, Command::NOP};
    return by_ras_cas_we[(p.ras_n << 2) | (p.cas_n << 1) | p.we_n];
}

// --- The chip --------------------------------------------------------------------------------

class SdramChip {
public:
    static constexpr unsigned AUTO_PRECHARGE_BIT = 10;      // A10 on READ/WRITE/PRECHARGE
    static constexpr int64_t LONG_AGO = -(int64_t(1) << 40); // an event that never happened

    SdramChip(const Part &part, double tck_ns)
        : part_(part), geo_(part.geometry), t_(Timing::from(part.ns, tck_ns)),
          mem_(geo_.words(), 0), banks_(geo_.banks), refreshed_(t_.refresh_rows, 0) {}

    const Part &part() const { return part_; }
    const Timing &timing() const { return t_; }
    Timing &timing() { return t_; }             // e.g. refresh_gap = 0 for burst refresh
    int64_t edge_count() const { return now_; }
    bool initialised() const { return initialised_; }
    unsigned cas_latency() const { return cl_; }
    uint64_t refreshes() const { return refreshes_; }

    std::function<void(const Violation &)> on_violation;
    bool failed() const { return violations_ != 0; }
    uint64_t violations() const { return violations_; }
    const Violation &first() const { return first_; }

    // The array, for back-door loads and checks.
    uint16_t &word(unsigned bank, uint32_t row, uint32_t col) {
        return mem_[(uint64_t(bank) << (geo_.row_bits + geo_.col_bits))
                    | (uint64_t(row) << geo_.col_bits) | col];
    }

    // One rising edge of the SDRAM clock.
    Dq edge(const Pins &p) {
        const int64_t n = now_;
        Command cmd = decode(p);
        if (!p.cke && !started_) {      // power-up: CKE may stay low, inputs are ignored
            now_++;
            return Dq{};
        }
        check_refresh_deadlines(n);
        if (!p.cke) violate("cke", -1, -1, "CKE low after the first command (power-down, self"
                            " refresh and clock suspend are not modelled)");
        check_open_rows(n);
        if (cmd != Command::DESELECT && cmd != Command::NOP) {
            started_ = true;
            check_init(cmd);
            if (n < lmr_at_ + t_.tMRD)
                violate_after("tMRD", -1, -1, cmd, "LOAD MODE", n - lmr_at_, t_.tMRD);
            if (n < ref_at_ + t_.tRFC)
                violate_after("tRFC", -1, -1, cmd, "AUTO REFRESH", n - ref_at_, t_.tRFC);
        }
        end_burst_on(cmd, p);
        switch (cmd) {
        case Command::ACTIVE: activate(p.ba, p.a & (geo_.rows() - 1)); break;
        case Command::READ:
        case Command::WRITE: column(cmd, p.ba, p.a); break;
        case Command::PRECHARGE: precharge(p); break;
        case Command::REFRESH: refresh(); break;
        case Command::LOAD_MODE: load_mode(p.a); break;
        default: break;
        }
        burst_step(p);
        Dq out = read_output(p.dqm);
        if (out.driven() && p.dq_oe)
            violate("contention", -1, -1, "the controller drives DQ while the chip drives "
                    "read data");
        now_++;
        return out;
    }

    // The DQ the chip drives between the last edge and the next: the data due at the next
    // edge, which a chip puts out from tAC after the last edge to tOH after the next. A
    // controller sampling between the edges (on a clock half a period off the chip's, as
    // LiteDRAM's GENSDRPHY expects) takes this rather than edge()'s result.
    Dq driving() const { return due_at(now_, dqm_history_ >> 2 & 3); }

private:
    struct Bank {
        bool open = false;
        bool auto_precharge = false;        // an auto-precharge burst is running
        uint32_t row = 0;
        int64_t activated = LONG_AGO, precharged = LONG_AGO, written = LONG_AGO;
        int64_t idle_at = LONG_AGO;         // precharge done: the earliest next ACTIVE
    };
    struct Burst {
        bool active = false, write = false, auto_precharge = false;
        unsigned bank = 0;
        uint32_t start = 0, length = 0, index = 0;  // length 0: full page, until ended
    };
    struct ReadData { int64_t due; uint16_t value; };

    const Part &part_;
    Geometry geo_;
    Timing t_;
    std::vector<uint16_t> mem_;
    std::vector<Bank> banks_;
    Burst burst_;
    std::vector<ReadData> pipeline_;            // read data on its way out, in edge order
    unsigned dqm_history_ = 0;                  // DQM of the last two edges (read masking)

    int64_t now_ = 0;
    int64_t lmr_at_ = LONG_AGO, ref_at_ = LONG_AGO, act_at_ = LONG_AGO;
    int64_t gap_from_ = 0;                      // the tREFI check's last refresh
    int act_bank_ = -1;
    bool started_ = false;                      // a command other than NOP was seen
    bool mode_set_ = false, precharged_all_ = false, initialised_ = false;
    unsigned init_refreshes_ = 0;
    unsigned cl_ = 0, burst_length_ = 0;        // burst_length_ 0: full page
    bool single_write_ = false;
    uint64_t refreshes_ = 0;
    std::vector<int64_t> refreshed_;           // edge of each of the last refresh_rows REFs
    unsigned refresh_next_ = 0;                 // the counter's row (oldest refresh)

    uint64_t violations_ = 0;
    Violation first_;

    void violate(const char *check, int bank, int row, const std::string &detail) {
        char where[96];
        if (bank >= 0 && row >= 0)
            std::snprintf(where, sizeof where, " (bank %d row %d)", bank, row);
        else if (bank >= 0)
            std::snprintf(where, sizeof where, " (bank %d)", bank);
        else if (row >= 0)
            std::snprintf(where, sizeof where, " (row %d)", row);
        else
            where[0] = 0;
        Violation v{check, now_, bank, row,
                    std::string(check) + " violated at edge " + std::to_string(now_) + where
                    + ": " + detail};
        if (violations_++ == 0) first_ = v;
        if (on_violation) on_violation(v);
    }
    void violate_after(const char *check, int bank, int row, Command cmd, const char *since,
                       int64_t elapsed, int64_t needed) {
        violate(check, bank, row, std::string(command_name(cmd)) + " " + std::to_string(elapsed)
                + " edges after " + since + ", needs " + std::to_string(needed) + " ("
                + std::to_string(t_.tck_ns) + " ns clock)");
    }
    int row_of(unsigned b) const { return banks_[b].open ? int(banks_[b].row) : -1; }

    void check_init(Command cmd) {
        if (now_ < t_.init) {
            violate("init", -1, -1, std::string(command_name(cmd)) + " during the power-up "
                    "wait (" + std::to_string(now_) + " of " + std::to_string(t_.init)
                    + " edges)");
        } else if (!precharged_all_ && (cmd == Command::REFRESH || cmd == Command::LOAD_MODE)) {
            violate("init", -1, -1, std::string(command_name(cmd)) + " before the first "
                    "PRECHARGE ALL");
        } else if (!initialised_ && cmd != Command::PRECHARGE && cmd != Command::REFRESH
                   && cmd != Command::LOAD_MODE) {
            violate("init", -1, -1, std::string(command_name(cmd)) + " before initialisation "
                    "completed (" + std::to_string(init_refreshes_) + " of "
                    + std::to_string(t_.init_refreshes) + " AUTO REFRESH, mode register "
                    + (mode_set_ ? "loaded)" : "not loaded)"));
        }
    }

    // A lapse is reported once: the check then restarts its clock from this edge.
    void check_refresh_deadlines(int64_t n) {
        if (!initialised_) return;
        if (t_.refresh_gap && n > gap_from_ + t_.refresh_gap) {
            violate("tREFI", -1, -1, "no AUTO REFRESH for " + std::to_string(n - gap_from_)
                    + " edges, at most " + std::to_string(t_.refresh_gap));
            gap_from_ = n;
        }
        int64_t &oldest = refreshed_[refresh_next_];
        if (n > oldest + t_.tREF) {
            violate("tREF", -1, int(refresh_next_), "refresh-counter row not refreshed for "
                    + std::to_string(n - oldest) + " edges, at most " + std::to_string(t_.tREF)
                    + " (" + std::to_string(part_.ns.tREF_ms) + " ms)");
            oldest = n;
        }
    }

    void check_open_rows(int64_t n) {
        for (unsigned b = 0; b < geo_.banks; b++) {
            Bank &k = banks_[b];
            if (k.open && n == k.activated + t_.tRAS_max + 1)
                violate("tRAS_max", b, k.row, "row open for " + std::to_string(n - k.activated)
                        + " edges, at most " + std::to_string(t_.tRAS_max));
        }
    }

    // A READ, WRITE, BURST TERMINATE or a PRECHARGE of its bank ends the running burst at
    // this edge; a command to the bank of an auto-precharge burst is left for its handler to
    // report (bank_busy), and so is BURST TERMINATE of such a burst.
    void end_burst_on(Command cmd, const Pins &p) {
        if (!burst_.active) return;
        bool all = p.a >> AUTO_PRECHARGE_BIT & 1;
        bool ends = cmd == Command::READ || cmd == Command::WRITE
                    || cmd == Command::BURST_TERMINATE
                    || (cmd == Command::PRECHARGE && (all || p.ba == burst_.bank));
        if (!ends) return;
        if (burst_.auto_precharge) {
            if (cmd == Command::BURST_TERMINATE)
                violate("bank_busy", burst_.bank, banks_[burst_.bank].row, "BURST TERMINATE "
                        "of a burst with auto precharge");
            if (cmd == Command::BURST_TERMINATE || cmd == Command::PRECHARGE
                || p.ba == burst_.bank)
                return;
        }
        finish_burst(now_);
    }

    // Auto precharge begins at edge `at` or, for writes, tWR after the last write data.
    void finish_burst(int64_t at) {
        burst_.active = false;
        if (!burst_.auto_precharge) return;
        Bank &k = banks_[burst_.bank];
        if (burst_.write) at = std::max(at, k.written + int64_t(t_.tWR));
        k.precharged = at;
        k.idle_at = at + t_.tRP;
        // tRAS lockout: a read's auto precharge waits for tRAS, which ends between edges.
        if (!burst_.write)
            k.idle_at = std::max(k.idle_at, k.activated + t_.tRAS_tRP);
        else
            k.idle_at = std::max(k.idle_at, k.activated + int64_t(t_.tRAS + t_.tRP));
        k.open = false;
        k.auto_precharge = false;
    }

    void activate(unsigned b, uint32_t row) {
        const int64_t n = now_;
        Bank &k = banks_[b];
        if (k.auto_precharge)
            violate("bank_busy", b, k.row, "ACTIVE while the bank's auto precharge is pending");
        else if (k.open)
            violate("bank_open", b, k.row, "ACTIVE to row " + std::to_string(row)
                    + " with a row already open");
        if (n < k.idle_at)
            violate_after("tRP", b, row, Command::ACTIVE, "precharge", n - k.precharged,
                          k.idle_at - k.precharged);
        if (n < k.activated + t_.tRC)
            violate_after("tRC", b, row, Command::ACTIVE, "ACTIVE", n - k.activated, t_.tRC);
        if (act_bank_ >= 0 && unsigned(act_bank_) != b && n < act_at_ + t_.tRRD)
            violate_after("tRRD", b, row, Command::ACTIVE,
                          ("ACTIVE to bank " + std::to_string(act_bank_)).c_str(),
                          n - act_at_, t_.tRRD);
        k.open = true;
        k.row = row;
        k.activated = n;
        k.written = LONG_AGO;
        act_at_ = n;
        act_bank_ = int(b);
    }

    void column(Command cmd, unsigned b, unsigned a) {
        const int64_t n = now_;
        Bank &k = banks_[b];
        bool ap = a >> AUTO_PRECHARGE_BIT & 1;
        if (k.auto_precharge) {
            violate("bank_busy", b, k.row, std::string(command_name(cmd))
                    + " while the bank's auto precharge is pending");
            return;
        }
        if (!k.open) {
            violate("bank_idle", b, -1, std::string(command_name(cmd)) + " with no open row");
            return;
        }
        if (n < k.activated + t_.tRCD)
            violate_after("tRCD", b, k.row, cmd, "ACTIVE", n - k.activated, t_.tRCD);
        if (ap && burst_length_ == 0)
            violate("mode", b, k.row, std::string(command_name(cmd)) + " with auto precharge "
                    "in full-page burst mode");
        burst_ = Burst{};
        burst_.active = true;
        burst_.write = cmd == Command::WRITE;
        burst_.auto_precharge = ap;
        burst_.bank = b;
        burst_.start = a & (geo_.cols() - 1);
        burst_.length = burst_.write && single_write_ ? 1 : burst_length_;
        k.auto_precharge = ap;
    }

    void precharge(const Pins &p) {
        bool all = p.a >> AUTO_PRECHARGE_BIT & 1;
        if (all && !initialised_) precharged_all_ = precharged_all_ || now_ >= t_.init;
        for (unsigned b = 0; b < geo_.banks; b++) {
            if (!all && b != p.ba) continue;
            Bank &k = banks_[b];
            if (k.auto_precharge) {
                violate("bank_busy", b, k.row, "PRECHARGE while the bank's auto precharge is "
                        "pending");
                continue;
            }
            if (!k.open) continue;                  // precharging an idle bank is a NOP
            if (now_ < k.activated + t_.tRAS)
                violate_after("tRAS", b, k.row, Command::PRECHARGE, "ACTIVE",
                              now_ - k.activated, t_.tRAS);
            if (now_ < k.written + t_.tWR)
                violate_after("tWR", b, k.row, Command::PRECHARGE, "the last write data",
                              now_ - k.written, t_.tWR);
            k.open = false;
            k.precharged = now_;
            k.idle_at = now_ + t_.tRP;
        }
    }

    // AUTO REFRESH and LOAD MODE need every bank idle and precharged.
    void require_all_idle(Command cmd) {
        for (unsigned b = 0; b < geo_.banks; b++) {
            Bank &k = banks_[b];
            if (k.open || k.auto_precharge)
                violate("bank_open", b, k.row, std::string(command_name(cmd))
                        + " with a row open");
            else if (now_ < k.idle_at)
                violate_after("tRP", b, -1, cmd, "precharge", now_ - k.precharged,
                              k.idle_at - k.precharged);
        }
    }

    void refresh() {
        require_all_idle(Command::REFRESH);
        ref_at_ = gap_from_ = now_;
        refreshes_++;
        refreshed_[refresh_next_] = now_;
        refresh_next_ = (refresh_next_ + 1) % t_.refresh_rows;
        if (!initialised_ && precharged_all_) init_refreshes_++;
        update_initialised();
    }

    void load_mode(unsigned a) {
        require_all_idle(Command::LOAD_MODE);
        lmr_at_ = now_;
        unsigned bl = a & 7, interleaved = a >> 3 & 1, cl = a >> 4 & 7, op = a >> 7 & 3;
        static const int lengths[8] = {1, 2, 4, 8, -1, -1, -1, 0};
        if (lengths[bl] < 0 || interleaved || (cl != 2 && cl != 3) || op != 0) {
            violate("mode", -1, -1, "unsupported mode register value 0x" + hex(a)
                    + " (burst length code " + std::to_string(bl) + ", "
                    + (interleaved ? "interleaved" : "sequential") + ", CAS latency code "
                    + std::to_string(cl) + ", operating mode " + std::to_string(op) + ")");
            return;
        }
        double tck_min = cl == 2 ? t_.tCK_cl2 : t_.tCK_cl3;
        if (t_.tck_ns + 1e-9 < tck_min)
            violate("tCK", -1, -1, "CAS latency " + std::to_string(cl) + " needs a clock period "
                    "of at least " + std::to_string(tck_min) + " ns, the clock has "
                    + std::to_string(t_.tck_ns) + " ns");
        cl_ = cl;
        burst_length_ = lengths[bl];
        single_write_ = a >> 9 & 1;
        mode_set_ = true;
        update_initialised();
    }

    void update_initialised() {
        if (initialised_ || !mode_set_ || init_refreshes_ < t_.init_refreshes) return;
        initialised_ = true;
        // Every row counts as refreshed now, so the tREF window starts here.
        for (int64_t &e : refreshed_) e = now_;
        gap_from_ = now_;
    }

    // The column access of the running burst at this edge.
    void burst_step(const Pins &p) {
        if (!burst_.active) return;
        Bank &k = banks_[burst_.bank];
        uint32_t cols = geo_.cols(), col;
        if (burst_.length == 0) {
            col = (burst_.start + burst_.index) % cols;
        } else {
            uint32_t mask = burst_.length - 1;
            col = (burst_.start & ~mask) | ((burst_.start + burst_.index) & mask);
        }
        uint16_t &w = word(burst_.bank, k.row, col);
        if (burst_.write) {
            unsigned lanes = ~p.dqm & 3;
            if (lanes && !p.dq_oe)
                violate("write_data", burst_.bank, k.row, "write burst edge " + std::to_string(
                        burst_.index) + " (column " + std::to_string(col) + ") without data on"
                        " DQ and DQM not masking it");
            if (lanes && p.dq_oe) {
                if (lanes & 1) w = uint16_t((w & 0xff00) | (p.dq & 0x00ff));
                if (lanes & 2) w = uint16_t((w & 0x00ff) | (p.dq & 0xff00));
                k.written = now_;
            }
        } else {
            pipeline_.push_back({now_ + cl_, w});
        }
        burst_.index++;
        if (burst_.length && burst_.index == burst_.length)
            finish_burst(now_ + 1);     // as if a command at the next edge had ended it
    }

    // The read data due at edge e, under the DQM sampled two edges before it.
    Dq due_at(int64_t e, unsigned dqm_two_before) const {
        Dq out;
        if (!pipeline_.empty() && pipeline_.front().due == e) {
            out.value = pipeline_.front().value;
            out.lanes = ~dqm_two_before & 3;
        }
        return out;
    }

    Dq read_output(unsigned dqm) {
        Dq out = due_at(now_, dqm_history_ >> 2 & 3);
        dqm_history_ = ((dqm_history_ << 2) | (dqm & 3)) & 0xf;
        if (!pipeline_.empty() && pipeline_.front().due == now_)
            pipeline_.erase(pipeline_.begin());
        return out;
    }

    static std::string hex(unsigned v) {
        char s[16];
        std::snprintf(s, sizeof s, "%x", v);
        return s;
    }
};

}  // namespace sdram
}  // namespace celosia
