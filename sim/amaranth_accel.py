"""The whole accelerator in Amaranth's Python simulator: the ``amaranth`` backend.

:class:`AmaranthAccel` elaborates :class:`celosia.hdl.accelerator.Accelerator` into one
``amaranth.sim.Simulator`` that lives as long as the object, with two background testbenches:

* :class:`AxiMemory` serves the ``m_axi`` master from a Python ``bytearray``: ``INCR`` bursts
  of any length on one ID, answered in order after ``latency`` cycles, write responses after
  the last beat, optionally with random stalls on every channel (``stall``);
* a host testbench runs the CSR accesses the Python side queues, as AXI4-Lite transactions on
  ``s_axil``, so the RTL register block is exercised.

The simulator only advances inside :meth:`AmaranthAccel.read_csr`, :meth:`~AmaranthAccel.write_csr`
and :meth:`~AmaranthAccel.run`: between them time stands still and the host reads and writes
the memory image directly (the accelerator is idle then, or at least not clocked).

:class:`AmaranthBackend` is the :class:`celosia.sw.driver.Backend` of that model and
:func:`amaranth_backend` its factory for ``driver.register_backend`` (like
``verilator_backend``). The Python simulator runs some thousand cycles per second for a 2x2
or 4x4 array: it suits small arrays, small programs and waveforms (``vcd_path``).
"""

from __future__ import annotations

import time
from collections import deque

from amaranth.hdl import Cat

from celosia.hdl.isa import CSR, MachineConfig
from celosia.hdl.params import K_MAX

__all__ = ["AxiMemory", "AmaranthAccel", "AmaranthBackend", "amaranth_backend"]

#: Clock period given to the simulator (only the waveform's time axis depends on it).
CLOCK_PERIOD = 1e-8
#: Cycles an AXI4-Lite transaction may take before the host gives up on it.
CSR_TIMEOUT_CYCLES = 1000


