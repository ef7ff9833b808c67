"""The report of a replay: spend with and without Tokenomy, savings by lever, quality, latency.

Pure arithmetic over the results. Spend without Tokenomy is what each
request would have cost on the reference tier (given by the caller); spend
with it is what the sidecar said each request cost (``x-tokenomy-cost-usd``,
every call included). Each request's difference is credited to the lever
that served it, so the levers add up to the total saving exactly. The agent's
tool calls, where it made any, have spends and levers of their own: a call at
the tool's price, its result as input tokens of the agent's next prompt.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from tokenomy_demo.run import Result
from tokenomy_demo.tools import ToolsReport

if TYPE_CHECKING:
    from tokenomy_demo.shadow import ShadowReport  # it scores with this module's helpers

MILLION = Decimal(1_000_000)
LEVERS = ("exact cache", "semantic cache", "routing", "cascade", "trimming and caps")


def words(text: str) -> int:
    """The stand-in's token count: whitespace-separated words, at least one."""
    return max(1, len(text.split()))


def lever(r: Result) -> str:
    """The lever that served a request.

    Requests no cache, routing or cascade served went to the default tier
    as asked; what they saved came from prompt trimming and output caps.
    """
    if r.cache == "exact":
        return "exact cache"
    if r.cache == "semantic":
        return "semantic cache"
    if "cascade:" in r.reason:
        return "cascade"
    if r.reason.startswith(("domain", "complexity")):
        return "routing"
    return "trimming and caps"


@dataclass(frozen=True)
class Report:
    """Every figure the demo and ``tokenomy simulate`` print."""

    requests: int
    mix: str
    """What the requests were, e.g. ``438 support questions, 162 word problems``."""
    reference: str
    """The tier spend without Tokenomy is priced on."""
    without: Decimal
    with_tokenomy: Decimal
    by_lever: dict[str, Decimal]
    requests_by_lever: dict[str, int]
    quality_with: float | None
    """Share of right answers with Tokenomy; None when the data cannot tell."""
    quality_without: float | None
    hit_rate: float
    tier_shares: dict[str, float]
    latency_with: float
    latency_without: float
    errors: int
    month: tuple[Decimal, Decimal] | None = None
    """Projected spend for a month (without, with), when the traffic rate is known."""
    tools: ToolsReport | None = None
    """The agent's tool calls, when it made any: spends and levers of their own."""
    shadow: ShadowReport | None = None
    """The sidecar's shadow comparison beside the truth, when the policy asks for it."""

    @property
    def saved(self) -> Decimal:
        """Spend without minus spend with."""
        return self.without - self.with_tokenomy

    @property
    def quality_retained(self) -> float | None:
        """Right answers with Tokenomy as a share of right answers on the reference tier."""
        if self.quality_with is None or not self.quality_without:
            return None
        return self.quality_with / self.quality_without


def build(
    results: Sequence[Result],
    baseline: Sequence[Decimal],
    right: Sequence[bool] | None,
    right_without: Sequence[bool] | None,
    direct: Sequence[Result],
    tiers: Sequence[str],
    mix: str,
    month_factor: Decimal | None = None,
    tools: ToolsReport | None = None,
    shadow: ShadowReport | None = None,
) -> Report:
    """The report of a run.

    ``baseline``: each request's cost on the reference tier (the last of
    ``tiers``); ``right``/``right_without``: whether each answer was right
    with Tokenomy and on the reference tier (None when unknown); ``direct``:
    requests sent straight to the reference tier, for latency; ``month_factor``
    turns this traffic into a month's; ``tools``: the agent's tool calls (reported beside the
    model requests, not in their totals).
    """
    by_lever = dict.fromkeys(LEVERS, Decimal(0))
    count: Counter[str] = Counter()
    for r in results:
        name = lever(r)
        count[name] += 1
        by_lever[name] += baseline[r.index] - r.cost
    without = sum(baseline, Decimal(0))
    with_tokenomy = sum((r.cost for r in results), Decimal(0))
    answered = Counter(r.tier for r in results if r.cache not in ("exact", "semantic") and r.tier)
    total = sum(answered.values()) or 1
    n = len(results) or 1
    return Report(
        requests=len(results),
        mix=mix,
        reference=tiers[-1],
        without=without,
        with_tokenomy=with_tokenomy,
        by_lever=by_lever,
        requests_by_lever=dict(count),
        quality_with=sum(right) / n if right is not None else None,
        quality_without=sum(right_without) / n if right_without is not None else None,
        hit_rate=sum(r.cache in ("exact", "semantic") for r in results) / n,
        tier_shares={t: answered[t] / total for t in tiers},
        latency_with=statistics.median(r.seconds for r in results) if results else 0.0,
        latency_without=statistics.median(r.seconds for r in direct) if direct else 0.0,
        errors=sum(r.status != 200 for r in results),
        month=(without * month_factor, with_tokenomy * month_factor) if month_factor else None,
        tools=tools,
        shadow=shadow,
    )


