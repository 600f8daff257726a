"""The CSR block over AXI4-Lite in Amaranth's simulator: the register map of hdl/isa.py,
read/write and write-only semantics, byte strobes, control pulses and the counters."""

from celosia.hdl import isa
from celosia.hdl.csr import CsrBlock
from celosia.hdl.isa import CSR
from celosia.sim.pysim import run
from celosia.sim.tb_accelerator import axil_read, axil_write


def test_registers_and_counters():
    dut = CsrBlock(8, 16)
    seen = {"start": 0, "abort": 0, "clear": 0}

    async def watch(ctx):
        async for _, _, s, a, c in ctx.tick().sample(dut.start, dut.abort, dut.clear):
            seen["start"] += s
            seen["abort"] += a
            seen["clear"] += c

    async def host(ctx):
        bus = dut.bus
        assert await axil_read(ctx, bus, CSR.ID.offset) == isa.ID_MAGIC
        cfg = await axil_read(ctx, bus, CSR.CONFIG.offset)
        assert CSR.CONFIG.get(cfg, "array") == 8 and CSR.CONFIG.get(cfg, "port_bytes") == 16
        assert CSR.CONFIG.get(cfg, "instr_bytes") == 64
        assert CSR.CONFIG.get(cfg, "isa_version") == isa.ISA_VERSION
        for name, value in (("PROG_ADDR", 0x1234_5600), ("WIN_BASE", 0x8000), ("WIN_SIZE", 0x1_0000)):
            await axil_write(ctx, bus, getattr(CSR, name).offset, value)
            assert await axil_read(ctx, bus, getattr(CSR, name).offset) == value
        assert ctx.get(dut.prog_addr) == 0x1234_5600
        # Byte strobes.
        await axil_write(ctx, bus, CSR.PROG_ADDR.offset, 0xAABBCCDD, strb=0b0101)
        assert await axil_read(ctx, bus, CSR.PROG_ADDR.offset) == 0x12BB56DD
        # Read-only registers ignore writes; CTRL reads 0; unmapped offsets read 0.
        await axil_write(ctx, bus, CSR.ID.offset, 0)
        assert await axil_read(ctx, bus, CSR.ID.offset) == isa.ID_MAGIC
        assert await axil_read(ctx, bus, CSR.CTRL.offset) == 0
        assert await axil_read(ctx, bus, 0xFC) == 0
        # start is ignored while running, abort while idle.
        await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(abort=1))
        await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(start=1, clear_counters=1))
        ctx.set(dut.running, 1)
        await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(start=1))
        await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(abort=1))
        # Counters: run 100 cycles with the matmul unit busy and 10 retirements.
        ctx.set(dut.mm_busy, 1)
        for i in range(100):
            ctx.set(dut.retire, i < 10)
            ctx.set(dut.retire_mm, i < 4)
            ctx.set(dut.stall, i % 2)
            ctx.set(dut.rd_beat, i % 3 == 0)
            ctx.set(dut.wr_beat, i < 7)
            await ctx.tick()
        ctx.set(dut.rd_beat, 0)
        ctx.set(dut.wr_beat, 0)
        ctx.set(dut.retire, 0)
        ctx.set(dut.retire_mm, 0)
        ctx.set(dut.stall, 0)
        ctx.set(dut.running, 0)
        ctx.set(dut.mm_busy, 0)
        ctx.set(dut.done, 1)
        ctx.set(dut.error_code, 0)
        status = await axil_read(ctx, bus, CSR.STATUS.offset)
        assert status == CSR.STATUS.make(done=1)
        cycles = await axil_read(ctx, bus, CSR.CYCLES_LO.offset)
        assert 100 < cycles < 200
        assert await axil_read(ctx, bus, CSR.CYCLES_HI.offset) == 0
        assert await axil_read(ctx, bus, CSR.INSTRET.offset) == 10
        assert await axil_read(ctx, bus, CSR.MATMUL_COUNT.offset) == 4
        assert await axil_read(ctx, bus, CSR.SYNC_STALL.offset) == 50
        assert 100 <= await axil_read(ctx, bus, CSR.MATMUL_BUSY.offset) < 200
        assert await axil_read(ctx, bus, CSR.MEM_READS.offset) == 34
        assert await axil_read(ctx, bus, CSR.MEM_WRITES.offset) == 7
        # A start restarts the cycle, busy and memory counters, not the event counters.
        await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(start=1))
        assert await axil_read(ctx, bus, CSR.SYNC_STALL.offset) == 0
        assert await axil_read(ctx, bus, CSR.MEM_READS.offset) == 0
        assert await axil_read(ctx, bus, CSR.MEM_WRITES.offset) == 0
        assert await axil_read(ctx, bus, CSR.INSTRET.offset) == 10
        await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(clear_counters=1))
        assert await axil_read(ctx, bus, CSR.INSTRET.offset) == 0
        ctx.set(dut.error, 1)
        ctx.set(dut.error_code, isa.ErrorCode.BAD_PARAM)
        ctx.set(dut.error_pc, 0x40)
        assert await axil_read(ctx, bus, CSR.ERROR.offset) == isa.ErrorCode.BAD_PARAM
        assert await axil_read(ctx, bus, CSR.ERROR_PC.offset) == 0x40

    run(dut, host, background=[watch], deadline_cycles=5000)
    assert seen == {"start": 2, "abort": 1, "clear": 2}


def test_narrow_event_counters_wrap_both_ways():
    """Board-sized counters (``counter_bits``): +1 on retire, -1 on unretire (retire first
    when both come in one cycle), wrapping at their own width in both directions."""
    dut = CsrBlock(2, 4, counter_bits=4, cycle_bits=36, perf_counters=False)

    async def host(ctx):
        bus = dut.bus

        async def pulse(**sigs):
            for name, v in sigs.items():
                ctx.set(getattr(dut, name), v)
            await ctx.tick()
            for name in sigs:
                ctx.set(getattr(dut, name), 0)

        async def counts():
            return [await axil_read(ctx, bus, getattr(CSR, n).offset)
                    for n in ("INSTRET", "MATMUL_COUNT", "VECTOR_COUNT")]

        # 0 - 1 wraps to 15 for each counter.
        await pulse(unretire_mm=1)
        await pulse(unretire_vec=1)
        assert await counts() == [14, 15, 15]
        # retire and unretire together: the retire counts.
        await pulse(retire=1, retire_mm=1, unretire_mm=1, retire_vec=1, unretire_vec=1)
        assert await counts() == [15, 0, 0]
        for _ in range(18):
            await pulse(retire=1, retire_vec=1)
        assert await counts() == [1, 0, 2]
        await pulse(unretire_vec=1)
        assert await counts() == [0, 0, 1]
        # The perf counters are not built: they read 0.
        ctx.set(dut.mm_busy, 1)
        ctx.set(dut.stall, 1)
        await ctx.tick().repeat(5)
        assert await axil_read(ctx, bus, CSR.MATMUL_BUSY.offset) == 0
        assert await axil_read(ctx, bus, CSR.SYNC_STALL.offset) == 0
        await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(clear_counters=1))
        assert await counts() == [0, 0, 0]

    run(dut, host, deadline_cycles=5000)