class AxiMemory:
    """An AXI4 slave memory for Amaranth's simulator, serving ``axi`` (the accelerator's
    ``Out(AXI4Signature)`` port) from ``mem`` (a ``bytearray``) at address 0.

    Reads: every accepted ``AR`` is an ``INCR`` burst of ``arlen + 1`` beats; its beats leave on
    ``R`` in order, the first ``latency`` cycles after the request at the earliest. Writes:
    beats are matched to ``AW`` bursts in order and written with their strobes; a ``B``
    response follows each burst's last beat. ``stall`` is the chance, per cycle and channel,
    that ``AR``, ``AW`` or ``W`` is not ready or that a due ``R`` beat is held back (``seed``
    seeds it); with 0 they are always ready. A beat outside ``mem`` or a burst type other than
    ``INCR`` is recorded in ``error`` (reads return 0, writes are dropped) rather than raised
    inside the simulator; :class:`AmaranthAccel` reports it."""

    def __init__(self, axi, mem: bytearray, port_bytes: int, *, latency: int = 2,
                 stall: float = 0.0, seed: int = 1):
        import random

        if latency < 1:
            raise ValueError("latency must be at least 1 cycle")
        if not 0.0 <= stall < 1.0:
            raise ValueError("stall must be in [0, 1)")
        self.axi, self.mem, self.w = axi, mem, port_bytes
        self.latency, self.stall = latency, stall
        self.rng = random.Random(seed)
        self.cycle = 0
        self.reads = self.writes = self.read_bursts = 0
        self.error: str | None = None

    def _fault(self, text: str) -> None:
        if self.error is None:
            self.error = text

    def _read(self, addr: int) -> int:
        w = self.w
        if addr + w > len(self.mem):
            self._fault(f"AXI read at {addr:#x} outside the simulated memory")
            return 0
        return int.from_bytes(self.mem[addr:addr + w], "little")

    def _write(self, addr: int, data: int, strb: int) -> None:
        w = self.w
        if addr + w > len(self.mem):
            self._fault(f"AXI write at {addr:#x} outside the simulated memory")
            return
        raw = data.to_bytes(w, "little")
        if strb == (1 << w) - 1:
            self.mem[addr:addr + w] = raw
        else:
            mem = self.mem
            for i in range(w):
                if strb >> i & 1:
                    mem[addr + i] = raw[i]

    async def testbench(self, ctx):
        a, w, lat = self.axi, self.w, self.latency
        stall, rand = self.stall, self.rng.random
        reads = deque()          # [due cycle, address, beats left, data] per accepted AR burst
        bursts = deque()         # [address, beats left] per accepted AW burst
        beats = deque()          # (data, strobes) received before their AW
        bresp = 0
        # The slave's outputs are set as one value and the master's sampled as one, so a cycle
        # settles the design at most once for the memory and evaluates one expression.
        outputs = Cat(a.arready, a.awready, a.wready, a.rvalid, a.bvalid, a.rlast, a.rdata)
        fields = (a.rready, a.bready, a.arvalid, a.awvalid, a.wvalid, a.arburst, a.awburst,
                  a.arlen, a.awlen, a.araddr, a.awaddr, a.wstrb, a.wdata)
        inputs = Cat(*fields)
        offsets, at = [], 0
        for f in fields:
            offsets.append(at)
            at += len(f)
        (o_rr, o_br, o_arv, o_awv, o_wv, o_arb, o_awb, o_arlen, o_awlen, o_araddr, o_awaddr,
         o_wstrb, o_wdata) = offsets
        addr_mask = (1 << len(a.araddr)) - 1
        strb_mask = (1 << w) - 1
        shown = 0b111
        ctx.set(outputs, shown)
        # One multi-shot wait for the whole run (cheaper than a new trigger every cycle); the
        # loop body never awaits, so no edge is missed. ``shown`` is what the slave drove
        # during the cycle that just ended: the handshakes are its bits and the master's.
        async for _, _, v in ctx.tick().sample(inputs):
            cycle = self.cycle
            self.cycle = cycle + 1
            r_taken = shown & 0b1000 and v & 1
            if r_taken:
                head = reads[0]
                self.reads += 1
                head[2] -= 1
                if head[2]:
                    head[1] += w
                    head[3] = None
                else:
                    reads.popleft()
            if shown & 0b10000 and v >> o_br & 1:
                bresp -= 1
            if shown & 0b1 and v >> o_arv & 1:
                araddr = v >> o_araddr & addr_mask
                if v >> o_arb & 3 != 1:
                    self._fault(f"AXI read burst type {v >> o_arb & 3} at {araddr:#x} (only INCR)")
                reads.append([cycle + lat, araddr, (v >> o_arlen & 0xFF) + 1, None])
                self.read_bursts += 1
            if shown & 0b10 and v >> o_awv & 1:
                awaddr = v >> o_awaddr & addr_mask
                if v >> o_awb & 3 != 1:
                    self._fault(f"AXI write burst type {v >> o_awb & 3} at {awaddr:#x} (only INCR)")
                bursts.append([awaddr, (v >> o_awlen & 0xFF) + 1])
            if shown & 0b100 and v >> o_wv & 1:
                beats.append((v >> o_wdata, v >> o_wstrb & strb_mask))
            while bursts and beats:
                data, strb = beats.popleft()
                burst = bursts[0]
                self._write(burst[0], data, strb)
                self.writes += 1
                burst[1] -= 1
                if burst[1]:
                    burst[0] += w
                else:
                    bursts.popleft()
                    bresp += 1
            # What the slave drives in the next cycle.
            if stall:
                ready = (rand() >= stall) | (rand() >= stall) << 1 | (rand() >= stall) << 2
                rv = bool(reads) and reads[0][0] <= cycle + 1 and (
                    (shown & 0b1000 and not r_taken) or rand() >= stall)   # valid stays up
            else:
                ready = 0b111
                rv = bool(reads) and reads[0][0] <= cycle + 1
            out = ready | (bresp > 0) << 4
            if rv:
                head = reads[0]
                if head[3] is None:
                    head[3] = self._read(head[1])
                out |= 0b1000 | (head[2] == 1) << 5 | head[3] << 6
            else:
                out |= shown & ~0b111111                # rdata holds when not valid
            if out != shown:
                ctx.set(outputs, out)
                shown = out


