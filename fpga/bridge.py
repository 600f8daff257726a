"""The UART bridge: a framed serial protocol onto the CSR bus (AXI4-Lite) and the on-chip memory.

Frames (all multi-byte fields little endian; see docs/fpga.md)::

    request: 0xA5 | cmd | addr[4] | len | payload[len + 1 if cmd writes] | crc8
    reply:   0x5A | status | data[...] (only when status == OK) | crc8

``len`` encodes ``len + 1`` bytes (1..256). The CRC is CRC-8 (polynomial 0x07, initial value 0,
no reflection, no final xor) over every byte after the sync byte and before the CRC. A request
whose CRC does not match is answered with ``BAD_CRC`` and has no effect. A pause of more than
``timeout_cycles`` inside a request drops the partial request, so the receiver resynchronises on
the next 0xA5 after garbage.

The Python side of the protocol (:func:`crc8`, :func:`request`, :func:`parse_reply`) lives here
too, so the host backend and the hardware share one definition.
"""

from __future__ import annotations

import enum

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from celosia.hdl.axi import AXI4LiteSignature
from celosia.hdl.csr import CSR_ADDR_BITS

__all__ = ["REQ_SYNC", "REPLY_SYNC", "Cmd", "BridgeStatus", "MAX_LEN", "crc8", "request",
           "reply_length", "parse_reply", "BytePortSignature", "UartRx", "UartTx", "UartBridge"]

REQ_SYNC = 0xA5
REPLY_SYNC = 0x5A
CRC_POLY = 0x07
#: Largest payload of one request or reply (``len`` byte 255).
MAX_LEN = 256


class Cmd(enum.IntEnum):
    INFO = 0x01        #: reply: memory bytes (u32), core clock Hz (u32)
    READ_CSR = 0x02    #: addr = CSR byte offset; reply: the 32-bit value
    WRITE_CSR = 0x03   #: addr = CSR byte offset; len = 3; payload: the 32-bit value
    READ_MEM = 0x04    #: reply: len + 1 bytes from addr
    WRITE_MEM = 0x05   #: payload: len + 1 bytes to addr


class BridgeStatus(enum.IntEnum):
    OK = 0
    BAD_CRC = 1
    BAD_CMD = 2
    BAD_ADDR = 3       #: memory range outside [0, mem_bytes)
    BUS_ERROR = 4      #: the CSR bus answered with a non-OKAY response
    BAD_LEN = 5        #: WRITE_CSR with len != 3


WRITES = (Cmd.WRITE_CSR, Cmd.WRITE_MEM)


# --- host side ------------------------------------------------------------------------------

def crc8(data: bytes, crc: int = 0) -> int:
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLY) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def request(cmd: int, addr: int = 0, length: int = 1, payload: bytes = b"") -> bytes:
    """The bytes of one request frame (``length`` is the byte count, 1..256)."""
    if not 1 <= length <= MAX_LEN:
        raise ValueError(f"length {length} outside 1..{MAX_LEN}")
    if cmd in WRITES and len(payload) != length:
        raise ValueError("a write carries exactly `length` payload bytes")
    body = bytes([cmd]) + int(addr).to_bytes(4, "little") + bytes([length - 1]) + bytes(payload)
    return bytes([REQ_SYNC]) + body + bytes([crc8(body)])


def reply_length(cmd: int, length: int = 1) -> int:
    """Data bytes of a successful reply to ``cmd``."""
    return {Cmd.INFO: 8, Cmd.READ_CSR: 4, Cmd.READ_MEM: length}.get(cmd, 0)


def parse_reply(raw: bytes) -> tuple[BridgeStatus, bytes]:
    """(status, data) of one reply frame; raises ValueError on a malformed frame."""
    if len(raw) < 3 or raw[0] != REPLY_SYNC:
        raise ValueError(f"malformed reply {raw.hex()}")
    if crc8(raw[1:-1]) != raw[-1]:
        raise ValueError(f"reply CRC mismatch {raw.hex()}")
    return BridgeStatus(raw[1]), bytes(raw[2:-1])


# --- hardware -------------------------------------------------------------------------------

def crc8_taps() -> list[list[int]]:
    """For each bit of the CRC-8 register after one byte, the bits of ``crc ^ byte`` whose
    exclusive or it is (the CRC of one byte is linear in ``crc ^ byte``)."""
    return [[j for j in range(8) if crc8(bytes([1 << j])) >> i & 1] for i in range(8)]


