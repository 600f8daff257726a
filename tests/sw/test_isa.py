"""The instruction encoding, the CSR map and instruction footprints (hdl/isa.py)."""

import numpy as np
from amaranth.hdl import Shape
import pytest

from celosia.hdl import isa, params
from celosia.hdl.isa import CSR, INSTR_BITS, INSTR_BYTES, Instruction, Opcode, Span, Unit, VecOp


def _random_fields(rng, opcode):
    fmap = isa._Fields.get()[opcode]
    values = {}
    for name, (_, width, signed) in fmap.items():
        lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
        pick = rng.integers(0, 4)
        values[name] = int(lo if pick == 0 else hi if pick == 1 else rng.integers(lo, hi, endpoint=True))
    return values


def test_instruction_layout_is_fixed_size():
    layout = isa.instruction_layout()
    assert layout.size == INSTR_BITS == 8 * INSTR_BYTES
    assert layout["opcode"].offset == 0


def test_matmul_body_is_the_engine_command():
    # The controller hands the MATMUL body to the engine unchanged.
    assert isa.matmul_layout() == params.command_layout()
    names = set(isa._Fields.get()[Opcode.MATMUL])
    assert names == {name for name, _ in params.command_layout()}


def test_one_enum_of_vector_operations():
    """One enum of the ISA's vector operations; the unit's 3-bit command enum is made from its
    members below 8, by name and value; both fit their fields."""
    from celosia.hdl.vector import VectorOp, command_layout
    assert command_layout["op"].shape is VectorOp
    assert {(op.name, op.value) for op in VectorOp} == {(op.name, op.value)
                                                        for op in isa.UNIT_OPS}
    assert isa.UNIT_OPS | isa.DECODER_OPS == set(VecOp) and not isa.UNIT_OPS & isa.DECODER_OPS
    assert max(VecOp).bit_length() <= Shape.cast(VecOp).width == isa.vector_layout()["op"].shape.width
    assert max(VectorOp).bit_length() <= Shape.cast(VectorOp).width == 3
    assert isa.RTL_DECODER_OPS <= isa.DECODER_OPS and isa.RTL_ALWAYS_OPS <= isa.RTL_DECODER_OPS


@pytest.mark.parametrize("opcode", list(Opcode))
def test_round_trip(opcode):
    rng = np.random.default_rng(int(opcode))
    for _ in range(50):
        ins = Instruction.make(opcode, **_random_fields(rng, opcode))
        raw = ins.encode()
        assert len(raw) == INSTR_BYTES
        back = Instruction.decode(raw)
        assert back == ins
        assert back.encode() == raw


def test_encoding_matches_the_engine_packing():
    # Bit for bit the engine's pack_command, shifted past the opcode.
    f = dict(m=7, k=300, n=65535, a_addr=0xFFFFFFF0, c_stride=64, zero_point=-5, requant=1,
             use_params=1, out_fmt=2, row_shift=1, e_addr=0x1230, b_transposed=1)
    word = int.from_bytes(isa.matmul(**f).encode(), "little")
    body_offset = isa.instruction_layout()["body"].offset
    assert word & 0xFF == Opcode.MATMUL
    assert word >> body_offset == params.pack_command(**f)


def test_field_checks():
    with pytest.raises(ValueError):
        isa.matmul(m=1 << 16)
    with pytest.raises(ValueError):
        isa.vector(causal_offset=1 << 17)
    with pytest.raises(KeyError):
        isa.vector(nonsense=1)
    with pytest.raises(ValueError):
        Instruction.decode(b"\0" * 10)


def test_illegal_opcodes_decode():
    for op in (0, 5, 0x7F, 0xFF):
        raw = bytes([op]) + bytes(range(1, INSTR_BYTES))
        ins = Instruction.decode(raw)
        assert ins.opcode == op and ins.fields == {}
        assert "illegal" in str(ins)


def test_reserved_bits_are_ignored():
    ins = isa.sync(Unit.VECTOR)
    raw = bytearray(ins.encode())
    raw[-1] = 0xFF
    assert Instruction.decode(bytes(raw)) == ins


def test_listing_text():
    assert str(isa.vector(op=VecOp.LAYERNORM, rows=2)) == "VECTOR.LAYERNORM rows=2"
    assert str(isa.halt()) == "HALT "


