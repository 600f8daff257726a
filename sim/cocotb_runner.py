"""Build and run cocotb testbenches on Amaranth-generated Verilog, on Icarus or Verilator.

Builds go through ``cocotb_tools.runner`` into a cache folder keyed by a hash of the Verilog
and the simulator; Verilator builds hold the machine-wide build lock. Testbench parameters
travel in the ``CELOSIA_TB`` environment variable as JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .verilator_build import cache_root, verilator_env, verilator_lock

__all__ = ["SIMULATORS", "run_cocotb", "run_engine_job"]

SIMULATORS = ("icarus", "verilator")
#: Amaranth's Verilog has no timescale; cocotb's Clock needs one.
TIMESCALE = ("1ns", "1ps")
VERILATOR_BUILD_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-CASEINCOMPLETE",
                        "--x-assign", "fast", "--x-initial", "fast", "-O1"]


_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;$", re.M)


def icarus_fixup(verilog: str) -> str:
    """Make Yosys's combinational blocks settle at time 0 on Icarus.

    Yosys guards each ``always @*`` with a trigger register initialised in its declaration,
    which Icarus performs without an event, so a block whose inputs never change (a state
    register that stays 0 through reset) would keep X outputs. Toggling the trigger once, 1 ns
    in, runs every such block during reset."""
    return _TRIGGER.sub(lambda m: f"{m.group(1)}reg {m.group(2)} = 0;\n"
                                  f"{m.group(1)}initial #1 {m.group(2)} = 1;", verilog)


def _build(simulator: str, verilog: str, top: str):
    from cocotb_tools.runner import get_runner

    key = hashlib.sha256(f"{simulator}\0{top}\0{verilog}\0{VERILATOR_BUILD_ARGS}".encode()).hexdigest()[:20]
    build_dir = cache_root().parent / "cocotb" / f"{simulator}-{top}-{key}"
    runner = get_runner(simulator)
    marker = build_dir / "built"
    started = time.monotonic()
    if marker.exists():
        with verilator_lock() if simulator == "verilator" else contextlib.nullcontext():
            _run_build(runner, simulator, build_dir, top)
        return runner, build_dir, 0.0
    # Not built yet: build under the machine-wide lock, so that two test workers wanting the
    # same build do not write one directory at once (the second finds it built).
    with verilator_lock():
        if not marker.exists():
            build_dir.mkdir(parents=True, exist_ok=True)
            source = build_dir / f"{top}.v"
            source.write_text(icarus_fixup(verilog) if simulator == "icarus" else verilog)
        _run_build(runner, simulator, build_dir, top)
        marker.touch()
    return runner, build_dir, time.monotonic() - started


def _run_build(runner, simulator: str, build_dir: Path, top: str):
    """The runner's build of ``build_dir``'s source (with an unchanged source it only records
    its build products); Verilator's in its environment. The caller holds the build lock."""
    kwargs = dict(sources=[build_dir / f"{top}.v"], hdl_toplevel=top, build_dir=build_dir,
                  timescale=TIMESCALE, always=False, log_file=build_dir / "build.log")
    if simulator != "verilator":
        runner.build(**kwargs)
        return
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(verilator_env(old))
    try:
        runner.build(build_args=VERILATOR_BUILD_ARGS, **kwargs)
    finally:
        os.environ.clear()
        os.environ.update(old)


def run_cocotb(simulator: str, verilog: str, top: str, module: str, *,
               params: dict | None = None, testcase=None, seed: int = 1) -> float:
    """Run the cocotb tests of ``module`` on ``verilog``; raise AssertionError on a failure.

    Returns the seconds spent building (0 when cached)."""
    from cocotb_tools.runner import get_results

    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, not {simulator!r}")
    runner, build_dir, build_s = _build(simulator, verilog, top)
    test_dir = Path(tempfile.mkdtemp(prefix=f"celosia-{simulator}-"))
    env = {"CELOSIA_TB": json.dumps(params or {}), "COCOTB_RESOLVE_X": "ZEROS"}
    if simulator == "verilator":
        env.update({k: v for k, v in verilator_env().items() if k in ("PATH", "MAKEFLAGS")})
    try:
        results = runner.test(test_module=module, hdl_toplevel=top, build_dir=build_dir,
                              test_dir=test_dir, extra_env=env, testcase=testcase, seed=seed,
                              log_file=test_dir / "sim.log",
                              timescale=TIMESCALE if simulator == "icarus" else None)
        total, failed = get_results(results)
        if total == 0 or failed:
            log = ""
            for name in ("sim.log", "results.xml"):
                p = test_dir / name
                if p.exists():
                    log += p.read_text()[-3000:]
            raise AssertionError(f"{module} on {simulator}: {failed} of {total} tests failed\n{log}")
    finally:
        shutil.rmtree(test_dir, ignore_errors=True)
    return build_s


def run_engine_job(simulator: str, array: int, port_bytes: int, img, *, latency=2, stall=0.0,
                   seed=1, k_max=None) -> dict:
    """Run one prepared ``MemoryImage`` through the engine under cocotb.

    Returns the done code, cycles, wall seconds, port beats and the final memory."""
    import numpy as np

    from celosia.hdl.engine import verilog_text
    from celosia.hdl.params import K_MAX

    m, k, n = img.job.shape
    if k_max is None:
        k_max = min(K_MAX, max(port_bytes, 1 << max(0, k - 1).bit_length()))
    verilog = verilog_text(array, port_bytes, k_max=k_max, name="celosia_matmul")
    with tempfile.TemporaryDirectory(prefix="celosia-job-") as tmp:
        job_file = Path(tmp) / "job.npz"
        np.savez(job_file, memory=img.data)
        params = dict(job=str(job_file), command=hex(img.command()), port_bytes=port_bytes,
                      latency=latency, stall=stall, seed=seed)
        build_s = run_cocotb(simulator, verilog, "celosia_matmul", "celosia.sim.tb_engine",
                             params=params, testcase="run_job")
        out = np.load(Path(tmp) / "job.out.npz")
        return dict(code=int(out["code"]), cycles=int(out["cycles"]), wall=float(out["wall"]),
                    beats=int(out["beats"]), memory=out["memory"], build_s=build_s)