class _CsrOp:
    __slots__ = ("addr", "value", "write", "done")

    def __init__(self, addr: int, value: int, write: bool):
        self.addr, self.value, self.write, self.done = addr, value, write, False


class AmaranthAccel:
    """A simulated :class:`celosia.hdl.accelerator.Accelerator` with ``mem_bytes`` of memory at
    address 0 behind its AXI4 port (``mem``, a ``bytearray``).

    ``vector``: the tree's vector engine (True), none (False: a VECTOR stops with UNSUPPORTED)
    or None for "when there is one". ``vcd_path``: write every signal's waveform there from the
    first cycle, for ``vcd_cycles`` cycles (all when None), closed then or by :meth:`close`."""

    def __init__(self, array: int, port_bytes: int | None = None, *, vector=True,
                 k_max: int = K_MAX, mem_bytes: int = 1 << 20, latency: int = 2,
                 stall: float = 0.0, seed: int = 1, vcd_path=None, gtkw_path=None,
                 vcd_cycles: int | None = None):
        from amaranth.sim import Simulator

        from celosia.hdl.accelerator import Accelerator, vector_engine_factory

        if vector is None:
            vector = vector_engine_factory() is not None
        self.config = MachineConfig(array, port_bytes)
        self.port_bytes = self.config.port_bytes
        self.vector = bool(vector)
        t0 = time.perf_counter()
        self.dut = Accelerator(array, self.port_bytes, vector=self.vector, k_max=k_max)
        self.mem = bytearray(mem_bytes)
        self.memory = AxiMemory(self.dut.m_axi, self.mem, self.port_bytes, latency=latency,
                                stall=stall, seed=seed)
        self._ops: deque[_CsrOp] = deque()
        self.last_error: str | None = None
        sim = self.sim = Simulator(self.dut)
        sim.add_clock(CLOCK_PERIOD)
        sim.add_testbench(self.memory.testbench, background=True)
        sim.add_testbench(self._host, background=True)
        self._vcd = None
        self._vcd_stop = None
        if vcd_path is not None:
            self._vcd_stop = vcd_cycles
            self._vcd = sim.write_vcd(str(vcd_path), None if gtkw_path is None else str(gtkw_path))
            self._vcd.__enter__()
        self.sim_seconds = 0.0
        self._step_until(lambda: False, 1)      # start both testbenches (and compile the design)
        self.build_seconds = time.perf_counter() - t0

    # --- the simulator ------------------------------------------------------------------------

    async def _host(self, ctx):
        """Runs the queued CSR accesses as AXI4-Lite transactions, one at a time (as the
        verilator harness and cocotbext-axi's AxiLiteMaster do): address (and data) valid with
        the response's ready, each valid dropped after its handshake, done at the response. A
        state machine on one multi-shot wait, like the memory's, so an idle host costs little
        per cycle."""
        bus = self.dut.s_axil
        ops = self._ops
        a_bits, d_bits, s_bits = len(bus.awaddr), len(bus.wdata), len(bus.wstrb)
        aw = Cat(bus.awaddr, bus.wdata, bus.wstrb, bus.awvalid, bus.wvalid, bus.bready)
        aw_start = 0b111 << (a_bits + d_bits + s_bits)        # awvalid, wvalid, bready
        strb_all = (1 << s_bits) - 1
        aw_valids = Cat(bus.awvalid, bus.wvalid)
        ar = Cat(bus.araddr, bus.arvalid, bus.rready)
        ar_start = 0b11 << len(bus.araddr)                       # arvalid, rready
        inputs = Cat(bus.awready, bus.wready, bus.bvalid, bus.arready, bus.rvalid, bus.rdata)
        IDLE, W, B, AR, R = range(5)
        state, op, pend = IDLE, None, 0
        async for _, _, v in ctx.tick().sample(inputs):
            finished = False
            if state == W:                          # pend: AW and W not yet accepted
                left = pend & ~(v & 0b11)
                if left != pend:
                    ctx.set(aw_valids, left)
                    pend = left
                    if not left:
                        state = B
            elif state == B:
                if v & 0b100:                       # bvalid (bready is up)
                    ctx.set(bus.bready, 0)
                    finished = True
            elif state == AR:
                if v & 0b1000:                      # arready
                    ctx.set(bus.arvalid, 0)
                    state = R
            elif state == R:
                if v & 0b10000:                     # rvalid (rready is up)
                    op.value = v >> 5
                    ctx.set(bus.rready, 0)
                    finished = True
            if finished:
                ops.popleft()
                op.done = True
                state, op = IDLE, None
            if state == IDLE and ops:
                op = ops[0]
                if op.write:
                    ctx.set(aw, op.addr | op.value << a_bits | strb_all << (a_bits + d_bits)
                            | aw_start)
                    state, pend = W, 0b11
                else:
                    ctx.set(ar, op.addr | ar_start)
                    state = AR

    def _step_until(self, done, limit: int) -> None:
        """Advance the simulator until ``done()`` or ``limit`` more cycles passed."""
        if self.sim is None:
            raise RuntimeError("the simulation is closed")
        t0 = time.perf_counter()
        mem, sim = self.memory, self.sim
        end = mem.cycle + limit
        try:
            if self._vcd_stop is not None:
                while not done() and mem.cycle < end:
                    sim.advance()
                    if mem.cycle >= self._vcd_stop:
                        self._close_vcd()
                        break
            while not done() and mem.cycle < end:
                sim.advance()
        finally:
            self.sim_seconds += time.perf_counter() - t0

    def _csr(self, addr: int, value: int, write: bool) -> int:
        op = _CsrOp(addr, value, write)
        self._ops.append(op)
        self._step_until(lambda: op.done, CSR_TIMEOUT_CYCLES)
        if not op.done:
            raise RuntimeError(f"AXI4-Lite {'write' if write else 'read'} at {addr:#x} "
                               f"did not complete in {CSR_TIMEOUT_CYCLES} cycles")
        return op.value

    def check(self) -> None:
        """Raise the memory's first bus error, if any (once)."""
        err, self.memory.error = self.memory.error, None
        if err is not None:
            self.last_error = err
            raise RuntimeError(err)

    @property
    def cycle(self) -> int:
        """Clock cycles simulated so far (since construction)."""
        return self.memory.cycle

    def _close_vcd(self) -> None:
        self._vcd_stop = None
        if self._vcd is not None:
            vcd, self._vcd = self._vcd, None
            vcd.__exit__(None, None, None)

    def close(self) -> None:
        self._close_vcd()
        self.sim = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if self._vcd is not None:
                self.close()
        except Exception:
            pass

    # --- the host interface -------------------------------------------------------------------

    def read_csr(self, name: str) -> int:
        return self._csr(getattr(CSR, name).offset, 0, False)

    def write_csr(self, name: str, value: int) -> None:
        self._csr(getattr(CSR, name).offset, int(value) & 0xFFFFFFFF, True)

    def busy(self) -> bool:
        return bool(CSR.STATUS.get(self.read_csr("STATUS"), "busy"))

    def run(self, max_cycles: int | None = None, timeout_s: float | None = None, *,
            poll: int = 128, until: tuple[str, int] | None = None) -> int:
        """Clock until STATUS.busy falls (read over AXI4-Lite every ``poll`` cycles), or
        ``max_cycles`` cycles or ``timeout_s`` seconds pass; returns the cycles run.
        ``until=(name, target)`` also stops once CSR ``name`` reads at least ``target``
        (polled likewise)."""
        t0 = time.monotonic()
        start = self.cycle
        left = float("inf") if max_cycles is None else max_cycles
        while left > 0 and self.busy():
            if until is not None and self.read_csr(until[0]) >= until[1]:
                break
            if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
                break
            before = self.cycle
            self._step_until(lambda: False, int(min(left, poll)))
            self.check()
            left -= self.cycle - before
        return self.cycle - start


