"""``celosia bench vector``: the record it prints (a cycle count, not a timed test)."""

import argparse
import json

from celosia.sim import bench_vector


def test_bench_vector_json(capsys):
    parser = argparse.ArgumentParser()
    bench_vector.add_arguments(parser)
    args = parser.parse_args(["--op", "softmax", "--rows", "3", "--cols", "16", "--lanes", "4",
                              "--backend", "amaranth", "--json"])
    assert bench_vector.run(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["correct"] is True
    assert record["elements"] == 48
    for key in ("cycles", "elements_per_cycle", "latency_cycles", "sustained_elements_per_cycle"):
        assert key in record
    assert record["latency_cycles"] < record["cycles"]


def test_bench_ops_are_the_runner_ops():
    from celosia.sim.vector_runner import OPS
    assert bench_vector.OPS == OPS
