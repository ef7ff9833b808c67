"""The demo's figures: spend with and without Tokenomy, savings by lever, quality, latency.

Pure arithmetic over the run's results. Spend without Tokenomy is what each
request would have cost on the large tier (its prompt and the large tier's
own answer, at the large tier's price); spend with it is what the sidecar
said each request cost (``x-tokenomy-cost-usd``, every call included). Each
request's difference is credited to the lever that served it, so the levers
add up to the total saving exactly.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

from tokenomy_api.modelroute import Price
from tokenomy_demo.run import SYSTEM, Result
from tokenomy_demo.workload import Question, support_answer

MILLION = Decimal(1_000_000)
LEVERS = ("exact cache", "semantic cache", "routing", "cascade", "output caps")


def words(text: str) -> int:
    """The stand-in's token count: whitespace-separated words, at least one."""
    return max(1, len(text.split()))


def large_answer(q: Question) -> str:
    """What the large tier answers."""
    return support_answer(q.intent) if q.kind == "support" else q.answers[1]


def cost_on_large(q: Question, price: Price) -> Decimal:
    """What the question costs sent straight to the large tier."""
    prompt = words(SYSTEM) + words(q.text)
    return (prompt * price.input + words(large_answer(q)) * price.output) / MILLION


def correct(q: Question, text: str) -> bool:
    """Whether the served answer is right for the question asked.

    Support: the answer must be for the question's intent (a semantic hit
    may serve another intent's). Arithmetic: the answer must be one of the
    recorded answers to *this* question, and that answer must have been right.
    """
    if q.kind == "support":
        return text.startswith(f"[{q.intent}]")
    served = text.split()
    for answer, right in zip(q.answers, q.correct, strict=True):
        if served == answer.split():
            return right
    return False


def lever(r: Result) -> str:
    """The lever that served a request, or ``none`` (it went to the large tier as asked)."""
    if r.cache == "exact":
        return "exact cache"
    if r.cache == "semantic":
        return "semantic cache"
    if "cascade:" in r.reason:
        return "cascade"
    if r.reason.startswith(("domain", "complexity")):
        return "routing"
    return "none"


@dataclass(frozen=True)
class Report:
    """Every figure the demo prints."""

    requests: int
    support: int
    math: int
    without: Decimal
    with_tokenomy: Decimal
    by_lever: dict[str, Decimal]
    requests_by_lever: dict[str, int]
    quality_with: float
    quality_without: float
    hit_rate: float
    tier_shares: dict[str, float]
    latency_with: float
    latency_without: float
    errors: int

    @property
    def saved(self) -> Decimal:
        """Spend without minus spend with."""
        return self.without - self.with_tokenomy

    @property
    def quality_retained(self) -> float:
        """Correct answers with Tokenomy as a share of correct answers all-large."""
        return self.quality_with / self.quality_without if self.quality_without else 0.0


def build(results: list[Result], direct: list[Result], large_price: Price) -> Report:
    """The report of a run; ``direct`` are requests sent straight to the large tier."""
    by_lever = dict.fromkeys(LEVERS, Decimal(0))
    count: Counter[str] = Counter()
    without = Decimal(0)
    for r in results:
        baseline = cost_on_large(r.question, large_price)
        without += baseline
        name = lever(r)
        count[name] += 1
        if name != "none":
            by_lever[name] += baseline - r.cost
    with_tokenomy = sum((r.cost for r in results), Decimal(0))
    # A request that reached the large tier unchanged saves nothing; anything
    # left over (rounding of the header) stays visible instead of vanishing.
    rest = without - with_tokenomy - sum(by_lever.values())
    if rest:
        by_lever["none"] = rest
    tiers = Counter(r.tier for r in results if r.cache not in ("exact", "semantic"))
    answered = sum(tiers.values()) or 1
    right = sum(correct(r.question, r.text) for r in results)
    right_large = sum(r.question.kind == "support" or r.question.correct[1] for r in results)
    return Report(
        requests=len(results),
        support=sum(r.question.kind == "support" for r in results),
        math=sum(r.question.kind == "math" for r in results),
        without=without,
        with_tokenomy=with_tokenomy,
        by_lever=by_lever,
        requests_by_lever=dict(count),
        quality_with=right / len(results),
        quality_without=right_large / len(results),
        hit_rate=sum(r.cache in ("exact", "semantic") for r in results) / len(results),
        tier_shares={t: tiers[t] / answered for t in ("small", "medium", "large")},
        latency_with=statistics.median(r.seconds for r in results),
        latency_without=statistics.median(r.seconds for r in direct) if direct else 0.0,
        errors=sum(r.status != 200 for r in results),
    )


def usd(amount: Decimal) -> str:
    """Dollars with four decimals (demo amounts are small)."""
    return f"${amount:,.4f}"


def text(report: Report) -> str:
    """The report as the terminal shows it."""
    r = report
    saved_share = float(r.saved / r.without) if r.without else 0.0
    lines = [
        f"Requests        {r.requests:,} ({r.support:,} support questions, "
        f"{r.math:,} arithmetic word problems){'' if not r.errors else f', {r.errors} errors'}",
        f"Spend without   {usd(r.without)}  (every request on the large tier)",
        f"Spend with      {usd(r.with_tokenomy)}  (every call made, escalations included)",
        f"Saved           {usd(r.saved)}  ({saved_share:.1%})",
        "",
        "Savings by lever",
    ]
    for name in (*LEVERS, "none"):
        if name in r.by_lever:
            n = r.requests_by_lever.get(name, 0)
            lines.append(f"  {name:<15} {usd(r.by_lever[name]):>10}   {n:>5,} requests")
    shares = "  ".join(f"{t} {s:.0%}" for t, s in r.tier_shares.items())
    lines += [
        "",
        f"Quality         {r.quality_retained:.1%} retained ({r.quality_with:.1%} correct with "
        f"Tokenomy, {r.quality_without:.1%} all-large)",
        f"Cache hit rate  {r.hit_rate:.1%}",
        f"Tier shares     {shares}  (of requests that reached a model)",
        f"Latency p50     {r.latency_with * 1000:.0f} ms with Tokenomy, "
        f"{r.latency_without * 1000:.0f} ms straight to the large tier "
        "(stand-in timing, 10x faster than hosted models)",
    ]
    return "\n".join(lines)
