// A simulated board on a TCP socket: clocks the Verilated fpga/simtop.py top (accelerator,
// on-chip memory, UART bridge) and bit-bangs its UART lines. Bytes a client sends to the
// socket go out on the board's `rx` line as 8N1 frames of `divisor` cycles per bit; the
// board's `tx` line is sampled in the middle of each bit and every complete byte goes back to
// the client. So pyserial's `socket://127.0.0.1:PORT` is a serial port to the board.
//
// Python (sim/verilator_uart.py, through ctypes) creates the board, makes it listen on
// 127.0.0.1 (port 0: an ephemeral port, returned) or opens a pseudo-terminal (board_pty: its
// slave path, e.g. /dev/pts/3, is then a serial port for pyserial), calls board_serve() from
// a thread (ctypes releases the GIL) and board_stop() to end it. One TCP client at a time;
// when it disconnects the board keeps its state and waits for the next one, as a powered
// board would (the pty stays open for the board's lifetime). board_reset() pulses the
// design's reset for 8 cycles between two cycles of the serving thread (a reset button: the
// CSRs and any running program are lost, the memory keeps its contents).
//
// Idling: the design is clocked continuously while bytes are moving, the accelerator has an
// AXI transaction in flight (the top's axi_active) or either happened within the last
// `active_cycles` cycles (far longer than the bridge's inter-byte timeout, so a partial
// request has been dropped before the board sleeps); otherwise the harness blocks in poll()
// for up to 10 ms at a time without clocking, so an idle board costs no CPU.
//
// Built with -DCELOSIA_SDRAM for a top whose memory window is the SDRAM (fpga/system.py,
// window="sdram"): the harness clocks the SDRAM chip model (sdram_chip.h) on the top's SDRAM
// pins, the chip's clock half a period after the core's (as litedram_harness.cpp does), and
// the first protocol violation stops the board (board_violation() gives its message). The
// chip's array can be loaded and read behind the controller's back (board_preload,
// board_peek) in LiteDRAM's ROW_BANK_COL order: 16-bit word w = byte address / 2 (low byte
// on DQ[7:0]) is column w % cols of bank (w / cols) % banks, row w / (cols * banks).

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pty.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>

#include <string>

#include "verilated.h"
#define CELOSIA_STR2(x) #x
#define CELOSIA_STR(x) CELOSIA_STR2(x)
#define CELOSIA_CAT2(a, b) a##b
#define CELOSIA_CAT(a, b) CELOSIA_CAT2(a, b)
#define CELOSIA_CLASS CELOSIA_CAT(V, CELOSIA_TOP)
#include CELOSIA_STR(CELOSIA_HEADER)
#ifdef CELOSIA_SDRAM
#include "sdram_chip.h"
#endif

#ifdef CELOSIA_SDRAM
typedef celosia::sdram::Part celosia_part_t;
#else
typedef void celosia_part_t;
#endif

namespace {

constexpr unsigned NET_PERIOD = 64;    // cycles between socket checks while active

struct Board {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<CELOSIA_CLASS> top;
    unsigned divisor;
    uint64_t active_cycles;
    int listen_fd = -1, client_fd = -1;
    int pty_slave = -1;         // pty mode: client_fd is the master, kept for good
    std::atomic<bool> stop{false}, drop{false}, reset_req{false};
    std::atomic<uint64_t> cycles{0}, bytes_in{0}, bytes_out{0}, clients{0}, sleeps{0}, resets{0};
    uint64_t cycle = 0, last_activity = 0;

    // host -> board (the rx line)
    std::deque<uint8_t> rxq;
    int rx_bit = -1;            // -1 idle, 0 start bit, 1..8 data, 9 stop bit
    unsigned rx_timer = 0;
    uint8_t rx_byte = 0;

    // board -> host (the tx line)
    enum { TX_IDLE, TX_START, TX_DATA, TX_STOP } tx_state = TX_IDLE;
    unsigned tx_timer = 0, tx_bit = 0;
    uint8_t tx_byte = 0;
    std::vector<uint8_t> outbuf;

#ifdef CELOSIA_SDRAM
    std::unique_ptr<celosia::sdram::SdramChip> chip;
    std::string violation;
    std::atomic<bool> failed{false};
    // ACTIVE, READ, WRITE and AUTO REFRESH commands the chip took (READ/WRITE: one 16-bit
    // word each, burst length 1).
    std::atomic<uint64_t> activates{0}, reads{0}, writes{0}, refreshes{0};
#endif

