"""``celosia bench matmul`` prints one JSON object with the roofline fields."""

import argparse
import json

from celosia.sim import bench_matmul


def test_bench_json_fields(capsys):
    parser = argparse.ArgumentParser()
    bench_matmul.add_arguments(parser)
    args = parser.parse_args(["--array", "2", "--m", "3", "--k", "5", "--n", "7",
                              "--backend", "amaranth", "--latency", "2", "--json"])
    assert bench_matmul.run(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["correct"] is True
    assert result["ideal_compute_cycles"] == -(-3 * 5 * 7 // 4)
    assert result["ideal_memory_cycles"] == -(-(3 * 5 + 5 * 7 + 7 * 8 + 3 * 7) // 4)
    assert result["roofline_efficiency"] == round(
        max(result["ideal_compute_cycles"], result["ideal_memory_cycles"]) / result["cycles"], 4)
    for key in ("cycles", "sim_cycles_per_s"):
        assert result[key] > 0


def test_bench_summary_line(capsys):
    parser = argparse.ArgumentParser()
    bench_matmul.add_arguments(parser)
    args = parser.parse_args(["--array", "2", "--m", "2", "--k", "3", "--n", "2",
                              "--backend", "amaranth", "--out", "raw"])
    assert bench_matmul.run(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "correct" in out[0]


def test_bench_row_shift_transposed(capsys):
    parser = argparse.ArgumentParser()
    bench_matmul.add_arguments(parser)
    args = parser.parse_args(["--array", "2", "--m", "5", "--k", "6", "--n", "3",
                              "--backend", "amaranth", "--latency", "2", "--row-shift",
                              "--b-transposed", "--json"])
    assert bench_matmul.run(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["correct"] is True and result["row_shift"] and result["b_transposed"]
    assert result["ideal_memory_cycles"] == -(-(5 * 6 + 6 * 3 + 3 * 8 + 5 * 3 + 5) // 4)
