"""Small models for the tests: sentence-transformers checkpoints of other shapes, written by the
tests (random weights, safetensors.numpy, and the bundled MiniLM's tokenizer files), and a tiny
in-memory MiniLM-shaped encoder (:func:`tiny_encoder`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

#: Tokenizer files copied from the bundled model (sentence-transformers wants all of them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")
VOCAB = 30522


def make_checkpoint(folder: Path, *, hidden: int = 256, heads: int = 4, layers: int = 3,
                    ffn: int = 1024, pooling: str = "cls", normalize: bool = False,
                    prefix: str = "", max_seq_length: int = 128, seed: int = 0,
                    config: dict | None = None, modules: list | None = None) -> Path:
    """Write a BERT sentence-transformers folder; ``config`` and ``modules`` override
    config.json entries and the module list."""
    from safetensors.numpy import save_file
    from celosia.sw.arch import bert_encoder
    from celosia.sw.model import model_path
    folder = Path(folder)
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def normal(*shape, std=0.05):
        return rng.normal(0.0, std, shape).astype(np.float32)

    # The tensors the description lists (the loader checks the same list), in its order.
    # max_tokens only bounds the description; an over-long max_seq_length is the loader's to refuse.
    arch = bert_encoder(hidden=hidden, heads=heads, layers=layers, ffn=ffn, vocab=VOCAB,
                        max_tokens=min(max_seq_length, 512))
    w = {}
    for (role, layer), shape in arch.tensors().items():
        if "norm." in role:
            value = 1 + normal(*shape, std=0.1) if role.endswith(".weight") else normal(*shape)
        elif role.startswith("embed.") or role.endswith(".bias"):
            value = normal(*shape)
        else:
            value = normal(*shape, std=1 / np.sqrt(shape[1]))
        w[arch.tensor_name(role, layer)] = value
    save_file({prefix + k: v for k, v in w.items()}, str(folder / "model.safetensors"))
    cfg = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": hidden,
           "num_attention_heads": heads, "num_hidden_layers": layers, "intermediate_size": ffn,
           "hidden_act": "gelu", "max_position_embeddings": 512, "type_vocab_size": 2,
           "vocab_size": VOCAB, "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
           "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "pad_token_id": 0,
           "position_embedding_type": "absolute"}
    cfg.update(config or {})
    (folder / "config.json").write_text(json.dumps(cfg))
    for name in TOKENIZER_FILES:
        shutil.copy(model_path() / name, folder / name)
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False}))
    if modules is None:
        modules = [{"idx": 0, "name": "0", "path": "",
                    "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


def tiny_encoder(seed: int = 0, hidden: int = 16, heads: int = 2, ffn: int = 32, vocab: int = 50):
    """A one-layer MiniLM-shaped model with random weights, quantised on a few word lists
    (a whole encoder layer the compiler turns into a 9 KB window at N = 4)."""
    import zlib

    from celosia.sw.arch import bert_encoder
    from celosia.sw.model import MiniLM
    from celosia.sw.quantize import quantize

    rng = np.random.default_rng(seed)
    arch = bert_encoder(hidden=hidden, heads=heads, layers=1, ffn=ffn, max_tokens=16,
                        vocab=vocab, max_positions=16, pooling="mean", normalize=True)

    def f(*shape, scale=0.3, one=False):
        return (one + rng.standard_normal(shape) * scale).astype(np.float32)

    w = {}
    for (role, layer), shape in arch.tensors().items():
        if "norm." in role:
            value = f(*shape, scale=0.1, one=role.endswith(".weight"))
        elif role == "embed.tokens":
            value = f(*shape, scale=1.0)
        else:
            value = f(*shape, scale=0.1 if role.endswith(".bias") else 0.3)
        w[arch.tensor_name(role, layer)] = value

    class Words:
        def encode(self, text):
            ids = [1] + [zlib.crc32(t.encode()) % (vocab - 2) + 2 for t in text.split()][:14]
            return np.array(ids + [0], dtype=np.int64), False

    model = MiniLM(w, arch, Words())
    texts = ["a b c d", "hello there world", "x y", "the quick brown fox jumps over",
             "one two three four five six seven"]
    return model, quantize(model, texts=texts)


def run_bit_exact(backend, model, im, sentences, config, **options):
    """Compile the token ids of ``sentences`` as one batch for ``config``, run them on
    ``backend`` through ``driver.run_compiled`` (``options``: e.g. ``resident``), assert the
    hidden state equals the golden model's; (compiled, result)."""
    from celosia.sw import golden
    from celosia.sw.compiler import compile_model
    from celosia.sw.driver import run_compiled

    ids = [np.asarray(s) for s in sentences]
    c = compile_model(im, [len(x) for x in ids], array=config.array, port_bytes=config.port_bytes)
    e = np.concatenate([golden.embed_int32(model, im, x) for x in ids])
    r = run_compiled(backend, c, e, **options)
    assert np.array_equal(r.hidden, golden.forward(im, e, None, c.sentences))
    return c, r
