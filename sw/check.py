"""``celosia check``: random and mutated programs on a backend, judged against the ``isa`` simulator.

A fuzzer for the simulated accelerators and a smoke test for a board (``--backend serial
--port ...``). Program ``S + i`` of a campaign is made from that seed alone
(:mod:`celosia.sw.fuzz`): valid matmul chains, random instruction streams (illegal opcodes,
addresses in and around the window, zero and huge shapes, short strides, hazards) and valid
chains with mutations, each in a window with a random pattern around it and, on the simulated
RTL, under a random memory read latency and stall chance. The backend's CSRs and window must
equal what the ``isa`` simulator leaves, and the memory around the window must not change.

The report counts the programs run, bit-exact, stopped with the expected error code, with an
ordering hazard (their memory is undefined: only the window and the stop are checked), hangs,
writes outside the window and mismatches; ``--save-failures DIR`` writes each failing program
as a program image file that ``--replay FILE`` runs again. ``--workers W`` runs W processes,
each with its own backend (the Verilated model is built once, before they start); with
``--ray ADDRESS`` they are W Ray actors on a Ray cluster (``auto``: the cluster this machine
belongs to, or a local one started for the campaign), each building its backend on its node.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from celosia.hdl.isa import MachineConfig

from .errors import CelosiaError, seconds
from .fuzz import (FAILURES, KINDS, VERDICTS, judge, make_case, memory_layout,
                   probe_vector_unit, run_case)
from .progress import ProgressBar

__all__ = ["add_arguments", "add_serial_arguments", "run", "check_backend", "BACKENDS"]

BACKENDS = ("isa", "amaranth", "verilator", "serial")
#: Table rows of the report: verdict -> its line.
VERDICT_LINES = {"bit_exact": "bit-exact", "expected_error": "expected error codes",
                 "hazard": "hazards (memory undefined; window and stop checked)",
                 "hang": "hangs", "outside_window": "writes outside the window",
                 "mismatch": "mismatches vs the isa simulator"}


def _open(args, config: MachineConfig | None = None):
    """(backend, memory bytes it has); ``config`` overrides --array (a replayed program's)."""
    if args.backend == "serial":
        from .serial_backend import serial_backend
        b = serial_backend(None, None, port=args.port, baud=args.baud)
        return b, b.mem_bytes
    mem = args.mem_kib * 1024
    config = config or MachineConfig(args.array)
    if args.backend == "isa":
        from .isa_sim import IsaBackend
        return IsaBackend(config, mem), mem
    if args.backend == "verilator":
        from celosia.sim.verilator_accel import VerilatorBackend
        return VerilatorBackend(config, mem), mem
    from celosia.sim.amaranth_accel import AmaranthBackend
    return AmaranthBackend(config, mem), mem


class Campaign:
    """A backend and what the programs made for it need: its machine (read from its CSRs),
    memory, whether it has a vector unit and a memory model."""

    def __init__(self, backend, mem_bytes: int, kinds=KINDS, timeout_s: float = 600.0):
        from .driver import Accelerator
        self.backend, self.mem_bytes, self.kinds, self.timeout_s = backend, mem_bytes, kinds, timeout_s
        self.config = Accelerator(backend).config          # checks the ID and ISA version
        memory_layout(mem_bytes)                           # enough memory for the window
        self.vector_unit = getattr(backend, "vector_unit", None)
        if self.vector_unit is None:
            self.vector_unit = probe_vector_unit(backend, mem_bytes, timeout_s)
        self.memory_model = hasattr(backend, "memory_model")

    def case(self, seed: int):
        return make_case(seed, self.config, self.mem_bytes, vector_unit=self.vector_unit,
                         memory_model=self.memory_model, kinds=self.kinds)

    def check(self, case) -> dict:
        """Run ``case``, judge it; wall seconds and link traffic added."""
        stats0 = dict(getattr(self.backend, "stats", None) or {})
        t0 = time.perf_counter()
        try:
            result = judge(case, run_case(self.backend, case, self.timeout_s))
        except (RuntimeError, ValueError) as exc:      # e.g. an access past a model's memory
            img = case.image
            result = {"kind": img.notes.get("kind"), "seed": img.notes.get("seed"),
                      "verdict": "mismatch", "detail": f"backend error: {exc}"}
        result["wall_s"] = round(time.perf_counter() - t0, 4)
        stats = getattr(self.backend, "stats", None)
        if stats:
            result["link_bytes"] = sum(stats.get(k, 0) - stats0.get(k, 0)
                                       for k in ("bytes_out", "bytes_in"))
            result["link_retries"] = stats.get("retries", 0) - stats0.get("retries", 0)
        return result


def check_backend(backend, mem_bytes: int, programs: int = 3, seed: int = 1,
                  timeout_s: float = 600.0, progress=None, kinds=KINDS) -> list[dict]:
    """Run programs ``seed .. seed + programs - 1`` on ``backend``; one result dict each."""
    campaign = Campaign(backend, mem_bytes, kinds, timeout_s)
    results = []
    for s in range(seed, seed + programs):
        results.append(campaign.check(campaign.case(s)))
        if progress is not None:
            progress(results[-1])
    return results


# --- workers ------------------------------------------------------------------------------------

_worker: Campaign | None = None


def _worker_start(args_dict: dict, kinds) -> None:
    import argparse
    import atexit
    global _worker
    args = argparse.Namespace(**args_dict)
    backend, mem = _open(args)
    _worker = Campaign(backend, mem, kinds, args.timeout)
    if hasattr(backend, "close"):
        atexit.register(backend.close)


def _worker_check(seed: int) -> dict:
    return _worker.check(_worker.case(seed))


def _run_parallel(args, kinds, seeds, on_result) -> None:
    """Run ``seeds`` in ``args.workers`` processes, each with its own backend."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    spec = {k: v for k, v in vars(args).items() if k != "func"}
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_start, initargs=(spec, kinds)) as pool:
        futures = [pool.submit(_worker_check, s) for s in seeds]
        try:
            for f in as_completed(futures):
                on_result(f.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise


class _RayWorker:
    """A Ray actor with its own backend (made as a worker process makes one)."""

    def __init__(self, args_dict: dict, kinds):
        _worker_start(args_dict, kinds)

    def check(self, seed: int) -> dict:
        return _worker_check(seed)


#: Programs queued per Ray actor (one running, one waiting), so none idles between results.
RAY_QUEUE = 2


def _reachable(address: str, timeout: float = 5.0) -> None:
    """A one-line error unless ``address`` (host:port or ray://host:port) answers a TCP
    connection: Ray itself retries a dead address for minutes."""
    import socket
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise CelosiaError(f"--ray {address}: expected 'auto', host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise CelosiaError(f"--ray {address}: no Ray cluster answers there ({exc})") from None


def _ray_init(address: str) -> tuple[object, bool]:
    """The ``ray`` module, connected; and whether this process started the cluster.
    ``auto``: the cluster this machine belongs to, else a local one."""
    import os
    try:
        import ray
    except ImportError:
        raise CelosiaError("--ray needs the ray extra: pip install 'celosia[ray]'") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address != "auto":
        _reachable(address)
        try:
            ray.init(address=address, **options)
        except (ConnectionError, ValueError, RuntimeError, SystemExit) as exc:
            raise CelosiaError(f"--ray {address}: {exc}") from None
        return ray, False
    try:
        ray.init(address="auto", **options)
        return ray, False
    except (ConnectionError, ValueError, RuntimeError):
        # Up to 128 MB of shared memory: the programs' results are small dicts.
        ray.init(object_store_memory=128 << 20, **options)
        return ray, True


def _run_ray(args, kinds, seeds, on_result) -> dict:
    """Run ``seeds`` on ``args.workers`` Ray actors; returns what the report says of Ray."""
    ray, started = _ray_init(args.ray)
    spec = {k: v for k, v in vars(args).items() if k != "func"}
    try:
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        actor = ray.remote(num_cpus=1)(_RayWorker)
        actors = [actor.remote(spec, kinds) for _ in range(args.workers)]
        todo = iter(seeds)
        pending = {}
        for a in actors:
            for _ in range(RAY_QUEUE):
                s = next(todo, None)
                if s is not None:
                    pending[a.check.remote(s)] = a
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                a = pending.pop(ref)
                on_result(ray.get(ref))
                s = next(todo, None)
                if s is not None:
                    pending[a.check.remote(s)] = a
        for a in actors:
            ray.kill(a)
    finally:
        ray.shutdown()
    return {"address": args.ray, "started_locally": started, "nodes": nodes,
            "actors": args.workers}


# --- the command --------------------------------------------------------------------------------

def add_serial_arguments(p) -> None:
    """--port and --baud of the serial backend (``embed`` and ``check``)."""
    p.add_argument("--port", metavar="PORT", default=None,
                   help="serial backend: the board's serial port or a pyserial URL "
                        "(/dev/ttyUSB0, socket://127.0.0.1:PORT; default $CELOSIA_SERIAL_PORT)")
    p.add_argument("--baud", type=int, default=None, metavar="B",
                   help="serial backend: baud rate (default $CELOSIA_SERIAL_BAUD or 115200)")


def _kinds(text: str) -> tuple[str, ...]:
    import argparse
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"expected kinds from {','.join(KINDS)}, not {text!r}")
    return kinds


def add_arguments(p) -> None:
    p.add_argument("--backend", default="serial", choices=BACKENDS,
                   help="where to run (default: serial, a board on --port)")
    add_serial_arguments(p)
    p.add_argument("--array", type=int, default=4, metavar="N",
                   help="array size of a simulated backend (default 4; a board reports its own)")
    p.add_argument("--mem-kib", type=int, default=64, metavar="K",
                   help="memory of a simulated backend in KiB (default 64)")
    p.add_argument("--programs", type=int, default=3, metavar="P",
                   help="programs to run (default 3)")
    p.add_argument("--seed", type=int, default=1, metavar="S",
                   help="seed of the first program; program i has seed S + i (default 1)")
    p.add_argument("--kinds", type=_kinds, default=KINDS, metavar="K,K",
                   help="kinds of program, made in turn: chain (valid matmul chains), random "
                        "(random instruction streams), mutated (valid chains with mutations) "
                        f"(default {','.join(KINDS)})")
    p.add_argument("--workers", type=int, default=1, metavar="W",
                   help="processes running programs, each with its own simulated backend "
                        "(default 1; a board takes 1)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run the --workers on a Ray cluster (the ray extra) as actors, each "
                        "building its own backend on its node: 'auto' joins the cluster this "
                        "machine belongs to or starts a local one; an address (host:6379, "
                        "ray://host:10001) joins that cluster")
    p.add_argument("--save-failures", metavar="DIR", default=None,
                   help="write each failing program (hang, write outside the window, mismatch) "
                        "to DIR as a program image file for --replay")
    p.add_argument("--replay", metavar="FILE", nargs="+", default=None,
                   help="run these saved program images instead of new programs (on a "
                        "simulated backend of the machine they were made for)")
    p.add_argument("--timeout", type=seconds, default=600.0, metavar="S",
                   help="give up on a program after S seconds (default 600)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (counts, failures, programs/s)")


def _backend_call(args, what, *a, **k):
    """``what(*a, **k)``, a backend's own errors as one line."""
    try:
        return what(*a, **k)
    except (ValueError, OSError, RuntimeError) as exc:
        raise CelosiaError(f"backend {args.backend}: {exc}") from None


def _save_dir(path) -> Path:
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CelosiaError(f"--save-failures {path}: {exc.strerror or exc}") from None
    return folder


def _replay(args) -> int:
    from .program_file import load_program
    cases = [load_program(path) for path in args.replay]     # every file checked first
    failed = 0
    for path, case in zip(args.replay, cases):
        backend, mem = _backend_call(args, _open, args, case.image.config)
        try:
            if len(case.image.mem) > mem:
                raise CelosiaError(f"{path}: its {len(case.image.mem)}-byte memory does not fit "
                                   f"the backend's {mem} bytes (--mem-kib)")
            from .driver import Accelerator
            config = _backend_call(args, lambda: Accelerator(backend).config)
            if config != case.image.config:
                raise CelosiaError(f"{path} was made for {case.image.config}, the backend "
                                   f"is {config}")
            t0 = time.perf_counter()
            out = _backend_call(args, run_case, backend, case, args.timeout)
            result = judge(case, out)
        finally:
            if hasattr(backend, "close"):
                backend.close()
        result.update(file=str(path), wall_s=round(time.perf_counter() - t0, 4))
        failed += result["verdict"] in FAILURES
        if args.json:
            json.dump(result, sys.stdout)
            sys.stdout.write("\n")
        else:
            print(f"{path}: {result['verdict']}" + (f" ({result['detail']})"
                                                   if "detail" in result else ""))
    return 3 if failed else 0


def run(args) -> int:
    if args.replay:
        return _replay(args)
    if args.programs < 1:
        raise CelosiaError(f"--programs must be 1 or more, not {args.programs}")
    if args.workers < 1:
        raise CelosiaError(f"--workers must be 1 or more, not {args.workers}")
    if args.workers > 1 and args.backend == "serial":
        raise CelosiaError("--workers: a board runs one program at a time (use --workers 1)")
    if args.ray is not None and args.backend == "serial":
        raise CelosiaError("--ray: a board is reached from this machine only (run --ray with a "
                           "simulated backend)")
    save = _save_dir(args.save_failures) if args.save_failures else None
    backend, mem = _backend_call(args, _open, args)     # with workers: builds the model once
    try:
        campaign = _backend_call(args, Campaign, backend, mem, args.kinds, args.timeout)
    except CelosiaError:
        if hasattr(backend, "close"):
            backend.close()
        raise
    counts, errors, kinds = Counter(), Counter(), Counter()
    failures, saved, link = [], [], Counter()
    bar = ProgressBar(args.programs, "programs", enabled=None if not args.json else False)
    t0 = time.perf_counter()

    def on_result(r: dict) -> None:
        counts[r["verdict"]] += 1
        kinds[r["kind"]] += 1
        link["cycles"] += r.get("cycles", 0)
        if "error" in r:
            errors[r["error"]] += 1
        for k in ("link_bytes", "link_retries"):
            if k in r:
                link[k] += r[k]
        if r["verdict"] in FAILURES:
            failures.append(r)
            if save is not None:
                from .program_file import save_program
                case = campaign.case(r["seed"])
                case.image.notes.update(verdict=r["verdict"], detail=r.get("detail", ""),
                                        backend=args.backend)
                path = save / f"{args.backend}-seed{r['seed']}-{r['verdict']}.safetensors"
                save_program(path, case)
                saved.append(str(path))
            if not args.json:
                bar.close()
                print(f"program {r['seed']} ({r['kind']}): {r['verdict']}: {r.get('detail', '')}",
                      flush=True)
        bar.update(sum(counts.values()))

    seeds = range(args.seed, args.seed + args.programs)
    ray_report = None
    try:
        if args.ray is not None:
            if hasattr(backend, "close"):
                backend.close()
            ray_report = _run_ray(args, args.kinds, seeds, on_result)
        elif args.workers == 1:
            for s in seeds:
                on_result(_backend_call(args, campaign.check, campaign.case(s)))
        else:
            if hasattr(backend, "close"):
                backend.close()
            _run_parallel(args, args.kinds, seeds, on_result)
    finally:
        bar.close()
        if hasattr(backend, "close"):
            backend.close()
    wall = time.perf_counter() - t0
    ok = not failures
    report = {"backend": args.backend, "ok": ok, "programs": sum(counts.values()),
              "seed": args.seed, "workers": args.workers, "kinds": dict(kinds),
              "array": campaign.config.array, "vector_unit": campaign.vector_unit,
              "random_memory_timing": campaign.memory_model,
              "counts": {v: counts[v] for v in VERDICTS}, "errors": dict(errors),
              "wall_s": round(wall, 2), "programs_per_s": round(sum(counts.values()) / wall, 2),
              "failures": failures, "saved": saved, **dict(link)}
    if ray_report is not None:
        report["ray"] = ray_report
    if args.json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"{'programs run':<52} {report['programs']:>8}")
        for v in VERDICTS:
            print(f"{VERDICT_LINES[v]:<52} {counts[v]:>8}")
        print(f"{'programs/s':<52} {report['programs_per_s']:>8}")
        print(f"{'cycles (all programs)':<52} {report['cycles']:>8}")
        print("error codes: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
        if saved:
            print(f"failing programs saved in {save} (celosia check --replay FILE)")
        print("all programs agree with the isa simulator" if ok else
              "FAILED: the backend differs from the isa simulator")
    return 0 if ok else 3
