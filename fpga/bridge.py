"""The UART bridge: a framed serial protocol onto the CSR bus (AXI4-Lite) and the on-chip memory.

Frames, protocol version 2 (addresses and data little endian, the CRC big endian; see
docs/fpga.md, "The UART protocol")::

    request: 0xA5 | seq | cmd | addr[4] | len | payload[len + 1 if cmd writes] | crc16[2]
    reply:   0x5A | seq | status | data[...] (only when status is OK) | crc16[2]

``len`` encodes ``len + 1`` bytes (1..256). ``seq`` is the host's sequence number, echoed in
the reply. The CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no
reflection, no final xor; check value 0x29B1 for "123456789") over every byte after the sync
byte and before the CRC, sent high byte first, so the CRC run over a whole frame after its
sync byte, CRC included, is 0. A request whose CRC does not match is answered with ``BAD_CRC``
and has no effect. A pause of more than ``timeout_cycles`` inside a request drops the partial
request, so the receiver resynchronises on the next 0xA5 after garbage.

Duplicates: a write (WRITE_CSR, WRITE_MEM) whose ``seq`` equals that of the last write that
was executed with status OK is not executed again, only acknowledged (OK): a request the host
sends again because its reply was lost takes effect once. Reads are always executed (they have
no side effects). INFO starts a session: it forgets the last write's ``seq``.

Resets: bit 7 of the status byte (:data:`RESET_FLAG`) is set in every reply from a reset of the
bridge until an INFO has been answered (that INFO's reply included), so a host that has read
INFO sees a board reset (which loses the CSRs and any running program) in the next reply, and
an INFO in the middle of a session tells whether the board was reset since the last one.

The Python side of the protocol (:func:`crc16`, :func:`request`, :func:`parse_reply`) lives here
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

__all__ = ["REQ_SYNC", "REPLY_SYNC", "RESET_FLAG", "Cmd", "BridgeStatus", "MAX_LEN",
           "REQUEST_OVERHEAD", "REPLY_OVERHEAD", "crc16", "request", "request_length", "reply",
           "reply_length", "reply_fields", "parse_reply", "BytePortSignature", "UartRx",
           "UartTx", "Crc16Serial", "UartBridge"]

REQ_SYNC = 0xA5
REPLY_SYNC = 0x5A
#: CRC-16/CCITT-FALSE.
CRC_POLY = 0x1021
CRC_INIT = 0xFFFF
#: Bit 7 of a reply's status byte: the bridge was reset since the last INFO.
RESET_FLAG = 0x80
#: Largest payload of one request or reply (``len`` byte 255).
MAX_LEN = 256
#: Bytes of a request besides its payload: sync, seq, cmd, addr[4], len, crc[2].
REQUEST_OVERHEAD = 10
#: Bytes of a reply besides its data: sync, seq, status, crc[2].
REPLY_OVERHEAD = 5


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

def crc16(data: bytes, crc: int = CRC_INIT) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (continuing from ``crc``)."""
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLY) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "big")


def request(cmd: int, addr: int = 0, length: int = 1, payload: bytes = b"", *,
            seq: int = 0) -> bytes:
    """The bytes of one request frame (``length`` is the byte count, 1..256)."""
    if not 1 <= length <= MAX_LEN:
        raise ValueError(f"length {length} outside 1..{MAX_LEN}")
    if cmd in WRITES and len(payload) != length:
        raise ValueError("a write carries exactly `length` payload bytes")
    body = (bytes([seq & 0xFF, cmd]) + int(addr).to_bytes(4, "little") + bytes([length - 1])
            + bytes(payload))
    return bytes([REQ_SYNC]) + _with_crc(body)


def request_length(header: bytes) -> int | None:
    """The length of the request frame that starts with ``header`` (its first 8 bytes: sync
    to len), or None while fewer are given."""
    if len(header) < 8:
        return None
    return REQUEST_OVERHEAD + (header[7] + 1 if header[2] in WRITES else 0)


def reply(seq: int, status: int, data: bytes = b"", reset: bool = False) -> bytes:
    """The bytes of one reply frame (what the bridge sends; for tests and models)."""
    body = bytes([seq & 0xFF, int(status) | (RESET_FLAG if reset else 0)])
    return bytes([REPLY_SYNC]) + _with_crc(body + (bytes(data) if status == BridgeStatus.OK
                                                   else b""))


