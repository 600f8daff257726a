"""Benchmarks of the golden integer model: accuracy against the float model, and speed.

Accuracy: cosine between embeddings on a dev set, and whether the order of sentence-pair
similarities is the same as the float model's. The float reference is sentence-transformers
when it is installed (the test extra), else the NumPy float32 model (tests hold the two within
1e-5). Speed: sentences per second of the golden model, with its integer matmuls on float64
BLAS and, for comparison, on NumPy's int64 path.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import golden, numerics as nx
from .errors import CelosiaError, read_text, text_lines
from .model import MiniLM
from .quantize import IntegerModel

__all__ = ["DEV_SET", "PAIRS", "read_lines", "read_pairs", "float_reference", "run_accuracy",
           "golden_speed"]

#: The dev set (sentences in neither the calibration set nor the tests) and sentence pairs,
#: shipped inside the package so that an installed wheel finds them.
DEV_SET = Path(__file__).parent / "data" / "devset.txt"
PAIRS = Path(__file__).parent / "data" / "pairs.tsv"


def read_lines(path: Path, what: str = "--dev-set") -> list[str]:
    return [line.strip() for line in text_lines(read_text(path, what))]


def read_pairs(path: Path, what: str = "--pairs") -> list[tuple[str, str]]:
    """Tab-separated sentence pairs, one a line; blank lines and ``#`` comments are skipped."""
    pairs = []
    for n, line in enumerate(read_text(path, what).split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip() or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.split("\t")]
        if len(parts) != 2 or not all(parts):
            raise CelosiaError(f"{what} {path}, line {n}: expected two tab-separated sentences, "
                               f"found {len(parts)} field{'s' if len(parts) != 1 else ''}")
        pairs.append((parts[0], parts[1]))
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


def run_accuracy(model: MiniLM, im: IntegerModel, texts: list[str],
                 pairs: list[tuple[str, str]], progress=None) -> dict:
    """Golden model vs float on ``texts`` (cosines) and ``pairs`` (similarity order)."""
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


def golden_speed(model: MiniLM, im: IntegerModel, texts: list[str], int64: bool = False) -> dict:
    """Sentences per second of the golden model (tokenising and pooling included) with its
    integer matmuls on float64 BLAS; with ``int64``, also on the int64 path, the speed-up and
    whether both gave the same embeddings bit for bit."""
    ids = [model.tokenizer.encode(t)[0] for t in texts]
    golden.embedding(model, im, ids[0])       # warm-up: BLAS threads, first-call imports

    def timed(name: str) -> tuple[dict, list]:
        t0 = time.perf_counter()
        embeddings = [golden.embedding(model, im, i) for i in ids]
        wall = time.perf_counter() - t0
        return {"matmul": name, "wall_s": round(wall, 3),
                "sentences_per_s": round(len(ids) / wall, 2),
                "tokens_per_s": round(sum(map(len, ids)) / wall, 1)}, embeddings

    fast, fast_emb = timed("float64")
    report = {"sentences": len(ids), "tokens": int(sum(map(len, ids))), "runs": [fast]}
    if int64:
        with nx.int64_matmuls():
            slow, slow_emb = timed("int64")
        report["runs"].append(slow)
        report["speedup"] = round(slow["wall_s"] / fast["wall_s"], 2)
        report["bit_identical"] = all(np.array_equal(a, b) for a, b in zip(fast_emb, slow_emb))
    rows = [f"golden model on {report['sentences']} sentences ({report['tokens']} tokens)",
            f"  {'matmul path':<12}  {'wall s':>7}  {'sentences/s':>11}  {'tokens/s':>9}"]
    rows += [f"  {r['matmul']:<12}  {r['wall_s']:>7.3f}  {r['sentences_per_s']:>11.2f}  "
             f"{r['tokens_per_s']:>9.1f}" for r in report["runs"]]
    if int64:
        rows.append(f"  speed-up {report['speedup']:.2f}x, bit-identical: "
                    f"{'yes' if report['bit_identical'] else 'NO'}")
    report["table"] = "\n".join(rows)
    return report
