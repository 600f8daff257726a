"""Small sentence-transformers checkpoints of other shapes, written by the tests: random
weights (safetensors.numpy) and the bundled MiniLM's tokenizer files."""

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
    from celosia.sw.model import model_path
    folder = Path(folder)
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def normal(*shape, std=0.05):
        return rng.normal(0.0, std, shape).astype(np.float32)

    def ln(name):
        return {f"{name}.weight": (1 + normal(hidden, std=0.1)), f"{name}.bias": normal(hidden)}

    w = {"embeddings.word_embeddings.weight": normal(VOCAB, hidden),
         "embeddings.position_embeddings.weight": normal(512, hidden),
         "embeddings.token_type_embeddings.weight": normal(2, hidden),
         **ln("embeddings.LayerNorm")}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, (n_out, n_in) in (("attention.self.query", (hidden, hidden)),
                                    ("attention.self.key", (hidden, hidden)),
                                    ("attention.self.value", (hidden, hidden)),
                                    ("attention.output.dense", (hidden, hidden)),
                                    ("intermediate.dense", (ffn, hidden)),
                                    ("output.dense", (hidden, ffn))):
            w[p + name + ".weight"] = normal(n_out, n_in, std=1 / np.sqrt(n_in))
            w[p + name + ".bias"] = normal(n_out)
        w.update(ln(p + "attention.output.LayerNorm"))
        w.update(ln(p + "output.LayerNorm"))
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