def reply_length(cmd: int, length: int = 1) -> int:
    """Data bytes of a successful reply to ``cmd``."""
    return {Cmd.INFO: 8, Cmd.READ_CSR: 4, Cmd.READ_MEM: length}.get(cmd, 0)


def reply_fields(raw: bytes) -> tuple[int, BridgeStatus, bytes, bool]:
    """(seq, status, data, reset flag) of one whole reply frame; ValueError if it is
    malformed or its CRC does not match."""
    if len(raw) < REPLY_OVERHEAD or raw[0] != REPLY_SYNC:
        raise ValueError(f"malformed reply {raw.hex()}")
    if crc16(raw[1:]) != 0:
        raise ValueError(f"reply CRC mismatch {raw.hex()}")
    code = raw[2] & ~RESET_FLAG
    if code not in BridgeStatus._value2member_map_:
        raise ValueError(f"unknown status {raw[2]:#x}")
    return raw[1], BridgeStatus(code), bytes(raw[3:-2]), bool(raw[2] & RESET_FLAG)


def parse_reply(raw: bytes, seq: int | None = None) -> tuple[BridgeStatus, bytes]:
    """(status, data) of one reply frame; ValueError on a malformed frame (or one whose
    sequence number is not ``seq``, when given)."""
    got, status, data, _ = reply_fields(raw)
    if seq is not None and got != seq & 0xFF:
        raise ValueError(f"reply to sequence number {got}, not {seq & 0xFF}")
    return status, data


# --- hardware -------------------------------------------------------------------------------

