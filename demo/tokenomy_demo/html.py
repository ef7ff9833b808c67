"""The demo report as one self-contained HTML page with inline SVG charts (no dependencies)."""

from __future__ import annotations

from html import escape

from tokenomy_demo.report import LEVERS, Report, usd

COLOURS = {
    "exact cache": "#1f6feb",
    "semantic cache": "#8250df",
    "routing": "#2da44e",
    "cascade": "#bf8700",
    "trimming and caps": "#57606a",
    "small": "#2da44e",
    "medium": "#bf8700",
    "large": "#cf222e",
}


def _bars(items: list[tuple[str, float, str]], width: int = 420) -> str:
    """Horizontal bars: (label, value, shown text); scaled to the largest value."""
    top = max((abs(v) for _, v, _ in items), default=1.0) or 1.0
    row = 34
    out = [f'<svg role="img" width="{width + 340}" height="{row * len(items) + 10}">']
    for i, (label, value, shown) in enumerate(items):
        y = i * row + 5
        length = max(1.0, abs(value) / top * width)
        colour = COLOURS.get(label, "#57606a")
        out.append(
            f'<text x="0" y="{y + 20}" font-size="14">{escape(label)}</text>'
            f'<rect x="150" y="{y + 4}" width="{length:.1f}" height="22" fill="{colour}" rx="3">'
            f"<title>{escape(label)}: {escape(shown)}</title></rect>"
            f'<text x="{156 + length:.1f}" y="{y + 20}" font-size="13">{escape(shown)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _stacked(shares: dict[str, float], width: int = 640) -> str:
    """One bar split by share, with a legend underneath."""
    out = [f'<svg role="img" width="{width}" height="70">']
    x = 0.0
    for name, share in shares.items():
        w = share * width
        out.append(
            f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="28" fill="{COLOURS.get(name)}">'
            f"<title>{escape(name)}: {share:.0%}</title></rect>"
        )
        x += w
    for i, (name, share) in enumerate(shares.items()):
        out.append(
            f'<rect x="{i * 150}" y="42" width="14" height="14" fill="{COLOURS.get(name)}"/>'
            f'<text x="{i * 150 + 20}" y="54" font-size="13">{escape(name)} {share:.0%}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _cost_quality(report: Report, size: int = 320) -> str:
    """Cost (x, share of all-large) against quality (y, share of all-large): two points."""
    pad = 50
    cost = float(report.with_tokenomy / report.without) if report.without else 0.0
    quality = report.quality_retained if report.quality_retained is not None else 1.0

    low = min(0.8, quality - 0.05)
    high = max(1.05, quality + 0.05)

    def point(cx: float, qy: float) -> tuple[float, float]:
        # x spans 0..110 % of the all-large cost, y the qualities shown.
        return pad + cx / 1.1 * size, pad + (high - qy) / (high - low) * size

    ax, ay = point(1.0, 1.0)
    bx, by = point(cost, quality)
    grid = "".join(
        f'<line x1="{pad}" x2="{pad + size}" y1="{point(0, q)[1]:.1f}" y2="{point(0, q)[1]:.1f}" '
        f'stroke="#d0d7de"/><text x="8" y="{point(0, q)[1] + 4:.1f}" font-size="11">{q:.0%}</text>'
        for q in [low + i * (high - low) / 5 for i in range(6)]
    ) + "".join(
        f'<text x="{point(c, 0)[0] - 10:.1f}" y="{pad + size + 16}" font-size="11">{c:.0%}</text>'
        for c in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    return (
        f'<svg role="img" width="{size + 2 * pad}" height="{size + 2 * pad}">{grid}'
        f'<line x1="{pad}" x2="{pad + size}" y1="{pad + size}" y2="{pad + size}" stroke="#57606a"/>'
        f'<text x="{pad}" y="{size + pad + 36}" font-size="12">cost, share of all-large spend'
        f"</text>"
        f'<circle cx="{ax:.1f}" cy="{ay:.1f}" r="7" fill="{COLOURS["large"]}"/>'
        f'<text x="{ax - 40:.1f}" y="{ay + 24:.1f}" font-size="12">all on {report.reference}'
        f"</text>"
        f'<circle cx="{bx:.1f}" cy="{by:.1f}" r="7" fill="{COLOURS["routing"]}"/>'
        f'<text x="{bx - 20:.1f}" y="{by + 24:.1f}" font-size="12">with Tokenomy</text>'
        f'<text x="{bx - 20:.1f}" y="{by + 40:.1f}" font-size="12">'
        f"{cost:.0%} of the cost, {quality:.1%} of the quality</text></svg>"
    )


def page(report: Report, terminal_text: str, title: str = "Tokenomy demo report") -> str:
    """The whole report page."""
    r = report
    levers = [
        (name, float(r.by_lever[name]), f"{usd(r.by_lever[name])} · "
         f"{r.requests_by_lever.get(name, 0):,} requests")
        for name in LEVERS
    ]  # fmt: skip
    saved_share = float(r.saved / r.without) if r.without else 0.0
    retained = f"{r.quality_retained:.1%}" if r.quality_retained is not None else "not measured"
    quality = (
        f"<section><h2>Cost against quality</h2><p>Both as a share of sending every request to "
        f"the {escape(r.reference)} tier: quality is the share of right answers, spend what the "
        f"calls cost.</p>{_cost_quality(r)}</section>"
        if r.quality_retained is not None
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 860px; margin: 2em auto; color: #1f2328;
       padding: 0 1em; }}
h1 {{ font-size: 1.6em; margin-bottom: 0.2em; }}
.kpis {{ display: flex; gap: 1em; flex-wrap: wrap; margin: 1.2em 0; }}
.kpi {{ border: 1px solid #d0d7de; border-radius: 8px; padding: 0.6em 1em; min-width: 170px; }}
.kpi b {{ display: block; font-size: 1.5em; }}
pre {{ background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 13px; }}
section {{ margin: 2em 0; }}
</style></head><body>
<h1>{escape(title)}</h1>
<p>{r.requests:,} requests ({escape(r.mix)}) through the sidecar, against stand-in model
tiers.</p>
<div class="kpis">
<div class="kpi"><b>{saved_share:.1%}</b>spend saved ({usd(r.saved)})</div>
<div class="kpi"><b>{retained}</b>quality retained</div>
<div class="kpi"><b>{r.hit_rate:.1%}</b>cache hit rate</div>
<div class="kpi"><b>{usd(r.with_tokenomy)}</b>spent, vs {usd(r.without)}
all-{escape(r.reference)}</div>
</div>
<section><h2>Savings by lever</h2>{_bars(levers)}</section>
<section><h2>Which tier answered</h2><p>Requests that reached a model (not served from
cache).</p>{_stacked(r.tier_shares)}</section>
{quality}
<section><h2>The figures</h2><pre>{escape(terminal_text)}</pre></section>
</body></html>
"""