def crc8_next(crc, byte):
    """The CRC-8 register after one byte, as an expression: one XOR tree per bit. (Unrolling
    the bitwise shift-and-Mux loop instead duplicates each step's operand in the netlist,
    2**8 copies per use, which made the bridge's Verilog some 345k lines.)"""
    c = crc ^ byte
    bits = []
    for taps in crc8_taps():
        bit = c[taps[0]]
        for j in taps[1:]:
            bit = bit ^ c[j]
        bits.append(bit)
    return Cat(*bits)


class BytePortSignature(wiring.Signature):
    """One byte access at a time (seen from the master): a request is taken on ``valid &
    ready``; a read answers with ``rvalid`` (one cycle) and ``rdata`` later."""

    def __init__(self):
        super().__init__({
            "valid": Out(1), "ready": In(1), "addr": Out(32), "we": Out(1), "wdata": Out(8),
            "rvalid": In(1), "rdata": In(8),
        })


class UartRx(wiring.Component):
    """8N1 receiver; ``data.valid`` pulses for one cycle per byte (no backpressure).

    The bits shift into a register behind a marker bit, so the marker reaching the bottom
    ends the byte (no bit counter); ``data.payload`` is that register, which holds until the
    next start bit has been confirmed, half a bit after the stop bit at the earliest."""

    def __init__(self, divisor: int):
        assert divisor >= 4
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "data": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(self.divisor))
        zero = Signal()
        m.d.comb += zero.eq(timer == 0)
        with m.If(~zero):
            m.d.sync += timer.eq(timer - 1)
        # [marker, 8 data bits, stop bit]: after nine samples the marker is at bit 0.
        shreg = Signal(10)
        m.d.comb += self.data.payload.eq(shreg[1:9])
        m.d.sync += self.data.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(zero):
                    m.d.sync += [timer.eq(self.divisor - 1), shreg.eq(1 << 9)]
                    with m.If(rx):
                        m.next = "IDLE"           # a glitch, not a start bit
                    with m.Else():
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(zero):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), timer.eq(self.divisor - 1)]
                    with m.If(shreg[1]):
                        m.d.sync += self.data.valid.eq(rx)    # a framing error drops the byte
                        m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """8N1 transmitter with a stream input.

    The bit timer runs freely: ``tick`` pulses once every ``divisor`` cycles, and the line
    changes only on a tick. A byte is taken whenever the previous one is on its stop bit (or
    the line is idle), behind one extra idle bit, so the start bit always lasts a whole bit."""

    def __init__(self, divisor: int):
        self.divisor = divisor
        super().__init__({"data": In(stream.Signature(8)), "tx": Out(1, init=1),
                          "tick": Out(1)})

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        m.d.comb += self.tick.eq(timer == 0)
        with m.If(self.tick):
            m.d.sync += timer.eq(self.divisor - 1)
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        # Bit 0 is on the line; shifting stops when only it (a stop or idle bit) is left.
        shreg = Signal(11, init=1)
        last = Signal()
        m.d.comb += [self.tx.eq(shreg[0]), last.eq(shreg[1:] == 0),
                     self.data.ready.eq(last)]
        with m.If(last & self.data.valid):
            m.d.sync += shreg.eq(Cat(1, 0, self.data.payload, 1))
        with m.Elif(self.tick & ~last):
            m.d.sync += shreg.eq(shreg[1:])
        return m