class Crc16Serial(wiring.Component):
    """CRC-16/CCITT-FALSE one bit a cycle: ``load`` takes ``byte`` and shifts it in over the
    next 8 cycles (``busy``), most significant bit first; ``init`` sets the register to 0xFFFF
    (and drops a byte being shifted in). The bridge loads at most one byte every 10 bit times
    (at least 40 cycles), so the register has settled long before it is read. (A byte a cycle
    takes an XOR tree per bit: some 45 more LUT4s on the iCE40.)

    The data bits go through a shift register behind a marker bit (as in UartRx): the byte is
    done when the marker reaches the top."""

    def __init__(self):
        super().__init__({"init": In(1), "load": In(1), "byte": In(8),
                          "crc": Out(16), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        sr = Signal(9)              # [marker, byte]: bit 8 goes in next
        m.d.comb += self.busy.eq(sr[:8].any())
        crc = self.crc
        fb = crc[15] ^ sr[8]
        with m.If(self.load):
            m.d.sync += sr.eq(Cat(1, self.byte))
        with m.Elif(self.init):
            m.d.sync += sr.eq(0)
        with m.Elif(self.busy):
            m.d.sync += sr.eq(sr << 1)
        with m.If(self.init):
            m.d.sync += crc.eq(CRC_INIT)
        with m.Elif(self.busy):
            step = Cat(fb, crc[:15])
            m.d.sync += crc.eq(step ^ Mux(fb, CRC_POLY & ~1, 0))
        return m


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
        seq = Signal(8)             # the request's sequence number, echoed in the reply
        last_seq = Signal(8)        # that of the last write executed with status OK ...
        last_valid = Signal()       # ... since the last INFO (or reset)
        fresh = Signal(init=1)      # no INFO answered since reset: RESET_FLAG in replies
        crc_byte = Signal()         # which CRC byte comes (or goes) next
        length = Signal(8)          # bytes - 1
        cnt = Signal(8)
        crc = Signal(16)            # the CRC unit's register
        status = Signal(3)
        word = Signal(32)           # WRITE_CSR payload
        info = C(self.mem_bytes | self.clk_hz << 32, 64)
        is_write = Signal()
        m.d.comb += is_write.eq((cmd == Cmd.WRITE_CSR) | (cmd == Cmd.WRITE_MEM))

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
        m.submodules.crc16 = crcu = Crc16Serial()
        crc_in = Signal(8)
        crc_upd = Signal()
        crc_init = Signal()
        m.d.comb += [crcu.byte.eq(crc_in), crcu.load.eq(crc_upd), crcu.init.eq(crc_init),
                     crc.eq(crcu.crc)]

        m.d.comb += [bw.addr.eq(cnt), bw.data.eq(rxb), br.addr.eq(cnt)]
        csr = self.csr
        mem = self.mem
        m.d.comb += [csr.awaddr.eq(addr), csr.araddr.eq(addr), csr.wdata.eq(word),
                     csr.wstrb.eq(0xF), mem.addr.eq(addr), mem.wdata.eq(br.data)]

        def send_status(code):
            m.d.sync += [status.eq(code), cnt.eq(0)]
            m.next = "TX_SYNC"

        def write_done():
            """A write executed with status OK: a copy with the same seq is a duplicate."""
            m.d.sync += [last_seq.eq(seq), last_valid.eq(1)]

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
                    m.d.comb += crc_init.eq(1)
                    m.d.sync += [cnt.eq(0), addr_hi.eq(0), crc_byte.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):              # cnt: 0 seq, 1 cmd, 2..5 addr, 6 len
                receive()
                with m.If(rxv):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == 0):
                        m.d.sync += seq.eq(rxb)
                    with m.Elif(cnt == 1):
                        m.d.sync += cmd.eq(Mux((rxb[3:] == 0) & (rxb[:3] <= max(Cmd)),
                                               rxb[:3], 0))
                    with m.Elif(cnt <= kbytes + 1):
                        m.d.sync += addr.eq(Cat(addr[8:], rxb))
                    with m.Elif(cnt <= 5):
                        with m.If(rxb != 0):
                            m.d.sync += addr_hi.eq(1)
                    with m.Else():
                        m.d.sync += [length.eq(rxb), cnt.eq(0)]
                        with m.If(is_write):
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
            with m.State("CRC"):                 # two bytes; then the register is 0 if good
                receive()
                with m.If(rxv):
                    m.d.sync += crc_byte.eq(~crc_byte)
                    with m.If(crc_byte):
                        m.next = "EXEC"

            with m.State("EXEC"):
                m.d.sync += cnt.eq(0)
                with m.If(crcu.busy):
                    pass                                 # the last CRC byte going in
                with m.Elif(crc != 0):
                    send_status(BridgeStatus.BAD_CRC)
                with m.Elif(is_write & last_valid & (seq == last_seq)):
                    send_status(BridgeStatus.OK)         # a duplicate: acknowledged only
                with m.Else():
                    with m.Switch(cmd):
                        with m.Case(Cmd.INFO):
                            m.d.sync += last_valid.eq(0)
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
                    with m.If((csr.rvalid & (csr.rresp != 0)) | (csr.bvalid & (csr.bresp != 0))):
                        send_status(BridgeStatus.BUS_ERROR)
                    with m.Else():
                        with m.If(csr.bvalid):
                            write_done()
                        send_status(BridgeStatus.OK)

            # WRITE_MEM: the checked payload from the buffer to memory, one byte at a time.
            with m.State("COPY_RD"):
                m.next = "COPY_WR"           # buffer data for cnt is valid next cycle
            with m.State("COPY_WR"):
                m.d.comb += [mem.valid.eq(1), mem.we.eq(1)]
                with m.If(mem.ready):
                    m.d.sync += [cnt.eq(cnt + 1), addr.eq(addr + 1)]
                    with m.If(cnt == length):
                        write_done()
                        send_status(BridgeStatus.OK)
                    with m.Else():
                        m.next = "COPY_RD"

            # Reply.
            with m.State("TX_SYNC"):
                send(REPLY_SYNC, crc_too=False)
                with m.If(tx.ready):
                    m.d.comb += crc_init.eq(1)
                    m.next = "TX_SEQ"
            with m.State("TX_SEQ"):
                send(seq)
                with m.If(tx.ready):
                    m.next = "TX_STATUS"
            with m.State("TX_STATUS"):
                send(Cat(status, C(0, 4), fresh))
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
            # The CRC, high byte first: feeding the register its own high byte leaves the low
            # byte on top (and a zero below), so both bytes are crc[8:] with the CRC updated.
            with m.State("TX_CRC"):
                m.d.comb += [csr.rready.eq(1), csr.bready.eq(1)]
                send(crc[8:])
                with m.If(tx.ready):
                    m.d.sync += crc_byte.eq(~crc_byte)
                    with m.If(crc_byte):
                        m.next = "IDLE"
                        with m.If((cmd == Cmd.INFO) & (status == BridgeStatus.OK)):
                            m.d.sync += fresh.eq(0)     # INFO's reply went out flagged
        return m
