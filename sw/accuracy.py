"""Accuracy benchmark: the golden integer model against the float model.

Cosine between embeddings on a dev set, and whether the order of sentence-pair similarities
is the same as the float model's. The float reference is sentence-transformers when it is
installed (the test extra), else the NumPy float32 model (tests hold the two within 1e-5).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import golden
from .model import MiniLM
from .quantize import IntegerModel

__all__ = ["read_lines", "read_pairs", "float_reference", "run_accuracy"]


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected two tab-separated sentences")
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def float_reference(model: MiniLM):
    """(name, function text list -> float embeddings)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return "numpy-float32", lambda texts: np.stack([model.encode(t)[0] for t in texts])
    from .model import model_path
    st = SentenceTransformer(str(model_path()), device="cpu")
    return "sentence-transformers", lambda texts: st.encode(texts, convert_to_numpy=True)


def _kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    n = len(a)
    s = 0
    for i in range(n):
        for j in range(i + 1, n):
            s += np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return float(s) / (n * (n - 1) / 2)


def run_accuracy(model: MiniLM, im: IntegerModel, dev_set: Path, pairs_file: Path,
                 progress=None) -> dict:
    texts = read_lines(dev_set)
    pairs = read_pairs(pairs_file)
    ref_name, ref_fn = float_reference(model)
    t0 = time.perf_counter()
    everything = texts + [s for p in pairs for s in p]
    unique = list(dict.fromkeys(everything))
    ref = dict(zip(unique, ref_fn(unique)))
    ints = {}
    for n, text in enumerate(unique, 1):
        ids, _ = model.tokenizer.encode(text)
        ints[text] = (golden.embedding(model, im, ids), len(ids))
        if progress is not None and (n % 10 == 0 or n == len(unique)):
            progress(f"  golden model: {n}/{len(unique)} sentences")
    cos = np.array([float(np.dot(ref[t].astype(np.float64), ints[t][0])) for t in texts])
    sim_f = np.array([float(np.dot(ref[a], ref[b])) for a, b in pairs])
    sim_i = np.array([float(np.dot(ints[a][0], ints[b][0])) for a, b in pairs])
    order_ok = bool(np.array_equal(np.argsort(sim_f, kind="stable"), np.argsort(sim_i, kind="stable")))
    worst = int(np.argmin(cos))
    report = {
        "reference": ref_name,
        "sentences": len(texts),
        "tokens_min": min(ints[t][1] for t in texts),
        "tokens_max": max(ints[t][1] for t in texts),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "worst_text": texts[worst],
        "pairs": len(pairs),
        "pair_order_matches": order_ok,
        "pair_kendall_tau": _kendall_tau(sim_f, sim_i),
        "pair_max_abs_similarity_error": float(np.abs(sim_f - sim_i).max()),
        "pair_min_float_gap": float(np.diff(np.sort(sim_f)).min()) if len(pairs) > 1 else None,
        "wall_s": round(time.perf_counter() - t0, 2),
        "per_sentence": [{"text": t, "tokens": ints[t][1], "cosine": float(c)} for t, c in zip(texts, cos)],
    }
    rows = [f"golden model vs {ref_name} on {len(texts)} sentences "
            f"({report['tokens_min']}..{report['tokens_max']} tokens) and {len(pairs)} pairs",
            f"  cosine mean            {report['cosine_mean']:.5f}",
            f"  cosine min             {report['cosine_min']:.5f}  ({texts[worst]!r})",
            f"  pair order matches     {order_ok}  (Kendall tau {report['pair_kendall_tau']:.4f}, "
            f"max |similarity error| {report['pair_max_abs_similarity_error']:.4f}, "
            f"closest float similarities {report['pair_min_float_gap']:.4f} apart)",
            f"  wall time              {report['wall_s']:.1f} s"]
    report["table"] = "\n".join(rows)
    return report