def test_footprints():
    mm = isa.matmul(m=4, k=8, n=16, a_addr=0x100, a_stride=32, b_addr=0x400, b_stride=64,
                    c_addr=0x800, c_stride=128, requant=1, use_params=1, out_fmt=2, p_addr=0x1000,
                    row_shift=1, e_addr=0x2000, addend=2, d_addr=0x3000, d_stride=64)
    reads, writes = isa.footprint(mm)
    spans = {name: s for name, s, _, _ in reads + writes}
    assert spans["a"] == Span(0x100, 0x100 + 3 * 32 + 8)
    assert spans["b"] == Span(0x400, 0x400 + 7 * 64 + 16)
    assert spans["p"] == Span(0x1000, 0x1000 + 16 * params.PARAM_RECORD_BYTES)
    assert spans["e"] == Span(0x2000, 0x2004)
    assert spans["d"] == Span(0x3000, 0x3000 + 3 * 64 + 16 * 2)
    assert spans["c"] == Span(0x800, 0x800 + 3 * 128 + 16 * 2)       # int16 out
    bt = isa.matmul(m=4, k=8, n=16, b_addr=0x400, b_stride=64, b_transposed=1)
    assert {n: s for n, s, _, _ in isa.footprint(bt)[0]}["b"] == Span(0x400, 0x400 + 15 * 64 + 8)
    raw = isa.matmul(m=4, k=8, n=16, c_addr=0x800, c_stride=64, out_fmt=0)
    assert isa.footprint(raw)[1][0][1] == Span(0x800, 0x800 + 3 * 64 + 16 * 4)   # raw: int32
    v = isa.vector(op=VecOp.LAYERNORM, rows=3, cols=5, src_addr=0, src_stride=32, src_fmt=3,
                   dst_addr=0x100, dst_stride=16, dst_fmt=2, add_residual=1, res_addr=0x200,
                   res_stride=16, p_addr=0x300)
    reads, writes = isa.footprint(v)
    assert [n for n, *_ in reads] == ["src", "res", "p"]
    assert reads[0][1] == Span(0, 2 * 32 + 20)
    assert reads[2][1] == Span(0x300, 0x300 + 5 * isa.VEC_PARAM_RECORD_BYTES)
    assert [n for n, *_ in writes] == ["dst"]
    sm = isa.vector(op=VecOp.SOFTMAX, rows=3, cols=5, e_addr=0x400)
    assert [n for n, *_ in isa.footprint(sm)[1]] == ["dst", "e"]
    assert isa.footprint(isa.sync(Unit.ALL)) == ([], [])


def test_span_overlap():
    assert Span(0, 10).overlaps(Span(9, 20))
    assert not Span(0, 10).overlaps(Span(10, 20))


def test_error_codes():
    assert isa.ErrorCode.OK == 0
    assert isa.ErrorCode is params.ErrorCode
    assert len({int(c) for c in isa.ErrorCode}) == len(isa.ErrorCode)


def test_csr_map():
    offsets = [r.offset for r in CSR]
    assert len(set(offsets)) == len(offsets)
    assert all(o % isa.CSR_BYTES == 0 for o in offsets)
    assert CSR.by_offset(0x0C) is CSR.STATUS
    for reg in CSR:
        assert reg.layout().size == 32
        bits = [(lsb, w) for lsb, w in reg.fields.values()]
        covered = [b for lsb, w in bits for b in range(lsb, lsb + w)]
        assert len(covered) == len(set(covered)) and max(covered, default=0) < 32
    word = CSR.CONFIG.make(isa_version=1, array=8, port_bytes=16, instr_bytes=INSTR_BYTES)
    assert CSR.CONFIG.get(word, "port_bytes") == 16
    assert CSR.CONFIG.get(word, "instr_bytes") == INSTR_BYTES
    with pytest.raises(ValueError):
        CSR.STATUS.make(busy=2)


def test_machine_config():
    assert isa.MachineConfig(8).port_bytes == params.default_port_bytes(8)
    with pytest.raises(ValueError):
        isa.MachineConfig(3)
    with pytest.raises(ValueError):
        isa.MachineConfig(8, 12)
