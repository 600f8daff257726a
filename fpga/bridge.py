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
    """8N1 receiver; ``data.valid`` pulses for one cycle per byte (no backpressure)."""

    def __init__(self, divisor: int):
        assert divisor >= 4
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "data": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(self.divisor * 3 // 2 + 1))
        bit = Signal(range(9))
        shreg = Signal(8)
        m.d.sync += self.data.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(self.divisor // 2)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.next = "IDLE"               # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), bit.eq(bit + 1),
                                 timer.eq(self.divisor - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    with m.If(rx):                # a framing error drops the byte
                        m.d.sync += [self.data.valid.eq(1), self.data.payload.eq(shreg)]
                    m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """8N1 transmitter with a stream input."""

    def __init__(self, divisor: int):
        self.divisor = divisor
        super().__init__({"data": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        bits = Signal(range(11))
        shreg = Signal(10, init=0x3FF)
        m.d.comb += [self.tx.eq(shreg[0]), self.data.ready.eq(bits == 0)]
        with m.If(bits == 0):
            with m.If(self.data.valid):
                m.d.sync += [shreg.eq(Cat(0, self.data.payload, 1)), bits.eq(10),
                             timer.eq(self.divisor - 1)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), bits.eq(bits - 1),
                         timer.eq(self.divisor - 1)]
        return m


class UartBridge(wiring.Component):
    """UART pins in, a CSR bus master (AXI4-Lite) and a byte memory master out.

    Parameters
    ----------
    divisor : clock cycles per UART bit.
    mem_bytes : size of the memory behind ``mem`` (requests beyond it get ``BAD_ADDR``).
    clk_hz : reported by INFO.
    timeout_cycles : a gap this long inside a request drops it.
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

        cmd = Signal(8)
        addr = Signal(32)
        length = Signal(8)          # bytes - 1
        cnt = Signal(9)
        crc = Signal(8)
        status = Signal(8)
        word = Signal(32)           # WRITE_CSR payload
        reply = Signal(64)          # INFO / READ_CSR data, sent low byte first
        reply_n = Signal(4)
        is_write = Signal()
        m.d.comb += is_write.eq((cmd == Cmd.WRITE_CSR) | (cmd == Cmd.WRITE_MEM))

        # Inter-byte timeout while a request is being received.
        idle = Signal(range(self.timeout_cycles + 1))
        expired = Signal()
        m.d.comb += expired.eq(idle == self.timeout_cycles)
        with m.If(rxv):
            m.d.sync += idle.eq(0)
        with m.Elif(~expired):
            m.d.sync += idle.eq(idle + 1)

        end = Signal(33)
        m.d.comb += end.eq(addr + length + 1)
        in_range = Signal()
        m.d.comb += in_range.eq(end <= self.mem_bytes)

        m.d.comb += [bw.addr.eq(cnt), bw.data.eq(rxb), br.addr.eq(cnt)]
        csr = self.csr
        mem = self.mem
        m.d.comb += [csr.awaddr.eq(addr), csr.araddr.eq(addr), csr.wdata.eq(word),
                     csr.wstrb.eq(0xF), mem.addr.eq(addr + cnt)]

        def send_status(code):
            m.d.sync += [status.eq(code), cnt.eq(0)]
            m.next = "TX_SYNC"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(rxv & (rxb == REQ_SYNC)):
                    m.d.sync += [crc.eq(0), cnt.eq(0)]
                    m.next = "CMD"
            with m.State("CMD"):
                with m.If(rxv):
                    m.d.sync += [cmd.eq(rxb), crc.eq(crc8_next(crc, rxb))]
                    m.next = "ADDR"
                with m.Elif(expired):
                    m.next = "IDLE"
            with m.State("ADDR"):
                with m.If(rxv):
                    m.d.sync += [addr.eq(Cat(addr[8:], rxb)), crc.eq(crc8_next(crc, rxb)),
                                 cnt.eq(cnt + 1)]
                    with m.If(cnt == 3):
                        m.next = "LEN"
                with m.Elif(expired):
                    m.next = "IDLE"
            with m.State("LEN"):
                with m.If(rxv):
                    m.d.sync += [length.eq(rxb), crc.eq(crc8_next(crc, rxb)), cnt.eq(0)]
                    with m.If(is_write):
                        m.next = "PAYLOAD"
                    with m.Else():
                        m.next = "CRC"
                with m.Elif(expired):
                    m.next = "IDLE"
            with m.State("PAYLOAD"):
                m.d.comb += bw.en.eq(rxv)
                with m.If(rxv):
                    m.d.sync += [word.eq(Cat(word[8:], rxb)), crc.eq(crc8_next(crc, rxb)),
                                 cnt.eq(cnt + 1)]
                    with m.If(cnt == length):
                        m.next = "CRC"
                with m.Elif(expired):
                    m.next = "IDLE"
            with m.State("CRC"):
                with m.If(rxv):
                    m.d.sync += cnt.eq(0)
                    with m.If(rxb == crc):
                        m.next = "EXEC"
                    with m.Else():
                        send_status(BridgeStatus.BAD_CRC)
                with m.Elif(expired):
                    m.next = "IDLE"

            with m.State("EXEC"):
                with m.Switch(cmd):
                    with m.Case(Cmd.INFO):
                        m.d.sync += [reply.eq(Cat(C(self.mem_bytes, 32), C(self.clk_hz, 32))),
                                     reply_n.eq(8)]
                        send_status(BridgeStatus.OK)
                    with m.Case(Cmd.READ_CSR):
                        m.d.sync += csr.arvalid.eq(1)
                        m.next = "CSR_R"
                    with m.Case(Cmd.WRITE_CSR):
                        with m.If(length != 3):
                            send_status(BridgeStatus.BAD_LEN)
                        with m.Else():
                            m.d.sync += [csr.awvalid.eq(1), csr.wvalid.eq(1)]
                            m.next = "CSR_W"
                    with m.Case(Cmd.READ_MEM):
                        with m.If(in_range):
                            send_status(BridgeStatus.OK)
                        with m.Else():
                            send_status(BridgeStatus.BAD_ADDR)
                    with m.Case(Cmd.WRITE_MEM):
                        with m.If(in_range):
                            m.next = "COPY_RD"
                        with m.Else():
                            send_status(BridgeStatus.BAD_ADDR)
                    with m.Default():
                        send_status(BridgeStatus.BAD_CMD)

            with m.State("CSR_R"):
                with m.If(csr.arready):
                    m.d.sync += csr.arvalid.eq(0)
                m.d.comb += csr.rready.eq(1)
                with m.If(csr.rvalid):
                    m.d.sync += [reply.eq(csr.rdata), reply_n.eq(4)]
                    send_status(Mux(csr.rresp == 0, BridgeStatus.OK, BridgeStatus.BUS_ERROR))
            with m.State("CSR_W"):
                with m.If(csr.awready):
                    m.d.sync += csr.awvalid.eq(0)
                with m.If(csr.wready):
                    m.d.sync += csr.wvalid.eq(0)
                m.d.comb += csr.bready.eq(1)
                with m.If(csr.bvalid):
                    m.d.sync += reply_n.eq(0)
                    send_status(Mux(csr.bresp == 0, BridgeStatus.OK, BridgeStatus.BUS_ERROR))

            # WRITE_MEM: the checked payload from the buffer to memory, one byte at a time.
            with m.State("COPY_RD"):
                m.next = "COPY_WR"           # buffer data for cnt is valid next cycle
            with m.State("COPY_WR"):
                m.d.comb += [mem.valid.eq(1), mem.we.eq(1), mem.wdata.eq(br.data)]
                with m.If(mem.ready):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == length):
                        m.d.sync += reply_n.eq(0)
                        send_status(BridgeStatus.OK)
                    with m.Else():
                        m.next = "COPY_RD"

            # Reply.
            with m.State("TX_SYNC"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(REPLY_SYNC)]
                with m.If(tx.ready):
                    m.d.sync += crc.eq(0)
                    m.next = "TX_STATUS"
            with m.State("TX_STATUS"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(status)]
                with m.If(tx.ready):
                    m.d.sync += crc.eq(crc8_next(crc, status))
                    with m.If(status != BridgeStatus.OK):
                        m.next = "TX_CRC"
                    with m.Elif(cmd == Cmd.READ_MEM):
                        m.next = "MEM_REQ"
                    with m.Elif(reply_n != 0):
                        m.next = "TX_REPLY"
                    with m.Else():
                        m.next = "TX_CRC"
            with m.State("TX_REPLY"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(reply[:8])]
                with m.If(tx.ready):
                    m.d.sync += [crc.eq(crc8_next(crc, reply[:8])), reply.eq(reply >> 8),
                                 reply_n.eq(reply_n - 1)]
                    with m.If(reply_n == 1):
                        m.next = "TX_CRC"
            with m.State("MEM_REQ"):
                m.d.comb += mem.valid.eq(1)
                with m.If(mem.ready):
                    m.next = "MEM_WAIT"
            with m.State("MEM_WAIT"):
                with m.If(mem.rvalid):
                    m.d.sync += word[:8].eq(mem.rdata)
                    m.next = "TX_MEM"
            with m.State("TX_MEM"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(word[:8])]
                with m.If(tx.ready):
                    m.d.sync += [crc.eq(crc8_next(crc, word[:8])), cnt.eq(cnt + 1)]
                    with m.If(cnt == length):
                        m.next = "TX_CRC"
                    with m.Else():
                        m.next = "MEM_REQ"
            with m.State("TX_CRC"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(crc)]
                with m.If(tx.ready):
                    m.next = "IDLE"
        return m
