"""Protocol version 2 of the UART bridge (fpga/bridge.py) in the Amaranth simulator, byte for
byte: sequence numbers echoed, CRC-16 on both sides, the reset flag until INFO, duplicate
writes acknowledged without being executed, bad CRCs, truncated frames and resynchronisation.
"""

import numpy as np
from amaranth.sim import Simulator

from celosia.fpga.bridge import (REQ_SYNC, BridgeStatus, Cmd, Crc16Serial, crc16, reply, request,
                                 request_length, reply_fields)
from celosia.hdl.isa import CSR

from test_build import MEM, _run

OK = BridgeStatus.OK


def test_serial_crc_matches_crc16():
    """The bridge's CRC unit (a bit a cycle) against the host's CRC-16, bytes loaded 9 cycles
    apart; ``init`` drops a byte half shifted in."""
    dut = Crc16Serial()
    rng = np.random.default_rng(0)
    data = bytes(rng.integers(0, 256, 100, np.uint8))
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx):
        ctx.set(dut.byte, 0x5A)
        ctx.set(dut.load, 1)
        await ctx.tick().repeat(1)
        ctx.set(dut.load, 0)
        await ctx.tick().repeat(3)
        ctx.set(dut.init, 1)
        await ctx.tick()
        ctx.set(dut.init, 0)
        assert ctx.get(dut.crc) == 0xFFFF and not ctx.get(dut.busy)
        for i, b in enumerate(data):
            ctx.set(dut.byte, b)
            ctx.set(dut.load, 1)
            await ctx.tick()
            ctx.set(dut.load, 0)
            assert ctx.get(dut.busy)
            await ctx.tick().repeat(8)
            assert not ctx.get(dut.busy)
            assert ctx.get(dut.crc) == crc16(data[:i + 1]), i

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
    """Every reply byte for byte: the reset flag until INFO has been answered (its reply too), the sequence number echoed; a
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
    want = [reply(1, OK, b"\0\0", reset=True), reply(2, OK, info, reset=True),
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
    want = [reply(0x40, OK, info, reset=True)]
    want += [reply(f[1], bad) for f in flips]     # (the sequence byte as received)
    want += [reply(0x42, OK, bytes(4)), reply(0x41, OK),
             reply(0x43, OK, b"\xde\xad\xbe\xef")]
    assert _run(frames, [len(x) for x in want]) == want
