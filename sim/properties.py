"""Property harnesses of Celosia's hardware blocks, and mutants that must fail them.

Each harness is a ``wiring.Component`` around the design it checks (see
:mod:`celosia.sim.formal` for the idiom): its ``In`` members are free inputs the solver picks in
every cycle, constrained only by ``Assume`` statements that state what the environment
promises; a value from an earlier cycle is a register of the harness. The named proofs that
:func:`celosia.sim.proofs.run` checks are built from these classes.

A mutant is the design with one deliberate bug, made by overriding ``elaborate`` and adding a
statement after the design's own (the later assignment wins), or by overriding the one method
that computes the broken value. Each one breaks exactly the
property its docstring names; a proof that still passes on it would prove nothing.
"""


from amaranth import *
from amaranth.hdl import Assert, Assume, Cover, Fragment, ValueCastable
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from celosia.hdl import isa
from celosia.hdl.axi import AXI4LiteSignature, AXI4Signature, AxiMaster, BURST_INCR, MemArbiter
from celosia.hdl.controller import Controller, SerialSpanCheck, SpanCheck
from celosia.hdl.csr import CSR_ADDR_BITS, CsrBlock
from celosia.hdl.engine import MatmulEngine, MemoryPortSignature
from celosia.hdl.params import DONE_BITS, command_layout, out_bytes_log2
from celosia.hdl.vector_engine import VectorEngine
from celosia.hdl.sequencer import Writer, compute_plan, plan_layout
from celosia.hdl.pipeline import CreditCounter, SkidBuffer

__all__ = [
    "SkidBufferSpec", "CreditCounterSpec", "AxiMasterSpec", "CsrSpec", "SpanCheckSpec",
    "SkidBufferLosingSkid", "SkidBufferBypassingSkid", "CreditCounterLateOk",
    "AxiMasterAwNotHeld", "AxiMasterShortWriteBurst", "AxiMasterLongReadBurst",
    "AxiMasterMovingBurst",
    "AxiMasterUncountedWrites", "AxiMasterWritingNextBeat", "AxiMasterFenceSpec",
    "AxiMasterFenceDroppingAr",
    "AxiMasterForgettingStale", "MemArbiterSpec", "MemArbiterDroppingTag",
    "MemArbiterAckingEveryWrite", "MemArbiterStuckGrant",
    "MemArbiterSwitchingStalledWrite", "CsrBlockIgnoringStrobes", "CsrBlockSwappedWindow",
    "SpanCheckWithoutRowBytes", "SpanCheckWithoutBase", "SerialSpanCheckSpec",
    "SerialSpanCheckSkippingRowBytes", "SerialSpanCheckIgnoringOverflow",
    "WriterSpec", "WriterWritingEmptyBeats", "ControllerSpec", "ControllerAcceptingWrappedWindow",
    "ControllerForgettingC", "ControllerForgettingDst", "ControllerLivenessSpec", "EngineWriteSpec",
    "EngineTakingCommandsWhileBusy", "ControllerScanningShort", "VectorEngineFreeUnit",
    "VectorEngineWriteSpec", "VectorEngineWritingPastRows", "VectorEngineRecordingPastRows",
    "LIVENESS_CLASSES",
]


def _bits(value):
    """The plain value behind a payload (a layout's view or a signal)."""
    return value.as_value() if isinstance(value, ValueCastable) else value


def _elaborated(dut, platform):
    """``dut``'s module, elaborated now, so that the harness can state invariants of the
    registers its ``elaborate`` leaves in ``dut._probe``."""
    dut._MustUse__silence = True          # used through its module
    return dut.elaborate(platform)


def _held_until_ready(m: Module, valid, ready, payload, channel: str, *,
                      assume: bool = False) -> None:
    """Assert (or, for a free sender, ``assume``) the handshake rule of a sender: once
    ``valid`` is high without ``ready``, the next cycle has ``valid`` high again with the same
    ``payload``."""
    stalled = Signal(name=f"{channel}_stalled")
    last = Signal(len(payload), name=f"{channel}_last")
    m.d.sync += [stalled.eq(valid & ~ready), last.eq(payload)]
    with m.If(stalled):
        held = valid & (payload == last)
        m.d.comb += (Assume(held) if assume else
                     Assert(held, f"{channel}: valid dropped or payload changed before ready"))


# --- pipeline ----------------------------------------------------------------------------------

