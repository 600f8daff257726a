"""The whole accelerator: CSR block, controller, matmul engine, optional vector engine, a
memory-port arbiter and the AXI4 master, behind two buses.

::

    s_axil (AXI4-Lite slave) ──▶ CsrBlock ──▶ Controller ──cmd/done──▶ MatmulEngine
                                                  │       ──cmd/done──▶ vector engine (optional)
                                                  │ fetch port          │ port          │ port
                                                  ▼                     ▼               ▼
                                              MemArbiter (round robin, in-order read routing)
                                                  ▼
                                              AxiMaster ──▶ m_axi (AXI4 master, W-byte data)
                                                  (or, with memory="native", the arbiter's
                                                   port itself as ``mem``, for on-chip RAM)

A unit plugs in with the matmul engine's shape: a ``cmd`` stream (the instruction body), a
``done`` stream (a code per command), a ``MemoryPortSignature`` port ``mem`` and ``busy``. The
vector engine's command is ``isa.vector_layout()`` and its done code an ``ErrorCode``.

Verilog export: :func:`verilog_text` / :func:`write_verilog`; the ports are ``clk``, ``rst``,
``s_axil__*`` and ``m_axi__*`` (cocotbext-axi: ``AxiLiteBus.from_prefix(dut, "s_axil_")``,
``AxiBus.from_prefix(dut, "m_axi_")``).
"""

from __future__ import annotations

import importlib

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4LiteSignature, AXI4Signature, AxiMaster, MemArbiter
from .controller import Controller
from .csr import CSR_ADDR_BITS, CsrBlock
from .engine import MatmulEngine, MemoryPortSignature
from .params import (ADDR_BITS, DEFAULT_ARRAY, FULL, K_MAX, MEM_TIMEOUT_CYCLES, Sizing,
                     check_config, default_port_bytes)

__all__ = ["Accelerator", "verilog_text", "write_verilog", "vector_engine_factory", "TOP_NAME"]

TOP_NAME = "celosia_accel"


def vector_engine_factory():
    """The vector engine's constructor ``(array, port_bytes) -> component``, or None when this
    tree has none yet (``celosia.hdl.vector_engine.VectorEngine`` or
    ``celosia.hdl.vector.VectorEngine``)."""
    for module in ("celosia.hdl.vector_engine", "celosia.hdl.vector"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, "VectorEngine"):
            return mod.VectorEngine
    return None