    Board(unsigned divisor, uint64_t active_cycles, const celosia_part_t *part, double tck_ns)
        : ctx(new VerilatedContext), divisor(divisor), active_cycles(active_cycles) {
#ifdef CELOSIA_SDRAM
        chip.reset(new celosia::sdram::SdramChip(*part, tck_ns));
        chip->on_violation = [this](const celosia::sdram::Violation &v) {
            if (violation.empty()) {
                violation = v.message;
                std::fprintf(stderr, "SDRAM chip model: %s\n", v.message.c_str());
            }
            failed = true;
            stop = true;
        };
#else
        (void)part;
        (void)tck_ns;
#endif
        top.reset(new CELOSIA_CLASS(ctx.get()));
        top->rx = 1;
        top->rst = 1;
        for (int i = 0; i < 8; i++) tick();
        top->rst = 0;
        top->eval();
    }

    ~Board() {
        if (client_fd >= 0) close(client_fd);
        if (listen_fd >= 0) close(listen_fd);
        if (pty_slave >= 0) close(pty_slave);
        top->final();
    }

    void tick() {
        top->clk = 0;
        top->eval();
        top->clk = 1;
        top->eval();
        cycle++;
#ifdef CELOSIA_SDRAM
        sdram_edge();
#endif
    }

#ifdef CELOSIA_SDRAM
    // The chip's edge half a period after the core's: it takes the pins the core's output
    // registers just set, and drives the read data the core's input registers take next.
    void sdram_edge() {
        using namespace celosia::sdram;
        Pins p;
        p.cke = top->sdram_cke;
        p.cs_n = top->sdram_cs_n;
        p.ras_n = top->sdram_ras_n;
        p.cas_n = top->sdram_cas_n;
        p.we_n = top->sdram_we_n;
        p.ba = top->sdram_ba;
        p.a = top->sdram_a;
        p.dqm = top->sdram_dm;
        p.dq = top->sdram_dq__out;
        p.dq_oe = top->sdram_dq__en != 0;
        switch (decode(p)) {
        case Command::ACTIVE: activates++; break;
        case Command::READ: reads++; break;
        case Command::WRITE: writes++; break;
        case Command::REFRESH: refreshes++; break;
        default: break;
        }
        chip->edge(p);
        Dq d = chip->driving();
        uint16_t bus = p.dq_oe ? p.dq : 0;
        for (unsigned lane = 0; lane < 2; lane++)
            if (d.lanes >> lane & 1) {
                uint16_t mask = uint16_t(0xff << (8 * lane));
                bus = uint16_t((bus & ~mask) | (d.value & mask));
            }
        top->sdram_dq = bus;
    }

    // The word holding byte `addr` (LiteDRAM's ROW_BANK_COL order), or null past the end.
    uint16_t *sdram_word(uint64_t addr) {
        const auto &g = chip->part().geometry;
        uint64_t w = addr >> 1;
        if (w >= g.words()) return nullptr;
        uint32_t col = uint32_t(w & (g.cols() - 1));
        unsigned bank = unsigned((w >> g.col_bits) % g.banks);
        uint32_t row = uint32_t(w >> g.col_bits) / g.banks;
        return &chip->word(bank, row, col);
    }
#endif