class SkidBufferSpec(wiring.Component):
    """The properties of a :class:`SkidBuffer` around it; the members are the free inputs.

    One item, chosen by the solver (``track`` high in the cycle it is accepted), is followed
    through the buffer: its position (items ahead of it) and its payload. With the item count
    ``occupancy`` (transfers in minus transfers out) this shows that no item is lost, duplicated
    or reordered: the tracked item leaves exactly when the items ahead of it have left, with
    its payload, and the buffer's valid/ready follow the count.
    """

    def __init__(self, dut: SkidBuffer):
        self.dut = dut
        self.width = len(_bits(dut.i.payload))
        super().__init__({"i_valid": In(1), "i_payload": In(self.width), "o_ready": In(1),
                          "track": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        i_payload, o_payload = _bits(dut.i.payload), _bits(dut.o.payload)
        m.d.comb += [dut.i.valid.eq(self.i_valid), i_payload.eq(self.i_payload),
                     dut.o.ready.eq(self.o_ready)]
        i_fire = dut.i.valid & dut.i.ready
        o_fire = dut.o.valid & dut.o.ready

        occupancy = Signal(2)                  # one spare value: 3 shows an overflow
        m.d.sync += occupancy.eq(occupancy + i_fire - o_fire)
        m.d.comb += [Assert(occupancy <= 2, "more than two items held"),
                     Assert(dut.o.valid == (occupancy != 0), "o.valid != holding an item"),
                     Assert(dut.i.ready == (occupancy < 2), "i.ready != room for an item")]

        tracking = Signal()
        position = Signal(2)
        data = Signal(self.width)
        with m.If(tracking):
            with m.If(o_fire):
                with m.If(position == 0):
                    m.d.sync += tracking.eq(0)     # it left now; its payload is checked below
                with m.Else():
                    m.d.sync += position.eq(position - 1)
        with m.Elif(i_fire & self.track):
            m.d.sync += [tracking.eq(1), position.eq(occupancy - o_fire), data.eq(i_payload)]
        # Reachable (the properties below are not vacuous): a tracked item in the skid entry
        # moves up as the item ahead leaves, and one leaves while the next arrives.
        m.d.comb += [Cover(tracking & (position == 1) & o_fire),
                     Cover(tracking & (position == 0) & o_fire & i_fire)]
        with m.If(tracking):
            m.d.comb += Assert(position < occupancy, "tracked item lost")
            with m.If(position == 0):
                m.d.comb += Assert(o_payload == data, "tracked item out with another payload")
            with m.Else():
                # Where the second item waits: the induction needs this, as the consumer can
                # stall for longer than any depth.
                m.d.comb += Assert(dut._skid_valid & (_bits(dut._skid_payload) == data),
                                   "tracked item not in the skid entry")

        _held_until_ready(m, dut.o.valid, dut.o.ready, o_payload, "o")
        return m


class CreditCounterSpec(wiring.Component):
    """The properties of a :class:`CreditCounter`; the members are the free inputs.

    The environment returns a credit only for an item in flight (``Assume``). Then credits plus
    items in flight equal the capacity at all times (so credits stay within [0, capacity]), a
    take is granted only with enough credit, and ``ok`` tells exactly that.
    """

    take: In(1)
    give: In(1)

    def __init__(self, dut: CreditCounter):
        self.dut = dut
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        m.d.comb += [dut.take.eq(self.take), dut.give.eq(self.give)]
        taken = dut.take & dut.ok
        # Wide enough that a take beyond the capacity shows instead of wrapping.
        in_flight = Signal(range(dut.capacity + dut.cost + 1))
        m.d.sync += in_flight.eq(in_flight + Mux(taken, dut.cost, 0) - dut.give)
        m.d.comb += [
            Assume(~dut.give | (in_flight != 0)),
            Assert(dut.credits + in_flight == dut.capacity, "credits + in flight != capacity"),
            Assert(dut.credits <= dut.capacity, "credits above capacity"),
            Assert(~taken | (dut.credits >= dut.cost), "take granted without enough credit"),
            Assert(dut.ok == (dut.credits >= dut.cost), "ok does not tell credits >= cost"),
            # Reachable under the assumption: empty, and a take and a give in one cycle.
            Cover(dut.credits == 0),
            Cover(taken & dut.give),
        ]
        return m


class SkidBufferLosingSkid(SkidBuffer):
    """Mutant: the skid entry never fills, so an item accepted while the output stalls is lost."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.sync += self._skid_valid.eq(0)
        return m


class SkidBufferBypassingSkid(SkidBuffer):
    """Mutant: the main register always loads the input, overtaking a waiting skid item."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        with m.If(~self.o.valid | self.o.ready):
            m.d.sync += self._main_payload.eq(self.i.payload)
        return m


class CreditCounterLateOk(CreditCounter):
    """Mutant: ``ok`` from this cycle's credits instead of the next, so in the cycle after a
    take it still grants one more take without enough credit."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.sync += self.ok.eq(self.credits >= self.cost)
        return m


# --- AXI4 master -------------------------------------------------------------------------------

class AxiMasterSpec(wiring.Component):
    """The AXI4 master obligations of an :class:`AxiMaster` under a free slave and a free
    requester on its memory port.

    The slave's inputs (ready signals, responses) are free, with the promises a slave makes:
    it returns an R beat only for a beat some accepted AR asked for, and a B response only for
    a write whose AW and W burst it accepted. The requester's are free too, with one promise:
    it keeps at most ``reads`` reads in flight (the :class:`MemArbiter` in front of the master
    bounds them with its tag FIFO). Under these the master

    * holds AR, AW and W valid, with the same payload, until ready;
    * sends each AR burst of at most ``max_burst`` beats inside one 4 KiB page, ``INCR``;
    * sends, per AW burst, exactly ``awlen + 1`` W beats with WLAST on the last one, and
      never a W beat before its AW is valid;
    * asks on AR for exactly the beats the requester asked for and hands every R beat to the
      requester: requester reads in flight = beats held in the burst being gathered + beats of
      the AR on the bus + beats the slave owes (so at most ``reads`` read beats are outstanding);
    * puts every read request into an AR burst at its address, in request order, so the R beat
      for its address is the response the requester takes for it (one request followed);
    * has at most ``max_writes`` writes outstanding, counted exactly (``writes_idle`` is true
      only when none is).

    Parameters
    ----------
    dut : AxiMaster
    reads : int
        The most reads the requester keeps in flight.

    Members
    -------
    port : In(MemoryPortSignature)
        The requester's side, free.
    axi : Out(AXI4Signature)
        The slave's side; its ``In`` signals are free.
    track : In(1)
        Follow the read request accepted in this cycle (one at a time; the solver chooses).
    """

    def __init__(self, dut: AxiMaster, reads: int):
        self.dut, self.reads = dut, reads
        super().__init__({
            "port": In(MemoryPortSignature(dut.port_bytes)),
            "axi": Out(AXI4Signature(dut.addr_width, 8 * dut.port_bytes)),
            "track": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        wiring.connect(m, wiring.flipped(self.port), dut.port)
        wiring.connect(m, dut.axi, wiring.flipped(self.axi))
        axi, port = dut.axi, dut.port
        lw = dut.port_bytes.bit_length() - 1
        page_beats = 1 << (12 - lw)

        def payload(ch):
            return Cat(getattr(axi, f"{ch}{name}") for name in
                       ("id", "addr", "len", "size", "burst", "lock", "cache", "prot"))

        _held_until_ready(m, axi.arvalid, axi.arready, payload("ar"), "AR")
        _held_until_ready(m, axi.awvalid, axi.awready, payload("aw"), "AW")
        _held_until_ready(m, axi.wvalid, axi.wready, Cat(axi.wdata, axi.wstrb, axi.wlast), "W")

        # --- reads: beats conserved from the requester to AR and back on R ---
        ar_fire = axi.arvalid & axi.arready
        r_fire = axi.rvalid & axi.rready
        req_fire = port.rd_req.valid & port.rd_req.ready
        resp_fire = port.rd_resp.valid & port.rd_resp.ready
        spare = dut.max_burst + 1             # room to show an excess instead of wrapping
        in_flight = Signal(range(self.reads + spare))      # the requester's reads in flight
        owed = Signal(range(self.reads + spare))           # R beats the slave owes
        m.d.sync += [in_flight.eq(in_flight + req_fire - resp_fire),
                     owed.eq(owed + Mux(ar_fire, axi.arlen + 1, 0) - r_fire)]
        m.d.comb += [
            Assume(~port.rd_req.valid | (in_flight < self.reads)),
            Assume(~axi.rvalid | (owed != 0)),
        ]
        held_beats = Mux(dut._held, dut._h_len + 1, 0)
        ar_beats = Mux(axi.arvalid, axi.arlen + 1, 0)
        m.d.comb += [
            Assert(in_flight == held_beats + ar_beats + owed,
                   "read beats requested != beats held + on AR + owed by the slave"),
            Assert(in_flight <= self.reads, "more reads outstanding than the requester allows"),
            Assert(port.rd_resp.valid == axi.rvalid, "R beat not handed to the requester"),
        ]
        with m.If(axi.arvalid):
            m.d.comb += [
                Assert(axi.arlen < dut.max_burst, "AR burst longer than max_burst"),
                Assert(axi.araddr[lw:12] + axi.arlen < page_beats, "AR burst crosses 4 KiB"),
                Assert((axi.arburst == BURST_INCR) & (axi.arsize == lw), "AR not INCR of W bytes"),
            ]
        # The burst being gathered obeys the same rules (the induction needs it: it becomes
        # the next AR).
        with m.If(dut._held):
            m.d.comb += [
                Assert(dut._h_len < dut.max_burst, "held burst longer than max_burst"),
                Assert(dut._h_addr[lw:12] + dut._h_len < page_beats, "held burst crosses 4 KiB"),
                Assert(dut._h_next == dut._h_addr[lw:12] + dut._h_len + 1,
                       "the held burst's next beat off h_addr + h_len + 1"),
            ]
        self._track_read(m, in_flight, owed, ar_beats)

        # --- writes: W bursts match their AW, responses only for writes made ---
        aw_fire = axi.awvalid & axi.awready
        w_fire = axi.wvalid & axi.wready
        b_fire = axi.bvalid & axi.bready
        wide = range(dut.max_writes + 3)
        aw_open = Signal(wide)                # AW accepted, no B yet
        w_open = Signal(wide)                 # W burst complete (WLAST accepted), no B yet
        w_beat = Signal(9)                    # beats of the W burst under way
        last_awlen = Signal(8)                # awlen of the last AW accepted
        m.d.sync += [aw_open.eq(aw_open + aw_fire - b_fire),
                     w_open.eq(w_open + (w_fire & axi.wlast) - b_fire)]
        with m.If(w_fire):
            m.d.sync += w_beat.eq(Mux(axi.wlast, 0, w_beat + 1))
        with m.If(aw_fire):
            m.d.sync += last_awlen.eq(axi.awlen)
        m.d.comb += Assume(~axi.bvalid | ((aw_open != 0) & (w_open != 0)))
        # W bursts complete in order; the one under way belongs to the AW accepted last when
        # AW is a burst ahead, else to the AW on the bus now.
        aw_ahead = aw_open > w_open
        burst_len = Mux(aw_ahead, last_awlen, axi.awlen)
        w_under_way = axi.wvalid | (w_beat != 0)
        with m.If(w_fire):
            m.d.comb += [
                Assert(aw_ahead | ((aw_open == w_open) & axi.awvalid), "W beat before its AW"),
                Assert(axi.wlast == (w_beat == burst_len), "WLAST not on beat awlen + 1"),
            ]
        m.d.comb += [
            Assert(dut._pending == aw_open + axi.awvalid, "writes counted != AWs outstanding"),
            Assert(dut._pending == w_open + w_under_way, "writes counted != W bursts outstanding"),
            Assert(dut._pending <= dut.max_writes, "more writes outstanding than max_writes"),
            Assert(~dut.writes_idle | ((aw_open == 0) & ~axi.awvalid & (w_open == 0)
                                       & ~w_under_way & ~port.wr.valid),
                   "writes_idle while a write is offered or outstanding"),
            # Reachable: a burst of several beats accepted while earlier beats are owed and
            # two writes are outstanding.
            Cover(ar_fire & (axi.arlen != 0) & (owed != 0) & (aw_open > 1)),
        ]
        # Induction strengthening for this design's single-beat bursts: no W burst is ever
        # part-sent, and the length recorded for an AW a burst ahead is the one it announced
        # (without these the induction could start from a state the design never reaches).
        m.d.comb += [Assert(w_beat == 0, "a W burst part-sent"),
                     Assert(~aw_ahead | (last_awlen == 0), "AW ahead with another length")]
        # The write path's addresses: AW carries the address of the write the port handed
        # over last, as a burst of one beat (so the beat's range is that address's W bytes).
        wr_fire = port.wr.valid & port.wr.ready
        wr_addr = Signal(len(axi.awaddr))
        with m.If(wr_fire):
            m.d.sync += wr_addr.eq(port.wr.payload.addr)
        with m.If(axi.awvalid):
            m.d.comb += Assert((axi.awaddr == wr_addr) & (axi.awlen == 0),
                               "AW not the address of the write handed over")
        return m


    def _track_read(self, m, in_flight, owed, ar_beats):
        """Follow one read request, chosen by the solver (``track`` high when it is accepted),
        from the port through the burst being gathered and AR to its R beat.

        It becomes the last beat of the held burst and stays at its index there, the burst's
        address plus that many beats being the request's address, until the burst goes out on
        AR with the same address; then the slave owes it as that beat of that burst. ``ahead``,
        the responses the requester takes before this one, always equals the beats before it
        in the slave's order, so the R beat for the request's address is the response the
        requester takes for it.
        """
        dut, axi, port = self.dut, self.dut.axi, self.dut.port
        lw = dut.port_bytes.bit_length() - 1
        req_fire = port.rd_req.valid & port.rd_req.ready
        resp_fire = port.rd_resp.valid & port.rd_resp.ready
        # The design sends the held burst when AR is free and no request joins it.
        sends = dut._held & (~axi.arvalid | axi.arready) & ~(port.rd_req.valid & dut._joins)
        address = Signal(dut.addr_width)
        ahead = Signal.like(in_flight)
        index = Signal(8)                     # the request's beat in its burst

        def holds(addr, beat):
            return (addr + (beat << lw))[:dut.addr_width] == address

        def in_held_burst(beat, what):
            m.d.comb += [
                Assert(dut._held & (beat <= dut._h_len) & holds(dut._h_addr, beat), what),
                Assert(ahead == owed + ar_beats + beat, "tracked read out of order (held)"),
            ]
            m.d.sync += index.eq(beat)
            with m.If(sends):
                m.next = "AR"

        m.d.sync += ahead.eq(ahead - resp_fire)
        with m.FSM(name="tracked"):
            with m.State("NONE"):
                with m.If(req_fire & self.track):
                    m.d.sync += [address.eq(port.rd_req.payload.addr),
                                 ahead.eq(in_flight - resp_fire)]
                    m.next = "NEW"
            with m.State("NEW"):
                # Accepted last cycle, so the youngest beat: the last of the held burst.
                in_held_burst(dut._h_len, "accepted read not the last beat of the held burst")
                with m.If(~sends):
                    m.next = "HELD"
            with m.State("HELD"):
                in_held_burst(index, "held burst lost the tracked read's address")
            with m.State("AR"):
                m.d.comb += [
                    Assert(axi.arvalid & (index <= axi.arlen) & holds(axi.araddr, index),
                           "AR burst without the tracked read's address"),
                    Assert(ahead == owed + index, "tracked read out of order (AR)"),
                ]
                with m.If(axi.arvalid & axi.arready):
                    m.next = "OWED"
            with m.State("OWED"):
                m.d.comb += [
                    Assert(ahead < owed, "tracked read's beat not owed by the slave"),
                    # Reachable: a read that joined a burst gets its answer.
                    Cover(resp_fire & (ahead == 0) & (index != 0)),
                ]
                with m.If(resp_fire & (ahead == 0)):
                    m.next = "NONE"


class AxiMasterAwNotHeld(AxiMaster):
    """Mutant: while AW waits for ready its address follows the port's next write, so the
    slave sees the payload change before the handshake."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        with m.If(self.axi.awvalid & ~self.axi.awready):
            m.d.sync += self.axi.awaddr.eq(self.port.wr.payload.addr)
        return m


class AxiMasterShortWriteBurst(AxiMaster):
    """Mutant: AW announces two beats (``awlen`` 1) but W carries one, with WLAST on it."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self.axi.awlen.eq(1)
        return m


class AxiMasterLongReadBurst(AxiMaster):
    """Mutant: a gathered read burst sent in a cycle without a request goes out on AR one beat
    longer than the requests it holds, so the slave returns a beat nobody asked for."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        # The held burst goes out in a cycle without a request (none can join it then).
        with m.If(self._held & (~self.axi.arvalid | self.axi.arready) & ~self.port.rd_req.valid):
            m.d.sync += self.axi.arlen.eq(self._h_len + 1)
        return m


class AxiMasterMovingBurst(AxiMaster):
    """Mutant: a request that joins the held burst also moves the burst's start address to
    its own, so the earlier beats are read from the wrong addresses."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        with m.If(self.port.rd_req.valid & self._joins):
            m.d.sync += self._h_addr.eq(self.port.rd_req.payload.addr)
        return m


class AxiMasterUncountedWrites(AxiMaster):
    """Mutant: the count of unacknowledged writes never rises, so nothing bounds them and
    ``writes_idle`` claims idle with writes in flight."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.sync += self._pending.eq(0)
        return m


class AxiMasterWritingNextBeat(AxiMaster):
    """Mutant: a write goes out on AW one beat past the address the port gave."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        port = self.port
        with m.If(port.wr.valid & port.wr.ready):
            m.d.sync += self.axi.awaddr.eq(port.wr.payload.addr + self.port_bytes)
        return m


class AxiMasterFenceSpec(wiring.Component):
    """The AXI4 obligations of an :class:`AxiMaster` built with ``faults=True`` (the
    accelerator's), under a free slave that may answer any beat or write with an error or fall
    silent, a free requester, and free ``clear`` and port numbers, so faults, fences and
    STARTs come at any time (a clear only while the requester offers nothing and is owed no
    read, as the controller clears at START, from IDLE, after its drain). The slave and the
    requester make the promises of :class:`AxiMasterSpec`. Under these the master

    * holds AR, AW and W valid, with the same payload, until ready, also across a fault, a
      fence and a clear;
    * sends AR bursts INCR, of at most ``max_burst`` beats, inside one 4 KiB page, and single
      W beats with WLAST that follow their AW;
    * puts nothing new on AR, AW or W while fenced (only what was valid before stays);
    * counts exactly: the beats put on AR and not yet received are the beats on AR plus those
      the slave owes; while fenced all of them are stale; otherwise the reads owed to the
      requester are the beats of the burst being gathered plus the non-stale beats (so a stale
      beat, a late answer to a request from before a fault, is never handed to the
      requester, and every request of the requester is answered, by the memory or, while
      fenced, by the master); the writes counted are the AWs outstanding, the stale ones
      among them at most all of them;
    * hands the requester an R beat only when not fenced and no stale beat is owed.
    """

    def __init__(self, dut: AxiMaster, reads: int):
        assert dut.faults
        self.dut, self.reads = dut, reads
        super().__init__({
            "port": In(MemoryPortSignature(dut.port_bytes)),
            "axi": Out(AXI4Signature(dut.addr_width, 8 * dut.port_bytes)),
            "clear": In(1), "rd_port": In(dut.port_bits), "wr_port": In(dut.port_bits),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        wiring.connect(m, wiring.flipped(self.port), dut.port)
        wiring.connect(m, dut.axi, wiring.flipped(self.axi))
        m.d.comb += [dut.clear.eq(self.clear), dut.rd_port.eq(self.rd_port),
                     dut.wr_port.eq(self.wr_port),
                     # The controller's promise: it clears (START) only from IDLE, with every
                     # unit idle (no request offered), and it reaches IDLE only when no read
                     # is owed to a port (while fenced it waits for ``quiet``).
                     Assume(~self.clear | ((dut._owed == 0) & ~self.port.rd_req.valid
                                           & ~self.port.wr.valid))]
        axi, port = dut.axi, dut.port
        lw = dut.port_bytes.bit_length() - 1
        page_beats = 1 << (12 - lw)

        def payload(ch):
            return Cat(getattr(axi, f"{ch}{name}") for name in
                       ("id", "addr", "len", "size", "burst", "lock", "cache", "prot"))

        _held_until_ready(m, axi.arvalid, axi.arready, payload("ar"), "AR")
        _held_until_ready(m, axi.awvalid, axi.awready, payload("aw"), "AW")
        _held_until_ready(m, axi.wvalid, axi.wready, Cat(axi.wdata, axi.wstrb, axi.wlast), "W")

        # Nothing new while fenced: a valid now was valid and stalled in the cycle before.
        was_fenced = Signal()
        stalled = {ch: Signal(name=f"fence_{ch}_stalled") for ch in ("ar", "aw", "w")}
        m.d.sync += was_fenced.eq(dut._fenced)
        for ch, sig in stalled.items():
            valid, ready = getattr(axi, f"{ch}valid"), getattr(axi, f"{ch}ready")
            m.d.sync += sig.eq(valid & ~ready)
            with m.If(was_fenced & ~sig):
                m.d.comb += Assert(~valid, f"{ch.upper()}: new transfer while fenced")

        # --- reads ---
        ar_fire = axi.arvalid & axi.arready
        r_fire = axi.rvalid & axi.rready
        req_fire = port.rd_req.valid & port.rd_req.ready
        resp_fire = port.rd_resp.valid & port.rd_resp.ready
        spare = dut.max_burst + 1
        in_flight = Signal(range(self.reads + spare))      # the requester's reads in flight
        owed = Signal(range(self.reads + spare + 256))     # R beats the slave owes
        m.d.sync += [in_flight.eq(in_flight + req_fire - resp_fire),
                     owed.eq(owed + Mux(ar_fire, axi.arlen + 1, 0) - r_fire)]
        m.d.comb += [
            Assume(~port.rd_req.valid | (in_flight < self.reads)),
            Assume(~axi.rvalid | (owed != 0)),
        ]
        held_beats = Mux(dut._held, dut._h_len + 1, 0)
        ar_beats = Mux(axi.arvalid, axi.arlen + 1, 0)
        m.d.comb += [
            Assert(dut._r_out == ar_beats + owed, "beats on AR + owed != beats counted out"),
            Assert(dut._stale_r <= dut._r_out, "more stale beats than beats out"),
            Assert(dut._r_out <= self.reads, "more beats out than reads allowed"),
            Assert(dut._stale_nz == (dut._stale_r != 0), "stale flag out of step"),
            Assert(dut._owed == in_flight, "reads owed to the requester miscounted"),
            Assert(in_flight <= self.reads, "more reads outstanding than the requester allows"),
        ]
        with m.If(dut._fenced | dut._stale_nz):
            # No burst goes out while fenced or while stale beats are owed.
            m.d.comb += Assert(dut._stale_r == dut._r_out, "a live beat out with stale ones")
        with m.If(~dut._fenced):
            m.d.comb += Assert(in_flight == held_beats + dut._r_out - dut._stale_r,
                               "requests != beats held + live beats out")
        with m.If(port.rd_resp.valid & ~dut._fenced):
            m.d.comb += Assert(axi.rvalid & (dut._stale_r == 0),
                               "R beat handed to the requester while a stale one is owed")
        with m.If(axi.arvalid):
            m.d.comb += [
                Assert(axi.arlen < dut.max_burst, "AR burst longer than max_burst"),
                Assert(axi.araddr[lw:12] + axi.arlen < page_beats, "AR burst crosses 4 KiB"),
                Assert((axi.arburst == BURST_INCR) & (axi.arsize == lw), "AR not INCR of W bytes"),
            ]
        with m.If(dut._held):
            m.d.comb += [
                Assert(dut._h_len < dut.max_burst, "held burst longer than max_burst"),
                Assert(dut._h_addr[lw:12] + dut._h_len < page_beats, "held burst crosses 4 KiB"),
                Assert(dut._h_next == dut._h_addr[lw:12] + dut._h_len + 1,
                       "the held burst's next beat off h_addr + h_len + 1"),
            ]

        # --- writes ---
        aw_fire = axi.awvalid & axi.awready
        w_fire = axi.wvalid & axi.wready
        b_fire = axi.bvalid & axi.bready
        wide = range(dut.max_writes + 3)
        aw_open = Signal(wide)
        w_open = Signal(wide)
        m.d.sync += [aw_open.eq(aw_open + aw_fire - b_fire),
                     w_open.eq(w_open + (w_fire & axi.wlast) - b_fire)]
        m.d.comb += Assume(~axi.bvalid | ((aw_open != 0) & (w_open != 0)))
        aw_ahead = aw_open > w_open
        with m.If(w_fire):
            m.d.comb += [
                Assert(aw_ahead | ((aw_open == w_open) & axi.awvalid), "W beat before its AW"),
                Assert(axi.wlast & (axi.awlen == 0), "W not a single-beat burst"),
            ]
        m.d.comb += [
            Assert(dut._pending == aw_open + axi.awvalid, "writes counted != AWs outstanding"),
            Assert(dut._pending == w_open + axi.wvalid, "writes counted != W beats outstanding"),
            Assert(dut._pending <= dut.max_writes, "more writes outstanding than max_writes"),
            Assert(dut._stale_b <= dut._pending, "more stale writes than writes"),
            # Reachable: a fence with a stale beat owed, then a clear, then a live read.
            Cover(was_fenced & ~dut._fenced & (dut._stale_r != 0) & (dut._stale_b != 0)),
        ]
        return m


class AxiMasterFenceDroppingAr(AxiMaster):
    """Mutant: a fault withdraws an AR that the slave has not taken yet."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        with m.If(self._fenced):
            m.d.sync += self.axi.arvalid.eq(0)
        return m


class AxiMasterForgettingStale(AxiMaster):
    """Mutant: a fault does not mark the beats still owed as stale, so after the next START a
    late beat of the old run is handed to a new request."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.sync += [self._stale_r.eq(0), self._stale_nz.eq(0)]
        return m


# --- memory arbiter ----------------------------------------------------------------------------

def _named_signals(module: Module, *names):
    """The signals called ``names`` that the statements of ``module`` (an elaborated
    ``Module``, not its submodules) use: the local registers of a design's ``elaborate``,
    which a harness needs for the invariants of an induction, where the design keeps no
    ``_probe``. Each name must be one signal. (Reads Amaranth 0.5's ``Module._statements``.)"""
    found = {name: {} for name in names}       # by id: a Signal is not hashable
    for statements in module._statements.values():
        for statement in statements:
            for signal in statement._lhs_signals() | statement._rhs_signals():
                if signal.name in found:
                    found[signal.name][id(signal)] = signal
    for name, signals in found.items():
        if len(signals) != 1:
            raise LookupError(f"{len(signals)} signals named {name!r} in the module")
    return [next(iter(found[name].values())) for name in names]


def _sync_fifo_state(m: Module, fifo, platform):
    """The state of a design's :class:`celosia.hdl.scratchpad.SyncFifo` (depth >= 3), for
    invariants of its content: ``(entries, invariants)``, where ``entries[k]`` is the
    ``k``-th oldest entry it holds (the output register's first, when ``r_rdy``; then the
    storage's from its read pointer on; meaningful for ``k < fifo.level``) and
    ``invariants`` are ``Assert`` statements of its pointers and levels.

    The FIFO is elaborated here and its later elaboration (inside the design) returns the
    same module, so that the harness sees its pointers and can add asynchronous read ports
    to its storage (they only read; the FIFO's own ports are unchanged)."""
    module = fifo.elaborate(platform)
    fifo.elaborate = lambda platform: module
    storage = module.submodules.storage
    inner = fifo.depth - 1
    produce, consume, level = _named_signals(module, "produce", "consume", "inner_level")
    stored = []
    for k in range(inner):
        port = storage.read_port(domain="comb")
        at = consume + k
        m.d.comb += port.addr.eq(Mux(at >= inner, at - inner, at))
        stored.append(port.data)
    entries = [Mux(fifo.r_rdy, fifo.r_data, stored[0])]
    for k in range(1, fifo.depth):
        entries.append(Mux(fifo.r_rdy, stored[k - 1], stored[k]) if k < inner
                       else stored[k - 1])
    at = consume + level
    invariants = [
        Assert((produce < inner) & (consume < inner), "FIFO pointer past the storage"),
        Assert(level <= inner, "FIFO storage over-full"),
        Assert(produce == Mux(at >= inner, at - inner, at), "FIFO pointers apart by != level"),
        # The output register is empty only until the storage's oldest entry reaches it.
        Assert(fifo.r_rdy | (level <= 1), "FIFO output register empty behind two entries"),
    ]
    return entries, invariants


class MemArbiterSpec(wiring.Component):
    """The promises of a :class:`MemArbiter` to its ports and to the memory, under free ports
    and a free memory that keep the stream rule (a sender holds valid and payload until ready;
    ``Assume``). Nothing else is assumed of either side: the memory may take requests and
    offer responses at any time, also when it owes none.

    The harness keeps, in the order the memory took them, the ports of the reads the memory
    took and has not answered (a FIFO of up to ``outstanding`` port numbers; the memory
    answers in order), and per port the reads taken from it and not answered. Then:

    * **read requests**: a request leaves a port exactly when the memory takes one, never two
      ports at once, with the port's payload unchanged; the memory is offered a request only
      while some port offers that request and fewer than ``outstanding`` reads are
      unanswered, and never two cycles in a row go without an offer while a port offers one
      and a read may be taken (the registered grant moves to an offering port in a cycle);
    * **read responses**: the memory's response is taken exactly when one port takes it, and
      only while a read is unanswered; it is offered only to the port of the oldest unanswered
      read, with the memory's payload; the reads unanswered per port are exactly that port's
      entries in the FIFO of ports, so no response is lost or duplicated, none reaches a port
      that is owed none, and each port gets its answers in its request order; a port's
      response is held until it takes it (as the memory holds it); ``rd_port`` (the AXI
      master's fault reports) is the port of the oldest unanswered read in every cycle (in
      the cycle after a read is taken into an empty tag FIFO, whose output register fills a
      cycle later, it is the last one granted; no response can be taken then);
    * **writes**: a write leaves a port exactly when the memory takes one, never two at once,
      with its payload unchanged, so a port's write is acknowledged only when the memory
      takes it; the memory is offered a write only while a port offers one, never two cycles
      in a row none while a port offers one, and it is the write of the port ``wr_port``
      names;
    * **round robin**, per channel: while a port offers a request, the others are granted at
      most ``n - 1`` before it (counted from the port before the registered grant);
    * **the memory side's stream rule**: a request or write offered to the memory stays
      offered, with its payload, until the memory takes it (the grant stays).

    The induction needs the tag FIFO's content (its pointers and level, and its entries equal
    to the harness's FIFO of ports: see :func:`_sync_fifo_state`) and the round robin's state
    (``rd_grant``, ``rd_last``, ``wr_grant``, the arbiter's ``_probe``).

    Members
    -------
    p0 ... : In(MemoryPortSignature)
        The ports' masters' side, free.
    mem : Out(MemoryPortSignature)
        The memory's side; its ``In`` signals are free.
    """

    def __init__(self, dut: MemArbiter):
        self.dut = dut
        super().__init__({**{f"p{i}": In(MemoryPortSignature(dut.port_bytes))
                             for i in range(dut.n)},
                          "mem": Out(MemoryPortSignature(dut.port_bytes))})

    def elaborate(self, platform):
        m = Module()
        dut = self.dut
        n, depth = dut.n, dut.outstanding
        assert depth >= 3          # the tag FIFO keeps entries in storage (see the level rule)
        arbiter = _elaborated(dut, platform)
        tags = arbiter.submodules.tags
        entries, fifo_invariants = _sync_fifo_state(m, tags, platform)
        rd_last, rd_grant, wr_grant = (dut._probe[name]
                                       for name in ("rd_last", "rd_grant", "wr_grant"))
        m.submodules.dut = arbiter
        for i in range(n):
            wiring.connect(m, wiring.flipped(getattr(self, f"p{i}")), dut.port(i))
        wiring.connect(m, dut.out, wiring.flipped(self.mem))
        ports, out = [dut.port(i) for i in range(n)], dut.out

        # The environment: every sender keeps the stream rule.
        for i, p in enumerate(ports):
            _held_until_ready(m, p.rd_req.valid, p.rd_req.ready, _bits(p.rd_req.payload),
                              f"p{i}_rd_req", assume=True)
            _held_until_ready(m, p.wr.valid, p.wr.ready, _bits(p.wr.payload), f"p{i}_wr",
                              assume=True)
        _held_until_ready(m, out.rd_resp.valid, out.rd_resp.ready, out.rd_resp.payload,
                          "mem_rd_resp", assume=True)

        def fired(s):
            return s.valid & s.ready

        rq, rs, wq = ([fired(getattr(p, ch)) for p in ports] for ch in ("rd_req", "rd_resp", "wr"))
        out_rq, out_rs, out_wr = fired(out.rd_req), fired(out.rd_resp), fired(out.wr)
        req_port = Signal(range(n))           # the port whose read request is taken now
        for i in range(n):
            with m.If(rq[i]):
                m.d.comb += req_port.eq(i)

        # --- the reads the memory owes, in order, by port ---
        count = Signal(range(depth + 1))
        owed = [Signal(range(n), name=f"owed_port_{k}") for k in range(depth)]
        m.d.sync += count.eq(count + out_rq - out_rs)
        for k in range(depth):
            with m.If(out_rq & (count - out_rs == k)):
                m.d.sync += owed[k].eq(req_port)
            if k + 1 < depth:
                with m.Elif(out_rs):
                    m.d.sync += owed[k].eq(owed[k + 1])
        per_port = [Signal(range(depth + 2), name=f"unanswered_{i}") for i in range(n)]
        for i in range(n):
            m.d.sync += per_port[i].eq(per_port[i] + rq[i] - rs[i])
            m.d.comb += Assert(per_port[i] == sum((count > k) & (owed[k] == i)
                                                  for k in range(depth)),
                               f"port {i}'s unanswered reads != its entries in the order")
        head = owed[0]
        m.d.comb += [Assert(count <= depth, "more reads unanswered than outstanding")]
        for k in range(depth):
            with m.If(count > k):
                m.d.comb += Assert(owed[k] < n, "an unanswered read of no port")
        # The tag FIFO holds exactly the ports of the reads owed (the induction's invariant).
        m.d.comb += fifo_invariants
        m.d.comb += Assert(tags.level == count, "tags held != reads unanswered")
        for k in range(depth):
            with m.If(count > k):
                m.d.comb += Assert(entries[k] == owed[k], f"tag {k} is not the port of read {k}")

        # The round robin's last grants name ports (no grant follows an unknown port).
        m.d.comb += [Assert(rd_last < n, "rd_last names no port"),
                     Assert(rd_grant < n, "rd_grant names no port"),
                     Assert(wr_grant < n, "wr_grant names no port")]

        # --- read requests ---
        rd_valids = Cat(p.rd_req.valid for p in ports)
        m.d.comb += [
            Assert(sum(rq) <= 1, "read requests of two ports taken at once"),
            Assert(out_rq == Cat(rq).any(),
                   "a read request taken by the memory != one taken from a port"),
            Assert(~out.rd_req.valid | (rd_valids.any() & (count < depth)),
                   "a read request offered to the memory while no port offers one or no "
                   "tag is free"),
            Assert(~out.rd_req.valid | Cat(p.rd_req.valid & (_bits(p.rd_req.payload)
                                                            == _bits(out.rd_req.payload))
                                           for p in ports).any(),
                   "the memory offered a read request no port offers"),
        ]
        for i, p in enumerate(ports):
            with m.If(rq[i]):
                m.d.comb += Assert(_bits(out.rd_req.payload) == _bits(p.rd_req.payload),
                                   f"port {i}'s read request changed on its way")
        self._offer_held(m, out.rd_req, "mem rd_req")
        self._never_starved(m, rd_valids.any() & (count < depth) & ~out.rd_req.valid,
                            "a read", "and a tag is free")

        # --- read responses ---
        m.d.comb += [
            Assert(sum(rs) <= 1, "a response handed to two ports"),
            Assert(out_rs == Cat(rs).any(),
                   "a response taken from the memory != one handed to a port"),
            Assert(~out.rd_resp.ready | (count != 0),
                   "a response taken from the memory while no read is unanswered"),
        ]
        # ``rd_port`` names the oldest unanswered read's port in every cycle. The tag FIFO's
        # output register fills a cycle after a read is taken into an empty FIFO: until then
        # that read is the only one, the last granted (``rd_port`` takes it from the round
        # robin), and no response can be taken.
        took_read = Signal()
        m.d.sync += took_read.eq(out_rq)
        with m.If(count != 0):
            m.d.comb += Assert(dut.rd_port == head, "rd_port not the oldest unanswered read's")
        with m.If((count != 0) & ~tags.r_rdy):
            m.d.comb += Assert((count == 1) & took_read & ~out.rd_resp.ready,
                               "the tag FIFO empty but for the cycle after the only read")
        for i, p in enumerate(ports):
            with m.If(p.rd_resp.valid):
                m.d.comb += Assert(out.rd_resp.valid & (count != 0) & (head == i),
                                   f"a response offered to port {i}, which is not owed the "
                                   f"oldest read")
            m.d.comb += Assert(p.rd_resp.payload == out.rd_resp.payload,
                               f"port {i}'s response data not the memory's")
            _held_until_ready(m, p.rd_resp.valid, p.rd_resp.ready, p.rd_resp.payload,
                              f"p{i}_rd_resp")

        # --- writes ---
        wr_valids = Cat(p.wr.valid for p in ports)
        m.d.comb += [
            Assert(sum(wq) <= 1, "writes of two ports taken at once"),
            Assert(out_wr == Cat(wq).any(), "a write taken by the memory != one taken from a port"),
            Assert(~out.wr.valid | wr_valids.any(),
                   "a write offered to the memory while no port offers one"),
        ]
        for i, p in enumerate(ports):
            with m.If(out.wr.valid & (dut.wr_port == i)):
                m.d.comb += Assert(p.wr.valid & (_bits(p.wr.payload) == _bits(out.wr.payload)),
                                   f"the memory offered a write that port {i} (wr_port) "
                                   f"does not offer")
            with m.If(wq[i]):
                m.d.comb += Assert(out_wr & (dut.wr_port == i)
                                   & (_bits(out.wr.payload) == _bits(p.wr.payload)),
                                   f"port {i}'s write taken but not the memory's")
        with m.If(out.wr.valid):
            m.d.comb += Assert(dut.wr_port < n, "wr_port names no port")
        self._offer_held(m, out.wr, "mem wr")
        self._never_starved(m, wr_valids.any() & ~out.wr.valid, "a write", "")

        self._round_robin(m, [p.rd_req.valid for p in ports], rq,
                          Mux(rd_grant == 0, n - 1, rd_grant - 1), "read")
        self._round_robin(m, [p.wr.valid for p in ports], wq,
                          Mux(wr_grant == 0, n - 1, wr_grant - 1), "write")

        # Reachable: the last port's read answered while reads of the others wait behind it
        # (its answer comes first, so the order matters); every tag in use and a port waiting;
        # a request, a response and a write in one cycle.
        m.d.comb += [
            Cover(rs[n - 1] & Cat(per_port[i] != 0 for i in range(n - 1)).all()),
            Cover((count == depth) & rd_valids.any()),
            Cover(out_rq & out_rs & out_wr),
        ]
        return m

    @staticmethod
    def _round_robin(m, valids, fires, last, channel):
        """Round robin: while a port offers a request, the others are granted at most
        ``n - 1`` requests before it (each grant to another port lies between the last grant
        and this port in the round robin's order, which it shortens: the induction's
        invariant)."""
        n = len(valids)
        for i in range(n):
            passed = Signal(range(n + 1), name=f"{channel}_passed_{i}")
            with m.If(~valids[i] | fires[i]):
                m.d.sync += passed.eq(0)
            with m.Elif(Cat(fires).any()):
                m.d.sync += passed.eq(passed + 1)
            ahead = Mux(last < i, i - last, i + n - last)   # grants until port i's turn
            with m.If(valids[i]):
                m.d.comb += Assert(passed + ahead <= n,
                                   f"port {i}'s {channel} passed over more than the round "
                                   f"robin allows")
            m.d.comb += Assert(passed < n, f"port {i}'s {channel} passed over {n} times")
            if i == 0:
                # Reachable: the bound is met (port 0 waits while every other port is served).
                m.d.comb += Cover(valids[0] & (passed == n - 1))

    @staticmethod
    def _never_starved(m, starved, what, condition):
        """``starved`` (a port offers, the memory side is offered nothing) never holds two
        cycles in a row: the registered grant moves to an offering port in a cycle."""
        before = Signal(name=f"starved_{what.split()[-1]}")
        m.d.sync += before.eq(starved)
        m.d.comb += Assert(~(starved & before),
                           f"two cycles in a row without {what} offered while a port offers "
                           f"one {condition}".strip())

    @staticmethod
    def _offer_held(m, s, channel):
        """The memory side's stream rule: once ``s`` is offered without ready, it is offered
        in the next cycle too, with the same payload (the registered grant stays)."""
        stalled = Signal(name=f"{channel.replace(' ', '_')}_stalled")
        last = Signal(len(_bits(s.payload)), name=f"{channel.replace(' ', '_')}_last")
        m.d.sync += [stalled.eq(s.valid & ~s.ready), last.eq(_bits(s.payload))]
        with m.If(stalled):
            m.d.comb += [Assert(s.valid, f"{channel}: valid dropped before ready"),
                         Assert(_bits(s.payload) == last,
                                f"{channel}: payload changed before ready")]


class MemArbiterDroppingTag(MemArbiter):
    """Mutant: the tag FIFO is not written in a cycle it is read (a read granted while a
    response is taken gets no tag), so the read's answer goes to the port of the read after
    it, or to none."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        tags = m.submodules.tags
        with m.If(tags.r_en):
            m.d.comb += tags.w_en.eq(0)
        return m


class MemArbiterStuckGrant(MemArbiter):
    """Mutant: the read grant moves only when a read is taken, so once the granted port stops
    offering, the other ports' requests wait for it forever."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        grant = self._probe["rd_grant"]
        with m.If(~(self.out.rd_req.valid & self.out.rd_req.ready)):
            m.d.sync += grant.eq(grant)
        return m


class MemArbiterSwitchingStalledWrite(MemArbiter):
    """Mutant: the write grant moves on whenever the memory does not take the write, so a
    stalled write is taken back and another port's offered in its place."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        grant = self._probe["wr_grant"]
        with m.If(self.out.wr.valid & ~self.out.wr.ready):
            m.d.sync += grant.eq(Mux(grant == self.n - 1, 0, grant + 1))
        return m


class MemArbiterAckingEveryWrite(MemArbiter):
    """Mutant: every port's write ``ready`` follows the memory's, not only the granted
    port's, so a port whose write the memory did not take sees it acknowledged (lost)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        for i in range(self.n):
            m.d.comb += self.port(i).wr.ready.eq(self.out.wr.ready)
        return m


# --- CSR block ---------------------------------------------------------------------------------

class CsrSpec(wiring.Component):
    """The registers of a :class:`CsrBlock` read back what was written, over AXI4-Lite, under a
    free master.

    The harness keeps a shadow of each read/write register (PROG_ADDR, WIN_BASE, WIN_SIZE),
    updated at every accepted write to its offset with the bytes the strobes select. Then each
    register's value (the controller sees it) equals its shadow, and a read of it returns the
    shadow's value at the read's acceptance, held with RVALID until RREADY. Reads of the
    constant registers (ID, CONFIG), of CTRL and of unmapped offsets return their fixed values
    (CTRL and unmapped: 0). Write responses and read data are held until taken.

    Members
    -------
    bus : In(AXI4LiteSignature)
        The master's side, free.
    """

    def __init__(self, dut: CsrBlock):
        self.dut = dut
        super().__init__({"bus": In(AXI4LiteSignature(CSR_ADDR_BITS, 32))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        wiring.connect(m, wiring.flipped(self.bus), dut.bus)
        bus = dut.bus
        CSR = isa.CSR
        registers = {"PROG_ADDR": dut.prog_addr, "WIN_BASE": dut.win_base,
                     "WIN_SIZE": dut.win_size}
        assert set(registers) == {r.name for r in CSR if r.access == isa.Access.RW}
        shadows = {name: Signal(32, name=f"{name.lower()}_shadow") for name in registers}

        w_fire = bus.awvalid & bus.awready & bus.wvalid & bus.wready
        m.d.comb += Assert(bus.awready == bus.wready, "AW and W not accepted together")
        for name, reg in registers.items():
            shadow = shadows[name]
            m.d.comb += Assert(reg == shadow, f"{name} != what was written")
            with m.If(w_fire & (bus.awaddr[2:] == getattr(CSR, name).offset >> 2)):
                for b in range(4):
                    with m.If(bus.wstrb[b]):
                        m.d.sync += shadow[8 * b:8 * b + 8].eq(bus.wdata[8 * b:8 * b + 8])

        expected = Signal(32)
        checked = Signal()                    # the read being answered has a known value
        fixed = {
            CSR.ID.offset >> 2: C(isa.ID_MAGIC, 32),
            CSR.CONFIG.offset >> 2: C(CSR.CONFIG.make(
                isa_version=isa.ISA_VERSION, array=dut.array, port_bytes=dut.port_bytes,
                instr_bytes=isa.INSTR_BYTES), 32),
            CSR.CTRL.offset >> 2: C(0, 32),
        }
        mapped = {r.offset >> 2 for r in CSR}
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += checked.eq(1)
            with m.Switch(bus.araddr[2:]):
                for name, shadow in shadows.items():
                    with m.Case(getattr(CSR, name).offset >> 2):
                        m.d.sync += expected.eq(shadow)
                for index, value in fixed.items():
                    with m.Case(index):
                        m.d.sync += expected.eq(value)
                for index in mapped - set(fixed) - {getattr(CSR, n).offset >> 2 for n in shadows}:
                    with m.Case(index):
                        m.d.sync += checked.eq(0)       # a live value: not checked here
                with m.Default():
                    m.d.sync += expected.eq(0)
        with m.Elif(bus.rvalid & bus.rready):
            m.d.sync += checked.eq(0)
        with m.If(checked):
            m.d.comb += Assert(bus.rvalid & (bus.rdata == expected) & (bus.rresp == 0),
                               "read returned another value than the register's")

        _held_until_ready(m, bus.rvalid, bus.rready, Cat(bus.rdata, bus.rresp), "R")
        _held_until_ready(m, bus.bvalid, bus.bready, bus.bresp, "B")
        # Reachable: a register written in part (one byte lane) and read back.
        m.d.comb += Cover(checked & bus.rready & (expected == shadows["WIN_SIZE"])
                          & (expected[8:16] != 0) & (expected[:8] == 0))
        return m


class _CsrMutant(CsrBlock):
    """A :class:`CsrBlock` that, on an accepted write to ``_offset``, also stores the whole
    data word (all four strobes) in the register ``_register``."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        bus = self.bus
        with m.If(bus.awvalid & bus.wvalid & ~bus.bvalid & (bus.awaddr[2:] == self._offset >> 2)):
            m.d.sync += getattr(self, self._register).eq(bus.wdata)
        return m


class CsrBlockIgnoringStrobes(_CsrMutant):
    """Mutant: a write to PROG_ADDR stores all four bytes, whatever the strobes say."""

    _offset, _register = isa.CSR.PROG_ADDR.offset, "prog_addr"


class CsrBlockSwappedWindow(_CsrMutant):
    """Mutant: a write to WIN_SIZE also lands in WIN_BASE (a decoding slip)."""

    _offset, _register = isa.CSR.WIN_SIZE.offset, "win_base"


# --- the DMA window ----------------------------------------------------------------------------

class SpanCheckSpec(wiring.Component):
    """No byte of an operand that passes a :class:`SpanCheck` lies outside the window, for any
    operand and any window.

    Free inputs: the operand (``addr``, ``rows``, ``stride``, ``row_bytes``), the window
    (``base`` at or below ``end``) and a byte of the operand chosen by the solver: row
    ``row`` < ``rows`` and offset ``byte`` < ``row_bytes``. When the operand is used and not
    reported outside, that byte, ``addr + row * stride + byte`` (computed without wrapping),
    lies in ``[base, end)``.

    With ``end_rows`` the row is the first or the last (``last`` chooses). The rows between
    start between those two (row starts grow with the row), so the claim is the same, and the
    solver no longer compares products of a free row: the full build's widths take it about
    a second this way (a free row does not finish within minutes at 13 bits).
    """

    def __init__(self, dut: SpanCheck, *, end_rows: bool = False):
        self.dut, self.end_rows = dut, end_rows
        widths = {name: len(getattr(dut, name))
                  for name in ("addr", "rows", "stride", "row_bytes", "base", "end")}
        super().__init__({**{name: In(width) for name, width in widths.items()},
                          "row": In(widths["rows"]), "last": In(1),
                          "byte": In(widths["row_bytes"])})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        m.d.comb += [dut.used.eq(1), dut.addr.eq(self.addr), dut.rows.eq(self.rows),
                     dut.stride.eq(self.stride), dut.row_bytes.eq(self.row_bytes),
                     dut.base.eq(self.base), dut.end.eq(self.end)]
        if self.end_rows:
            # The last row's start written as the check writes it, so that the solver sees one
            # product (the flattened design shares it).
            rows_m1 = Signal.like(self.rows)
            m.d.comb += rows_m1.eq(Mux(self.rows == 0, 0, self.rows - 1))
            row = Mux(self.last, rows_m1, 0)
            at = self.addr + Mux(self.last, rows_m1 * self.stride, 0) + self.byte
        else:
            row = self.row
            at = self.addr + self.row * self.stride + self.byte
        m.d.comb += [
            Assume(self.base <= self.end),
            Assume((row < self.rows) & (self.byte < self.row_bytes)),
            Cover(~dut.outside & (self.rows > 1) & (row == self.rows - 1)
                  & (at == self.end - 1)),
        ]
        with m.If(~dut.outside):
            m.d.comb += Assert((at >= self.base) & (at < self.end),
                               "a byte of an operand that passed lies outside the window")
        return m


class SpanCheckWithoutRowBytes(SpanCheck):
    """Mutant: the span ends where the last row starts, so the last row's bytes may reach past
    the window's end."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        rows_m1 = Mux(self.rows == 0, 0, self.rows - 1)
        m.d.comb += self.outside.eq(self.used & ((self.addr < self.base)
                                                 | (self.addr + rows_m1 * self.stride > self.end)))
        return m


class SpanCheckWithoutBase(SpanCheck):
    """Mutant: only the end is checked, so an operand below the window's base passes."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        rows_m1 = Mux(self.rows == 0, 0, self.rows - 1)
        m.d.comb += self.outside.eq(self.used & (self.addr + rows_m1 * self.stride
                                                 + self.row_bytes > self.end))
        return m


class SerialSpanCheckSpec(wiring.Component):
    """No byte of an operand that a :class:`SerialSpanCheck` passes lies outside the window,
    for any operand and window, under a free ``restart`` and ``run``.

    The operand, the window and the chosen byte (``row`` < ``rows``, ``byte`` <
    ``row_bytes``) may change only in the cycle after a restart (as the controller moves to
    the next operand); the window ends at or below 2**``flag_bit`` on a narrow build. When
    ``done`` and the operand is not reported outside, that byte lies in ``[base, end)``; on a
    narrow build, moreover, no flagged address or stride in use passes (a flagged value is only
    a lower bound of the real one).

    The accumulator's content in each phase is asserted too (the induction needs it): the
    partial product of the leading ``mul_n`` bits of ``rows - 1`` with the stride, then plus
    the address, then plus the row bytes; on a narrow build the overflow flag says exactly
    whether that value reached 2**``flag_bit``, and below that the accumulator holds it.
    """

    def __init__(self, dut: SerialSpanCheck):
        self.dut = dut
        self.widths = {name: len(getattr(dut, name))
                       for name in ("addr", "rows", "stride", "row_bytes", "base", "end")}
        super().__init__({**{name: In(width) for name, width in self.widths.items()},
                          "row": In(self.widths["rows"]), "byte": In(self.widths["row_bytes"]),
                          "restart": In(1), "run": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        held = [getattr(self, name) for name in (*self.widths, "row", "byte")]
        m.d.comb += [dut.used.eq(1), dut.restart.eq(self.restart), dut.run.eq(self.run),
                     *(getattr(dut, name).eq(getattr(self, name)) for name in self.widths)]
        fresh = Signal(init=1)                # the cycle after a restart (or the reset)
        last = Signal(len(Cat(*held)))
        m.d.sync += [fresh.eq(self.restart), last.eq(Cat(*held))]
        m.d.comb += [
            Assume(fresh | (Cat(*held) == last)),
            Assume(self.base <= self.end),
            Assume((self.row < self.rows) & (self.byte < self.row_bytes)),
        ]
        ab = dut.flag_bit
        if ab is not None:
            m.d.comb += Assume(self.end <= (1 << ab))

        rows_width = len(self.rows)
        rows_m1 = Mux(self.rows == 0, 0, self.rows - 1)[:rows_width]
        product = rows_m1 * self.stride
        value = Signal(len(product) + 2)      # what the accumulator stands for
        with m.Switch(dut._phase):
            with m.Case(0):
                m.d.comb += value.eq((rows_m1 >> (rows_width - dut._mul_n).as_unsigned())
                                     * self.stride)
            with m.Case(1):
                m.d.comb += value.eq(product)
            with m.Case(2):
                m.d.comb += value.eq(product + self.addr)
            with m.Case(3):
                m.d.comb += value.eq(product + self.addr + self.row_bytes)
        m.d.comb += Assert(dut._mul_n <= rows_width, "multiplier step past the last bit")
        # The operand's registered copy: loaded from the second cycle after a restart on.
        m.d.comb += Assert(dut._loaded == ~fresh, "operand register loaded out of turn")
        with m.If(~fresh):
            m.d.comb += Assert((dut._addr_r == self.addr) & (dut._rows_m1_r == rows_m1)
                               & (dut._one_row_r == (self.rows <= 1))
                               & (dut._stride_r == self.stride)
                               & (dut._row_bytes_r == self.row_bytes),
                               "operand register off the operand")
        with m.If(dut._phase != 0):
            m.d.comb += Assert((dut._mul_n == rows_width) | (rows_m1 == 0),
                               "multiplication left before its last bit")
        if ab is None:
            m.d.comb += Assert(dut._acc == value, "accumulator off its phase's value")
        else:
            m.d.comb += [Assert(dut._ovf == (value >= (1 << ab)), "overflow flag wrong"),
                         Assert(dut._ovf | (dut._acc == value), "accumulator off its value")]
        with m.If(fresh):
            m.d.comb += Assert((dut._phase == 0) & (dut._mul_n == 0) & (dut._acc == 0)
                               & ~dut._ovf, "a restart left a phase under way")

        at = self.addr + self.row * self.stride + self.byte
        with m.If(dut.done & ~dut.outside):
            m.d.comb += Assert((at >= self.base) & (at < self.end),
                               "a byte of an operand that passed lies outside the window")
            if ab is not None:
                m.d.comb += Assert(~self.addr[ab] & ((self.rows <= 1) | ~self.stride[ab]),
                                   "a flagged address or stride passed")
        m.d.comb += Cover(dut.done & ~dut.outside & (self.rows > 2) & (at == self.end - 1))
        return m


class SerialSpanCheckSkippingRowBytes(SerialSpanCheck):
    """Mutant: from ADDR straight to CMP, so the span ends where the last row starts."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        with m.If(~self.restart & self.run & (self._phase == 1)):
            m.d.sync += self._phase.eq(3)
        return m


class SerialSpanCheckIgnoringOverflow(SerialSpanCheck):
    """Mutant (narrow builds): the verdict ignores the overflow flag, so a span whose end
    wrapped past 2**ab compares as small and passes."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self.outside.eq(self.used & ((self.addr[:self.flag_bit] < self.base)
                                                 | (self._acc > self.end)))
        return m


# --- the write path: the matmul engine's result writer ----------------------------------------

def _c_operand(cmd):
    """The log2 of C's element bytes and C's row bytes, as the controller computes them."""
    ob_log = Mux(~cmd.requant | (cmd.out_fmt == 3), 2, Mux(cmd.out_fmt == 2, 1, 0))
    return ob_log, (cmd.n << ob_log)


class WriterSpec(wiring.Component):
    """Every beat the matmul engine's :class:`Writer` puts on its write port starts inside
    the C operand of its command, ``[c_addr, c_addr + (m - 1) * c_stride + n * out_bytes)``,
    for any command the controller accepts and any timing of the result rows and of the port.

    The command is free, with what the controller's checks guarantee of a command it issues
    (M, K, N at least 1, ``c_addr`` and ``c_stride`` multiples of W, a stride at least as
    long as C's row, and C's last byte below ``2**addr_bits``: the window lies inside what the
    build reaches), and held from ``start`` until ``done`` (the engine keeps it in a register,
    or the controller holds it). The plan is computed from it as the engine computes it. The
    result rows (``i``) and the port's ``ready`` are free: their data does not steer the
    writer. A beat is W-aligned and starts inside C; the window is a multiple of 128 >= W
    bytes, so the whole beat lies inside the window that C was checked against.

    Invariants the induction needs: the panel's and the row's addresses are ``c_addr`` plus
    the stride times their row (``p * N`` and ``p * N + row``), and the walk's counters stay
    inside the command's groups, panels and tiles.
    """

    def __init__(self, dut, k_max: int):
        self.dut, self.k_max = dut, k_max
        n = dut.array
        super().__init__({"start": In(1), "cmd": In(command_layout()),
                          "i_valid": In(1), "i_payload": In(32 * n), "wr_ready": In(1)})

    def elaborate(self, platform):
        m = Module()
        dut = self.dut
        m.submodules.dut = _elaborated(dut, platform)
        cmd = self.cmd
        plan = Signal(plan_layout(dut.array, dut.port_bytes, self.k_max))
        compute_plan(m, cmd, plan, dut.array, dut.port_bytes)
        m.d.comb += [dut.start.eq(self.start), dut.cmd.eq(cmd), dut.plan.eq(plan),
                     dut.i.valid.eq(self.i_valid), dut.i.payload.as_value().eq(self.i_payload),
                     dut.wr.ready.eq(self.wr_ready)]

        # The command, held while the writer runs.
        running = Signal()                    # the harness's own view: start .. done
        saved = Signal(command_layout())
        with m.If(self.start):
            m.d.sync += [running.eq(1), saved.eq(cmd)]
        with m.Elif(dut.done):
            m.d.sync += running.eq(0)
        m.d.comb += [Assume(~running | (cmd.as_value() == saved.as_value())),
                     Assume(~self.start | ~running)]
        span_end, issued = _issued_command(cmd, dut.addr_bits, dut.port_bytes, self.k_max)
        with m.If(self.start | running):
            m.d.comb += [Assume(a) for a in issued]
        m.d.comb += Assert(dut._probe["running"] == running, "writer running outside a command")
        _writer_invariants(m, dut, cmd, plan)
        with m.If(dut.wr.valid):
            m.d.comb += Assert(running, "a write outside a command")
            _inside_c(m, dut.wr.payload.addr, cmd, span_end, dut.port_bytes)
        # Reachable: C's last beat, of a command of more than one row.
        m.d.comb += Cover(dut.wr.valid & dut.wr.ready & (cmd.m > 1)
                          & (dut.wr.payload.addr + dut.port_bytes == span_end))
        return m


def _issued_command(cmd, ab, w, k_max):
    """C's end, and what the controller's checks guarantee of a matmul command it issues (as
    conditions): M, K, N at least 1, K at most ``k_max``, ``c_addr`` and ``c_stride``
    multiples of W, a stride at least as long as C's row when M > 1, C's end at or below
    ``2**ab`` (the window lies inside what the build reaches)."""
    lw = w.bit_length() - 1
    ob_log, row_bytes = _c_operand(cmd)
    rows_m1 = (cmd.m - 1)[:16]
    span_end = cmd.c_addr + rows_m1 * cmd.c_stride + row_bytes
    return span_end, [
        (cmd.m != 0) & (cmd.n != 0) & (cmd.k != 0) & (cmd.k <= k_max),
        (cmd.c_addr[:lw] == 0) & (cmd.c_stride[:lw] == 0),
        (cmd.m == 1) | (cmd.c_stride >= row_bytes),
        span_end <= (1 << ab),
        # Implied by the three above (a stride is at least W when M > 1), and stated for the
        # solver: it bounds the row counters.
        cmd.m <= (1 << (ab - lw)),
    ]


def _inside_c(m, addr, cmd, span_end, w):
    """Assert that a write beat at ``addr`` starts inside C and is W-aligned."""
    lw = w.bit_length() - 1
    m.d.comb += [
        Assert((addr >= cmd.c_addr) & (addr < span_end),
               "a write beat starts outside the command's C operand"),
        Assert(addr[:lw] == 0, "a write beat not aligned to W"),
    ]


def _writer_invariants(m, dut, cmd, plan):
    """While the :class:`Writer` ``dut`` runs: the address registers as products of the
    stride (modulo 2**ab, as the writer computes them), and the walk inside the command."""
    n, w, ab = dut.array, dut.port_bytes, dut.addr_bits
    lw = w.bit_length() - 1
    blocks = dut.group // n
    probe = dut._probe
    walk = probe["walk"]
    stride = cmd.c_stride[:ab]
    beats_m1 = [max(1, (n << ob) // w) - 1 for ob in range(3)]
    with m.If(probe["running"]):
        panel_row = Cat(C(0, n.bit_length() - 1), walk.p)
        m.d.comb += [
            Assert(walk.p <= plan.np_m1, "panel past the last"),
            Assert(walk.g <= plan.ng_m1, "group past the last"),
            Assert(walk.blk <= Mux(walk.g_last, plan.nblk_m1, blocks - 1),
                   "tile past the group's last"),
            Assert(probe["beat"] <= Mux(plan.ob_log2 == 2, beats_m1[2],
                                        Mux(plan.ob_log2 == 1, beats_m1[1], beats_m1[0])),
                   "beat past the row's last"),
            Assert(probe["panel_addr"] == (cmd.c_addr + panel_row[:ab - lw] * stride)[:ab],
                   "panel address off c_addr + p * N * c_stride"),
            Assert(probe["row_addr"] == (probe["panel_addr"] + probe["row"] * stride)[:ab],
                   "row address off the panel's + row * c_stride"),
        ]


class _Elaborated(Elaboratable):
    """A fragment already elaborated, as a submodule."""

    def __init__(self, fragment):
        self.fragment = fragment

    def elaborate(self, platform):
        return self.fragment


def _engine_on_free_ports(m, spec, platform):
    """Elaborate ``spec.dut`` (an engine) into ``m`` with its command, done and memory ports
    wired to the harness's own (free to the solver); returns the engine."""
    dut = spec.dut
    dut._MustUse__silence = True
    m.submodules.dut = _Elaborated(Fragment.get(dut, platform))
    wiring.connect(m, wiring.flipped(spec.cmd), dut.cmd)
    wiring.connect(m, dut.done, wiring.flipped(spec.done))
    wiring.connect(m, dut.mem, wiring.flipped(spec.mem))
    return dut


class EngineWriteSpec(wiring.Component):
    """Every beat a :class:`MatmulEngine` puts on its memory port's write channel starts
    inside the C operand of the command it took last, for any command the controller issues
    and any memory: :class:`WriterSpec`'s claim through the engine's own command register,
    plan register, state machine and write stage.

    Free inputs: the command stream (its payload with what the controller's checks guarantee
    while it is offered), the memory's side of the port (read data and timing, write
    ``ready``) and ``done.ready``. The rest of the engine (loader, array, epilogue, queues)
    runs as built: whatever it does, the writer's addresses do not depend on it.

    Invariants the induction needs, beyond the writer's: the command register holds the
    command taken from CHECK to DONE and the plan is its plan from START; the writer runs
    only in RUN; the write stage holds beats only in RUN and FLUSH, each inside C.
    """

    def __init__(self, dut, k_max: int):
        self.dut, self.k_max = dut, k_max
        super().__init__({"cmd": In(stream.Signature(command_layout())),
                          "done": Out(stream.Signature(DONE_BITS)),
                          "mem": Out(MemoryPortSignature(dut.port_bytes))})

    def elaborate(self, platform):
        m = Module()
        dut = _engine_on_free_ports(m, self, platform)
        p = dut._probe
        fsm, front, writer, stage = p["fsm"], p["front"], p["writer"], p["wr_stage"]
        ab, w = dut.addr_bits, dut.port_bytes

        # The command the front took last, and the one the back (feeder to writer) runs: the
        # back takes the front's when it leaves IDLE (with ``prefetch`` the front may take
        # the next one meanwhile).
        front_saved = Signal(command_layout())
        saved = Signal(command_layout())
        with m.If(dut.cmd.valid & dut.cmd.ready):
            m.d.sync += front_saved.eq(dut.cmd.payload)
        with m.If(fsm.ongoing("IDLE") & front.ongoing("HOLD")):
            m.d.sync += saved.eq(front_saved)
        _, offered = _issued_command(dut.cmd.payload, ab, w, self.k_max)
        with m.If(dut.cmd.valid):
            m.d.comb += [Assume(a) for a in offered]
        _, front_held = _issued_command(front_saved, ab, w, self.k_max)
        span_end, held = _issued_command(saved, ab, w, self.k_max)
        taken = ~fsm.ongoing("IDLE")
        front_taken = ~front.ongoing("IDLE")
        if dut.hold_cmd:
            # The controller without an issue slot holds the command until done is taken.
            with m.If(taken | front_taken):
                m.d.comb += Assume(dut.cmd.payload.as_value() == front_saved.as_value())
        with m.If(front_taken):
            m.d.comb += [Assert(a, "the command taken is not one the controller issues")
                         for a in front_held]
            m.d.comb += Assert(p["lcmd"].as_value() == front_saved.as_value(),
                               "the front's command register moved")
        with m.If(taken):
            m.d.comb += [Assert(a, "the command held is not one the controller issues")
                         for a in held]
            m.d.comb += Assert(p["cmd"].as_value() == saved.as_value(),
                               "the command register moved")
        if not dut.prefetch:
            # One command at a time: the front takes another only once the back is idle.
            with m.If(taken):
                m.d.comb += Assert(front.ongoing("IDLE"), "a command taken while one runs")
        plan_ref = Signal(plan_layout(dut.array, dut.port_bytes, dut.k_max))
        compute_plan(m, saved, plan_ref, dut.array, dut.port_bytes)
        with m.If(fsm.ongoing("START") | fsm.ongoing("RUN") | fsm.ongoing("FLUSH")):
            m.d.comb += Assert(p["plan"].as_value() == plan_ref.as_value(),
                               "the plan is not the command's")
        front_plan_ref = Signal(plan_layout(dut.array, dut.port_bytes, dut.k_max))
        compute_plan(m, front_saved, front_plan_ref, dut.array, dut.port_bytes)
        with m.If(front.ongoing("LOAD") | front.ongoing("HOLD")):
            m.d.comb += Assert(p["lplan"].as_value() == front_plan_ref.as_value(),
                               "the front's plan is not its command's")
        m.d.comb += Assert(~writer._probe["running"] | fsm.ongoing("RUN"),
                           "the writer runs outside RUN")
        _writer_invariants(m, writer, saved, p["plan"])
        if stage is not None:
            busy = fsm.ongoing("RUN") | fsm.ongoing("FLUSH")
            m.d.comb += Assert(~stage._skid_valid | stage.o.valid, "skid entry before main")
            with m.If(stage.o.valid):
                m.d.comb += Assert(busy, "a beat held in the write stage outside a command")
                _inside_c(m, stage._main_payload.addr, saved, span_end, w)
            with m.If(stage._skid_valid):
                m.d.comb += Assert(busy, "a beat held in the write stage outside a command")
                _inside_c(m, stage._skid_payload.addr, saved, span_end, w)
        with m.If(writer.wr.valid):
            _inside_c(m, writer.wr.payload.addr, saved, span_end, w)
        with m.If(dut.mem.wr.valid):
            m.d.comb += Assert(taken, "a write outside a command")
            _inside_c(m, dut.mem.wr.payload.addr, saved, span_end, w)
        m.d.comb += Cover(dut.mem.wr.valid & dut.mem.wr.ready & (saved.m > 1)
                          & (dut.mem.wr.payload.addr + w == span_end))
        return m


class EngineTakingCommandsWhileBusy(MatmulEngine):
    """Mutant: ``cmd.ready`` is high in every state, so a command offered while the engine
    runs is taken (and lost: the engine goes on with the first, or, holding none of its own,
    with the new one's fields mid-run)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self.cmd.ready.eq(1)
        return m


class WriterWritingEmptyBeats(Writer):
    """Mutant: the writer before the fix: a beat of a tile's row that holds no element of C
    (past N in the last group) is still written, with every strobe low, and may start past
    C's end."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        p = self._probe
        with m.If(p["running"] & self.i.valid & p["row_valid"]):
            m.d.comb += self.wr.valid.eq(1)
        return m


# --- the vector engine's writes ----------------------------------------------------------------

class _FreeVectorUnit(wiring.Component):
    """The vector unit's stand-in in :class:`VectorEngineWriteSpec`: its ports are the real
    unit's, and the harness drives its outputs (beats out, readiness) from free inputs."""

    def __init__(self, unit):
        self.in_layout, self.out_layout = unit.in_layout, unit.out_layout
        self.cmd_layout = unit.cmd_layout
        super().__init__(unit.signature)

    def elaborate(self, platform):
        return Module()


class VectorEngineFreeUnit(VectorEngine):
    """The :class:`VectorEngine` with :class:`_FreeVectorUnit` in place of its unit."""

    def _make_unit(self):
        unit = super()._make_unit()
        unit._MustUse__silence = True
        self.free_unit = _FreeVectorUnit(unit)
        return self.free_unit


def _vector_destinations(cmd, dec, ab, w):
    """The destination rows' and the row exponents' spans of a VECTOR command as the
    controller checks them, and what its checks guarantee of a command it issues (as
    conditions): rows and columns at least 1, the addresses and the stride multiples of W, a
    stride at least as long as a destination row when there are several, both spans ending at
    or below ``2**ab`` (the window lies inside what the build reaches)."""
    lw = w.bit_length() - 1
    chk = isa.decoder_vector_checks(cmd.op, cmd.rows, cmd.cols, cmd.src_fmt, cmd.dst_fmt,
                                    cmd.add_residual, cmd.res_shift) if dec else None
    split = chk["is"]["WIDE_SPLIT"] if dec else C(0, 1)
    rows_out = cmd.rows << split
    row_bytes = cmd.cols << out_bytes_log2(cmd.dst_fmt)
    use_e = cmd.op.matches(isa.VecOp.SOFTMAX, isa.VecOp.REQUANT_ROWS, isa.VecOp.GELU_ROWS,
                           isa.VecOp.SOFTMAX_DITHER)
    if dec:
        use_e = use_e | chk["writes_e"] | chk["reads_e"]
    dst_end = cmd.dst_addr + (rows_out - 1)[:len(rows_out)] * cmd.dst_stride + row_bytes
    e_end = cmd.e_addr + cmd.rows
    return dict(dst_end=dst_end, e_end=e_end, use_e=use_e, rows_out=rows_out), [
        (cmd.rows != 0) & (cmd.cols != 0) & (cmd.cols <= isa.VEC_MAX_COLS),
        (cmd.dst_addr[:lw] == 0) & (cmd.dst_stride[:lw] == 0),
        (rows_out == 1) | (cmd.dst_stride >= row_bytes),
        dst_end <= (1 << ab),
        ~use_e | ((cmd.e_addr[:lw] == 0) & (e_end <= (1 << ab))),
    ]


def _inside_vector_destinations(m, addr, cmd, span, w, what):
    """Assert that a write beat at ``addr`` is W-aligned and starts inside the destination
    rows or (for an op with row exponents) inside the row exponents."""
    lw = w.bit_length() - 1
    in_dst = (addr >= cmd.dst_addr) & (addr < span["dst_end"])
    in_e = span["use_e"] & (addr >= cmd.e_addr) & (addr < span["e_end"])
    m.d.comb += [Assert(in_dst | in_e, f"{what} starts outside the destination rows and the "
                                       "row exponents"),
                 Assert(addr[:lw] == 0, f"{what} not aligned to W")]


class VectorEngineWriteSpec(wiring.Component):
    """Every beat a :class:`VectorEngine` puts on its memory port's write channel is W-aligned
    and starts inside the destination rows ``[dst_addr, dst_addr + (rows_out - 1) *
    dst_stride + cols * dst_bytes)`` or the row exponents ``[e_addr, e_addr + rows)`` of the
    command it took last, for any command the controller issues, any memory and **any vector
    unit**: the unit is a stand-in whose output beats and readiness are free (whatever it
    emits, and however many beats, the engine's writes stay inside), so the claim does not rest
    on the unit's pipeline.

    Free inputs: the command stream (its payload with what the controller's checks guarantee
    while it is offered), the memory's side of the port, ``done.ready`` and the unit's side.

    Invariants the induction needs: the command register holds the command taken from CHECK to
    DONE and the lengths derived from it have settled from PARAMS on; the packer's bytes of a
    row (written beats times W plus the bytes buffered) are the unit beats taken times the
    beat's bytes (a row's whole bytes once it flushes); the row address is ``dst_addr`` plus
    the stride times the rows written; a pending exponent beat lies inside the row exponents;
    the write stage holds beats only in RUN, each inside.
    """

    def __init__(self, dut):
        self.dut = dut
        unit = dut._make_unit()             # (elaboration makes the one wired up)
        unit._MustUse__silence = True
        super().__init__({"cmd": In(stream.Signature(isa.vector_layout())),
                          "done": Out(stream.Signature(DONE_BITS)),
                          "mem": Out(MemoryPortSignature(dut.port_bytes)),
                          "u_cmd_ready": In(1), "u_i_ready": In(1), "u_p_ready": In(1),
                          "u_o_valid": In(1), "u_o_payload": In(unit.out_layout)})

    def elaborate(self, platform):
        m = Module()
        dut = _engine_on_free_ports(m, self, platform)
        unit = dut.free_unit
        m.d.comb += [unit.cmd.ready.eq(self.u_cmd_ready), unit.i.ready.eq(self.u_i_ready),
                     unit.params.ready.eq(self.u_p_ready), unit.o.valid.eq(self.u_o_valid),
                     unit.o.payload.eq(self.u_o_payload)]
        p = dut._probe
        fsm, stage = p["fsm"], p["wr_stage"]
        N, w, ab, dec = dut.lanes, dut.port_bytes, dut.addr_bits, dut.decoder_ops
        lw, ln = w.bit_length() - 1, N.bit_length() - 1

        saved = Signal(isa.vector_layout())
        with m.If(dut.cmd.valid & dut.cmd.ready):
            m.d.sync += saved.eq(dut.cmd.payload)
        _, offered = _vector_destinations(dut.cmd.payload, dec, ab, w)
        with m.If(dut.cmd.valid):
            m.d.comb += [Assume(a) for a in offered]
        span, held = _vector_destinations(saved, dec, ab, w)
        taken = ~fsm.ongoing("IDLE")
        run = fsm.ongoing("RUN")
        settled = fsm.ongoing("PARAMS") | fsm.ongoing("START") | run | fsm.ongoing("DONE")
        with m.If(taken):
            m.d.comb += [Assert(a, "the command taken is not one the controller issues")
                         for a in held]
            m.d.comb += Assert(p["cmd"].as_value() == saved.as_value(),
                               "the command register moved")
        cols = saved.cols
        nub = (cols + N - 1) >> ln
        with m.If(settled):
            m.d.comb += [Assert(p["nub_m1"] == (nub - 1)[:16], "nub_m1 not settled"),
                         Assert(p["rows_out"] == span["rows_out"], "rows_out not settled")]
        m.d.comb += Assert(p["phase_run"] == run, "phase_run outside RUN")
        stride = saved.dst_stride[:ab]
        with m.If(fsm.ongoing("PARAMS") | fsm.ongoing("START")):
            m.d.comb += Assert((p["o_row"] == 0) & (p["olevel"] == 0) & (p["w_beat"] == 0)
                               & ~p["oflush"] & (p["o_beat"] == 0) & (p["e_row"] == 0)
                               & ~p["e_pend"] & p["o_open"] & p["e_open"],
                               "the packer not cleared before RUN")
        with m.If(settled):
            m.d.comb += Assert(p["w_row_addr"] == (saved.dst_addr + p["o_row"] * stride)[:ab],
                               "row address off dst_addr + o_row * dst_stride")
        with m.If(run):
            beat_bytes = p["o_beat"] << (ln + p["dl"])
            written = p["w_beat"] * w + p["olevel"]
            m.d.comb += [
                Assert(p["o_beat"] <= p["nub_m1"], "unit beat past the row's last"),
                Assert(p["o_last"] == (p["o_beat"] == p["nub_m1"]), "o_last off the last beat"),
                Assert(p["o_row"] <= p["rows_out"], "rows written past the command's"),
                Assert(p["o_open"] == (p["o_row"] < p["rows_out"]), "the row fence off o_row"),
                Assert(p["e_open"] == (p["e_row"] < saved.rows), "the exponent fence off e_row"),
                Assert(~p["oflush"] | (p["o_beat"] == 0), "a unit beat taken while flushing"),
                # Row exponents (ops without split or dropped rows): one recorded per row
                # whose last unit beat was taken, at most rows.
                Assert(~p["use_e"] | ((p["e_row"] <= saved.rows)
                                      & (p["e_row"] >= p["o_row"] + (p["oflush"] & p["row_fence"]))),
                       "row exponents recorded off the rows taken"),
                Assert(written == Mux(p["oflush"], p["dst_bytes"],
                                      Mux(p["o_drop"], 0, beat_bytes)),
                       "the packer's bytes off the unit beats taken"),
            ]
        with m.If(p["e_pend"]):
            m.d.comb += Assert(run & span["use_e"], "an exponent beat pending outside RUN")
            _inside_vector_destinations(m, p["e_word_addr"], saved, span, w, "an exponent beat")
        m.d.comb += Assert(~stage._skid_valid | stage.o.valid, "skid entry before main")
        with m.If(stage.o.valid):
            m.d.comb += Assert(run, "a beat held in the write stage outside RUN")
            _inside_vector_destinations(m, stage._main_payload.addr, saved, span, w,
                                        "a beat held in the write stage")
        with m.If(stage._skid_valid):
            _inside_vector_destinations(m, stage._skid_payload.addr, saved, span, w,
                                        "a beat held in the write stage's skid")
        with m.If(dut.mem.wr.valid):
            m.d.comb += Assert(taken, "a write outside a command")
            _inside_vector_destinations(m, dut.mem.wr.payload.addr, saved, span, w,
                                        "a write beat")
        # Reachable: a write of the second destination row.
        m.d.comb += Cover(dut.mem.wr.valid & dut.mem.wr.ready
                          & (dut.mem.wr.payload.addr >= saved.dst_addr + stride) & (stride != 0))
        return m


class VectorEngineWritingPastRows(VectorEngineFreeUnit):
    """Mutant: the packer without its fence: beats the unit sends past the command's rows
    are written, after the last row, at ``dst_addr + rows_out * dst_stride``."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self._probe["row_fence"].eq(1)
        return m


class VectorEngineRecordingPastRows(VectorEngineFreeUnit):
    """Mutant: row exponents recorded without their fence: a row past the command's rows
    (the unit's extra beats) records an exponent, whose beat lies past ``e_addr + rows``
    when ``rows`` is a multiple of W."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self._probe["e_fence"].eq(1)
        return m


# --- the write path: the controller issues only checked commands -------------------------------

class _ControllerHarness(wiring.Component):
    """The controller with its ports free to the solver: memory, the units' command and done
    streams (the vector unit's on a build with it), START, abort, PROG_ADDR and the window,
    and with ``faults`` the memory-fault inputs (without, the harness drives them)."""

    def __init__(self, dut: Controller, *, faults: bool):
        self.dut = dut
        members = {"mem": Out(MemoryPortSignature(dut.port_bytes)),
                   "mm_cmd": Out(stream.Signature(command_layout())),
                   "mm_done": In(stream.Signature(DONE_BITS))}
        if dut.vector:
            members.update({"vec_cmd": Out(stream.Signature(isa.vector_layout())),
                            "vec_done": In(stream.Signature(DONE_BITS))})
        self._scalars = ["writes_idle", "start", "abort", "prog_addr", "win_base", "win_size"]
        if faults and dut.mem_faults:
            self._scalars += ["mem_fault", "mem_fault_code", "mem_fault_port", "mem_quiet"]
        for name in self._scalars:
            members[name] = In(len(getattr(dut, name)))
        super().__init__(members)

    def _wire(self, m: Module, platform) -> None:
        dut = self.dut
        m.submodules.dut = _elaborated(dut, platform)
        wiring.connect(m, dut.mem, wiring.flipped(self.mem))
        wiring.connect(m, dut.mm_cmd, wiring.flipped(self.mm_cmd))
        wiring.connect(m, wiring.flipped(self.mm_done), dut.mm_done)
        if dut.vector:
            wiring.connect(m, dut.vec_cmd, wiring.flipped(self.vec_cmd))
            wiring.connect(m, wiring.flipped(self.vec_done), dut.vec_done)
        for name in self._scalars:
            m.d.comb += getattr(dut, name).eq(getattr(self, name))


class ControllerSpec(_ControllerHarness):
    """Every matmul command the :class:`Controller` hands to the engine has had its C operand
    (the operand the engine writes) checked against the window set at START, and passed;
    for any instruction stream, any memory timing and any answers of the units.

    Free inputs: the memory port's side (the instruction words and parameter records are
    whatever the read data says, at any latency), the engine's ``ready`` and ``done``, the
    CSR requests and registers (START, abort, PROG_ADDR, WIN_BASE, WIN_SIZE) and the AXI
    master's fault reports. The harness records what the controller's span check saw (its
    inputs and its verdict) in the cycle it checked the C operand, and shows:

    * the window registers hold WIN_BASE and WIN_SIZE as they were at START while a run is
      under way, and a run past START lies inside ``[0, 2**addr_bits)`` (on a full build: no
      window wraps past 2**32);
    * from that check until the command leaves the issue slot, the instruction's (then the
      slot's) C operand is the one checked, checked against the same window, and the check
      passed (the stop before the slot is filled is taken otherwise);
    * the controller's memory port never writes.

    On a build with the vector unit the same holds for each VECTOR command's destination
    rows and row exponents (the vector engine's writes), and its handshakes are free too.

    With the span-check proofs (a C operand that passes lies inside the window, byte for
    byte), the commands the matmul engine gets write, if the engine stays inside C, only
    inside the window. ``writer_in_span`` shows that the engine does.
    """

    def __init__(self, dut: Controller):
        super().__init__(dut, faults=True)

    def elaborate(self, platform):
        m = Module()
        dut = self.dut
        ab = dut.addr_bits
        self._wire(m, platform)
        p = dut._probe
        fsm = p["fsm"]
        st = {name: fsm.ongoing(name) for name in
              ("IDLE", "NEXT", "FETCH", "DECODE", "CHECK", "RESOLVE", "PSCAN", "SCANNED",
               "ISSUE", "WAIT", "DRAIN") + (() if dut.issue_slot else ("HOLD",))}

        # The window at START.
        start_base = Signal(32)
        start_size = Signal(32)
        with m.If(st["IDLE"] & dut.start):
            m.d.sync += [start_base.eq(dut.win_base), start_size.eq(dut.win_size)]
        if not dut.vector:
            m.d.comb += Assert(~p["is_vec"], "a vector command on a build without the unit")
        m.d.comb += [
            Assert(dut.running == ~st["IDLE"], "running != a run under way"),
            Assert(~dut.mem.wr.valid, "the controller writes"),
        ]
        with m.If(dut.running):
            m.d.comb += Assert((p["base"] == start_base[:ab])
                               & (p["size"] == start_size[:ab + 1]),
                               "the window registers moved during a run")
        with m.If(dut.running & ~st["DRAIN"]):
            # (So the registers hold WIN_BASE and WIN_SIZE whole.)
            m.d.comb += Assert(start_base + start_size <= (1 << ab),
                               "a run under way with a window past the build's reach")

        m.d.comb += Assert(~p["any_outside"] | ~(st["PSCAN"] | st["SCANNED"] | st["ISSUE"]
                                                 | (st["HOLD"] if not dut.issue_slot else 0)),
                           "a command outside the window past RESOLVE")
        _destination_check(self, m, st, p, "c", vec=False, idx=2, stream=dut.mm_cmd,
                          operand=lambda c: (c.c_addr, c.m, c.c_stride, _c_operand(c)[1]))
        if dut.vector:
            # The vector engine writes its destination rows and, for the ops that make them,
            # the row exponents.
            _destination_check(self, m, st, p, "dst", vec=True, idx=3, stream=dut.vec_cmd,
                              operand=lambda c: (c.dst_addr, c.rows, c.dst_stride,
                                                 c.cols << out_bytes_log2(c.dst_fmt)))
            _destination_check(self, m, st, p, "e", vec=True, idx=4, stream=dut.vec_cmd,
                              operand=lambda c: (c.e_addr, C(1, 1), C(0, 32), c.rows))
        cmd = dut.mm_cmd.payload
        # Reachable: a command whose destination ends at the window's end is taken; with the
        # one-cycle check, one of two rows (the serial check spends 16 cycles on the product
        # of each operand of more than one row: one row keeps it within a short depth).
        taken = dut.mm_cmd.valid & dut.mm_cmd.ready
        if dut.serial_check:
            m.d.comb += Cover(taken & (cmd.m == 1)
                              & (cmd.c_addr[:ab] + _c_operand(cmd)[1] == p["win_end"]))
        else:
            m.d.comb += Cover(taken & (cmd.m > 1)
                              & (cmd.c_addr[:ab] + cmd.c_stride[:ab] + _c_operand(cmd)[1]
                                 == p["win_end"]))
        return m


def _destination_check(spec, m, st, p, name, *, vec, idx, stream, operand):
    """For :class:`ControllerSpec`: operand ``idx`` of the instruction's operand table (a
    destination of its unit) is recorded as the span check saw it; it stays the one checked,
    against the same window, until the unit takes the command (from the issue slot, or,
    without one, from the instruction register), and a command is offered only when its check
    passed."""
    dut = spec.dut
    ab = dut.addr_bits
    mine = p["is_vec"] if vec else ~p["is_vec"]
    used, op_addr, op_rows, op_stride, op_rb = p["op"]
    fields = Cat(op_addr, op_rows, op_stride, op_rb)
    _, *instr_operand = p["vec_ops"][idx] if vec else p["c_op"]
    widths = (len(op_addr), len(op_rows), len(op_stride), len(op_rb))
    window = Cat(p["base"], p["win_end"])
    rec = Signal(len(fields), name=f"{name}_rec")
    rec_window = Signal(len(window), name=f"{name}_rec_window")
    rec_out = Signal(name=f"{name}_rec_out")
    with m.If(st["CHECK"] & p["check_step"] & (p["idx"] == idx) & mine):
        m.d.sync += [rec.eq(fields), rec_window.eq(window), rec_out.eq(p["outside"])]
    # The instruction's operand as the operand table drives the check with it.
    parts = []
    for k, (value, width) in enumerate(zip(instr_operand, widths)):
        part = Signal(width, name=f"{name}_instr_{k}")
        m.d.comb += part.eq(value)
        parts.append(part)
    instr_fields = Cat(*parts)
    with m.If(st["CHECK"] & mine & (p["idx"] == idx)):
        m.d.comb += Assert(fields == instr_fields, f"{name} is not operand {idx} of the check")
    after = ((st["CHECK"] & (p["idx"] > idx)) | st["RESOLVE"] | st["PSCAN"] | st["SCANNED"]
             | st["ISSUE"] | (st["HOLD"] if not dut.issue_slot else 0))
    with m.If(after & mine):
        m.d.comb += [
            Assert(rec == instr_fields, f"the instruction's {name} is not the one checked"),
            Assert(rec_window == window, f"{name} checked against another window"),
            Assert(p["any_outside"] | ~rec_out, f"a failed check of {name} forgotten"),
        ]

    cmd = stream.payload
    c_addr, c_rows, c_stride, c_rb = operand(cmd)

    def same_as(record):
        # On a narrow build the check saw each field with a flag above its ab bits (set for a
        # value at or above 2**ab); the unit gets the ab bits, zero-extended.
        addr, rows, stride, rb = _split(record, widths)
        return ((c_addr[:ab] == addr[:ab]) & (c_addr[ab:] == 0) & (c_rows == rows)
                & (c_stride[:ab] == stride[:ab]) & (c_stride[ab:] == 0) & (c_rb == rb))

    if dut.issue_slot:
        slot_valid = p["vec_unit" if vec else "mm_unit"][0]
        slot_rec = Signal(len(fields), name=f"{name}_slot_rec")
        slot_window = Signal(len(rec_window), name=f"{name}_slot_window")
        slot_out = Signal(init=1, name=f"{name}_slot_out")
        with m.If(~slot_valid):
            m.d.sync += [slot_rec.eq(rec), slot_window.eq(rec_window),
                         slot_out.eq(rec_out | p["any_outside"])]
        holding = slot_valid
    else:
        slot_rec, slot_window, slot_out = rec, rec_window, p["any_outside"]
        holding = (st["ISSUE"] | st["HOLD"]) & mine
    with m.If(holding):
        m.d.comb += [
            Assert(same_as(slot_rec), f"the command's {name} is not the one checked"),
            Assert(~slot_out, f"a command whose {name} failed its check"),
            Assert(slot_window == window, f"{name} checked against another window"),
            Assert(dut.running, "a command held outside a run"),
        ]
    with m.If(stream.valid):
        m.d.comb += Assert(holding, "a command offered that was not checked")


def _split(value, widths):
    """``value`` cut into consecutive fields of the given widths, lowest first."""
    out, at = [], 0
    for width in widths:
        out.append(value[at:at + width])
        at += width
    return out


class ControllerAcceptingWrappedWindow(Controller):
    """Mutant: the controller before the window check covered full builds: a window that
    reaches past 2**32 is accepted, and an operand checked against it may wrap around to the
    bottom of the memory."""

    def _window_beyond(self, ab):
        return C(0, 1) if ab == 32 else super()._window_beyond(ab)


class ControllerForgettingC(Controller):
    """Mutant: the verdict of C's span check is not kept, so a command whose destination
    reaches outside the window is issued."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        p = self._probe
        with m.If(p["fsm"].ongoing("CHECK") & (p["idx"] == 2)):
            m.d.sync += p["any_outside"].eq(p["any_outside"])
        return m


# --- bounded liveness of the controller ------------------------------------------------------

#: Instruction classes of :class:`ControllerLivenessSpec`, in the order of its bound table.
LIVENESS_CLASSES = ("fetch", "halt", "sync", "matmul", "matmul_requant", "vector", "illegal")


class ControllerForgettingDst(Controller):
    """Mutant: the verdict of a VECTOR destination's span check is not kept, so a command
    whose destination rows reach outside the window is issued."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        p = self._probe
        with m.If(p["fsm"].ongoing("CHECK") & p["is_vec"] & (p["idx"] == 3)):
            m.d.sync += p["any_outside"].eq(p["any_outside"])
        return m


class ControllerLivenessSpec(_ControllerHarness):
    """Each instruction the :class:`Controller` runs ends (it is back between instructions,
    or the run has stopped) within a bound of cycles for its class, when the memory and the
    matmul engine answer within bounded times.

    Free inputs, with the promises of a working memory and engine (``Assume``):

    * the memory takes a read request within ``latency`` cycles of its offer, and while it
      owes read beats it returns one at least every ``latency`` cycles; it returns no beat it
      does not owe (the data is free: any instruction stream, any parameter records);
    * the engine takes a command within ``latency`` cycles, holds one at a time and answers
      it within ``engine`` cycles (with any code), at the earliest in the second cycle after
      taking it, as the matmul engine does; no write stays unacknowledged for ``latency``
      cycles in a row (``writes_idle``);
    * no memory fault (the watchdog's proof, ``axi_master_faults``, covers a silent memory);
      START, abort, PROG_ADDR and the window free.

    An instruction is timed from the cycle the controller leaves NEXT (or IDLE, for START)
    until it is back in NEXT or IDLE; the bound is that of its class, known from DECODE
    (``fetch`` until then): HALT, SYNC, MATMUL without requantisation (whatever its checks
    find), requantising MATMUL of at most ``requant_cols`` columns (its parameter scan reads
    ``ceil(8 N / W)`` beats), VECTOR (a build without the unit: UNSUPPORTED) and any other
    opcode. Bounded model checking to a depth past the largest bound finds any instruction
    of the first ones a run executes that takes longer.
    """

    def __init__(self, dut: Controller, *, bounds: dict, latency: int, engine: int,
                 requant_cols: int):
        self.dut, self.bounds = dut, bounds
        self.latency, self.engine, self.requant_cols = latency, engine, requant_cols
        assert set(bounds) == set(LIVENESS_CLASSES)
        super().__init__(dut, faults=False)

    def elaborate(self, platform):
        m = Module()
        dut = self.dut
        W = dut.port_bytes
        self._wire(m, platform)
        if dut.mem_faults:
            m.d.comb += [dut.mem_fault.eq(0), dut.mem_quiet.eq(1)]
        p = dut._probe
        fsm = p["fsm"]

        def within(name, waiting, cycles):
            """Assume ``waiting`` is never true for ``cycles`` cycles in a row."""
            count = Signal(range(cycles + 1), name=f"{name}_wait")
            m.d.sync += count.eq(Mux(waiting, count + 1, 0))
            m.d.comb += Assume(~waiting | (count < cycles - 1))

        mem, L = dut.mem, self.latency
        owed = Signal(16)
        m.d.sync += owed.eq(owed + (mem.rd_req.valid & mem.rd_req.ready) - mem.rd_resp.valid)
        m.d.comb += Assume(~mem.rd_resp.valid | (owed != 0))
        within("rd_req", mem.rd_req.valid & ~mem.rd_req.ready, L)
        within("rd_resp", (owed != 0) & ~mem.rd_resp.valid, L)
        held = Signal(range(dut.queue + 2))   # commands the engine holds
        cmd_fire = dut.mm_cmd.valid & dut.mm_cmd.ready
        m.d.sync += held.eq(held + cmd_fire - dut.mm_done.valid)
        just_taken = Signal()
        m.d.sync += just_taken.eq(cmd_fire)
        m.d.comb += [
            # As the matmul engine does: one command at a time (ready only while it holds
            # none), answered at the earliest in the second cycle after it was taken (CHECK,
            # then DONE). (An answer in the very next cycle would reach the controller's FIFO
            # of commands in flight before the command does, and be lost.)
            Assume(~dut.mm_cmd.ready | (held == 0)),
            Assume(~dut.mm_done.valid | ((held != 0) & ~just_taken)),
        ]
        within("mm_cmd", dut.mm_cmd.valid & ~dut.mm_cmd.ready, L)
        within("mm_done", (held != 0) & ~dut.mm_done.valid, self.engine)
        within("writes", ~dut.writes_idle, L)

        # The instruction's class, known from DECODE.
        instr = p["instr"]
        opcode = instr.opcode
        cls = Signal(range(len(LIVENESS_CLASSES)))
        index = {name: i for i, name in enumerate(LIVENESS_CLASSES)}
        with m.If(fsm.ongoing("DECODE")):
            with m.Switch(opcode):
                with m.Case(isa.Opcode.HALT):
                    m.d.sync += cls.eq(index["halt"])
                with m.Case(isa.Opcode.SYNC):
                    m.d.sync += cls.eq(index["sync"])
                with m.Case(isa.Opcode.MATMUL):
                    m.d.sync += cls.eq(Mux(p["mm"].requant, index["matmul_requant"],
                                           index["matmul"]))
                with m.Case(isa.Opcode.VECTOR):
                    m.d.sync += cls.eq(index["vector"])
                with m.Default():
                    m.d.sync += cls.eq(index["illegal"])
            with m.If(opcode == isa.Opcode.MATMUL):
                m.d.comb += Assume(~p["mm"].requant | (p["mm"].n <= self.requant_cols))
        between = fsm.ongoing("NEXT") | fsm.ongoing("IDLE")
        with m.If(between):
            m.d.sync += cls.eq(index["fetch"])
        largest = max(self.bounds.values())
        t = Signal(range(largest + 2))
        m.d.sync += t.eq(Mux(between, 0, Mux(t == largest + 1, t, t + 1)))
        bound = Signal.like(t)
        m.d.comb += bound.eq(Array(C(self.bounds[name], len(t)) for name in LIVENESS_CLASSES)[cls])
        m.d.comb += Assert(t <= bound, "an instruction took longer than its class's bound")
        # Reachable: an instruction of every class ends (the environment leaves each one
        # something to check).
        was_between = Signal(init=1)
        m.d.sync += was_between.eq(between)
        for i, name in enumerate(LIVENESS_CLASSES):
            m.d.comb += Cover(between & ~was_between & (cls == i))
        return m


class ControllerScanningShort(Controller):
    """Mutant: the parameter scan requests one beat fewer than it waits for, so a
    requantising MATMUL waits for ever for its last record beat."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        p = self._probe
        with m.If(p["fsm"].ongoing("PSCAN") & (p["scan_req"] + 1 >= p["scan_beats"])):
            m.d.comb += self.mem.rd_req.valid.eq(0)
        return m
