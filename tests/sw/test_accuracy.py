"""The accuracy target of the golden model on the repository's dev set and pairs."""

import numpy as np
import pytest

from celosia.sw import golden
from celosia.sw.accuracy import DEV_SET, PAIRS, read_lines, read_pairs, run_accuracy


def test_dev_set_shape():
    texts = [t for t in DEV_SET.read_text().splitlines() if t.strip()]
    assert len(texts) >= 40
    assert len(read_pairs(PAIRS)) >= 10


def test_golden_meets_accuracy_target(minilm, int_model):
    r = run_accuracy(minilm, int_model, read_lines(DEV_SET), read_pairs(PAIRS))
    assert r["tokens_min"] <= 3 and r["tokens_max"] > 40
    assert r["cosine_mean"] >= 0.995
    assert r["cosine_min"] >= 0.99
    assert r["pair_order_matches"]


def _cosine(minilm, im, text):
    """Golden model against the float model (NumPy float32, within 1e-5 of
    sentence-transformers) on one text."""
    ids = minilm.tokenizer.encode(text)[0]
    a, b = golden.embedding(minilm, im, ids), minilm.encode(text)[0].astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_stress_inputs_with_the_dithered_softmax(minilm, int_model, round_model):
    """Long and repetitive inputs (docs/numerics.md, "Numerics under stress"): a row of
    attention with one dominant key and a long flat tail loses the tail with round-half-up
    uint8 probabilities (cosine 0.972 for "hello " x 200), keeps it with dither (the default)."""
    for text in ("hello " * 200, "!" * 64):
        assert _cosine(minilm, int_model, text) >= 0.995, text[:20]
    assert _cosine(minilm, round_model, "hello " * 200) < 0.99


@pytest.mark.slow
def test_dithered_softmax_on_a_paragraph_and_the_dev_set(minilm, int_model):
    """The dev set's sentences as one 256-token paragraph, and the dev set itself (its
    target, as `celosia bench accuracy` measures it, with the dithered softmax)."""
    assert _cosine(minilm, int_model, " ".join(read_lines(DEV_SET))) >= 0.995
    dev = [_cosine(minilm, int_model, t) for t in read_lines(DEV_SET)]
    assert np.mean(dev) >= 0.998 and min(dev) >= 0.994
