"""The float32 reference against sentence-transformers, and model loading errors."""

import shutil

import numpy as np
import pytest

from celosia.sw.model import ModelError, load_minilm, model_path

SENTENCES = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome!",
    "x",
    "",
    "Two men pushed carts through the woods.",
    "I'd like to book a table for 4 people at 7:30pm, please.",
    "naïve café résumé — unicode, punctuation; and numbers 3.14159",
    "The committee postponed its decision until more evidence about the long-term effects of "
    "the policy on rural communities, small businesses and public transport had been gathered.",
    "GPU vs. FPGA: which accelerator wins for int8 inference?",
    "word " * 400,   # truncated to 256 tokens
]


def test_float_model_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    ref_model = st.SentenceTransformer(str(model_path()), device="cpu")
    ref = ref_model.encode(SENTENCES, convert_to_numpy=True)
    ours = np.stack([minilm.encode(s)[0] for s in SENTENCES])
    assert ours.shape == (len(SENTENCES), 384)
    assert np.abs(ours - ref).max() <= 1e-5


def test_tokenizer_truncates_like_sentence_transformers(minilm):
    ids, truncated = minilm.tokenizer.encode("word " * 400)
    assert len(ids) == 256 and truncated
    assert ids[0] == 101 and ids[-1] == 102          # [CLS] ... [SEP] kept
    ids, truncated = minilm.tokenizer.encode("")
    assert ids.tolist() == [101, 102] and not truncated


def test_missing_and_corrupt_model_files(tmp_path):
    src = model_path()
    with pytest.raises(ModelError, match="config.json is missing"):
        load_minilm(tmp_path)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(src / name, tmp_path / name)
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ModelError, match="corrupt"):
        load_minilm(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="corrupt"):
        load_minilm(tmp_path)
