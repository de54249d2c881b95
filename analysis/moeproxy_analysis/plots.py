"""PNG figures of one run (phases, experts, communication, memory) and of several runs.

Each function writes one file and returns its name. Colours are fixed per phase / memory
kind (by their index in the schema's order), so the same phase has the same colour in
every figure of a report, whatever subset of phases a layout uses.
"""

import matplotlib

matplotlib.use("Agg")  # batch nodes have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .results import effective_deck  # noqa: E402
from .units import bytes_unit, time_unit  # noqa: E402

DPI = 110
plt.rcParams.update({
    "font.size": 10,
    "axes.titlesize": 11,
    "figure.titlesize": 12,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.axisbelow": True,
})


def _palette(n):
    cmap = plt.get_cmap("tab20")
    return [cmap(i % 20) for i in range(n)]


def _n_ranks(n):
    return f"{n} rank" if n == 1 else f"{n} ranks"


def _rank_axis(ax, ranks):
    ax.set_xlabel("MPI rank")
    pad = max(0.6, (3 - ranks) / 2)  # a lone rank's bar should not fill the whole axis
    ax.set_xlim(-pad, ranks - 1 + pad)
    if ranks <= 32:
        ax.set_xticks(range(ranks))
    ax.grid(axis="x", visible=False)


def _save(fig, out_dir, name):
    fig.savefig(f"{out_dir}/{name}", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return name


def phases(run, out_dir):
    """Per-rank stacked bars of time per phase, prefill and decode, summed over layers.

    The grey top segment is wall time no phase accounts for (launch gaps, barriers), so
    each bar's height is the rank's wall time and the slowest rank stands out.
    """
    deck = effective_deck(run)
    steps = deck.get("workload", {}).get("decode_steps")
    layers = run.prefill.shape[1] if run.prefill.ndim == 3 else 0
    per = {"prefill": (run.prefill.sum(axis=1), run.prefill_wall),
           "decode": (run.decode.sum(axis=1), run.decode_wall)}
    used = [i for i in range(len(run.phases))
            if per["prefill"][0][:, i].any() or per["decode"][0][:, i].any()]
    colours = _palette(len(run.phases))
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, min(16.0, 4 + 0.35 * run.ranks)), 7.5),
                             squeeze=False)
    x = np.arange(run.ranks)
    width = 0.8 if run.ranks <= 64 else 1.0
    for ax, (name, (t, wall)) in zip(axes[:, 0], per.items()):
        top = max(float(wall.max()) if wall.size else 0.0, float(t.sum(axis=1).max()) if t.size else 0.0)
        scale, unit = time_unit(top if top > 0 else 1.0)
        bottom = np.zeros(run.ranks)
        for i in used:
            ax.bar(x, t[:, i] * scale, width, bottom=bottom, color=colours[i], label=run.phases[i])
            bottom += t[:, i] * scale
        other = np.clip(wall * scale - bottom, 0, None)
        if other.any():
            ax.bar(x, other, width, bottom=bottom, color="0.85", hatch="//", edgecolor="0.6",
                   linewidth=0, label="other (outside phases)")
        ax.set_ylabel(f"time [{unit}]")
        what = f"summed over {layers} layers"
        if name == "decode" and steps:
            what += f" and {steps} steps"
        ax.set_title(f"{name} ({what}); slowest rank {wall.max() * scale:.3g} {unit}"
                     if wall.size else f"{name} ({what})")
        _rank_axis(ax, run.ranks)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    h2, l2 = axes[1, 0].get_legend_handles_labels()
    for h, lab in zip(h2, l2):
        if lab not in labels:
            handles.append(h)
            labels.append(lab)
    fig.legend(handles, labels, title="phase", loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    fig.suptitle(f"{run.label}: time per phase and rank ({run.layout}, {_n_ranks(run.ranks)})")
    fig.tight_layout()
    return _save(fig, out_dir, f"{run.label}-phases.png")


def experts(run, out_dir):
    """Heatmap of tokens per expert [layer, expert]; None for dense models."""
    t = run.expert_tokens
    if t is None or t.size == 0:
        return None
    layers, n_exp = t.shape
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 2.5 + 0.55 * n_exp)),
                                    min(12.0, max(3.0, 1.8 + 0.45 * layers))))
    im = ax.imshow(t, aspect="auto", cmap="viridis", interpolation="nearest")
    cb = fig.colorbar(im, ax=ax, pad=0.02)
    cb.set_label("tokens routed to the expert")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.grid(False)
    if n_exp <= 64:
        ax.set_xticks(range(n_exp))
    if layers <= 48:
        ax.set_yticks(range(layers))
    if layers * n_exp <= 400:
        # Counts in the cells: a small grid is read for its numbers, not only its colours.
        lo, hi = float(t.min()), float(t.max())
        mid = (lo + hi) / 2
        for (l, e), v in np.ndenumerate(t):
            ax.text(e, l, f"{int(v)}", ha="center", va="center", fontsize=8,
                    color="black" if v > mid else "white")
    mean = t.mean(axis=1, keepdims=True)
    worst = float(((t.max(axis=1, keepdims=True) - mean) / np.where(mean > 0, mean, 1)).max())
    imb = run.summary.get("expert_imbalance", worst)
    ax.set_title(f"{run.label}: expert load [layer, expert]\n"
                 f"imbalance (max - mean) / mean = {imb:.3f}; min {int(t.min())}, max {int(t.max())} tokens")
    fig.tight_layout()
    return _save(fig, out_dir, f"{run.label}-experts.png")


