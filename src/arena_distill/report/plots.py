"""The report's plots as PNG bytes (matplotlib, imported only when a plot is drawn)."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def reliability_png(title: str, calib: Mapping) -> bytes:
    """Reliability diagram: per class, observed frequency against mean predicted probability."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect")
    for c, d in calib["classes"].items():
        pts = [(p, f, n) for p, f, n in zip(d["mean_p"], d["freq"], d["count"], strict=True) if n]
        if pts:
            x, y, n = map(np.asarray, zip(*pts, strict=True))
            ax.plot(x, y, marker="o", linewidth=1.2, label=c)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ece = calib.get("ece")
    ax.set_title(f"{title}\nECE {ece:.4f}" if ece is not None else title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def log_loss_png(title: str, scores: Mapping[str, float], floor: float | None) -> bytes:
    """Horizontal bars of log loss per stage, the class prior as a vertical line."""
    from matplotlib.figure import Figure

    names = list(scores)
    fig = Figure(figsize=(6, 0.35 * len(names) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names[::-1], [scores[n] for n in names[::-1]], color="tab:blue")
    if floor is not None:
        ax.axvline(floor, color="tab:red", linestyle="--", label=f"class prior {floor:.4f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("log loss (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    return _png(fig)
