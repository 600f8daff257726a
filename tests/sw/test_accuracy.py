"""The accuracy target of the golden model on the repository's dev set and pairs."""

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
