"""The model description (sw/arch.py): what a checkpoint loads into, the tensors it names, the
work it counts against the program the compiler emits, and the refusal of what no stage runs
yet. The float and integer MiniLM come from the session fixtures (tests/conftest.py)."""

import dataclasses
import hashlib

import numpy as np
import pytest

from celosia.hdl.isa import Opcode
from celosia.sw import golden
from celosia.sw.arch import ENCODER_PARTS, Transformer, bert_encoder
from celosia.sw.compiler import compile_model
from celosia.sw.model import MiniLM, ModelError, load_minilm
from celosia.sw.quantize import IntegerModel, quantize


def test_minilm_loads_into_the_bert_encoder_description(minilm):
    """The shape docs/numerics.md and the architecture state: 6 layers, hidden 384, 12 heads
    of 32, FFN 1536, LayerNorm eps 1e-12, mean pooling then normalisation."""
    assert minilm.arch == bert_encoder(hidden=384, heads=12, layers=6, ffn=1536, max_tokens=256,
                                       eps=1e-12, pooling="mean", normalize=True)
    assert minilm.arch.head_dim == 32 and minilm.arch.unsupported() == []


def test_the_description_names_every_used_checkpoint_tensor(minilm):
    """Every tensor of the description is in the checkpoint with its shape, and the
    checkpoint holds nothing else but the pooler (unused by sentence-transformers) and the
    position-id buffer."""
    a = minilm.arch
    named = {a.tensor_name(role, layer): shape for (role, layer), shape in a.tensors().items()}
    assert all(minilm.w[k].shape == shape for k, shape in named.items())
    assert set(minilm.w) - set(named) == {"embeddings.position_ids", "pooler.dense.weight",
                                          "pooler.dense.bias"}
    assert a.tensor_name("q.weight", 2) == "encoder.layer.2.attention.self.query.weight"
    assert a.tensor_name("embed.norm.bias") == "embeddings.LayerNorm.bias"
    with pytest.raises(ValueError, match="is a per-layer tensor"):
        a.tensor_name("q.weight")
    with pytest.raises(KeyError, match="no tensor 'gate.weight'"):
        a.tensor_name("gate.weight", 0)


@pytest.mark.parametrize("sentences", [[11], [3, 17, 1]])
def test_part_work_counts_what_the_program_does(int_model, sentences):
    """The description's work per part equals what the compiled program's instructions do
    in that part: MACs as the sum of m*k*n over its MATMULs, vector elements as rows*cols
    over its VECTORs (at N = 8 the head pitch equals the head width, so no padding)."""
    arch = int_model.arch
    c = compile_model(int_model, sentences, array=8, layers=2)
    instrs = c.program.instructions
    bounds = [index for _, _, index in c.parts] + [len(instrs)]
    for (layer, part, start), end in zip(c.parts, bounds[1:]):
        macs = elements = 0
        for ins in instrs[start:end]:
            f = ins.fields
            if ins.opcode == Opcode.MATMUL:
                macs += f["m"] * f["k"] * f["n"]
            elif ins.opcode == Opcode.VECTOR:
                elements += f["rows"] * f["cols"]
        assert (macs, elements) == arch.part_work(sentences, part), (layer, part)
    assert arch.macs(sentences) == sum(arch.macs(t) for t in sentences)
    assert [p for _, p, _ in c.parts] == [ENCODER_PARTS[0]] + list(ENCODER_PARTS[1:]) * 2


def test_the_integer_model_keeps_its_description(int_model, tmp_path):
    path = tmp_path / "m.safetensors"
    int_model.save(path)
    assert IntegerModel.load(path).arch == int_model.arch
    assert Transformer.from_dict(int_model.arch.to_dict()) == int_model.arch
    with pytest.raises(ValueError, match="no model description"):
        IntegerModel(int_model.tensors, {}).arch
    with pytest.raises(ValueError, match="not a model description"):
        Transformer.from_dict({"hidden": 4})


def _declared(arch: Transformer, **change) -> Transformer:
    """``arch`` with decoder features declared: block fields, attention fields and the output."""
    b, a = arch.block, arch.block.attention
    attn = {k: v for k, v in change.items() if k in {f.name for f in dataclasses.fields(a)}}
    blk = {k: v for k, v in change.items() if k in ("norm", "placement")}
    if "mlp" in change:
        blk["mlp"] = dataclasses.replace(b.mlp, kind=change["mlp"])
    out = dataclasses.replace(arch.output, kind=change["output"]) if "output" in change else arch.output
    return dataclasses.replace(arch, output=out,
                               block=dataclasses.replace(b, attention=dataclasses.replace(a, **attn),
                                                         **blk))


DECODER_FEATURES = [
    (dict(causal=True), "causal attention"),
    (dict(positions="rotary", rope_theta=10000.0), "rotary positions"),
    (dict(kv_heads=4), "grouped-query attention"),
    (dict(mlp="gated_silu"), "the gated-SiLU MLP"),
    (dict(norm="rmsnorm"), "RMSNorm"),
    (dict(placement="pre"), "pre-norm blocks"),
    (dict(output="lm_head"), "an LM head"),
]


