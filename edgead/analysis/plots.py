"""The analysis figures. Rendering and atomic PNG writing are edgead.report's (Agg, lazily imported)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgead.analysis.features import percent_key
from edgead.plotting import pyplot, save_png


def plot_channel_importance(category: str, records: list[dict], percents: list[float], path: Path) -> Path:
    """Per level: importance of the channels sorted high to low (bars), its cumulative share (line) and
    where each top-p% selection ends (dashed)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(records), figsize=(4.8 * len(records), 3.6), squeeze=False)
    for ax, rec in zip(axes[0], records, strict=True):
        imp = np.asarray(rec["importance"])[rec["ranking"]]
        rank = np.arange(1, len(imp) + 1)
        ax.bar(rank, imp, width=1.0, color="tab:blue", alpha=0.75)
        ax.set_xlabel("channel rank")
        ax.set_ylabel("PCA importance")
        ax.set_title(f"level {rec['level']}: {rec['channels']} channels, {rec['n_components']} PCs",
                     fontsize=9)
        cum = ax.twinx()
        cum.plot(rank, np.cumsum(imp), color="tab:orange", lw=1.5)
        cum.set_ylim(0, 1.02)
        cum.set_ylabel("cumulative share", color="tab:orange")
        for p in percents:
            k = len(rec["selected"][percent_key(p)])
            if k < len(imp):  # the 100% line would sit on the right edge and say nothing
                ax.axvline(k + 0.5, color="gray", ls="--", lw=0.8)
                ax.text(k + 0.5, ax.get_ylim()[1] * 0.97, f"{percent_key(p)}%", fontsize=7, rotation=90,
                        va="top", ha="right", color="gray")
    fig.suptitle(f"{category}: channel importance over normal training patches", fontsize=10)
    fig.tight_layout()  # twin y-axes otherwise overlap the neighbouring panel's labels
    return save_png(fig, path)


def plot_tsne(category: str, percent: float, panels: list[dict], path: Path) -> Path:
    """One panel per level: t-SNE of normal (blue) and anomalous (red) patches of the selected features."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.8), squeeze=False)
    for ax, rec in zip(axes[0], panels, strict=True):
        xy, y = np.asarray(rec["xy"], dtype=float).reshape(-1, 2), np.asarray(rec["label"], dtype=int)
        for lab, name, colour in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
            pts = xy[y == lab]
            ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.6, c=colour, label=f"{name} ({len(pts)})",
                       edgecolors="none")
        sil = rec["silhouette"]
        ax.set_title(f"level {rec['level']}, {len(rec['channels'])} ch"
                     + ("" if sil is None else f", silhouette {sil:.2f}"), fontsize=9)
        if not len(xy):
            ax.text(0.5, 0.5, "too few patches", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="best", markerscale=2)
    fig.suptitle(f"{category}: t-SNE of the top {percent_key(percent)}% channels (test patches)", fontsize=10)
    return save_png(fig, path)


def plot_selective_f1(tasks: list[str], det, curve: dict, path: Path) -> Path:
    """Final image and pixel F1 (averaged over tasks) against the share of channels trained on."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    p = np.asarray(curve["percent"], dtype=float)
    for key, label, colour in (("image_f1", "image F1", "tab:blue"), ("pixel_f1", "pixel F1", "tab:orange")):
        y = np.asarray([np.nan if v is None else v for v in curve[key]], dtype=float)
        ax.plot(p, y, marker="o", label=label, color=colour)
        for xi, yi in zip(p, y, strict=True):
            if np.isfinite(yi):
                ax.annotate(f"{yi:.2f}", (xi, yi), textcoords="offset points", xytext=(0, 5), ha="center",
                            fontsize=7)
    if len(p) > 1 and p.max() / p.min() >= 10:  # 1..100 spreads out only on a log axis
        ax.set_xscale("log")
    ax.set_xticks(p, [percent_key(v) for v in p])
    ax.minorticks_off()
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("top channels trained and scored on (% of each level)")
    ax.set_ylabel("final F1, mean over tasks")
    ax.set_title(f"feature-selective fine-tuning, {det.model}/{det.backbone}\n"
                 f"{len(tasks)} tasks: {', '.join(tasks)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)
