"""``celosia bench matmul``: one random matmul on the engine's RTL, checked against NumPy.

Prints one JSON object (``--json``) or a one-line summary. The roofline has two ideals: the
array doing N*N useful MACs every cycle (``ideal_compute_cycles``) and the memory port moving
every compulsory byte once at W bytes per cycle (``ideal_memory_cycles``: A, B, the column
parameters and the result, plus the addend when there is one); the efficiency is the larger
ideal over the measured cycles (command accepted to done, operands loaded and results stored).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time

import numpy as np

from celosia.hdl.params import DEFAULT_ARRAY, K_MAX, AddendMode, OutFormat, default_port_bytes

from .matmul_job import random_job

__all__ = ["add_arguments", "run", "bench"]

BACKENDS = ("verilator", "icarus", "amaranth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--array", type=int, default=DEFAULT_ARRAY, help="array size N")
    parser.add_argument("--m", type=int, default=128, help="rows of A and C")
    parser.add_argument("--k", type=int, default=384, help="columns of A, rows of B")
    parser.add_argument("--n", type=int, default=1536, help="columns of B and C")
    parser.add_argument("--port-bytes", type=int, default=None,
                        help="memory-port width W in bytes (default 2N)")
    parser.add_argument("--backend", choices=BACKENDS, default="verilator")
    parser.add_argument("--out", choices=["int8", "uint8", "int16", "int32", "raw"],
                        default="int8", help="result format (raw: int32 without requantising)")
    parser.add_argument("--a-unsigned", action="store_true", help="A holds uint8 values")
    parser.add_argument("--addend", choices=["none", "acc32", "residual16"], default="none")
    parser.add_argument("--row-shift", action="store_true",
                        help="per-row exponents of A (row_shift, M bytes at e_addr)")
    parser.add_argument("--b-transposed", action="store_true",
                        help="B stored N x K (as K_h for Q @ K^T)")
    parser.add_argument("--latency", type=int, default=16, help="memory read latency in cycles")
    parser.add_argument("--stall", type=float, default=0.0,
                        help="chance per cycle of a stall on each memory channel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _job(args):
    rng = np.random.default_rng(args.seed)
    out = {"int8": OutFormat.INT8, "uint8": OutFormat.UINT8, "int16": OutFormat.INT16,
           "int32": OutFormat.INT32, "raw": None}[args.out]
    mode = {"none": AddendMode.NONE, "acc32": AddendMode.ACC32,
            "residual16": AddendMode.RESIDUAL16}[args.addend]
    return random_job(rng, args.m, args.k, args.n, a_unsigned=args.a_unsigned,
                      requant=out is not None, out_fmt=out, bias=True, addend_mode=mode,
                      row_shift=getattr(args, "row_shift", False),
                      b_transposed=getattr(args, "b_transposed", False))


def _run_verilator(args, job, w):
    from .verilator_engine import VerilatorEngine

    img = job.image(w, seed=args.seed + 1)
    eng = VerilatorEngine(args.array, w, mem_bytes=max(img.size, 1 << 16))
    try:
        eng.load(img.data)
        eng.port_model(latency=args.latency, seed=args.seed + 7, req_stall=args.stall,
                       resp_gap=args.stall, wr_stall=args.stall)
        code, cycles, wall = eng.run_command(img.command())
        result = img.result(eng.mem)
        intact = img.untouched_outside_c(eng.mem[:img.size])
        counters = eng.counters()
        return dict(code=code, cycles=cycles, wall=wall, result=result, intact=intact,
                    beats=counters["reads"] + counters["writes"], build_s=eng.build_seconds)
    finally:
        eng.close()


def _run_amaranth(args, job, w):
    from celosia.hdl.engine import MatmulEngine

    from .pysim import MemoryModel, run, run_command

    img = job.image(w, seed=args.seed + 1)
    k_max = max(w, 1 << max(0, args.k - 1).bit_length())
    engine = MatmulEngine(args.array, w, k_max=min(K_MAX, k_max))
    mem = MemoryModel(engine.mem, img.data, w, rng=random.Random(args.seed + 7),
                      latency=args.latency, req_stall=args.stall, resp_gap=args.stall,
                      wr_stall=args.stall)
    out = {}

    async def main(ctx):
        out["code"], out["cycles"] = await run_command(ctx, engine, img.command(), timeout=1 << 40)

    started = time.perf_counter()
    run(engine, main, background=[mem], deadline_cycles=1 << 40)
    wall = time.perf_counter() - started
    return dict(code=out["code"], cycles=out["cycles"], wall=wall, result=img.result(img.data),
                intact=img.untouched_outside_c(img.data), beats=mem.reads + mem.writes,
                build_s=0.0)


def _run_icarus(args, job, w):
    from .cocotb_runner import run_engine_job

    img = job.image(w, seed=args.seed + 1)
    out = run_engine_job("icarus", args.array, w, img, latency=args.latency, stall=args.stall,
                         seed=args.seed + 7)
    data = out["memory"]
    return dict(code=out["code"], cycles=out["cycles"], wall=out["wall"],
                result=img.result(data), intact=img.untouched_outside_c(data),
                beats=out["beats"], build_s=out["build_s"])


def bench(args) -> dict:
    w = args.port_bytes or default_port_bytes(args.array)
    job = _job(args)
    runner = {"verilator": _run_verilator, "amaranth": _run_amaranth,
              "icarus": _run_icarus}[args.backend]
    r = runner(args, job, w)
    m, k, n = job.shape
    expect = job.golden()
    ideal_compute = math.ceil(m * k * n / (args.array * args.array))
    moved = job.compulsory_bytes()
    ideal_memory = math.ceil(moved / w)
    cycles = r["cycles"]
    return {
        "backend": args.backend,
        "array": args.array,
        "port_bytes": w,
        "m": m, "k": k, "n": n,
        "out": args.out,
        "row_shift": job.row_shift is not None,
        "b_transposed": job.b_transposed,
        "correct": bool(r["code"] == 0 and np.array_equal(r["result"], expect) and r["intact"]),
        "done_code": r["code"],
        "cycles": cycles,
        "ideal_compute_cycles": ideal_compute,
        "ideal_memory_cycles": ideal_memory,
        "roofline_efficiency": round(max(ideal_compute, ideal_memory) / cycles, 4),
        "bytes_moved": moved,
        "port_bytes_moved": r["beats"] * w,
        "memory_latency": args.latency,
        "stall": args.stall,
        "sim_cycles_per_s": round(cycles / r["wall"]) if r["wall"] > 0 else None,
        "wall_s": round(r["wall"], 3),
        "build_s": round(r["build_s"], 1),
    }


def run(args) -> int:
    try:
        result = bench(args)
    except (TypeError, ValueError) as exc:
        print(f"celosia bench matmul: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"matmul {result['m']}x{result['k']}x{result['n']} on {result['array']}x"
              f"{result['array']} ({result['backend']}, W={result['port_bytes']}): "
              f"{'correct' if result['correct'] else 'WRONG'}, {result['cycles']} cycles, "
              f"roofline efficiency {result['roofline_efficiency']:.3f} "
              f"(compute {result['ideal_compute_cycles']}, memory {result['ideal_memory_cycles']}), "
              f"{result['sim_cycles_per_s']} cycles/s")
    return 0 if result["correct"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="celosia bench matmul", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
