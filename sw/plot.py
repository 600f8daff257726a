"""``--plot FILE.png``: per-layer cycles and utilisation of accelerator runs, drawn with
matplotlib (an optional extra: ``pip install 'celosia[plot]'``).

The top panel stacks each encoder layer's cycles by kind of work (dense matmuls, attention,
vector-unit passes); the bottom panel draws each layer's utilisation (ideal matmul cycles
over cycles) for every series: the batches of an ``embed`` run, or the batch sizes of
``bench batching``.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CelosiaError

__all__ = ["require_matplotlib", "check_plot", "plot_layers", "plot_run", "plot_batching",
           "sum_layers", "PART_GROUPS"]

#: Parts of a layer (arch.ENCODER_PARTS) by the unit that does the work, in stacking order.
PART_GROUPS = {
    "dense matmuls (QKV, out, FFN1, FFN2)": ("qkv", "attn_out", "ffn1", "ffn2"),
    "attention (QK^T, softmax, PV)": ("attention",),
    "vector unit (LayerNorm, requantise, GELU)": ("emb_ln", "qkv_in", "ln1", "ffn_in", "gelu",
                                                  "ln2"),
}
GROUP_COLOURS = ("#4c72b0", "#dd8452", "#8c8c8c")


def require_matplotlib(option: str = "--plot") -> None:
    """One line instead of an ImportError when the plot extra is not installed; called
    before any work so that a long run is not lost at its end."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CelosiaError(f"{option} needs matplotlib, which is not installed; install it "
                           "with: pip install 'celosia[plot]'") from None


def _check_target(path: Path, option: str) -> None:
    if path.suffix.lower() != ".png":
        raise CelosiaError(f"{option} {path}: the file name must end in .png")
    if not path.parent.is_dir():
        raise CelosiaError(f"{option} {path}: directory {path.parent} does not exist")


def check_plot(path, option: str = "--plot") -> None:
    """All that can be checked before the run: matplotlib, the file name and its folder."""
    _check_target(Path(path), option)
    require_matplotlib(option)


def plot_layers(path, title: str, stacked: list[dict], series: list[tuple[str, list[dict]]],
                stacked_label: str) -> None:
    """Write the figure to ``path``. ``stacked``: the per-layer records whose cycles are
    stacked by part (encoder.per_layer's format); ``series``: (label, per-layer records)
    whose utilisation is drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = [x["layer"] for x in stacked]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    x = np.arange(len(layers))
    base = np.zeros(len(layers))
    for (group, parts), colour in zip(PART_GROUPS.items(), GROUP_COLOURS):
        cycles = np.array([sum(p["cycles"] for p in rec["parts"] if p["part"] in parts)
                           for rec in stacked], dtype=float)
        top.bar(x, cycles / 1e3, bottom=base / 1e3, width=0.6, color=colour, label=group)
        base += cycles
    ideal = np.array([rec["ideal_cycles"] for rec in stacked], dtype=float)
    top.plot(x, ideal / 1e3, "k_", markersize=28, markeredgewidth=2,
             label="ideal (MACs / N², every PE busy)")
    top.set_ylim(0, max(base.max(), ideal.max()) / 1e3 * 1.4)     # room for the legend
    top.set_ylabel("cycles (thousands)")
    top.set_title(f"{title}\ncycles per layer: {stacked_label}", fontsize=11)
    top.legend(loc="upper center", ncol=2, fontsize=8, framealpha=0.9)
    top.grid(axis="y", alpha=0.3)

    markers = "osD^vP*X"
    for k, (label, records) in enumerate(series):
        util = [rec["utilization"] or 0 for rec in records]
        bottom.plot(x[:len(util)], util, marker=markers[k % len(markers)], label=label)
    bottom.set_ylim(0, 1.05)
    bottom.axhline(1.0, color="k", linewidth=0.6, alpha=0.5)
    bottom.set_ylabel("utilisation")
    bottom.set_xlabel("encoder layer (layer 0 includes the embedding LayerNorm)")
    bottom.set_xticks(x, [str(n) for n in layers])
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8, ncol=min(4, len(series)), loc="lower right", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sum_layers(runs: list[list[dict]]) -> list[dict]:
    """Per-layer records of several runs (the batches of one ``encode``) added up."""
    out = []
    for records in zip(*runs):
        parts: dict[str, int] = {}
        for rec in records:
            for p in rec["parts"]:
                parts[p["part"]] = parts.get(p["part"], 0) + p["cycles"]
        cycles = sum(r["cycles"] for r in records)
        ideal = sum(r["ideal_cycles"] for r in records)
        out.append({"layer": records[0]["layer"], "cycles": cycles, "ideal_cycles": ideal,
                    "utilization": round(ideal / cycles, 4) if cycles else None,
                    "parts": [{"part": k, "cycles": v} for k, v in parts.items()]})
    return out


def plot_run(path, run: dict) -> None:
    """The figure of an ``encode`` run on an accelerator backend (``last_run``)."""
    batches = [b for b in run["batches"] if b.get("per_layer")]
    if not batches:
        raise CelosiaError(f"--plot: the {run['backend']} backend reports no per-layer cycles")
    title = (f"{run['backend']} backend, {run['array']}x{run['array']} array: "
             f"{run['sentences']} sentences, {run['tokens']} tokens, utilisation "
             f"{run['utilization']:.3f}")
    series = [(f"batch {b['batch']} ({b['sentences']} sent., {b['tokens']} tok.)", b["per_layer"])
              for b in batches]
    if len(series) > 8:      # too many lines to tell apart: the run as a whole
        series = [("all batches", sum_layers([b["per_layer"] for b in batches]))]
    plot_layers(path, title, sum_layers([b["per_layer"] for b in batches]), series,
                f"{len(batches)} batches added up" if len(batches) > 1 else "one batch")


def plot_batching(path, report: dict) -> None:
    """The figure of ``bench batching``: utilisation per layer for each batch size."""
    runs = report["runs"]
    if not all(r.get("per_layer") for r in runs):
        raise CelosiaError(f"--plot: the {report['backend']} backend reports no per-layer cycles")
    largest = runs[-1]
    title = (f"{report['backend']} backend, {report['array']}x{report['array']} array: "
             f"{report['sentences']} sentences, {report['tokens']} tokens")
    series = [(f"batch size {r['batch_size']}: {r['utilization']:.3f}", r["per_layer"])
              for r in runs]
    plot_layers(path, title, largest["per_layer"], series,
                f"batch size {largest['batch_size']}")