    int listen_on(int port) {
        listen_fd = socket(AF_INET, SOCK_STREAM, 0);
        if (listen_fd < 0) return -errno;
        int one = 1;
        setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(uint16_t(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(listen_fd, reinterpret_cast<sockaddr *>(&a), sizeof a) < 0) return -errno;
        if (listen(listen_fd, 4) < 0) return -errno;
        socklen_t len = sizeof a;
        getsockname(listen_fd, reinterpret_cast<sockaddr *>(&a), &len);
        fcntl(listen_fd, F_SETFL, O_NONBLOCK);
        return ntohs(a.sin_port);
    }

    // A pseudo-terminal in raw mode (no echo, no line editing); its slave's path into `name`.
    int open_pty(char *name, int len) {
        char path[128] = {0};
        if (openpty(&client_fd, &pty_slave, path, nullptr, nullptr) < 0) return -errno;
        termios t{};
        tcgetattr(pty_slave, &t);
        cfmakeraw(&t);
        tcsetattr(pty_slave, TCSANOW, &t);
        fcntl(client_fd, F_SETFL, O_NONBLOCK);
        std::strncpy(name, path, size_t(len) - 1);
        name[len - 1] = 0;
        clients++;
        return 0;
    }

    void close_client() {
        if (pty_slave >= 0) {   // a pty cannot be unplugged; drop what is in flight
            rxq.clear();
            outbuf.clear();
            return;
        }
        if (client_fd >= 0) close(client_fd);
        client_fd = -1;
        rxq.clear();
        outbuf.clear();
    }

    // Accept, receive and send without blocking longer than `timeout_ms`.
    void service_net(int timeout_ms) {
        if (drop.exchange(false)) close_client();
        pollfd p{};
        p.fd = client_fd >= 0 ? client_fd : listen_fd;
        if (p.fd < 0) return;
        p.events = POLLIN;
        if (client_fd >= 0 && !outbuf.empty()) p.events |= POLLOUT;
        if (poll(&p, 1, timeout_ms) <= 0) return;
        if (client_fd < 0) {
            int fd = accept(listen_fd, nullptr, nullptr);
            if (fd >= 0) {
                fcntl(fd, F_SETFL, O_NONBLOCK);
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                client_fd = fd;
                clients++;
                last_activity = cycle;
            }
            return;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            uint8_t buf[4096];
            ssize_t n = pty_slave >= 0 ? read(client_fd, buf, sizeof buf)
                                       : recv(client_fd, buf, sizeof buf, 0);
            if (n > 0) {
                rxq.insert(rxq.end(), buf, buf + n);
                last_activity = cycle;
            } else if (pty_slave >= 0) {
                // nothing to read (the slave end is held open here, so no hang-up)
            } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                close_client();
                return;
            }
        }
        flush_out();
    }

    void flush_out() {
        if (client_fd < 0 || outbuf.empty()) return;
        ssize_t n = pty_slave >= 0 ? write(client_fd, outbuf.data(), outbuf.size())
                                   : send(client_fd, outbuf.data(), outbuf.size(), MSG_NOSIGNAL);
        if (n > 0) {
            outbuf.erase(outbuf.begin(), outbuf.begin() + n);
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            close_client();
        }
    }

    // The rx line for this cycle.
    void drive_rx() {
        if (rx_bit < 0) {
            if (rxq.empty()) {
                top->rx = 1;
                return;
            }
            rx_byte = rxq.front();
            rxq.pop_front();
            rx_bit = 0;
            rx_timer = divisor;
            bytes_in++;
            last_activity = cycle;
        }
        top->rx = rx_bit == 0 ? 0 : rx_bit == 9 ? 1 : (rx_byte >> (rx_bit - 1)) & 1;
        if (--rx_timer == 0) {
            rx_timer = divisor;
            if (++rx_bit == 10) rx_bit = -1;
        }
    }

    // Sample the tx line after a clock edge.
    void sample_tx() {
        bool line = top->tx;
        switch (tx_state) {
        case TX_IDLE:
            if (!line) {
                tx_state = TX_START;
                tx_timer = divisor / 2;
            }
            return;
        case TX_START:
            if (--tx_timer) return;
            if (line) {
                tx_state = TX_IDLE;     // a glitch
                return;
            }
            tx_state = TX_DATA;
            tx_bit = 0;
            tx_byte = 0;
            tx_timer = divisor;
            return;
        case TX_DATA:
            if (--tx_timer) return;
            tx_byte |= uint8_t(line) << tx_bit;
            tx_timer = divisor;
            if (++tx_bit == 8) tx_state = TX_STOP;
            return;
        case TX_STOP:
            if (--tx_timer) return;
            if (line) {
                outbuf.push_back(tx_byte);
                bytes_out++;
                last_activity = cycle;
            }
            tx_state = TX_IDLE;
            return;
        }
    }

    bool idle() const {
        return rxq.empty() && rx_bit < 0 && tx_state == TX_IDLE && outbuf.empty()
               && cycle - last_activity >= active_cycles;
    }

    // The reset line high for 8 cycles, as a reset button would: the gateware restarts (the
    // memory keeps its contents), a byte half way through on either line is lost.
    void reset_gateware() {
        top->rx = 1;
        top->rst = 1;
        for (int i = 0; i < 8; i++) tick();
        top->rst = 0;
        top->eval();
        rx_bit = -1;
        tx_state = TX_IDLE;
        last_activity = cycle;
        resets++;
    }