class AmaranthBackend:
    """The ``amaranth`` backend of :mod:`celosia.sw.driver`: :class:`AmaranthAccel` behind the
    CSR/memory interface every backend has. ``config`` is a :class:`MachineConfig` or the array
    size; ``latency``, ``stall`` and ``seed`` shape the memory (:class:`AxiMemory`), ``poll``
    is how many cycles :meth:`advance` runs between reads of STATUS."""

    name = "amaranth"

    def __init__(self, config: MachineConfig | int, mem_size: int, vector=True, *,
                 k_max: int = K_MAX, latency: int = 2, stall: float = 0.0, seed: int = 1,
                 vcd_path=None, gtkw_path=None, vcd_cycles: int | None = None,
                 poll: int = 128):
        if not isinstance(config, MachineConfig):
            config = MachineConfig(int(config))
        mem_size = -(-mem_size // 4096) * 4096
        self.poll = poll
        self.model = AmaranthAccel(config.array, config.port_bytes, vector=vector, k_max=k_max,
                                   mem_bytes=mem_size, latency=latency, stall=stall, seed=seed,
                                   vcd_path=vcd_path, gtkw_path=gtkw_path,
                                   vcd_cycles=vcd_cycles)
        self.config = self.model.config
        #: Whether VECTOR instructions run (else they stop with UNSUPPORTED).
        self.vector_unit = self.model.vector
        self.waves = vcd_path

    @property
    def build_seconds(self) -> float:
        return self.model.build_seconds

    def read_memory(self, addr: int, size: int) -> bytes:
        if addr < 0 or addr + size > len(self.model.mem):
            raise ValueError(f"[{addr:#x}, {addr + size:#x}) is outside the memory")
        return bytes(self.model.mem[addr:addr + size])

    def write_memory(self, addr: int, raw: bytes) -> None:
        if addr < 0 or addr + len(raw) > len(self.model.mem):
            raise ValueError(f"[{addr:#x}, {addr + len(raw):#x}) is outside the memory")
        self.model.mem[addr:addr + len(raw)] = raw

    @property
    def error_detail(self) -> str:
        """The first AXI error of the memory, if there was one (also raised by advance)."""
        return self.model.last_error or ""

    def read_csr(self, name: str) -> int:
        return self.model.read_csr(name)

    def write_csr(self, name: str, value: int) -> None:
        self.model.write_csr(name, value)

    def advance(self, max_cycles: int | None, timeout_s: float | None) -> None:
        self.model.run(max_cycles, timeout_s, poll=self.poll)

    def advance_to_retired(self, count: int, max_cycles: int | None,
                           timeout_s: float | None) -> None:
        """Like :meth:`advance`, but also return once INSTRET reaches ``count`` (located to
        within the ``poll`` cycles of the CSR poll)."""
        self.model.run(max_cycles, timeout_s, poll=self.poll, until=("INSTRET", count))

    def close(self) -> None:
        """Finish the waveform file (if any) and stop the simulation."""
        self.model.close()


def amaranth_backend(compiled, im=None, *, waves=None, waves_cycles: int | None = None,
                     waves_skip: int = 0, **kwargs) -> AmaranthBackend:
    """Factory for ``driver.register_backend``: memory for the compiled image, the vector
    engine, the array and port width the program was compiled for. ``waves``: a ``.vcd``
    path for the waveform of the first ``waves_cycles`` cycles (all when None) from when the
    model is made (Amaranth's simulator writes VCD only, and only from its first cycle:
    ``waves_skip`` must be 0). Other keywords go to :class:`AmaranthBackend` (``latency``,
    ``stall``, ``poll``, ...)."""
    if waves is not None:
        if not str(waves).endswith(".vcd"):
            raise ValueError(f"the amaranth backend writes VCD waveforms only, not {waves}")
        if waves_skip:
            raise ValueError("the amaranth backend records waveforms from the first cycle "
                             "(waves_skip must be 0)")
        kwargs.update(vcd_path=waves, vcd_cycles=waves_cycles)
    return AmaranthBackend(compiled.config, compiled.end, **kwargs)