def comm(run, out_dir):
    """Time and volume per communication key (operation@group), over ranks."""
    keys = run.comm_keys
    title = f"{run.label}: communication by operation ({run.layout}, {_n_ranks(run.ranks)})"
    if not keys:
        # Still a figure, so every run has the same set of files to link and compare.
        fig, ax = plt.subplots(figsize=(7, 2))
        ax.text(0.5, 0.5, "no communication recorded (/comm has no keys)", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title(title)
        return _save(fig, out_dir, f"{run.label}-comm.png")
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(12, max(3.0, 1.4 + 0.45 * len(keys))))
    fig.suptitle(title)
    y = np.arange(len(keys))
    sec = run.comm_seconds
    mean, lo, hi = sec.mean(axis=0), sec.min(axis=0), sec.max(axis=0)
    scale, unit = time_unit(float(hi.max()) if hi.max() > 0 else 1.0)
    ax_t.barh(y, mean * scale, color="tab:blue", label="mean over ranks")
    ax_t.errorbar(mean * scale, y, xerr=[(mean - lo) * scale, (hi - mean) * scale], fmt="none",
                  ecolor="black", capsize=3, label="min .. max over ranks")
    ax_t.set_xlabel(f"time in calls per rank [{unit}]")
    # /comm counts every call of the run (setup and verification too), unlike the
    # summary's comm_seconds_raw, so the title says which total this is.
    ax_t.set_title("time, whole run")
    ax_t.legend(loc="lower right", fontsize=8)
    total = run.comm_bytes.sum(axis=0).astype(np.float64)
    calls = run.comm_calls.sum(axis=0)
    bscale, bunit = bytes_unit(float(total.max()) if total.max() > 0 else 1.0)
    ax_b.barh(y, total / bscale, color="tab:orange")
    for yi, (v, c) in enumerate(zip(total / bscale, calls)):
        ax_b.text(v, yi, f"  {int(c)} calls", va="center", fontsize=8)
    ax_b.set_xlabel(f"payload leaving the ranks, all ranks [{bunit}]")
    ax_b.set_title("volume (self-traffic excluded)")
    ax_b.set_xlim(0, max(1.0, float((total / bscale).max())) * 1.35)
    labels = [f"{k} ({int(g)} ranks)" for k, g in zip(keys, run.comm_group_size)]
    for ax in (ax_t, ax_b):
        ax.set_yticks(y)
        ax.set_yticklabels(labels)
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
    ax_b.set_yticklabels([])
    fig.tight_layout()
    return _save(fig, out_dir, f"{run.label}-comm.png")