def usd(amount: Decimal) -> str:
    """Dollars with four decimals (demo amounts are small)."""
    return f"${amount:,.4f}"


def text(report: Report) -> str:
    """The report as the terminal shows it."""
    r = report
    saved_share = float(r.saved / r.without) if r.without else 0.0
    errors = f", {r.errors} errors" if r.errors else ""
    lines = [
        f"Requests        {r.requests:,} ({r.mix}){errors}",
        f"Spend without   {usd(r.without)}  (every request on the {r.reference} tier)",
        f"Spend with      {usd(r.with_tokenomy)}  (every call made, escalations included)",
        f"Saved           {usd(r.saved)}  ({saved_share:.1%})",
        "",
        "Savings by lever",
    ]
    for name in LEVERS:
        n = r.requests_by_lever.get(name, 0)
        lines.append(f"  {name:<17} {usd(r.by_lever[name]):>10}   {n:>5,} requests")
    shares = "  ".join(f"{t} {s:.0%}" for t, s in r.tier_shares.items())
    lines.append("")
    if r.quality_retained is not None and r.quality_with is not None:
        lines.append(
            f"Quality         {r.quality_retained:.1%} retained ({r.quality_with:.1%} correct "
            f"with Tokenomy, {r.quality_without or 0:.1%} all-{r.reference})"
        )
    else:
        lines.append("Quality         not measured (the data has no verdict per tier)")
    if r.shadow is not None:
        lines += r.shadow.lines(r.reference)
    lines += [
        f"Cache hit rate  {r.hit_rate:.1%}",
        f"Tier shares     {shares}  (of requests that reached a model)",
        f"Latency p50     {r.latency_with * 1000:.0f} ms with Tokenomy, "
        f"{r.latency_without * 1000:.0f} ms straight to the {r.reference} tier "
        "(stand-in timing, 10x faster than hosted models)",
    ]
    t = r.tools
    if t is not None:
        removed = 1 - t.tokens_with / t.tokens_without if t.tokens_without else 0.0
        tool_share = float((t.without - t.with_tokenomy) / t.without) if t.without else 0.0
        lines += [
            "",
            f"Agent tools     {t.calls:,} MCP calls through the sidecar ({t.not_cacheable:,} "
            f"of a tool that is not read-only), {usd(t.price)} a call; results priced as input "
            f"of the agent's next call on the {r.reference} tier",
            f"  spend without {usd(t.without):>10}   spend with {usd(t.with_tokenomy)} "
            f"({tool_share:.1%} saved)",
            f"  tool cache    {usd(t.cache_saved):>10}   {t.hits:,} calls from cache",
            f"  tool trimming {usd(t.trim_saved):>10}   result tokens {t.tokens_without:,} -> "
            f"{t.tokens_with:,} ({removed:.1%} removed)",
        ]
    if r.month is not None:
        lines.append(
            f"A month         {usd(r.month[0])} without, {usd(r.month[1])} with Tokenomy "
            "(this traffic's rate, projected)"
        )
    return "\n".join(lines)
