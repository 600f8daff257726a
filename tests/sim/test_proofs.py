"""The registry of formal proofs and ``celosia prove``: every proof holds, every mutant fails
its proof, the harnesses' covers are reachable; the command's JSON, table and exit status."""

import json

import pytest
from amaranth.hdl import Fragment

from celosia.sim import proofs
from celosia.sim.formal import prove
from celosia.sw import cli

def _marked(proof, *values):
    """A parameter of ``proof`` (and ``values``), marked slow when the proof is."""
    return pytest.param(proof, *values, marks=pytest.mark.slow if proof.slow else ())


MUTANTS = [_marked(proof, mutant) for proof in proofs.PROOFS for mutant in proof.mutants]


def _name(proof):
    return proof.name


@pytest.mark.parametrize("proof", [_marked(p) for p in proofs.PROOFS], ids=_name)
def test_proof_holds(proof):
    outcome = proofs.check(proof)
    assert outcome.status == "PASS", outcome.log


@pytest.mark.parametrize("proof,mutant", MUTANTS,
                         ids=[f"{p.values[0].name}/{p.values[1].name}" for p in MUTANTS])
def test_mutant_fails_its_proof(proof, mutant):
    """A counterexample from reset (FAIL), not merely an induction that does not close."""
    outcome = proofs.check(proof, mutant)
    assert outcome.status == "FAIL", outcome.log


@pytest.mark.parametrize("proof", [_marked(p) for p in proofs.PROOFS if p.cover_depth],
                         ids=_name)
def test_harness_covers_are_reachable(proof):
    """The environment's assumptions do not make the properties vacuous."""
    result = prove(proof.design, proof.cover_depth, mode="cover")
    assert result.status == "PASS", result.log


def test_every_harness_has_mutants():
    """Each kind of harness in the registry is shown able to fail by at least one mutant."""
    def harness(proof):
        design = proof.design()
        Fragment.get(design, None)            # elaborated: not left unused
        return type(design)
    with_mutants = {harness(proof) for proof in proofs.PROOFS if proof.mutants}
    assert {harness(proof) for proof in proofs.PROOFS} == with_mutants
    names = [proof.name for proof in proofs.PROOFS]
    assert len(names) == len(set(names))


def _prove(capsys, *argv):
    code = cli.main(["prove", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_prove_json_on_a_fast_subset(capsys):
    code, out, _ = _prove(capsys, "--json", "--only", "csr", "--only", "credit_counter",
                          "--mutants")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    # Registry order, each proof followed by its mutants.
    assert [(r["proof"], r["mutant"], r["expected"], r["status"])
            for r in report["results"]] == [
        ("credit_counter", None, "PASS", "PASS"),
        ("credit_counter", "late_ok", "FAIL", "FAIL"),
        ("csr", None, "PASS", "PASS"),
        ("csr", "ignoring_strobes", "FAIL", "FAIL"),
        ("csr", "swapped_window", "FAIL", "FAIL"),
    ]
    for r in report["results"]:
        assert r["ok"] and r["seconds"] > 0 and r["mode"] == "prove" and r["depth"] == 4
        assert r["claim"]


def test_prove_fails_when_a_proof_does_not_hold(capsys, monkeypatch):
    """A registered proof whose design is a mutant: the table marks it, the exit status is 1."""
    credit = next(proof for proof in proofs.PROOFS if proof.name == "credit_counter")
    broken = proofs.Proof("broken_credit", "a counter that grants late", credit.mutants[0].design,
                          credit.depth)
    monkeypatch.setattr(proofs, "PROOFS", (credit, broken))
    code, out, _ = _prove(capsys)
    lines = out.splitlines()
    assert code == proofs.EXIT_FAILED
    assert lines[0].split() == ["proof", "mode", "depth", "want", "result", "seconds"]
    assert lines[1].split()[:5] == ["credit_counter", "prove", "4", "PASS", "PASS"]
    assert lines[2].split()[:5] == ["broken_credit", "prove", "4", "PASS", "FAIL"]
    assert "not the verdict wanted" in lines[2] and lines[3].startswith("FAILED")


def test_prove_unknown_name_is_one_line(capsys):
    code, out, err = _prove(capsys, "--only", "nosuch")
    assert code == 1 and out == ""
    assert err.startswith("celosia: error: no proof named nosuch") and "axi_master" in err
    assert len(err.strip().splitlines()) == 1