def memory(run, out_dir):
    """Stacked memory kinds per rank, with the device high-water mark as a marker."""
    kinds = run.memory_kinds
    b = run.memory_bytes.astype(np.float64)
    hw_i = kinds.index("high_water") if "high_water" in kinds else None
    peak = run.peak_memory_per_rank()
    scale, unit = bytes_unit(float(max(peak.max(), b.sum(axis=1).max())) if b.size else 1.0)
    colours = _palette(len(kinds) + 6)
    fig, ax = plt.subplots(figsize=(max(7.0, min(16.0, 4 + 0.35 * run.ranks)), 4.5))
    x = np.arange(run.ranks)
    bottom = np.zeros(run.ranks)
    for i, k in enumerate(kinds):
        if i == hw_i or not b[:, i].any():
            continue
        ax.bar(x, b[:, i] / scale, 0.8, bottom=bottom, color=colours[i + 6], label=k)
        bottom += b[:, i] / scale
    if hw_i is not None and b[:, hw_i].any():
        ax.scatter(x, b[:, hw_i] / scale, marker="_", s=400, color="black", linewidths=2,
                   label="high-water mark", zorder=3)
    ax.set_ylabel(f"memory [{unit}]")
    _rank_axis(ax, run.ranks)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="kind")
    ax.set_title(f"{run.label}: memory per rank ({run.layout}); peak {peak.max() / scale:.3g} {unit}")
    fig.tight_layout()
    return _save(fig, out_dir, f"{run.label}-memory.png")


def comparison(runs, out_dir, baseline=None):
    """Throughputs and latencies of several runs side by side (the seeds' tables as bars)."""
    labels = [r.label for r in runs]
    panels = [("prefill_tokens_per_s", "prefill throughput", "tokens/s", False),
              ("decode_tokens_per_s", "decode throughput", "tokens/s", False),
              ("ttft_s", "time to first token (TTFT)", None, True),
              ("tpot_s", "time per output token (TPOT)", None, True)]
    fig, axes = plt.subplots(2, 2, figsize=(max(9.0, min(18.0, 5 + 0.7 * len(runs))), 7.5))
    x = np.arange(len(runs))
    for ax, (key, title, unit, is_time) in zip(axes.flat, panels):
        v = np.array([float(r.summary.get(key, np.nan)) for r in runs])
        scale = 1.0
        if is_time:
            scale, unit = time_unit(float(np.nanmax(v)) if np.isfinite(v).any() else 1.0)
        colours = ["tab:gray" if baseline is not None and r.path == baseline.path else "tab:blue"
                   for r in runs]
        ax.bar(x, v * scale, color=colours)
        for xi, vi in zip(x, v * scale):
            if np.isfinite(vi):
                ax.text(xi, vi, f"{vi:.3g}" if is_time else f"{vi:,.0f}", ha="center",
                        va="bottom", fontsize=8)
        if baseline is not None:
            ax.axhline(float(baseline.summary.get(key, np.nan)) * scale, color="tab:red",
                       linestyle="--", linewidth=1, label=f"baseline {baseline.label} (grey bar, dashed line)")
        ax.margins(y=0.12)  # room for the value labels above the bars
        ax.set_title(title + (" (lower is better)" if is_time else " (higher is better)"))
        ax.set_ylabel(f"{unit}")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{lab}\n{r.layout}" for lab, r in zip(labels, runs)],
                           rotation=30 if len(runs) > 4 else 0, ha="right" if len(runs) > 4 else "center",
                           fontsize=8)
        ax.grid(axis="x", visible=False)
    fig.suptitle(f"moeproxy: {len(runs)} runs compared")
    fig.tight_layout()
    if baseline is not None:
        h, lab = axes.flat[0].get_legend_handles_labels()
        fig.legend(h, lab, loc="upper right", fontsize=8, frameon=False)
    return _save(fig, out_dir, "comparison.png")
