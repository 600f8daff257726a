"""``celosia bench vector``: throughput and latency of the vector unit, checked bit-exact.

One batch of ``--rows`` rows of ``--cols`` columns streams through the unit with the input always
valid and the output always ready (an array emitting a beat a cycle, a consumer that never
stalls). Reported, in cycles of the unit's clock:

* ``cycles``: first input beat accepted .. last output beat accepted;
* ``elements_per_cycle``: rows * cols / cycles (includes filling and draining the pipeline);
* ``sustained_elements_per_cycle``: after the first row is out, elements per cycle of the rest
  (the rate the unit keeps behind the array);
* ``latency_cycles``: first input beat accepted .. first output beat valid.

Not a timed test: numbers are cycle counts, and ``correct`` compares every output integer with
the golden model.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from celosia.hdl.vector import FINISHER_UNROLL

# The hardware and simulator modules are imported when a benchmark runs, so that building the
# command line (which lists this benchmark) stays cheap.
OPS = ("softmax", "layernorm", "gelu", "requant", "residual", "requant_rows", "gelu_rows")

__all__ = ["add_arguments", "run", "measure", "main"]

BACKENDS = ("verilator", "icarus", "amaranth")
_BUILD_ROOT = Path(os.environ.get("CELOSIA_BUILD", Path(__file__).resolve().parents[1] / "build"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--op", choices=OPS, default="softmax")
    parser.add_argument("--rows", type=int, default=16, help="rows per batch (command)")
    parser.add_argument("--batches", type=int, default=1,
                        help="batches back to back, e.g. attention heads (parameterised "
                             "operations reload their parameters, and so drain, between batches)")
    parser.add_argument("--cols", type=int, default=128)
    parser.add_argument("--lanes", type=int, default=8)
    parser.add_argument("--backend", choices=BACKENDS, default="verilator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unroll", type=int, default=FINISHER_UNROLL,
                        help="quotient bits per cycle of the finishers' divider")
    parser.add_argument("--finishers", type=int, default=None,
                        help="finishers (default: enough for rows of 128)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _summary(result, jobs, unit, rows, cols):
    beats_per_row = -(-cols // unit.lanes)
    rows = rows * len(jobs)
    elements = rows * cols
    out = {
        "correct": bool(result.correct(jobs)),
        "cycles": int(result.cycles),
        "elements": elements,
        "elements_per_cycle": round(elements / result.cycles, 3),
        "latency_cycles": int(result.latency),
    }
    if rows > 1:
        first_row_done = result.out_cycles[beats_per_row - 1]
        steady = result.out_cycles[-1] - first_row_done
        out["sustained_elements_per_cycle"] = round((rows - 1) * cols / max(1, steady), 3)
    else:
        out["sustained_elements_per_cycle"] = out["elements_per_cycle"]
    return out


def measure(op: str, rows: int, cols: int, lanes: int, backend: str, *, seed: int = 0,
            unroll: int = FINISHER_UNROLL, finishers: int | None = None, batches: int = 1) -> dict:
    """Run one batch and return the benchmark record."""
    import numpy as np

    from celosia.hdl.vector import VectorUnit
    from celosia.sim.vector_runner import (cocotb_runner, load_jobs, random_job, run_amaranth,
                                           save_jobs)

    unit = VectorUnit(lanes, unroll=unroll, finishers=finishers)
    rng = np.random.default_rng(seed)
    jobs = [random_job(op, rows, cols, rng) for _ in range(batches)]
    if backend == "amaranth":
        result = run_amaranth(jobs, unit)
    elif backend in ("icarus", "verilator"):
        build = _BUILD_ROOT / f"bench_vector_{backend}_n{lanes}_u{unroll}_f{unit.finishers}"
        runner = cocotb_runner(backend, unit, build)
        job_file, result_file = build / "jobs.pkl", build / "result.pkl"
        build.mkdir(parents=True, exist_ok=True)
        save_jobs(job_file, jobs)
        result_file.unlink(missing_ok=True)
        runner.test("celosia.sim.bench_vector", "vector_bench",
                    env={"VECTOR_JOBS": str(job_file), "VECTOR_RESULT": str(result_file),
                         "VECTOR_UNROLL": str(unroll), "VECTOR_FINISHERS": str(unit.finishers)},
                    log_file=build / "bench.log")
        if not result_file.exists():
            raise RuntimeError(f"{backend} run failed; see {build / 'bench.log'}")
        result = load_jobs(result_file)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    record = {"op": op, "rows": rows, "batches": batches, "cols": cols, "lanes": lanes,
              "backend": backend,
              "unroll": unroll, "finishers": unit.finishers}
    record.update(_summary(result, jobs, unit, rows, cols))
    return record


def run(args) -> int:
    record = measure(args.op, args.rows, args.cols, args.lanes, args.backend, seed=args.seed,
                     unroll=args.unroll, finishers=args.finishers, batches=args.batches)
    if args.json:
        print(json.dumps(record))
    else:
        print(f"vector {record['op']} {record['batches']}x{record['rows']}x{record['cols']} "
              f"N={record['lanes']} "
              f"[{record['backend']}]: correct={record['correct']} cycles={record['cycles']} "
              f"elements/cycle={record['elements_per_cycle']} "
              f"sustained={record['sustained_elements_per_cycle']} "
              f"latency={record['latency_cycles']}")
    return 0 if record["correct"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="celosia bench vector", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


# --- The cocotb side of the Icarus / Verilator backends -----------------------------------------

if "VECTOR_JOBS" in os.environ:      # only inside the simulator process started by measure()
    import cocotb

    from celosia.hdl.vector import VectorUnit
    from celosia.sim.vector_runner import drive_cocotb, load_jobs, save_jobs

    @cocotb.test()
    async def vector_bench(dut):
        finishers = int(os.environ["VECTOR_FINISHERS"])
        unit = VectorUnit(int(os.environ["VECTOR_LANES"]), max_cols=int(os.environ["VECTOR_MAX_COLS"]),
                          unroll=int(os.environ["VECTOR_UNROLL"]), finishers=finishers)
        jobs = load_jobs(os.environ["VECTOR_JOBS"])
        result = await drive_cocotb(dut, unit, jobs)
        save_jobs(os.environ["VECTOR_RESULT"], result)


if __name__ == "__main__":
    sys.exit(main())
