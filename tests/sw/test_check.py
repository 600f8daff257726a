"""``celosia check``: random programs on a backend against the isa simulator (the board smoke
test), and that it notices a backend that gets one byte wrong."""

import json

from celosia.hdl.isa import MachineConfig
from celosia.sw import cli
from celosia.sw.check import check_backend
from celosia.sw.isa_sim import IsaBackend


def test_isa_backend_passes(capsys):
    assert cli.main(["check", "--backend", "isa", "--programs", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and len(out["results"]) == 4
    assert all(r["bit_exact_vs_isa"] and r["matmuls"] == 3 and r["cycles"] > 0
               for r in out["results"])


class _OneBadByte(IsaBackend):
    """Reads back one byte of the window wrong."""

    def read_memory(self, addr, size):
        raw = bytearray(super().read_memory(addr, size))
        raw[200] ^= 0x10
        return bytes(raw)


def test_a_wrong_byte_is_reported(capsys, monkeypatch):
    results = check_backend(_OneBadByte(MachineConfig(4), 1 << 16), 1 << 16, programs=1)
    assert results[0]["bit_exact_vs_isa"] is False and results[0]["first_difference"] == 200
    import celosia.sw.check as check
    monkeypatch.setattr(check, "_open", lambda args: (_OneBadByte(MachineConfig(4), 1 << 16),
                                                      1 << 16))
    assert cli.main(["check", "--backend", "isa", "--programs", "1"]) == 3
    assert "MISMATCH" in capsys.readouterr().out


def test_no_port_is_one_line(capsys):
    assert cli.main(["check", "--backend", "serial"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a port" in err[0]


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