class UartBridge(wiring.Component):
    """UART pins in, a CSR bus master (AXI4-Lite) and a byte memory master out.

    Parameters
    ----------
    divisor : clock cycles per UART bit.
    mem_bytes : size of the memory behind ``mem`` (requests beyond it get ``BAD_ADDR``).
    clk_hz : reported by INFO.
    timeout_cycles : a gap this long inside a request drops it (measured in whole bit times
        of the transmitter's free-running bit timer, so the gap that drops a request is
        between ``timeout_cycles`` and ``timeout_cycles + divisor`` cycles long).

    Only the address bits below the memory size (at least the CSR address bits) are kept;
    higher address bits that are not zero only make a memory request ``BAD_ADDR``. The
    payload of a write goes into a 256-byte buffer and reaches memory after its CRC checked
    out; a READ_MEM reply byte goes from the memory straight to the transmitter. A CSR
    response (R or B) is taken only while the reply's CRC byte goes out: until then the bus
    holds it, so READ_CSR's data bytes come straight from ``rdata`` and its ``rresp`` (or the
    ``bresp``) is still there to make the status BUS_ERROR.
    """

    def __init__(self, divisor: int, mem_bytes: int, clk_hz: int = 0,
                 timeout_cycles: int | None = None):
        self.divisor, self.mem_bytes, self.clk_hz = divisor, mem_bytes, int(clk_hz)
        self.timeout_cycles = timeout_cycles or 40 * divisor
        super().__init__({
            "rx": In(1, init=1), "tx": Out(1, init=1),
            "csr": Out(AXI4LiteSignature(CSR_ADDR_BITS, 32)),
            "mem": Out(BytePortSignature()),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.urx = urx = UartRx(self.divisor)
        m.submodules.utx = utx = UartTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        rxv, rxb = urx.data.valid, urx.data.payload
        tx = utx.data

        m.submodules.buf = buf = Memory(shape=8, depth=MAX_LEN, init=[])
        bw = buf.write_port()
        br = buf.read_port()

        # Address: the bytes below ``k`` bits (the memory size, at least the CSR address),
        # plus a flag for any nonzero byte above them.
        k = max((self.mem_bytes - 1).bit_length(), CSR_ADDR_BITS, 1)
        kbytes = (k + 7) // 8
        addr = Signal(8 * kbytes)
        addr_hi = Signal()
        cmd = Signal(3)             # the command if it is one of Cmd, else 0
        length = Signal(8)          # bytes - 1
        cnt = Signal(8)
        crc = Signal(8)
        status = Signal(3)
        word = Signal(32)           # WRITE_CSR payload
        info = C(self.mem_bytes | self.clk_hz << 32, 64)

        # Inter-byte timeout while a request is being received, in bit times.
        ticks = -(-self.timeout_cycles // self.divisor) + 1
        idle = Signal(range(ticks + 1))
        expired = Signal()
        m.d.comb += expired.eq(idle == ticks)
        with m.If(rxv):
            m.d.sync += idle.eq(0)
        with m.Elif(utx.tick & ~expired):
            m.d.sync += idle.eq(idle + 1)

        # Range check: addr + length + 1 <= mem_bytes.
        in_range = Signal()
        mk = (self.mem_bytes - 1).bit_length()
        high = addr_hi | (addr[mk:] != 0 if mk < len(addr) else C(0))
        if self.mem_bytes == 1 << mk and mk >= 8:
            # a power of two: no carry out of the low mk bits
            carry = addr[8:mk].all() & ((addr[:8] + length) >> 8)[0]
            m.d.comb += in_range.eq(~high & ~carry)
        else:
            m.d.comb += in_range.eq(~high & (addr[:mk] + length + 1 <= self.mem_bytes))

        # CRC of whatever byte is received or sent.
        crc_in = Signal(8)
        crc_upd = Signal()
        with m.If(crc_upd):
            m.d.sync += crc.eq(crc8_next(crc, crc_in))

        m.d.comb += [bw.addr.eq(cnt), bw.data.eq(rxb), br.addr.eq(cnt)]
        csr = self.csr
        mem = self.mem
        m.d.comb += [csr.awaddr.eq(addr), csr.araddr.eq(addr), csr.wdata.eq(word),
                     csr.wstrb.eq(0xF), mem.addr.eq(addr), mem.wdata.eq(br.data)]

        def send_status(code):
            m.d.sync += [status.eq(code), cnt.eq(0)]
            m.next = "TX_SYNC"

        def receive():
            """In a request state: CRC over the received byte; the gap timeout."""
            m.d.comb += [crc_in.eq(rxb), crc_upd.eq(rxv)]
            with m.If(~rxv & expired):
                m.next = "IDLE"

        def send(payload, crc_too=True):
            m.d.comb += [tx.valid.eq(1), tx.payload.eq(payload), crc_in.eq(payload)]
            if crc_too:
                m.d.comb += crc_upd.eq(tx.ready)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(rxv & (rxb == REQ_SYNC)):
                    m.d.sync += [crc.eq(0), cnt.eq(0), addr_hi.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):              # cnt: 0 cmd, 1..4 addr, 5 len
                receive()
                with m.If(rxv):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == 0):
                        m.d.sync += cmd.eq(Mux((rxb[3:] == 0) & (rxb[:3] <= max(Cmd)),
                                               rxb[:3], 0))
                    with m.Elif(cnt <= kbytes):
                        m.d.sync += addr.eq(Cat(addr[8:], rxb))
                    with m.Elif(cnt <= 4):
                        with m.If(rxb != 0):
                            m.d.sync += addr_hi.eq(1)
                    with m.Else():
                        m.d.sync += [length.eq(rxb), cnt.eq(0)]
                        with m.If((cmd == Cmd.WRITE_CSR) | (cmd == Cmd.WRITE_MEM)):
                            m.next = "PAYLOAD"
                        with m.Else():
                            m.next = "CRC"
            with m.State("PAYLOAD"):
                receive()
                m.d.comb += bw.en.eq(rxv)
                with m.If(rxv):
                    m.d.sync += [word.eq(Cat(word[8:], rxb)), cnt.eq(cnt + 1)]
                    with m.If(cnt == length):
                        m.next = "CRC"
            with m.State("CRC"):
                with m.If(rxv):
                    with m.If(rxb == crc):
                        m.next = "EXEC"
                    with m.Else():
                        send_status(BridgeStatus.BAD_CRC)
                with m.Elif(expired):
                    m.next = "IDLE"

            with m.State("EXEC"):
                m.d.sync += cnt.eq(0)
                with m.Switch(cmd):
                    with m.Case(Cmd.INFO):
                        send_status(BridgeStatus.OK)
                    with m.Case(Cmd.READ_CSR):
                        m.d.sync += csr.arvalid.eq(1)
                        m.next = "CSR"
                    with m.Case(Cmd.WRITE_CSR):
                        with m.If(length != 3):
                            send_status(BridgeStatus.BAD_LEN)
                        with m.Else():
                            m.d.sync += [csr.awvalid.eq(1), csr.wvalid.eq(1)]
                            m.next = "CSR"
                    with m.Case(Cmd.READ_MEM, Cmd.WRITE_MEM):
                        with m.If(~in_range):
                            send_status(BridgeStatus.BAD_ADDR)
                        with m.Elif(cmd == Cmd.WRITE_MEM):
                            m.next = "COPY_RD"
                        with m.Else():
                            send_status(BridgeStatus.OK)
                    with m.Default():
                        send_status(BridgeStatus.BAD_CMD)

            # The CSR response is taken only in TX_CRC: until then R holds rresp and rdata.
            with m.State("CSR"):
                with m.If(csr.arready):
                    m.d.sync += csr.arvalid.eq(0)
                with m.If(csr.awready):
                    m.d.sync += csr.awvalid.eq(0)
                with m.If(csr.wready):
                    m.d.sync += csr.wvalid.eq(0)
                with m.If(csr.rvalid | csr.bvalid):
                    send_status(Mux((csr.rvalid & (csr.rresp != 0)) |
                                    (csr.bvalid & (csr.bresp != 0)),
                                    BridgeStatus.BUS_ERROR, BridgeStatus.OK))

            # WRITE_MEM: the checked payload from the buffer to memory, one byte at a time.
            with m.State("COPY_RD"):
                m.next = "COPY_WR"           # buffer data for cnt is valid next cycle
            with m.State("COPY_WR"):
                m.d.comb += [mem.valid.eq(1), mem.we.eq(1)]
                with m.If(mem.ready):
                    m.d.sync += [cnt.eq(cnt + 1), addr.eq(addr + 1)]
                    with m.If(cnt == length):
                        send_status(BridgeStatus.OK)
                    with m.Else():
                        m.next = "COPY_RD"

            # Reply.
            with m.State("TX_SYNC"):
                send(REPLY_SYNC, crc_too=False)
                with m.If(tx.ready):
                    m.d.sync += crc.eq(0)
                    m.next = "TX_STATUS"
            with m.State("TX_STATUS"):
                send(status)
                with m.If(tx.ready):
                    with m.If(status != BridgeStatus.OK):
                        m.next = "TX_CRC"
                    with m.Elif(cmd == Cmd.READ_MEM):
                        m.next = "MEM_REQ"
                    with m.Elif((cmd == Cmd.INFO) | (cmd == Cmd.READ_CSR)):
                        m.next = "TX_DATA"
                    with m.Else():
                        m.next = "TX_CRC"
            with m.State("TX_DATA"):             # INFO: two constant words; READ_CSR: rdata
                send(Mux(cmd[1], csr.rdata.word_select(cnt[:2], 8),
                         info.word_select(cnt[:3], 8)))
                with m.If(tx.ready):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If((cnt[:2] == 3) & (cnt[2] | cmd[1])):
                        m.next = "TX_CRC"
            with m.State("MEM_REQ"):
                m.d.comb += mem.valid.eq(tx.ready)
                with m.If(tx.ready & mem.ready):
                    m.next = "MEM_WAIT"
            with m.State("MEM_WAIT"):            # the transmitter is idle: it takes the byte
                with m.If(mem.rvalid):
                    send(mem.rdata)
                    m.d.sync += [cnt.eq(cnt + 1), addr.eq(addr + 1)]
                    with m.If(cnt == length):
                        m.next = "TX_CRC"
                    with m.Else():
                        m.next = "MEM_REQ"
            with m.State("TX_CRC"):
                m.d.comb += [csr.rready.eq(1), csr.bready.eq(1)]
                send(crc, crc_too=False)
                with m.If(tx.ready):
                    m.next = "IDLE"
        return m
