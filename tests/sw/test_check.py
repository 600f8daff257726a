"""``celosia check``: campaigns of valid, random and mutated programs against the isa simulator,
in one process and in several; broken backends (a wrong byte, a wrong counter, a write outside
the window, a run that never stops) are reported as failures and saved; a saved program
replays."""

import json

import numpy as np
import pytest

from celosia.hdl.isa import MachineConfig
from celosia.sw import cli
from celosia.sw.check import check_backend
from celosia.sw.fuzz import FAILURES, KINDS, VERDICTS, make_case, memory_layout
from celosia.sw.isa_sim import IsaBackend
from celosia.sw.program_file import load_program

MEM = 1 << 16


def campaign(capsys, *argv) -> tuple[int, dict]:
    status = cli.main(["check", "--backend", "isa", "--json", *argv])
    return status, json.loads(capsys.readouterr().out)


def test_an_isa_campaign_reaches_every_outcome(capsys):
    status, out = campaign(capsys, "--programs", "60", "--seed", "1")
    assert status == 0 and out["ok"] is True and out["programs"] == 60
    assert out["kinds"] == {k: 20 for k in KINDS}
    c = out["counts"]
    assert sum(c.values()) == 60 and c["bit_exact"] > 0 and c["expected_error"] > 0
    assert c["hazard"] > 0 and not any(c[v] for v in FAILURES) and out["failures"] == []
    assert {"OK", "ILLEGAL_OPCODE", "BAD_ADDRESS"} <= set(out["errors"]), out["errors"]


def test_workers_run_the_same_programs(capsys):
    _, one = campaign(capsys, "--programs", "24", "--seed", "500")
    _, two = campaign(capsys, "--programs", "24", "--seed", "500", "--workers", "2")
    assert two["workers"] == 2 and two["counts"] == one["counts"] and two["errors"] == one["errors"]


def test_ray_runs_the_same_programs(capsys):
    """The campaign on two actors of a local Ray instance (started for it) gives the verdicts
    and error codes of one process."""
    pytest.importorskip("ray")
    _, one = campaign(capsys, "--programs", "24", "--seed", "700")
    status, ray = campaign(capsys, "--programs", "24", "--seed", "700", "--workers", "2",
                           "--ray", "auto")
    assert status == 0 and ray["counts"] == one["counts"] and ray["errors"] == one["errors"]
    assert ray["ray"]["actors"] == 2 and ray["ray"]["nodes"] >= 1


