"""``celosia check`` on the Verilated accelerator: a small campaign of valid, random and mutated
programs under random memory latency and stalls, in two worker processes (the model is built
once, before they start), agrees with the isa simulator."""

import json

from celosia.sw import cli


def test_a_verilator_campaign_in_two_workers(capsys):
    assert cli.main(["check", "--backend", "verilator", "--programs", "40", "--seed", "7000",
                     "--workers", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["programs"] == 40 and out["random_memory_timing"] is True
    c = out["counts"]
    assert c["bit_exact"] > 0 and c["expected_error"] > 0 and out["cycles"] > 1000
    assert c["hang"] == c["outside_window"] == c["mismatch"] == 0
