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
           "golden_speed", "CHAT_PROMPTS", "HELDOUT_PARAGRAPH", "read_prompts", "teacher_forced",
           "decoder_quality"]

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


# --- The decoder: the golden integer decoder against the float reference ----------------------

#: The decoder's benchmark prompts (user turns through the chat template; none in the
#: calibration set) and a held-aside paragraph of plain text.
CHAT_PROMPTS = Path(__file__).parent / "data" / "chat_prompts.txt"
HELDOUT_PARAGRAPH = Path(__file__).parent / "data" / "heldout.txt"


def read_prompts(path: Path = CHAT_PROMPTS, what: str = "--prompts") -> list[str]:
    """One prompt a line; blank lines and ``#`` comments are skipped."""
    return [line for line in read_lines(path, what) if not line.startswith("#")]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _nll(logits: np.ndarray, targets) -> np.ndarray:
    """-log p(target) of each row."""
    return -_log_softmax(logits)[np.arange(len(targets)), np.asarray(targets)]


def teacher_forced(lm, im: IntegerModel, ids, continuation) -> dict:
    """The integer decoder ``im`` teacher-forced on the float model ``lm``'s continuation of
    ``ids``: both read prompt and continuation at once, and at each continuation position the
    integer model agrees when its argmax is the float model's. The first position where it
    does not is where the integer model's own greedy continuation would first diverge from
    float's (the prefixes are the same until then).

    Returns ``agrees`` (a bool a continuation token), ``agreement`` (their mean),
    ``first_miss`` (the first disagreeing position, None if none) and the negative
    log-likelihoods of the continuation's tokens under each model, ``nll_integer`` and
    ``nll_float``."""
    ids = np.asarray(ids, dtype=np.int64)
    cont = np.asarray(continuation, dtype=np.int64)
    if len(ids) < 1 or len(cont) < 1:
        raise ValueError("teacher forcing needs a prompt and a continuation of a token or more")
    seq = np.concatenate([ids, cont])
    rows = slice(len(ids) - 1, len(seq) - 1)            # the rows that predict the continuation
    f = lm.logits(seq)[rows]
    i = golden.decoder_logits(im, seq)[rows] * golden.logit_scale(im)
    same = i.argmax(-1) == f.argmax(-1)
    miss = np.flatnonzero(~same)
    return {"agrees": same, "agreement": float(same.mean()),
            "first_miss": int(miss[0]) if len(miss) else None,
            "nll_integer": _nll(i, cont), "nll_float": _nll(f, cont)}


def decoder_quality(lm, im: IntegerModel, tokenizer, prompts: list[str],
                    paragraph: str | None = None, tokens: int = 32, progress=None) -> dict:
    """The golden integer decoder ``im`` against the float reference ``lm``
    (:class:`celosia.sw.llm.FloatTransformer`).

    Each prompt goes through the chat template; the float model continues it greedily (up to
    ``tokens`` tokens, stopping after end-of-turn), and the integer model is teacher-forced on
    that continuation (:func:`teacher_forced`): its top-1 agreement with float, and the first
    position where it disagrees, which is where its own greedy continuation would first
    diverge. Perplexities of both models over the continuations (all prompts pooled) and over
    ``paragraph`` (plain text, every position after the first).
    """
    t0 = time.perf_counter()
    scale = golden.logit_scale(im)
    per_prompt, agree, total, nll_i, nll_f = [], 0, 0, [], []
    for n, text in enumerate(prompts, 1):
        ids = tokenizer.encode(tokenizer.chat([{"role": "user", "content": text}]))
        cont = lm.generate(ids, tokens, stop=tokenizer.eos_id)
        tf = teacher_forced(lm, im, ids, cont)
        same, ni, nf = tf["agrees"], tf["nll_integer"], tf["nll_float"]
        nll_i.append(ni)
        nll_f.append(nf)
        agree += int(same.sum())
        total += len(cont)
        per_prompt.append({
            "prompt": text, "prompt_tokens": len(ids), "continuation": tokenizer.decode(cont),
            "continuation_ids": [int(t) for t in cont],
            "tokens": len(cont), "agreement": tf["agreement"],
            "first_divergence": tf["first_miss"],
            "perplexity_integer": float(np.exp(ni.mean())),
            "perplexity_float": float(np.exp(nf.mean()))})
        if progress is not None:
            progress(f"  prompt {n}/{len(prompts)}: agreement {same.mean():.3f}")
    ni, nf = np.concatenate(nll_i), np.concatenate(nll_f)
    report = {
        "prompts": len(prompts), "continuation_tokens": total,
        "agreement": agree / total,
        "perplexity_integer": float(np.exp(ni.mean())),
        "perplexity_float": float(np.exp(nf.mean())),
    }
    report["perplexity_ratio"] = report["perplexity_integer"] / report["perplexity_float"]
    if paragraph is not None:
        ids = tokenizer.encode(paragraph)
        f = lm.logits(ids)[:-1]
        i = golden.decoder_logits(im, ids)[:-1] * scale
        report.update({
            "paragraph_tokens": len(ids),
            "paragraph_perplexity_integer": float(np.exp(_nll(i, ids[1:]).mean())),
            "paragraph_perplexity_float": float(np.exp(_nll(f, ids[1:]).mean())),
            "paragraph_agreement": float((i.argmax(-1) == f.argmax(-1)).mean())})
        report["paragraph_perplexity_ratio"] = (report["paragraph_perplexity_integer"]
                                                / report["paragraph_perplexity_float"])
    report["wall_s"] = round(time.perf_counter() - t0, 2)
    report["per_prompt"] = per_prompt
    rows = [f"golden integer decoder vs float on {len(prompts)} chat prompts "
            f"({total} continuation tokens, teacher-forced)",
            f"  top-1 agreement        {report['agreement']:.4f}",
            f"  perplexity             {report['perplexity_integer']:.4f} integer, "
            f"{report['perplexity_float']:.4f} float (x{report['perplexity_ratio']:.4f})"]
    if paragraph is not None:
        rows.append(f"  paragraph perplexity   {report['paragraph_perplexity_integer']:.4f} "
                    f"integer, {report['paragraph_perplexity_float']:.4f} float "
                    f"(x{report['paragraph_perplexity_ratio']:.4f}; "
                    f"{report['paragraph_tokens']} tokens)")
    rows += [f"  {p['first_divergence'] if p['first_divergence'] is not None else '-':>3} "
             f"{p['agreement']:.3f}  {p['prompt'][:60]}" for p in per_prompt]
    rows.append(f"  wall time              {report['wall_s']:.1f} s")
    report["table"] = "\n".join(rows)
    return report