def test_ray_to_a_missing_cluster_is_one_line(capsys):
    pytest.importorskip("ray")
    status = cli.main(["check", "--backend", "isa", "--programs", "2", "--ray",
                       "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert status != 0 and "--ray 127.0.0.1:1" in err and "Traceback" not in err


def test_programs_are_made_from_their_seed_alone():
    cfg = MachineConfig(4)
    for seed in range(6):
        a, b = make_case(seed, cfg, MEM), make_case(seed, cfg, MEM)
        assert np.array_equal(a.image.mem, b.image.mem) and a.image.notes == b.image.notes
        base, size, image_bytes = memory_layout(MEM)
        assert (a.image.base, a.image.size, len(a.image.mem)) == (base, size, image_bytes)
    mutated = make_case(2, cfg, MEM)
    assert mutated.image.notes["kind"] == "mutated" and mutated.image.notes["mutations"]


# --- broken backends ------------------------------------------------------------------------------

class _OneBadByte(IsaBackend):
    """Reads back one byte of the window wrong."""

    def read_memory(self, addr, size):
        raw = bytearray(super().read_memory(addr, size))
        raw[0x900] ^= 0x10
        return bytes(raw)


class _CountsOneMore(IsaBackend):
    """Reports one instruction more than it retired."""

    def read_csr(self, name):
        return super().read_csr(name) + (name == "INSTRET")


class _WritesBelowTheWindow(IsaBackend):
    """Runs the program, then changes a byte of the guard below the window."""

    def advance(self, max_cycles, timeout_s):
        super().advance(max_cycles, timeout_s)
        self.machine.mem[0x10] ^= 0xFF


class _NeverStops(IsaBackend):
    """Never runs: the program stays busy until the host aborts it."""

    def advance(self, max_cycles, timeout_s):
        pass


@pytest.mark.parametrize("broken,verdict,detail", [
    (_OneBadByte, "mismatch", "window bytes differ"),
    (_CountsOneMore, "mismatch", "INSTRET"),
    (_WritesBelowTheWindow, "outside_window", "first at 0x10"),
    (_NeverStops, "hang", "still busy"),
])
def test_a_broken_backend_is_reported(broken, verdict, detail):
    results = check_backend(broken(MachineConfig(4), MEM), MEM, programs=6, seed=1)
    assert all(r["verdict"] in VERDICTS for r in results)
    failing = [r for r in results if r["verdict"] in FAILURES]
    assert failing and all(r["verdict"] == verdict and detail in r["detail"] for r in failing), \
        results


def _patch_backend(monkeypatch, cls):
    import celosia.sw.check as check
    monkeypatch.setattr(check, "_open", lambda args, config=None: (
        cls(config or MachineConfig(args.array), MEM), MEM))


def test_failures_are_saved_and_replay(capsys, monkeypatch, tmp_path):
    _patch_backend(monkeypatch, _OneBadByte)
    status, out = campaign(capsys, "--programs", "6", "--save-failures", str(tmp_path / "fail"))
    assert status == 3 and out["ok"] is False and out["counts"]["mismatch"] == len(out["saved"]) > 0
    path = out["saved"][0]
    case = load_program(path)
    seed = case.image.notes["seed"]
    assert case.image.notes["verdict"] == "mismatch"
    assert np.array_equal(case.image.mem, make_case(seed, MachineConfig(4), MEM,
                                                    vector_unit=True).image.mem)
    # The broken backend fails it again; the isa backend itself runs it clean.
    assert cli.main(["check", "--backend", "isa", "--replay", path]) == 3
    assert "mismatch" in capsys.readouterr().out
    monkeypatch.undo()
    assert cli.main(["check", "--backend", "isa", "--replay", path, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verdict"] in ("bit_exact", "expected_error", "hazard") and result["seed"] == seed


def test_the_text_report(capsys, monkeypatch):
    _patch_backend(monkeypatch, _CountsOneMore)
    assert cli.main(["check", "--backend", "isa", "--programs", "3"]) == 3
    out = capsys.readouterr().out
    assert "mismatches vs the isa simulator" in out and "FAILED" in out and "INSTRET" in out


# --- one-line errors ----------------------------------------------------------------------------

def _one_line_error(capsys, argv, words, status=1):
    assert cli.main(argv) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_no_port_is_one_line(capsys):
    _one_line_error(capsys, ["check", "--backend", "serial"], "needs a port")


def test_a_board_takes_one_worker(capsys):
    _one_line_error(capsys, ["check", "--backend", "serial", "--workers", "2"],
                    "a board runs one program at a time")


def test_a_hostile_replay_file_is_refused_before_the_backend_opens(capsys, tmp_path):
    """The serial backend without a port would fail to open: the file is refused first."""
    path = tmp_path / "p.safetensors"
    path.write_bytes((2 ** 62).to_bytes(8, "little") + b"{}")
    _one_line_error(capsys, ["check", "--backend", "serial", "--replay", str(path)],
                    "header length 4611686018427387904")


def test_bad_counts_are_refused(capsys):
    _one_line_error(capsys, ["check", "--backend", "isa", "--programs", "0"], "--programs")
    with pytest.raises(SystemExit) as info:         # argparse's own one-line usage error
        cli.main(["check", "--backend", "isa", "--kinds", "chain,nope"])
    assert info.value.code == 2 and "expected kinds from chain,random,mutated" in \
        capsys.readouterr().err


def test_no_module_the_cli_builds_on_imports_the_cli():
    """The CLI imports check (and the rest of sw/); none of them imports the CLI back, at module
    level or inside a function: shared pieces (CelosiaError, argument types) live in sw/errors."""
    import ast
    from pathlib import Path

    import celosia.sw
    folder = Path(celosia.sw.__file__).parent
    for source in sorted(folder.glob("*.py")):
        if source.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}"] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any(n.split(".")[-1] == "cli" or n.endswith("sw.cli") for n in names), \
                f"{source.name}:{node.lineno} imports the CLI"


@pytest.mark.parametrize("vector_unit", [False, True])
def test_a_backend_that_does_not_say_is_probed_for_its_vector_unit(vector_unit):
    """A board does not report whether it has the vector unit; mutated programs may hold
    VECTOR instructions, so the reference must know."""
    from celosia.sw.check import Campaign

    backend = IsaBackend(MachineConfig(4), MEM, vector_unit=vector_unit)
    del backend.vector_unit
    assert Campaign(backend, MEM).vector_unit is vector_unit
