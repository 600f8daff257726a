"""The SDRAM chip model (sim/verilator/sdram_chip.h): legal traffic reads back what it wrote,
and every protocol check fires on a minimal sequence that breaks it and on nothing else, while
the same sequence made legal passes.

The C++ driver (tests/sim/sdram_chip_driver.cpp) is compiled once with g++ and cached by the
hash of its sources."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from celosia.sim.verilator_build import HARNESS_DIR, cache_root, verilator_lock

DRIVER = Path(__file__).with_name("sdram_chip_driver.cpp")
CHIP = HARNESS_DIR / "sdram_chip.h"
CXXFLAGS = ("-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror")

#: Every check of the chip model; each must have a sequence in the driver.
CHECKS = ("init", "cke", "mode", "tCK", "tRCD", "tRP", "tRAS", "tRAS_max", "tRC", "tRRD",
          "tWR", "tMRD", "tRFC", "tREF", "tREFI", "bank_idle", "bank_open", "bank_busy",
          "contention", "write_data")
#: Checks about one bank, whose message names it.
BANK_CHECKS = {"tRCD", "tRP", "tRAS", "tRAS_max", "tRC", "tRRD", "tWR", "bank_idle",
               "bank_open", "bank_busy", "write_data"}

VIOLATION = re.compile(r"^VIOLATION (\S+) (.*)$", re.M)


@pytest.fixture(scope="module")
def driver() -> Path:
    sources = [DRIVER.read_text(), CHIP.read_text(), " ".join(CXXFLAGS)]
    key = hashlib.sha256("\0".join(sources).encode()).hexdigest()[:16]
    exe = cache_root() / f"sdram-chip-driver-{key}" / "sdram_chip_driver"
    if not exe.exists():
        with verilator_lock():
            if not exe.exists():
                tmp = exe.with_name(f"{exe.name}.tmp{os.getpid()}")
                tmp.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run(["nice", "-n", "10", "g++", *CXXFLAGS, f"-I{HARNESS_DIR}",
                                str(DRIVER), "-o", str(tmp)], check=True)
                shutil.move(tmp, exe)
    return exe


def run(driver, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(driver), *args], capture_output=True, text=True, timeout=120)


def test_every_check_has_a_sequence(driver):
    assert run(driver, "list").stdout.split() == sorted(CHECKS)


def test_legal_traffic_reads_back_without_violations(driver):
    proc = run(driver, "legal")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    # Every part, CL2 and CL3, each with all its reads compared.
    assert len(lines) == 7 and all(line.startswith("OK ") for line in lines), proc.stdout
    assert {"CL2", "CL3"} <= {w.rstrip(":") for line in lines for w in line.split()}
    assert not VIOLATION.search(proc.stdout)


@pytest.mark.parametrize("check", CHECKS)
def test_check_fires(driver, check):
    proc = run(driver, "check", check, "violate")
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stdout + proc.stderr
    found = VIOLATION.findall(proc.stdout)
    assert found, f"{check}: the violating sequence passed"
    assert {name for name, _ in found} == {check}, proc.stdout
    message = found[0][1]
    assert re.match(rf"{re.escape(check)} violated at edge \d+", message), message
    if check in BANK_CHECKS:
        assert re.search(r"\(bank \d", message), message


@pytest.mark.parametrize("check", CHECKS)
def test_check_silent_on_legal_twin(driver, check):
    proc = run(driver, "check", check, "fixed")
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stdout + proc.stderr
    assert not VIOLATION.search(proc.stdout), proc.stdout