class Accelerator(wiring.Component):
    """Celosia with an ``array`` x ``array`` matmul engine and a ``port_bytes``-wide AXI4 port.

    Parameters
    ----------
    array, port_bytes, k_max : the matmul engine's configuration (port_bytes default 2N).
    vector : bool or callable
        False: no vector unit (VECTOR stops with ``ErrorCode.UNSUPPORTED``). True: the tree's
        vector engine (:func:`vector_engine_factory`; an error if there is none). A callable:
        ``vector(array, port_bytes)`` builds the engine.
    sizing : params.Sizing
        How large the parts that do not change results are built (default ``FULL``; ``SMALL``
        for a small FPGA). ``outstanding`` overrides ``sizing.outstanding``.
    memory : "axi" or "native"
        The memory interface: ``m_axi``, an AXI4 master (default), or ``mem``, the units'
        own :class:`celosia.hdl.engine.MemoryPortSignature` (reads answered in order, a write
        complete once accepted: for on-chip memory, without the AXI master's registers).
        Only the AXI build checks responses (SLVERR/DECERR stop the run with
        ``MEM_READ_ERROR``/``MEM_WRITE_ERROR``) and runs the memory watchdog (``MEM_TIMEOUT``
        after ``mem_timeout`` quiet cycles; docs/reliability.md, "Memory faults").
    mem_timeout : int
        The watchdog's bound in cycles (default ``params.MEM_TIMEOUT_CYCLES``).
    """

    def __init__(self, array: int = DEFAULT_ARRAY, port_bytes: int | None = None, *,
                 vector=False, k_max: int = K_MAX, outstanding: int | None = None,
                 sizing: Sizing = FULL, memory: str = "axi",
                 mem_timeout: int = MEM_TIMEOUT_CYCLES):
        if port_bytes is None:
            port_bytes = default_port_bytes(array)
        check_config(array, port_bytes, k_max)
        if vector is True:
            factory = vector_engine_factory()
            if factory is None:
                raise ValueError("this tree has no VectorEngine; build with vector=False")
            vector = factory
        self.array, self.port_bytes, self.k_max = array, port_bytes, k_max
        self.sizing = sizing
        self.outstanding = sizing.outstanding if outstanding is None else outstanding
        self.vector_factory = vector or None
        if memory not in ("axi", "native"):
            raise ValueError(f"memory must be 'axi' or 'native', not {memory!r}")
        self.memory = memory
        if not 1 <= mem_timeout < (1 << 24):
            raise ValueError(f"mem_timeout must be in 1..2**24-1, not {mem_timeout}")
        self.mem_timeout = mem_timeout
        super().__init__({
            "s_axil": In(AXI4LiteSignature(CSR_ADDR_BITS, 32)),
            **({"m_axi": Out(AXI4Signature(ADDR_BITS, 8 * port_bytes))} if memory == "axi"
               else {"mem": Out(MemoryPortSignature(port_bytes))}),
        })

    @property
    def has_vector(self) -> bool:
        return self.vector_factory is not None

    def elaborate(self, platform):
        m = Module()
        W = self.port_bytes
        sz = self.sizing
        m.submodules.csr = csr = CsrBlock(self.array, W, counter_bits=sz.counter_bits,
                                          cycle_bits=sz.cycle_bits,
                                          perf_counters=sz.perf_counters)
        m.submodules.ctrl = ctrl = Controller(W, vector=self.has_vector, k_max=self.k_max,
                                              queue=sz.queue, addr_bits=sz.addr_bits,
                                              issue_slot=sz.issue_slot,
                                              serial_check=sz.serial_check,
                                              mem_faults=self.memory == "axi",
                                              mm_independence=sz.prefetch,
                                              **({"decoder_ops": True} if sz.decoder_ops else {}))
        m.submodules.matmul = mm = MatmulEngine(self.array, W, k_max=self.k_max,
                                                outstanding=self.outstanding,
                                                addr_bits=sz.addr_bits,
                                                epilogue_lanes=sz.epilogue_lanes,
                                                epilogue_registers=sz.epilogue_registers,
                                                serial_epilogue=sz.serial_epilogue,
                                                bram_pads=sz.bram_pads,
                                                hold_cmd=not sz.issue_slot,
                                                result_rows=sz.result_tiles * self.array,
                                                output_rows=sz.output_rows,
                                                port_stages=sz.port_stages,
                                                follow_b=sz.follow_b,
                                                prefetch=sz.prefetch)
        ports = [ctrl.mem, mm.mem]
        if self.has_vector:
            extra = {} if sz.vector_finishers is None else {"finishers": sz.vector_finishers}
            if sz.decoder_ops:
                extra["decoder_ops"] = True
            m.submodules.vector = vec = self.vector_factory(sz.vector_lanes or self.array, W,
                                                            **extra)
            ports.append(vec.mem)
        reads = 2 * self.outstanding + 16
        m.submodules.arbiter = arb = MemArbiter(len(ports), W, outstanding=reads)
        wiring.connect(m, wiring.flipped(self.s_axil), csr.bus)
        for i, p in enumerate(ports):
            wiring.connect(m, p, arb.port(i))
        if self.memory == "axi":
            # Only the engines write: without the vector engine every write is the matmul
            # engine's (port 1) and the master needs no FIFO of write ports.
            m.submodules.axi = axi = AxiMaster(W, faults=True, timeout=self.mem_timeout,
                                               ports=len(ports), max_reads=reads,
                                               write_port=None if self.has_vector else 1)
            wiring.connect(m, arb.out, axi.port)
            wiring.connect(m, axi.axi, wiring.flipped(self.m_axi))
            writes_idle = axi.writes_idle
            m.d.comb += [axi.rd_port.eq(arb.rd_port), axi.wr_port.eq(arb.wr_port),
                         axi.clear.eq(ctrl.mem_clear),
                         ctrl.mem_fault.eq(axi.fault), ctrl.mem_fault_code.eq(axi.fault_code),
                         ctrl.mem_fault_port.eq(axi.fault_port), ctrl.mem_quiet.eq(axi.quiet)]
        else:
            wiring.connect(m, arb.out, wiring.flipped(self.mem))
            writes_idle = ~self.mem.wr.valid

        wiring.connect(m, ctrl.mm_cmd, mm.cmd)
        m.d.comb += mm.cmd_independent.eq(ctrl.mm_cmd_independent)
        wiring.connect(m, mm.done, ctrl.mm_done)
        if self.has_vector:
            wiring.connect(m, ctrl.vec_cmd, vec.cmd)
            m.d.comb += [ctrl.vec_done.valid.eq(vec.done.valid),
                         ctrl.vec_done.payload.eq(vec.done.payload),
                         vec.done.ready.eq(ctrl.vec_done.ready)]
        m.d.comb += [
            ctrl.writes_idle.eq(writes_idle),
            ctrl.start.eq(csr.start), ctrl.abort.eq(csr.abort),
            ctrl.prog_addr.eq(csr.prog_addr), ctrl.win_base.eq(csr.win_base),
            ctrl.win_size.eq(csr.win_size),
        ]
        for name in ("running", "done", "error", "error_code", "error_pc", "pc", "mm_busy",
                     "vec_busy", "stall", "retire", "retire_mm", "retire_vec", "unretire_mm",
                     "unretire_vec"):
            m.d.comb += getattr(csr, name).eq(getattr(ctrl, name))
        out = arb.out
        m.d.comb += [csr.rd_beat.eq(out.rd_resp.valid & out.rd_resp.ready),
                     csr.wr_beat.eq(out.wr.valid & out.wr.ready)]
        return m


def verilog_text(array: int = DEFAULT_ARRAY, port_bytes: int | None = None, *,
                 vector=False, k_max: int = K_MAX, name: str = TOP_NAME,
                 mem_timeout: int = MEM_TIMEOUT_CYCLES, sizing: Sizing = FULL,
                 wrap=None) -> str:
    """The accelerator's Verilog (Yosys through Amaranth); ``wrap(accelerator)``, when given,
    is the top written instead (a component with the accelerator's ports)."""
    from amaranth.back import verilog

    top = Accelerator(array, port_bytes, vector=vector, k_max=k_max, mem_timeout=mem_timeout,
                      sizing=sizing)
    return verilog.convert(top if wrap is None else wrap(top), name=name, emit_src=False)


def write_verilog(path, array: int = DEFAULT_ARRAY, port_bytes: int | None = None, **kwargs) -> str:
    """Write :func:`verilog_text` to ``path``; returns the text."""
    text = verilog_text(array, port_bytes, **kwargs)
    with open(path, "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Celosia accelerator Verilog")
    parser.add_argument("--array", type=int, default=DEFAULT_ARRAY)
    parser.add_argument("--port-bytes", type=int, default=None)
    parser.add_argument("--k-max", type=int, default=K_MAX)
    parser.add_argument("--vector", action="store_true")
    parser.add_argument("-o", "--output", default="-")
    args = parser.parse_args()
    text = verilog_text(args.array, args.port_bytes, vector=args.vector, k_max=args.k_max)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        open(args.output, "w").write(text)