    void serve() {
        while (!stop.load(std::memory_order_relaxed)) {
            if (reset_req.exchange(false)) reset_gateware();
            if (idle()) {
                sleeps++;
                service_net(10);
                continue;
            }
            for (unsigned i = 0; i < NET_PERIOD; i++) {
                drive_rx();
                tick();
                sample_tx();
                if (top->axi_active) last_activity = cycle;
            }
            cycles.store(cycle, std::memory_order_relaxed);
            if (!outbuf.empty() && (tx_state == TX_IDLE || outbuf.size() >= 256)) flush_out();
            service_net(0);
        }
    }
};

}  // namespace

extern "C" {

// `part` names an SDRAM chip of sdram_chip.h and `tck_ns` is the core's clock period (both
// ignored without CELOSIA_SDRAM); null for an unknown part.
void *board_new(unsigned divisor, uint64_t active_cycles, const char *part, double tck_ns) {
#ifdef CELOSIA_SDRAM
    const celosia::sdram::Part *p = celosia::sdram::find_part(part ? part : "");
    if (!p) return nullptr;
    return new Board(divisor, active_cycles, p, tck_ns);
#else
    (void)part;
    return new Board(divisor, active_cycles, nullptr, tck_ns);
#endif
}

// Load `n` bytes at `addr` into the SDRAM chip's array / read them back, behind the
// controller's back (only while the board is not serving). 0, or -1 past the end of the chip
// (or without an SDRAM).
int board_preload(void *h, uint64_t addr, const uint8_t *data, uint64_t n) {
#ifdef CELOSIA_SDRAM
    Board *b = static_cast<Board *>(h);
    if (n && !b->sdram_word(addr + n - 1)) return -1;     // nothing written past the end
    for (uint64_t i = 0; i < n; i++) {
        uint16_t *w = b->sdram_word(addr + i);
        unsigned shift = ((addr + i) & 1) * 8;
        *w = uint16_t((*w & ~(0xffu << shift)) | (unsigned(data[i]) << shift));
    }
    return 0;
#else
    (void)h, (void)addr, (void)data, (void)n;
    return -1;
#endif
}

int board_peek(void *h, uint64_t addr, uint8_t *data, uint64_t n) {
#ifdef CELOSIA_SDRAM
    Board *b = static_cast<Board *>(h);
    if (n && !b->sdram_word(addr + n - 1)) return -1;
    for (uint64_t i = 0; i < n; i++) {
        uint16_t *w = b->sdram_word(addr + i);
        data[i] = uint8_t(*w >> (((addr + i) & 1) * 8));
    }
    return 0;
#else
    (void)h, (void)addr, (void)data, (void)n;
    return -1;
#endif
}

// The SDRAM chip model's first protocol violation ("" if none) into `buf`.
void board_violation(void *h, char *buf, int len) {
    buf[0] = 0;
#ifdef CELOSIA_SDRAM
    Board *b = static_cast<Board *>(h);
    if (b->failed.load()) {
        std::strncpy(buf, b->violation.c_str(), size_t(len) - 1);
        buf[len - 1] = 0;
    }
#else
    (void)h, (void)len;
#endif
}

void board_free(void *h) { delete static_cast<Board *>(h); }

int board_listen(void *h, int port) { return static_cast<Board *>(h)->listen_on(port); }

int board_pty(void *h, char *name, int len) { return static_cast<Board *>(h)->open_pty(name, len); }

void board_serve(void *h) { static_cast<Board *>(h)->serve(); }

void board_stop(void *h) { static_cast<Board *>(h)->stop = true; }

// Close the current client's connection (a pulled cable); the board waits for the next one.
void board_drop_client(void *h) { static_cast<Board *>(h)->drop = true; }

// Reset the gateware (between two cycles of the serving thread).
void board_reset(void *h) { static_cast<Board *>(h)->reset_req = true; }

uint64_t board_stat(void *h, int which) {
    Board *b = static_cast<Board *>(h);
    switch (which) {
    case 0: return b->cycles.load();
    case 1: return b->bytes_in.load();
    case 2: return b->bytes_out.load();
    case 3: return b->clients.load();
    case 4: return b->sleeps.load();
    case 10: return b->resets.load();
#ifdef CELOSIA_SDRAM
    case 5: return b->activates.load();
    case 6: return b->reads.load();
    case 7: return b->writes.load();
    case 8: return b->refreshes.load();
    case 9: return b->top->mem_ready;
#endif
    default: return 0;
    }
}

}  // extern "C"
