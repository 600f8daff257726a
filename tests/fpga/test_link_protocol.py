"""Protocol version 2 of the UART bridge (fpga/bridge.py) in the Amaranth simulator, byte for
byte: sequence numbers echoed, CRC-16 on both sides, the reset flag until INFO, duplicate
writes acknowledged without being executed, bad CRCs, truncated frames and resynchronisation.
"""

import numpy as np
from amaranth import Module, Signal
from amaranth.sim import Simulator

from celosia.fpga.bridge import (REQ_SYNC, BridgeStatus, Cmd, crc16, crc16_next, reply, request,
                                 request_length, reply_fields)
from celosia.hdl.isa import CSR

from test_build import MEM, _run

OK = BridgeStatus.OK


def test_crc16_next_matches_crc16():
    """The bridge's CRC step (one XOR tree per bit) against the host's bitwise CRC-16."""
    crc, byte, res = Signal(16), Signal(8), Signal(16)
    m = Module()
    m.d.comb += res.eq(crc16_next(crc, byte))
    rng = np.random.default_rng(0)
    pairs = [(int(c), int(b)) for c, b in zip(rng.integers(0, 1 << 16, 200),
                                               rng.integers(0, 256, 200))]
    pairs += [(0, 0), (0xFFFF, 0xFF), (0xFFFF, 0)]
    sim = Simulator(m)

    async def bench(ctx):
        for c, b in pairs:
            ctx.set(crc, c)
            ctx.set(byte, b)
            assert ctx.get(res) == crc16(bytes([b]), c), (c, b)

    sim.add_testbench(bench)
    sim.run()


def test_host_side_framing():
    frame = request(Cmd.WRITE_MEM, 0x1234, 3, b"abc", seq=0x9C)
    assert frame[:9] == bytes([REQ_SYNC, 0x9C, Cmd.WRITE_MEM, 0x34, 0x12, 0, 0, 2]) + b"a"
    assert request_length(frame[:8]) == len(frame) == 13 and request_length(frame[:7]) is None
    assert crc16(frame[1:]) == 0                 # the CRC goes high byte first
    r = reply(7, OK, b"\x01\x02", reset=True)
    assert r[:3] == bytes([0x5A, 7, 0x80]) and reply_fields(r) == (7, OK, b"\x01\x02", True)
    assert reply(7, BridgeStatus.BAD_CRC, b"ignored") == bytes([0x5A, 7, 1]) + \
        crc16(bytes([7, 1])).to_bytes(2, "big")


def test_exact_frames_reset_flag_and_duplicates():
    """Every reply byte for byte: the reset flag until INFO (whose reply is without it), the sequence number echoed; a
    write sent again with the same sequence number is acknowledged and not executed (memory
    and CSR), reads are executed again; after INFO the same number is a new request."""
    info = MEM.to_bytes(4, "little") + (12345678).to_bytes(4, "little")
    prog = CSR.PROG_ADDR.offset
    frames = [
        request(Cmd.READ_MEM, 0, 2, seq=1),
        request(Cmd.INFO, seq=2),
        request(Cmd.WRITE_MEM, 0x10, 2, b"\x11\x22", seq=3),
        request(Cmd.WRITE_MEM, 0x10, 2, b"\x11\x22", seq=3),      # a resend: acknowledged
        request(Cmd.READ_MEM, 0x10, 2, seq=4),
        request(Cmd.READ_MEM, 0x10, 2, seq=4),                    # a read runs again
        request(Cmd.WRITE_MEM, 0x10, 2, b"\x33\x44", seq=4),      # new after a read: runs
        request(Cmd.WRITE_MEM, 0x10, 2, b"\x55\x66", seq=4),      # same number: not run
        request(Cmd.WRITE_CSR, prog, 4, (0x100).to_bytes(4, "little"), seq=5),
        request(Cmd.WRITE_CSR, prog, 4, (0x200).to_bytes(4, "little"), seq=5),
        request(Cmd.READ_CSR, prog, seq=6),
        request(Cmd.READ_MEM, 0x10, 2, seq=7),
        request(Cmd.INFO, seq=8),                                 # forgets the last write
        request(Cmd.WRITE_CSR, prog, 4, (0x300).to_bytes(4, "little"), seq=5),
        request(Cmd.READ_CSR, prog, seq=9),
    ]
    want = [reply(1, OK, b"\0\0", reset=True), reply(2, OK, info),
            reply(3, OK), reply(3, OK), reply(4, OK, b"\x11\x22"), reply(4, OK, b"\x11\x22"),
            reply(4, OK), reply(4, OK), reply(5, OK), reply(5, OK),
            reply(6, OK, (0x100).to_bytes(4, "little")), reply(7, OK, b"\x33\x44"),
            reply(8, OK, info), reply(5, OK), reply(9, OK, (0x300).to_bytes(4, "little"))]
    assert _run(frames, [len(w) for w in want]) == want


def test_bad_crc_truncated_frames_and_resync():
    """A flipped bit anywhere (sequence number, CRC bytes) is BAD_CRC and does nothing; a
    frame cut short is dropped after the gap, and the next whole frame is answered; a
    rejected write does not count as the last write (its resend runs)."""
    w = request(Cmd.WRITE_MEM, 0x20, 4, b"\xde\xad\xbe\xef", seq=0x41)
    flips = [bytes(w[:i]) + bytes([w[i] ^ 1 << (i % 8)]) + bytes(w[i + 1:])
             for i in (1, 2, 8, len(w) - 2, len(w) - 1)]
    frames = [request(Cmd.INFO, seq=0x40)] + flips + [
        ("noreply", w[:6]), 400,                  # truncated in the header
        ("noreply", w[:-1]), 400,                 # truncated before its last CRC byte
        request(Cmd.READ_MEM, 0x20, 4, seq=0x42),
        ("noreply", bytes([0x00, REQ_SYNC, 0x13])), 400,
        w,
        request(Cmd.READ_MEM, 0x20, 4, seq=0x43),
    ]
    info = MEM.to_bytes(4, "little") + (12345678).to_bytes(4, "little")
    bad = BridgeStatus.BAD_CRC
    want = [reply(0x40, OK, info)]
    want += [reply(f[1], bad) for f in flips]     # (the sequence byte as received)
    want += [reply(0x42, OK, bytes(4)), reply(0x41, OK),
             reply(0x43, OK, b"\xde\xad\xbe\xef")]
    assert _run(frames, [len(x) for x in want]) == want
