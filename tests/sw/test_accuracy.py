"""The accuracy target of the golden model on the repository's dev set and pairs."""

from pathlib import Path

from celosia.sw.accuracy import read_pairs, run_accuracy

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_dev_set_shape():
    texts = [t for t in (BENCH / "devset.txt").read_text().splitlines() if t.strip()]
    assert len(texts) >= 40
    assert len(read_pairs(BENCH / "pairs.tsv")) >= 10


def test_golden_meets_accuracy_target(minilm, int_model):
    r = run_accuracy(minilm, int_model, BENCH / "devset.txt", BENCH / "pairs.tsv")
    assert r["tokens_min"] <= 3 and r["tokens_max"] > 40
    assert r["cosine_mean"] >= 0.995
    assert r["cosine_min"] >= 0.99
    assert r["pair_order_matches"]