@pytest.mark.parametrize("change, feature", DECODER_FEATURES)
def test_declared_decoder_features_are_refused_by_every_stage(minilm, int_model, change,
                                                              feature):
    arch = _declared(minilm.arch, **change)
    assert arch.unsupported() == [feature]
    im = IntegerModel(int_model.tensors, dict(int_model.meta, arch=arch.to_dict()))
    e = np.zeros((2, arch.hidden), dtype=np.int64)
    for stage, run in (("the float reference", lambda: MiniLM(minilm.w, arch, minilm.tokenizer)),
                       ("the golden model", lambda: golden.forward(im, e)),
                       ("the compiler", lambda: compile_model(im, 2))):
        with pytest.raises(NotImplementedError, match=f"{stage} does not implement {feature} yet"):
            run()
    # The quantiser refuses before calibrating (the float model is built around the check).
    float_model = MiniLM(minilm.w, minilm.arch, minilm.tokenizer)
    float_model.arch = arch
    with pytest.raises(NotImplementedError, match=f"the quantiser does not implement {feature}"):
        quantize(float_model, texts=["x"])


@pytest.mark.parametrize("build, error, message", [
    (lambda: bert_encoder(hidden=100, heads=3, layers=1, ffn=8, max_tokens=8), ValueError,
     "hidden 100 is not a multiple of heads 3"),
    (lambda: bert_encoder(hidden=64, heads=2, layers=0, ffn=8, max_tokens=8), ValueError,
     "Transformer.layers must be at least 1, not 0"),
    (lambda: bert_encoder(hidden=64, heads=2, layers=1, ffn=8, max_tokens=600), ValueError,
     "max_tokens 600 exceeds the 512 position embeddings"),
    (lambda: bert_encoder(hidden=64, heads=2, layers=1, ffn=8, max_tokens=8, pooling="max"),
     ValueError, "Output.pooling must be one of 'mean', 'cls', not 'max'"),
    (lambda: _declared(bert_encoder(hidden=64, heads=4, layers=1, ffn=8, max_tokens=8),
                       kv_heads=3), ValueError, "heads 4 is not a multiple of kv_heads 3"),
    (lambda: _declared(bert_encoder(hidden=64, heads=4, layers=1, ffn=8, max_tokens=8),
                       positions="rotary"), ValueError, "rope_theta is given with rotary"),
    (lambda: bert_encoder(hidden=64.0, heads=2, layers=1, ffn=8, max_tokens=8), TypeError,
     "Transformer.hidden must be an int, not float"),
])
def test_bad_descriptions_are_one_precise_error(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_a_config_whose_tensors_disagree_is_refused(tmp_path, make_checkpoint):
    folder = make_checkpoint(tmp_path / "ckpt", hidden=64, heads=2, ffn=128, layers=1,
                             config={"intermediate_size": 96})
    with pytest.raises(ModelError, match=r"tensor encoder\.layer\.0\.intermediate\.dense\.weight "
                                         r"has shape \[128, 64\], expected \[96, 64\]"):
        load_minilm(folder)
    folder = make_checkpoint(tmp_path / "odd", hidden=64, heads=2, ffn=128, layers=1,
                             config={"num_attention_heads": 3})
    with pytest.raises(ModelError, match="config.json: hidden 64 is not a multiple of heads 3"):
        load_minilm(folder)


#: MiniLM's numbers on this tree, pinned: the integer model's tensors, the golden model's
#: last hidden state of one sentence, the compiled memory image (weights, program, tables)
#: and the isa simulator's cycles, at N = 8 and 16. MiniLM moved onto the model description
#: with every one of them unchanged (docs/model.md); a change to the quantiser, the golden
#: model or the compiler that moves any of them fails here and must update the pin on purpose.
PINNED_SENTENCE = "Celosia runs MiniLM on its own RTL."
PINNED = {
    "tensors": "7889008fee712033",
    "hidden": "f10ff6036cb5df4e",
    8: ("cbb15b7529d2450c", 2_780_816),
    16: ("082517ee3e291823", 736_556),
}


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else
                 p if isinstance(p, bytes) else np.ascontiguousarray(p).tobytes())
    return h.hexdigest()[:16]


def test_minilms_numbers_are_pinned(minilm, int_model):
    from celosia.sw.driver import run_batch
    tensors = [x for name in sorted(int_model.tensors) for x in (name, int_model.tensors[name])]
    assert _digest(*tensors) == PINNED["tensors"]
    ids, _ = minilm.tokenizer.encode(PINNED_SENTENCE)
    want = golden.forward(int_model, golden.embed_int32(minilm, int_model, np.asarray(ids)))
    assert _digest(want) == PINNED["hidden"]
    for array in (8, 16):
        run = run_batch("isa", minilm, int_model, [ids], array=array)
        np.testing.assert_array_equal(run.hidden, want)
        assert (_digest(run.compiled.image), run.counters["cycles"]) == PINNED[array], array
