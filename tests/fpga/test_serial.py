"""The serial backend (sw/serial_backend.py) and the simulated board (fpga/simtop.py,
sim/verilator_uart.py).

Unit tests: the framing and retry logic against a pure-Python board behind a fake serial port
(corrupted, dropped and stray bytes in both directions, lost replies, a lost reply to a start,
a closed or silent link).

End to end: the Verilated board on a TCP port, driven through pyserial's ``socket://`` URL by
the driver: a matmul chain and an attention block (QK^T, softmax on the vector engine, PV)
bit-exact with the isa simulator, every byte of the board's memory checked afterwards; the
same through a proxy that corrupts and drops bytes in both directions.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from celosia.fpga.bridge import (REQ_SYNC, WRITES, BridgeStatus, Cmd, crc16, reply,
                                 request_length)
from celosia.hdl.isa import CSR, ID_MAGIC, ISA_VERSION, MachineConfig
from celosia.sw.serial_backend import BoardResetError, BridgeError, SerialBackend, SerialLinkError


# --- a pure-Python board behind a fake serial port -----------------------------------------------

class FakeBoard:
    """The bridge's protocol over a memory and a few CSRs. A start makes the board busy for
    ``run_polls`` STATUS reads, counting one cycle per read; ``runs`` counts the starts taken.
    A pause of more than ``gap_s`` inside a request drops it (the board's 10 ms). A write with
    the sequence number of the last write executed is acknowledged only; :meth:`reset` loses
    the CSRs and flags replies until INFO."""

    def __init__(self, mem_bytes=4096, gap_s=0.01):
        self.mem = bytearray(mem_bytes)
        self.gap_s = gap_s
        self.regs = {r.name: 0 for r in CSR}
        self.regs["ID"] = ID_MAGIC
        self.regs["CONFIG"] = CSR.CONFIG.make(isa_version=ISA_VERSION, array=4, port_bytes=8,
                                              instr_bytes=64)
        self.busy_left = 0
        self.run_polls = 3
        self.runs = 0
        self.frames = []            # (cmd, addr, length) of every request executed
        self.buf = bytearray()
        self.last_rx = 0.0
        self.last_write = None
        self.fresh = True
        self.duplicates = 0

    def reset(self):
        self.regs.update({r: 0 for r in ("PROG_ADDR", "WIN_BASE", "WIN_SIZE", "CYCLES_LO",
                                         "CYCLES_HI", "INSTRET")})
        self.busy_left = 0
        self.buf.clear()
        self.last_write = None
        self.fresh = True

    def receive(self, data: bytes) -> bytes:
        """Bytes from the host; returns the reply bytes produced."""
        out = bytearray()
        now = time.monotonic()
        if self.buf and now - self.last_rx > self.gap_s:
            self.buf.clear()
        self.last_rx = now
        for b in data:
            if not self.buf and b != REQ_SYNC:
                continue
            self.buf.append(b)
            frame = self._complete()
            if frame is not None:
                self.buf.clear()
                out += frame
        return bytes(out)

    def _complete(self):
        buf = self.buf
        size = request_length(bytes(buf[:8]))
        if size is None or len(buf) < size:
            return None
        self.seq, cmd = buf[1], buf[2]
        addr, n = int.from_bytes(buf[3:7], "little"), buf[7] + 1
        if crc16(bytes(buf[1:size])) != 0:
            return self._reply(BridgeStatus.BAD_CRC)
        if cmd in WRITES and self.seq == self.last_write:
            self.duplicates += 1
            return self._reply(BridgeStatus.OK)
        out = self._execute(cmd, addr, n, bytes(buf[8:size - 2]))
        if cmd in WRITES and out[2] & 0x7F == BridgeStatus.OK:
            self.last_write = self.seq
        return out

    def _reply(self, status, data=b""):
        return reply(self.seq, status, data, reset=self.fresh)

    def _csr_name(self, addr):
        return next((r.name for r in CSR if r.offset == addr), None)

    def _execute(self, cmd, addr, n, payload):
        self.frames.append((cmd, addr, n))
        if cmd == Cmd.INFO:
            out = self._reply(BridgeStatus.OK, len(self.mem).to_bytes(4, "little")
                              + (1000000).to_bytes(4, "little"))
            self.fresh, self.last_write = False, None
            return out
        if cmd in (Cmd.READ_MEM, Cmd.WRITE_MEM):
            if addr + n > len(self.mem):
                return self._reply(BridgeStatus.BAD_ADDR)
            if cmd == Cmd.READ_MEM:
                return self._reply(BridgeStatus.OK, bytes(self.mem[addr:addr + n]))
            self.mem[addr:addr + n] = payload
            return self._reply(BridgeStatus.OK)
        if cmd == Cmd.READ_CSR:
            name = self._csr_name(addr)
            if name is None:
                return self._reply(BridgeStatus.BUS_ERROR)
            if name == "STATUS":
                value = CSR.STATUS.make(busy=int(self.busy_left > 0),
                                        done=int(self.runs > 0 and self.busy_left == 0))
                if self.busy_left:
                    self.busy_left -= 1
                    self.regs["CYCLES_LO"] += 1
            else:
                value = self.regs[name]
            return self._reply(BridgeStatus.OK, value.to_bytes(4, "little"))
        if cmd == Cmd.WRITE_CSR:
            if n != 4:
                return self._reply(BridgeStatus.BAD_LEN)
            value = int.from_bytes(payload, "little")
            name = self._csr_name(addr)
            if name == "CTRL":
                if CSR.CTRL.get(value, "clear_counters"):
                    for r in ("CYCLES_LO", "CYCLES_HI", "INSTRET"):
                        self.regs[r] = 0
                if CSR.CTRL.get(value, "abort"):
                    self.busy_left = 0
                if CSR.CTRL.get(value, "start") and not self.busy_left:
                    self.runs += 1
                    self.busy_left = self.run_polls
                    self.regs["CYCLES_LO"] = 1
                    self.regs["INSTRET"] += 1
            elif name in ("PROG_ADDR", "WIN_BASE", "WIN_SIZE"):
                self.regs[name] = value
            return self._reply(BridgeStatus.OK)
        return self._reply(BridgeStatus.BAD_CMD)


class FakeSerial:
    """A serial port to a :class:`FakeBoard`. ``faults`` is a list of one-shot faults applied
    in order to the next requests/replies:

    * ``("req_flip", i)`` / ``("req_drop", i)``: flip byte i (modulo the length) of the next
      request / drop it;
    * ``("rep_flip", i)`` / ``("rep_drop", i)``: the same on the next reply;
    * ``("rep_lost",)``: the next request executes, its reply never comes;
    * ``("garbage", bytes)``: stray bytes before the next reply;
    * ``("rep_late",)``: the next reply comes only after the request after the following one
      (after the host flushed its input), in front of that request's reply;
    * ``("rep_dup",)``: the next reply comes twice: at once and again after the following
      request;
    a third element, a predicate of the request's bytes, picks the request the fault hits.
    ``closed``: the other end has gone (reads and writes raise); ``silent``: nothing answers.
    """

    def __init__(self, board: FakeBoard):
        import serial
        self._exc = serial.SerialException
        self.board = board
        self.inbuf = bytearray()
        self.faults: list[tuple] = []
        self.closed = False
        self.silent = False
        self.port = "fake"
        self.writes = 0
        self.held = []              # [writes to wait, bytes]

    def _take(self, kinds, frame):
        if self.faults and self.faults[0][0] in kinds:
            f = self.faults[0]
            if len(f) < 3 or f[2](bytes(frame)):
                return self.faults.pop(0)
        return None

    def write(self, data: bytes) -> int:
        if self.closed:
            raise self._exc("socket disconnected")
        self.writes += 1
        for h in self.held:
            h[0] -= 1
            if h[0] == 0:
                self.inbuf += h[1]
        self.held = [h for h in self.held if h[0] > 0]
        data = bytearray(data)
        sent = bytes(data)
        f = self._take(("req_flip", "req_drop"), sent)
        if f is not None:
            i = f[1] % len(data)
            if f[0] == "req_flip":
                data[i] ^= 0x10
            else:
                del data[i]
        if self.silent:
            return len(data)
        reply = bytearray(self.board.receive(bytes(data)))
        if reply:
            f = self._take(("rep_flip", "rep_drop", "rep_lost", "garbage", "rep_late",
                            "rep_dup"), sent)
            if f is not None:
                if f[0] in ("rep_late", "rep_dup"):
                    self.held.append([2 if f[0] == "rep_late" else 1, bytes(reply)])
                    if f[0] == "rep_late":
                        reply = bytearray()
                elif f[0] == "rep_flip":
                    reply[f[1] % len(reply)] ^= 0x01
                elif f[0] == "rep_drop":
                    del reply[f[1] % len(reply)]
                elif f[0] == "rep_lost":
                    reply = bytearray()
                else:
                    reply = bytearray(f[1]) + reply
        self.inbuf += reply
        return len(data)

    def read(self, n: int = 1) -> bytes:
        if self.closed:
            raise self._exc("socket disconnected")
        if not self.inbuf:
            time.sleep(0.001)
            return b""
        out = bytes(self.inbuf[:n])
        del self.inbuf[:n]
        return out

    def reset_input_buffer(self):
        if self.closed:
            raise self._exc("socket disconnected")
        self.inbuf.clear()

    def close(self):
        self.closed = True


FAST = dict(timeout=0.05, retry_wait=0.012, byte_time=0.0, gap_timeout=0.02, retries=4)


@pytest.fixture
def link():
    board = FakeBoard()
    ser = FakeSerial(board)
    be = SerialBackend(ser, **FAST)
    be._seq = 0         # (random on opening; fixed here so no test meets 0x5A by chance)
    return board, ser, be


def test_clean_link(link):
    board, ser, be = link
    assert be.mem_bytes == 4096 and be.clk_hz == 1_000_000
    assert be.read_csr("ID") == ID_MAGIC
    data = bytes(range(256)) * 3 + b"tail"
    be.write_memory(100, data)
    assert [f[2] for f in board.frames if f[0] == Cmd.WRITE_MEM] == [256, 256, 256, 4]
    assert be.read_memory(100, len(data)) == data
    be.write_csr("WIN_BASE", 0x80)
    assert board.regs["WIN_BASE"] == 0x80
    assert be.stats["retries"] == 0
    with pytest.raises(ValueError):
        be.read_memory(4000, 200)
    with pytest.raises(ValueError):
        be.write_memory(-1, b"x")


@pytest.mark.parametrize("fault", [("rep_flip", 1), ("rep_flip", 5), ("rep_flip", -1),
                                   ("rep_drop", 3), ("rep_drop", 0), ("rep_drop", -1),
                                   ("rep_lost",), ("req_flip", 3), ("req_flip", 0),
                                   ("req_drop", 4), ("req_drop", 0), ("req_drop", -1),
                                   ("garbage", b"\x00\xff\x5a\x00\x5a\x13"),
                                   ("garbage", b"\x5a\x00")])
def test_one_fault_is_retried(link, fault):
    board, ser, be = link
    be.write_memory(0, bytes(range(200)))
    ser.faults = [fault]
    assert be.read_memory(0, 200) == bytes(range(200))
    assert be.read_csr("ID") == ID_MAGIC
    ser.faults = [fault]
    be.write_memory(300, b"abcdef")
    assert bytes(board.mem[300:306]) == b"abcdef"
    assert be.stats["retries"] >= 1 or fault[0] == "garbage"
    assert not ser.faults


def test_chunks_shrink_on_a_noisy_line(link):
    board, ser, be = link
    data = bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8))
    ser.faults = [("rep_lost",), ("req_drop", 9)]      # the first chunk takes three attempts
    be.write_memory(0, data)
    sizes = [f[2] for f in board.frames if f[0] == Cmd.WRITE_MEM]
    assert sizes[:3] == [256, 128, 128]                 # the lost reply's copy: acknowledged
    assert board.duplicates == 1
    assert sizes[1 + 8] == 256 and be.stats["min_chunk"] == 128
    assert bytes(board.mem[:3000]) == data
    # A chunk that fails four times is split at once.
    board.frames.clear()
    ser.faults = [("rep_flip", 4)] * 4
    assert be.read_memory(0, 3000) == data
    sizes = [f[2] for f in board.frames if f[0] == Cmd.READ_MEM]
    assert sizes[:6] == [256] * 4 + [128, 128] and be.stats["splits"] == 1


def test_many_faults_in_a_row(link):
    board, ser, be = link
    ser.faults = [("rep_flip", 2), ("req_drop", 1), ("rep_lost",), ("garbage", b"\x5a\x5a")]
    assert be.read_csr("CONFIG") == board.regs["CONFIG"]
    # Stray bytes before a reply, sync bytes among them, are skipped.
    assert be.stats["retries"] == 3
    ser.faults = [("garbage", b"\x00\xa5\xff\x5a" * 20)]
    assert be.read_csr("CONFIG") == board.regs["CONFIG"]
    assert be.stats["retries"] == 3 and be.stats["skipped_bytes"] >= 82


def _is_start(frame: bytes) -> bool:
    return (frame[2] == Cmd.WRITE_CSR and frame[3] == CSR.CTRL.offset
            and CSR.CTRL.get(frame[8], "start"))


def test_resent_start_runs_once(link):
    """A start whose reply is lost, garbled or late is sent again under the same sequence
    number: the board acknowledges the copy without starting the program again, whether the
    program still runs or is already over; a start lost on the way is taken at its resend."""
    board, ser, be = link
    faults = [("rep_lost", 0, _is_start), ("rep_flip", 1, _is_start), ("rep_late", 0, _is_start),
              ("req_drop", 3, _is_start), ("req_flip", 8, _is_start), ("rep_dup", 0, _is_start)]
    for n, fault in enumerate(faults):
        board.run_polls = 0 if n % 2 else 3
        ser.faults = [fault]
        be.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
        assert board.runs == n + 1 and not ser.faults, fault
        be.advance(None, 1.0)
        assert not CSR.STATUS.get(be.read_csr("STATUS"), "busy")
    assert board.duplicates == 3 and be.stats["retries"] == 5


@pytest.mark.parametrize("fault", ["rep_late", "rep_dup"])
def test_late_and_duplicated_replies_are_skipped(link, fault):
    """A reply that comes after the host gave up on it, or twice, is skipped by its sequence
    number: every read returns its own data."""
    board, ser, be = link
    rng = np.random.default_rng(2)
    board.mem[:] = rng.integers(0, 256, len(board.mem), np.uint8).tobytes()
    for i in range(6):
        ser.faults = [(fault,)]
        assert be.read_memory(64 * i, 40 + i) == bytes(board.mem[64 * i:64 * i + 40 + i])
        assert be.read_csr("ID") == ID_MAGIC
    assert be.stats["skipped_bytes"] >= 6 * 45
    assert be.stats["retries"] == (6 if fault == "rep_late" else 0)


def test_board_reset_is_a_clear_error(link):
    """A board reset during a run: the next reply carries the reset flag and the backend
    raises BoardResetError (then on every request); a new backend runs again."""
    board, ser, be = link
    board.run_polls = 10**9
    be.write_csr("PROG_ADDR", 0x100)
    be.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
    board.reset()
    with pytest.raises(BoardResetError, match="reset during this session"):
        be.advance(None, 1.0)
    with pytest.raises(BoardResetError):
        be.read_memory(0, 4)
    be2 = SerialBackend(ser, **FAST)
    assert be2.board_was_reset and be2.stats["aborted_on_open"] == 0
    assert be2.read_csr("PROG_ADDR") == 0
    be2.write_memory(0, b"abcd")
    assert be2.read_memory(0, 4) == b"abcd"
    assert not SerialBackend(ser, **FAST).board_was_reset
    # A reset between a request given up on and the new session's INFO.
    ser.silent = True
    with pytest.raises(SerialLinkError):
        be2.read_csr("ID")
    ser.silent = False
    board.reset()
    with pytest.raises(BoardResetError, match="new session"):
        be2.read_csr("ID")


def test_interrupt_leaves_the_board_usable(link):
    """Ctrl-C while polling a running program and Ctrl-C half way through sending a frame:
    the next backend on the same port drains the line, opens a session, aborts the program,
    and runs the next one; a backend interrupted mid-frame goes on with a new session."""
    board, ser, be = link
    board.run_polls = 10**9
    be.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
    polls = [0]
    real_read = be.read_csr

    def read_csr(name):
        polls[0] += 1
        if polls[0] == 5:
            raise KeyboardInterrupt
        return real_read(name)

    be.read_csr = read_csr
    with pytest.raises(KeyboardInterrupt):
        be.advance(None, 10.0)
    ser.inbuf += reply(be._seq, BridgeStatus.OK, b"\0" * 4)[:4]     # a reply in flight
    be2 = SerialBackend(ser, **FAST)
    assert be2.stats["aborted_on_open"] == 1 and board.busy_left == 0
    # Interrupted while the frame is half sent: the board holds a partial request.
    real_write = ser.write

    def half_write(data):
        board.receive(bytes(data[:len(data) // 2]))
        raise KeyboardInterrupt

    ser.write = half_write
    with pytest.raises(KeyboardInterrupt):
        be2.write_memory(0x200, b"x" * 100)
    ser.write = real_write
    be2.write_memory(0x200, b"y" * 100)           # the same backend: a new session first
    assert bytes(board.mem[0x200:0x264]) == b"y" * 100 and be2.stats["sessions"] == 2
    board.run_polls = 3
    runs = board.runs
    be2.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
    be2.advance(None, 1.0)
    assert board.runs == runs + 1
    assert not CSR.STATUS.get(be2.read_csr("STATUS"), "busy")


def test_advance_limits(link):
    board, ser, be = link
    board.run_polls = 10**9
    be.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
    t0 = time.monotonic()
    be.advance(None, 0.1)
    assert 0.1 <= time.monotonic() - t0 < 1.0
    assert CSR.STATUS.get(be.read_csr("STATUS"), "busy")
    c0 = be.cycles()
    be.advance(5, None)
    assert be.cycles() - c0 >= 5
    board.busy_left = 2
    be.advance(None, None)
    assert not CSR.STATUS.get(be.read_csr("STATUS"), "busy")


def test_closed_connection_is_a_clear_error(link):
    board, ser, be = link
    ser.closed = True
    t0 = time.monotonic()
    with pytest.raises(SerialLinkError) as info:
        be.read_memory(0x40, 16)
    assert time.monotonic() - t0 < 0.5
    assert "READ_MEM 16 bytes at 0x40" in str(info.value)
    assert "disconnected" in str(info.value)


def test_silent_board_is_a_clear_error(link):
    board, ser, be = link
    ser.silent = True
    t0 = time.monotonic()
    with pytest.raises(SerialLinkError) as info:
        be.write_csr("PROG_ADDR", 0x100)
    assert time.monotonic() - t0 < 2.0
    assert info.value.attempts == FAST["retries"] + 1
    assert info.value.request == "WRITE_CSR PROG_ADDR = 0x100"
    assert "no reply" in str(info.value)
    be.close()
    with pytest.raises(SerialLinkError):
        be.read_csr("ID")


def test_protocol_1_board_is_a_clear_error():
    """A board that answers in protocol 1 (5A | status | crc8): no reply is taken, and the
    error says what the bytes suggest."""
    board = FakeBoard()
    ser = FakeSerial(board)
    ser.board = type("V1", (), {"receive": staticmethod(lambda data: b"\x5a\x02\x0e")})()
    with pytest.raises(SerialLinkError, match="before protocol 2"):
        SerialBackend(ser, **FAST)


def test_garbled_forever_is_a_clear_error(link):
    board, ser, be = link
    ser.faults = [("rep_flip", 2)] * 10
    with pytest.raises(SerialLinkError) as info:
        be.read_csr("STATUS")
    assert "CRC" in info.value.reason


def test_bus_error_is_reported(link):
    board, ser, be = link
    with pytest.raises(BridgeError, match="BUS_ERROR"):     # the fake's unmapped offset
        be._transact(Cmd.READ_CSR, 0x7C, what="READ_CSR 0x7c")


def test_open_failure_is_a_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(SerialLinkError, match="cannot open"):
        SerialBackend(f"socket://127.0.0.1:{port}")


def test_factory_checks_the_window(monkeypatch):
    from celosia.sw.serial_backend import serial_backend, serial_backend_factory

    class Compiled:
        end = 1 << 20
    board = FakeBoard()
    ser = FakeSerial(board)
    with pytest.raises(ValueError, match="4096 bytes"):
        serial_backend(Compiled(), None, port=ser, **FAST)
    assert ser.closed
    ser.closed = False
    Compiled.end = 4096
    assert serial_backend_factory(ser, **FAST)(Compiled(), None).mem_bytes == 4096
    monkeypatch.delenv("CELOSIA_SERIAL_PORT", raising=False)
    with pytest.raises(ValueError, match="CELOSIA_SERIAL_PORT"):
        serial_backend(Compiled(), None)


def test_advance_to_retired(link):
    board, ser, be = link
    board.run_polls = 10**9
    be.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
    t0 = time.monotonic()
    be.advance_to_retired(1, None, 5.0)           # the fake retires one instruction at start
    assert time.monotonic() - t0 < 1.0
    be.advance_to_retired(2, None, 0.05)
    assert CSR.STATUS.get(be.read_csr("STATUS"), "busy")


# --- end to end: the Verilated board over a TCP socket -------------------------------------------

SIM_CFG = MachineConfig(4, 8)


@pytest.fixture(scope="module")
def sim_board():
    """The simulated board (N = 4 with the vector engine) and a mirror of what its memory
    must hold (it starts zeroed; every write and every program's result update the mirror)."""
    from celosia.sim.verilator_uart import SimBoard

    t0 = time.monotonic()
    board = SimBoard(array=SIM_CFG.array, port_bytes=SIM_CFG.port_bytes, vector=True)
    board.start()
    print(f"\nsimulated board: build {board.build_seconds:.1f} s, setup "
          f"{time.monotonic() - t0:.1f} s, {board.url}")
    mirror = np.zeros(board.mem_bytes, np.uint8)
    yield board, mirror
    board.stop()


def attention_image(seed: int, base: int, size: int = 0x800, tokens: int = 8, dh: int = 16):
    """One attention head as the compiler emits it: scores = Q K^T (int32), SYNC, softmax on
    the vector engine (uint8 probabilities and a row exponent per row), SYNC, context =
    requant(P V) with the row exponents as row shift (int8), HALT."""
    from celosia.hdl import isa
    from celosia.hdl.isa import Unit, VecOp
    from celosia.hdl.params import OutFormat
    from celosia.sim.tb_accelerator import Image

    rng = np.random.default_rng(seed)
    mem = np.zeros(base + size, np.uint8)
    top = [base]

    def put(raw: bytes, align: int = 8) -> int:
        addr = -(-top[0] // align) * align
        mem[addr:addr + len(raw)] = np.frombuffer(raw, np.uint8)
        top[0] = addr + -(-max(len(raw), 1) // 8) * 8
        return addr

    def matrix(values, dtype):
        return put(np.ascontiguousarray(values.astype(dtype)).tobytes())

    q, k, v = (rng.integers(-40, 41, (tokens, dh)) for _ in range(3))
    qa, ka, va = matrix(q, np.int8), matrix(k, np.int8), matrix(v, np.int8)
    scores = put(bytes(4 * tokens * tokens))
    probs = put(bytes(tokens * tokens))
    probs_e = put(bytes(tokens))
    rec = np.zeros(dh, dtype=isa.ENGINE_PARAM_DTYPE)
    rec["bias"] = rng.integers(-200, 200, dh)
    rec["mult"] = rng.integers(1 << 13, 1 << 15, dh)
    rec["shift"] = rng.integers(19, 23, dh)
    params = put(rec.tobytes())
    ctx = put(bytes(tokens * dh))
    program = [
        isa.matmul(m=tokens, k=dh, n=tokens, a_addr=qa, a_stride=dh, b_addr=ka, b_stride=dh,
                   b_transposed=1, c_addr=scores, c_stride=4 * tokens),
        isa.sync(Unit.MATMUL),
        isa.vector(op=VecOp.SOFTMAX, rows=tokens, cols=tokens, src_addr=scores,
                   src_stride=4 * tokens, src_fmt=OutFormat.INT32, dst_addr=probs,
                   dst_stride=tokens, dst_fmt=OutFormat.UINT8, mult=int(rng.integers(1 << 13, 1 << 15)),
                   shift=16, e_addr=probs_e),
        isa.sync(Unit.VECTOR),
        isa.matmul(m=tokens, k=tokens, n=dh, a_addr=probs, a_stride=tokens, b_addr=va,
                   b_stride=dh, c_addr=ctx, c_stride=dh, p_addr=params, use_params=1, requant=1,
                   out_fmt=OutFormat.INT8, a_unsigned=1, row_shift=1, e_addr=probs_e),
        isa.halt(),
    ]
    prog = put(b"".join(i.encode() for i in program), 64)
    assert top[0] <= base + size
    return Image(mem, base, size, prog, SIM_CFG, {"probs": probs, "ctx": ctx, "tokens": tokens,
                                                  "dh": dh})


def _run_over_serial(backend, mirror, img, *, vector: bool, config=SIM_CFG,
                     error: bool = False):
    """Load the image's window, run it through the driver, compare the CSRs with the isa
    simulator and update the mirror with its final memory (``error``: the program stops
    with an error code, as in the isa simulator)."""
    from celosia.sim.tb_accelerator import reference, status_bits
    from celosia.sw.driver import Accelerator, AcceleratorError

    acc = Accelerator(backend)
    assert acc.config == config
    window = img.mem[img.base:img.base + img.size]
    backend.write_memory(img.base, window.tobytes())
    mirror[img.base:img.base + img.size] = window
    backend.write_csr("WIN_BASE", img.base)
    backend.write_csr("WIN_SIZE", img.size)
    acc.start(img.prog)
    try:
        status = acc.wait(max_cycles=2_000_000, timeout_s=120)
        assert not error, "the program should have stopped with an error"
    except AcceleratorError as e:
        if not error:
            raise
        status = e.status
    ref_mem, ref, mach = reference(img, vector_unit=vector)
    regs = {name: backend.read_csr(name) for name in ("STATUS", "ERROR", "ERROR_PC", "PC",
                                                      "INSTRET", "MATMUL_COUNT", "VECTOR_COUNT")}
    for name in ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT", "VECTOR_COUNT"):
        assert regs[name] == ref[name], (name, regs[name], ref[name], mach.error_detail)
    assert status_bits(regs["STATUS"]) == ref["STATUS"] and status.done != error
    mirror[img.base:img.base + img.size] = ref_mem[img.base:img.base + img.size]
    return acc.counters()


def _check_memory(backend, mirror):
    """Every byte of the board's memory: the window results and nothing else changed."""
    got = np.frombuffer(backend.read_memory(0, len(mirror)), np.uint8)
    diff = np.flatnonzero(got != mirror)
    assert diff.size == 0, f"{diff.size} bytes differ, first at {diff[0]:#x}"


def _run_compiled_over_serial(backend, mirror, seed: int):
    """A compiled encoder layer through driver.run_compiled: the hidden state of the golden
    model, and every byte of the window (weights, activations, program) as the isa backend
    leaves it."""
    from celosia.sw import golden
    from celosia.sw.compiler import compile_model
    from celosia.sw.driver import open_backend, run_compiled

    from checkpoints import tiny_encoder

    model, im = tiny_encoder(seed)
    ids = np.array([1, 7 + seed, 23, 11, 0])
    e = golden.embed_int32(model, im, ids)
    compiled = compile_model(im, len(ids), array=SIM_CFG.array, port_bytes=SIM_CFG.port_bytes)
    assert compiled.end <= len(mirror)
    isa = open_backend("isa", compiled, im)
    want = run_compiled(isa, compiled, e)
    got = run_compiled(backend, compiled, e)
    assert np.array_equal(want.hidden, golden.forward(im, e))
    assert np.array_equal(got.hidden, want.hidden)
    for name in ("instructions", "matmul_count", "vector_count"):
        assert got.counters[name] == want.counters[name], name
    mirror[compiled.base:compiled.end] = np.frombuffer(
        isa.read_memory(compiled.base, compiled.window_size), np.uint8)
    return got


def _programs(seed: int):
    from celosia.sim.tb_accelerator import matmul_chain

    mm = matmul_chain(seed, SIM_CFG, links=3, base=0x800, size=0x1000, guard=0, max_dim=12)
    att = attention_image(seed, base=0x2000)
    return mm, att


def _run_all(backend, mirror, seed):
    layer = _run_compiled_over_serial(backend, mirror, seed)
    assert layer.counters["vector_count"] == 8
    mm, att = _programs(seed)
    c_mm = _run_over_serial(backend, mirror, mm, vector=False)
    assert c_mm["matmul_count"] == 3
    c_att = _run_over_serial(backend, mirror, att, vector=True)
    assert c_att["matmul_count"] == 2 and c_att["vector_count"] == 1
    p = att.notes["probs"]
    t = att.notes["tokens"]
    probs = mirror[p:p + t * t].reshape(t, t)
    assert probs.max() > 0 and len(np.unique(probs)) > 4       # not a degenerate softmax
    return c_mm, c_att


def test_end_to_end_matmul_and_attention(sim_board):
    """A compiled encoder layer, a matmul chain and an attention head through the driver over
    the clean link."""
    board, mirror = sim_board
    t0 = time.monotonic()
    s0 = board.stats()
    with SerialBackend(board.url, **board.backend_options()) as be:
        assert be.mem_bytes == board.mem_bytes
        _run_all(be, mirror, seed=1)
        _check_memory(be, mirror)
        # No byte is ever corrupted on this link; a resend can only follow a timeout (the
        # model's thread descheduled on a loaded machine).
        st = be.stats
        assert st["bad_replies"] + st["rejected"] <= st["timeouts"] <= 2, st
        moved = be.stats["bytes_out"] + be.stats["bytes_in"]
    wall = time.monotonic() - t0
    s1 = board.stats()
    print(f"clean link: {wall:.1f} s, {moved} bytes ({moved / wall:.0f} B/s), "
          f"{(s1['cycles'] - s0['cycles']) / wall / 1e6:.2f} M cycles/s")


def test_end_to_end_through_a_faulty_link(sim_board):
    """The same programs (other data) through a proxy that corrupts and drops bytes both
    ways: bit-exact results, the whole memory as expected, and the faults really happened."""
    from celosia.sim.verilator_uart import FaultProxy

    board, mirror = sim_board
    t0 = time.monotonic()
    with FaultProxy(board.url, seed=3, spacing=(300, 1000)) as proxy:
        with SerialBackend(proxy.url, **board.backend_options(), retries=10) as be:
            _run_all(be, mirror, seed=2)
            _check_memory(be, mirror)
            stats = dict(be.stats)
        faults = dict(proxy.stats)
    wall = time.monotonic() - t0
    print(f"faulty link: {wall:.1f} s, proxy {faults}, backend {stats}")
    assert faults["up_flips"] + faults["up_drops"] >= 3
    assert faults["down_flips"] + faults["down_drops"] >= 3
    assert stats["retries"] >= proxy.faults // 2


def test_dropped_connection_and_reconnect(sim_board):
    """A pulled cable: the next request fails with SerialLinkError at once; a new connection
    finds the board as it was."""
    board, mirror = sim_board
    with SerialBackend(board.url, **board.backend_options()) as be:
        assert be.read_csr("ID") == ID_MAGIC
        board.drop_client()
        time.sleep(0.1)
        t0 = time.monotonic()
        with pytest.raises(SerialLinkError) as info:
            be.read_memory(0x800, 64)
        assert time.monotonic() - t0 < 2.0
        assert "READ_MEM 64 bytes at 0x800" in str(info.value)
    with SerialBackend(board.url, **board.backend_options()) as be:
        assert be.read_memory(0x800, 64) == mirror[0x800:0x840].tobytes()


def test_pty_board(sim_board):
    """The simulated board on a pseudo-terminal: pyserial opens it as a serial port (termios),
    the driver runs the attention head on it."""
    from celosia.sim.verilator_uart import SimBoard

    board, _ = sim_board
    with SimBoard(array=SIM_CFG.array, port_bytes=SIM_CFG.port_bytes, vector=True,
                  pty=True) as pty_board:
        assert pty_board.url.startswith("/dev/")
        mirror = np.zeros(pty_board.mem_bytes, np.uint8)
        with SerialBackend(pty_board.url, **pty_board.backend_options()) as be:
            import serial
            assert isinstance(be._ser, serial.Serial)
            att = attention_image(5, base=0x1000)
            _run_over_serial(be, mirror, att, vector=True)
            got = be.read_memory(0x1000, 0x800)
            assert got == mirror[0x1000:0x1800].tobytes()
            st = be.stats
            assert st["bad_replies"] + st["rejected"] <= st["timeouts"] <= 2, st


def test_icebreaker_board_end_to_end():
    """The iCEBreaker's accelerator (2x2, board-sized, no vector engine, native memory port
    on NativeRam) as a simulated board: matmul chains and error programs through the driver
    over a link that corrupts and drops bytes, bit-exact, then every byte of memory."""
    from celosia.sim.tb_accelerator import error_image, matmul_chain
    from celosia.sim.verilator_uart import FaultProxy, SimBoard

    cfg = MachineConfig(2, 4)
    with SimBoard(array=2, vector=False, k_max=512, sizing="small", memory="native") as board:
        mirror = np.zeros(board.mem_bytes, np.uint8)
        with FaultProxy(board.url, seed=5, spacing=(300, 1000)) as proxy:
            with SerialBackend(proxy.url, **board.backend_options(), retries=10) as be:
                for seed in range(2):
                    img = matmul_chain(seed, cfg, links=3, base=0x800, size=0x1800, max_dim=9)
                    assert _run_over_serial(be, mirror, img, vector=False,
                                            config=cfg)["matmul_count"] == 3
                for kind in ("window", "param", "vector"):
                    img = error_image(kind, cfg, base=0x2000, size=0x1000)
                    _run_over_serial(be, mirror, img, vector=False, config=cfg, error=True)
                _check_memory(be, mirror)
            assert proxy.faults >= 3


# --- resident weights over a 3 Mbaud link ------------------------------------------------------

#: The ULX3S link: 3 Mbaud from the 25 MHz core clock (8 clocks per bit: 3.125 Mbaud).
FAST_BAUD = 3_000_000


@pytest.fixture(scope="module")
def fast_board():
    """A simulated board that reports the ULX3S clock and runs its UART at the divisor
    3 Mbaud takes there."""
    from celosia.fpga.boards import uart_divisor
    from celosia.sim.verilator_uart import ULX3S_CLK_HZ, SimBoard

    with SimBoard(array=SIM_CFG.array, port_bytes=SIM_CFG.port_bytes, vector=True,
                  divisor=uart_divisor(ULX3S_CLK_HZ, FAST_BAUD), clk_hz=ULX3S_CLK_HZ) as board:
        yield board


def test_resident_weights_over_the_link(fast_board):
    """The first run loads the weights and their digest record; the next sentence, of
    another length, and a batch send only the program and the input; a record of other
    weights and a weights region overwritten behind the record's back each make the driver
    load them again. Every run bit-exact with the golden model."""
    from checkpoints import run_bit_exact, tiny_encoder

    from celosia.sw.compiler import compile_model
    from celosia.sw.memory_map import DIGEST_ADDR, RECORD_BYTES

    model, im = tiny_encoder(0)

    def run(be, *sentences):
        return run_bit_exact(be, model, im, sentences, SIM_CFG, resident=True)

    a, b = [1, 7, 23, 11, 0], [1, 9, 4, 0]
    with SerialBackend(fast_board.url, baud=FAST_BAUD, **fast_board.backend_options()) as be:
        assert be.clk_hz == 25_000_000
        c, first = run(be, a)
        assert first.weights_loaded
        assert be.read_memory(DIGEST_ADDR, RECORD_BYTES) == c.weights_record
        c2, second = run(be, b)
        assert not second.weights_loaded and c2.weights_digest == c.weights_digest
        # The weights' bytes (and their frames) are what the second run did not send.
        assert first.link_bytes - second.link_bytes > c.weights_size
        _, batch = run(be, a, b)
        assert not batch.weights_loaded
        _, im1 = tiny_encoder(1)
        be.write_memory(DIGEST_ADDR, compile_model(im1, 5, array=SIM_CFG.array,
                                                   port_bytes=SIM_CFG.port_bytes).weights_record)
        _, other = run(be, b)
        assert other.weights_loaded
        rng = np.random.default_rng(0)
        be.write_memory(c.base, rng.integers(0, 256, c.weights_size, np.uint8).tobytes())
        _, corrupted = run(be, a)
        assert corrupted.weights_loaded
        print(f"\nlink bytes at {FAST_BAUD} baud: first run {first.link_bytes}, resident "
              f"{second.link_bytes} (weights region {c.weights_size} bytes)")


def test_embed_keeps_the_weights_on_the_board(fast_board, make_checkpoint, tmp_path, capsys):
    """``celosia embed --backend serial --baud 3000000 --json`` twice on the board: the first
    sentence loads a test-made checkpoint's weights, the second finds them there; both
    bit-exact with the golden model, and the JSON says so. The second names no ``--array``:
    the program is compiled for the board's own (its CONFIG register)."""
    import json

    from celosia.sw import cli

    folder = make_checkpoint(tmp_path / "ckpt", hidden=16, heads=2, layers=1, ffn=32,
                             pooling="mean", normalize=True)
    runs = []
    for text, array in (("a small test sentence", ["--array", str(SIM_CFG.array)]),
                        ("another one, a little longer than the first", [])):
        status = cli.main(["embed", "--model", str(folder), "--model-file", str(tmp_path / "im"),
                           "--backend", "serial", "--port", fast_board.url, "--baud",
                           str(FAST_BAUD), *array, "--json", text])
        out = capsys.readouterr()
        assert status == 0, out.err
        runs.append(json.loads(out.out))
    first, second = (r["batches"][0] for r in runs)
    assert first["weights_loaded"] and not second["weights_loaded"]
    assert all(r["results"][0]["bit_exact_vs_golden"] for r in runs)
    assert [r["array"] for r in runs] == [SIM_CFG.array] * 2
    assert second["link_bytes"] < first["link_bytes"]


# --- the simulated board with its memory window in SDRAM -------------------------------------

#: Bytes of the SDRAM board's memory the tests mirror and read back over the link (the
#: programs' windows are inside it); the rest is checked through the chip model's back door.
SDRAM_MIRROR_BYTES = 0x10000


@pytest.fixture(scope="module")
def sdram_board():
    """The simulated board with LiteDRAM and the SDRAM chip model as its memory (N = 4 with
    the vector engine, the ULX3S's 25 MHz and 3 Mbaud divisor)."""
    from celosia.fpga.boards import uart_divisor
    from celosia.sim.verilator_uart import ULX3S_CLK_HZ, SimBoard

    t0 = time.monotonic()
    board = SimBoard(array=SIM_CFG.array, port_bytes=SIM_CFG.port_bytes, vector=True,
                     window="sdram", divisor=uart_divisor(ULX3S_CLK_HZ, FAST_BAUD),
                     clk_hz=ULX3S_CLK_HZ)
    print(f"\nsimulated SDRAM board: build {board.build_seconds:.1f} s, setup "
          f"{time.monotonic() - t0:.1f} s")
    yield board
    board.stop()


def test_sdram_board_back_door_and_link(sdram_board):
    """Bytes loaded into the chip model behind the controller read back over the link, bytes
    written over the link are in the chip where LiteDRAM's address mapping puts them (first
    and last bytes of the 32 MB included); no protocol violation."""
    board = sdram_board
    assert board.mem_bytes == 32 << 20
    rng = np.random.default_rng(5)
    spots = [0, 0x1234567, board.mem_bytes - 700]
    blobs = [rng.integers(0, 256, 700, np.uint8).tobytes() for _ in spots]
    for addr, blob in zip(spots, blobs):
        board.preload(addr, blob)
    with pytest.raises(ValueError, match="outside"):
        board.preload(board.mem_bytes - 1, b"xy")
    board.start()
    with SerialBackend(board.url, baud=FAST_BAUD, **board.backend_options()) as be:
        assert be.mem_bytes == board.mem_bytes
        for addr, blob in zip(spots, blobs):
            assert be.read_memory(addr, len(blob)) == blob
        new = rng.integers(0, 256, 513, np.uint8).tobytes()
        be.write_memory(0x0abcdef, new)
        assert board.peek(0x0abcdef, len(new)) == new
        for addr in spots:                      # put back the zeros the next test expects
            be.write_memory(addr, bytes(700))
        be.write_memory(0x0abcdef, bytes(len(new)))
    assert board.violation == ""
    st = board.stats()
    assert st["sdram_reads"] >= 3 * 700 and st["sdram_writes"] >= 513 and st["sdram_refreshes"] > 0


def test_sdram_board_end_to_end(sdram_board):
    """The compiled encoder layer, the matmul chain and the attention head of the on-chip
    board's tests, bit-exact with the isa simulator on the SDRAM board; every byte of the
    mirrored region read back over the link, and the whole 32 MB through the back door."""
    board = sdram_board
    board.start()
    mirror = np.zeros(SDRAM_MIRROR_BYTES, np.uint8)
    s0 = board.stats()
    t0 = time.monotonic()
    with SerialBackend(board.url, baud=FAST_BAUD, **board.backend_options()) as be:
        runs = _run_all(be, mirror, seed=3)
        _check_memory(be, mirror)
    wall = time.monotonic() - t0
    assert board.peek(0, len(mirror)) == mirror.tobytes()
    rest = np.frombuffer(board.peek(len(mirror), board.mem_bytes - len(mirror)), np.uint8)
    assert not rest.any(), f"a byte outside the programs' region changed at {np.flatnonzero(rest)[0] + len(mirror):#x}"
    assert board.violation == ""
    s1 = board.stats()
    cycles = s1["cycles"] - s0["cycles"]
    words = (s1["sdram_reads"] - s0["sdram_reads"]) + (s1["sdram_writes"] - s0["sdram_writes"])
    # The accelerator's own memory counters: its beats are a part of the SDRAM's traffic.
    read = sum(c["mem_read_beats"] for c in runs) * SIM_CFG.port_bytes
    written = sum(c["mem_write_beats"] for c in runs) * SIM_CFG.port_bytes
    assert 0 < read <= 2 * (s1["sdram_reads"] - s0["sdram_reads"])
    assert 0 < written <= 2 * (s1["sdram_writes"] - s0["sdram_writes"])
    print(f"SDRAM board: {wall:.1f} s, {cycles / wall / 1e6:.2f} M cycles/s, SDRAM "
          f"{s1['sdram_reads'] - s0['sdram_reads']} reads, {s1['sdram_writes'] - s0['sdram_writes']} "
          f"writes, {s1['sdram_activates'] - s0['sdram_activates']} activates "
          f"({words / cycles:.3f} words a cycle)")
