"""Banked, double-buffered on-chip scratchpads and the tokens that hand their buffers over.

A :class:`Scratchpad` is written one memory-port beat (W bytes) per cycle and read R bytes per
cycle. Its lines are ``max(W, R)`` bytes wide and split into W-byte banks, so a beat writes
exactly one bank and a read gets a whole line (then picks its R bytes). Each scratchpad holds
two buffers: the loader fills one while the compute side reads the other.

A :class:`PingPong` tracks the two buffers of one scratchpad: a buffer is *free*, *claimed*
by the loader (requests issued), *full* (last beat written) and then *released* by its reader.
"""

from amaranth import *
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Scratchpad", "PingPong"]


def _log2(x: int) -> int:
    assert x > 0 and x & (x - 1) == 0, x
    return x.bit_length() - 1


class Scratchpad(wiring.Component):
    """Two buffers of ``depth_bytes`` each, written ``write_bytes`` and read ``read_bytes`` at a time.

    Parameters
    ----------
    write_bytes : int
        Bytes per write beat (the memory-port width), a power of two.
    read_bytes : int
        Bytes per read, a power of two.
    depth_bytes : int
        Capacity of one buffer, a power of two, at least ``max(write_bytes, read_bytes)``.

    Members
    -------
    w : In(stream.Signature(...))
        Write beats ``{buf, addr, data}``; ``addr`` counts ``write_bytes`` units. Always ready.
    r_en, r_buf, r_addr : In
        Read request; ``addr`` counts ``read_bytes`` units. When ``r_en`` is low the previous
        read data is held (a stalled pipeline keeps its operands).
    r_data : Out(read_bytes * 8)
        Data of the last enabled read, one cycle after it.
    """

    def __init__(self, *, write_bytes: int, read_bytes: int, depth_bytes: int):
        for name, v in (("write_bytes", write_bytes), ("read_bytes", read_bytes),
                        ("depth_bytes", depth_bytes)):
            if not isinstance(v, int) or v <= 0 or v & (v - 1):
                raise ValueError(f"{name} must be a positive power of two, not {v!r}")
        self.write_bytes = write_bytes
        self.read_bytes = read_bytes
        self.line_bytes = max(write_bytes, read_bytes)
        if depth_bytes < self.line_bytes:
            raise ValueError(f"depth_bytes {depth_bytes} is below one line ({self.line_bytes})")
        self.depth_bytes = depth_bytes
        self.lines = depth_bytes // self.line_bytes
        super().__init__({
            "w": In(stream.Signature(data.StructLayout({
                "buf": 1,
                "addr": range(depth_bytes // write_bytes),
                "data": unsigned(write_bytes * 8),
            }))),
            "r_en": In(1),
            "r_buf": In(1),
            "r_addr": In(range(depth_bytes // read_bytes)),
            "r_data": Out(read_bytes * 8),
        })

    def elaborate(self, platform):
        m = Module()
        banks = self.line_bytes // self.write_bytes
        chunks = self.line_bytes // self.read_bytes
        lines_log2 = _log2(self.lines)

        m.d.comb += self.w.ready.eq(1)
        w_bank = self.w.payload.addr[:_log2(banks)] if banks > 1 else C(0, 1)
        w_line = self.w.payload.addr[_log2(banks):]
        r_line = self.r_addr[_log2(chunks):]
        line_data = []
        for bank in range(banks):
            mem = memory.Memory(shape=unsigned(self.write_bytes * 8),
                                depth=2 * self.lines, init=[])
            m.submodules[f"bank{bank}"] = mem
            wp = mem.write_port()
            rp = mem.read_port()
            m.d.comb += [
                wp.addr.eq(Cat(w_line[:lines_log2], self.w.payload.buf)),
                wp.data.eq(self.w.payload.data),
                wp.en.eq(self.w.valid & (w_bank == bank)),
                rp.addr.eq(Cat(r_line[:lines_log2], self.r_buf)),
                rp.en.eq(self.r_en),
            ]
            line_data.append(rp.data)
        line = Cat(*line_data)
        if chunks > 1:
            sel = Signal(range(chunks))
            with m.If(self.r_en):
                m.d.sync += sel.eq(self.r_addr[:_log2(chunks)])
            m.d.comb += self.r_data.eq(line.word_select(sel, self.read_bytes * 8))
        else:
            m.d.comb += self.r_data.eq(line)
        return m


class PingPong(wiring.Component):
    """Ownership of the two buffers of a scratchpad.

    Members
    -------
    clear : In(1)
        Make both buffers free (at the start of a command).
    claim, claim_buf : In
        The loader starts filling ``claim_buf`` (it must be free).
    fill, fill_buf : In
        The last beat of ``fill_buf`` was written: it is full.
    release, release_buf : In
        The reader is done with ``release_buf``: it is free again.
    free, full : Out(2)
        Per-buffer state.
    """

    def __init__(self):
        super().__init__({
            "clear": In(1),
            "claim": In(1), "claim_buf": In(1),
            "fill": In(1), "fill_buf": In(1),
            "release": In(1), "release_buf": In(1),
            "free": Out(2),
            "full": Out(2),
        })

    def elaborate(self, platform):
        m = Module()
        claimed = Signal(2)
        full = Signal(2)
        m.d.comb += [self.free.eq(~claimed), self.full.eq(full)]
        for b in range(2):
            with m.If(self.clear | (self.release & (self.release_buf == b))):
                m.d.sync += [claimed[b].eq(0), full[b].eq(0)]
            with m.Else():
                with m.If(self.claim & (self.claim_buf == b)):
                    m.d.sync += claimed[b].eq(1)
                with m.If(self.fill & (self.fill_buf == b)):
                    m.d.sync += full[b].eq(1)
        return m
