"""``--plot``: cost against quality, each router's curve beside the random and perfect ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")  # files only: no display on servers and in CI

import matplotlib.pyplot as plt

from tokenomy_eval.cascade import CascadeResult
from tokenomy_eval.routing import Evaluation

STYLES: dict[str, dict[str, Any]] = {
    "complexity router": {"color": "#1f6feb", "linewidth": 2.2},
    "random router": {"color": "#888888", "linestyle": "--"},
    "cost only (cheapest calls to strong)": {"color": "#c28e00", "linestyle": ":"},
    "perfect router": {"color": "#2da44e", "linestyle": "-."},
}


def draw(
    path: Path, title: str, evaluation: Evaluation, cascade: CascadeResult | None, fraction: float
) -> None:
    """Write a PNG: share of the strong model's cost (x) against share of its quality (y)."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    cost, quality = evaluation.strong_cost, evaluation.strong_quality
    for name, curve in evaluation.curves.items():
        ax.plot(curve.cost / cost, curve.quality / quality, label=name, **STYLES.get(name, {}))
    if cascade is not None:
        c = cascade.curve
        ax.plot(c.cost / cost, c.quality / quality, label="cascade", color="#cf222e", linewidth=2.2)
        ax.scatter(
            [1 - cascade.row.cost_reduction], [cascade.row.quality], color="#cf222e", zorder=5
        )
    router = next(r for r in evaluation.rows if r.name == "complexity router")
    ax.scatter([1 - router.cost_reduction], [router.quality], color="#1f6feb", zorder=5,
               label="cut chosen on train")  # fmt: skip
    ax.axhline(fraction, color="#444444", linewidth=0.8)
    ax.annotate(f"{fraction:.0%} of strong quality", (0.01, fraction + 0.005), fontsize=8)
    ax.set_xlabel("cost, share of sending everything to the strong model")
    ax.set_ylabel("quality, share of the strong model's")
    ax.set_xlim(0, max(1.05, float(ax.get_xlim()[1])))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
