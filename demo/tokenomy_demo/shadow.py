"""The demo's shadow comparison: the sidecar's sampled estimate beside the truth of the run.

The sidecar compares a sample of the answers a cheaper lever gave with the
reference tier's (``spec.shadow``) and counts the verdicts in its metrics.
The demo knows every answer it got and what the large tier answers to each
question, so it can compare *all* eligible answers with the same rule
(:func:`tokenomy_sidecar.stages.shadow.same_structure`): the figure the
sample estimates. A reader sees whether the estimate's interval holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from tokenomy_api.bounds import wilson_interval
from tokenomy_demo.run import Result
from tokenomy_demo.scoring import correct, large_answer
from tokenomy_demo.tools import by_label, scrape
from tokenomy_demo.workload import Question
from tokenomy_sidecar.stages.shadow import same_structure

REFERENCE = "large"
SETTLE_SECONDS = 1.0
"""Comparisons run after the answers: the counts must hold still this long to be final."""


@dataclass(frozen=True)
class ShadowReport:
    """The sample's estimate, and the truth over every eligible answer."""

    eligible: int
    """Answers a cheaper lever gave: a semantic hit, or a tier below the reference."""
    compared: int
    agreed: int
    confidence: float
    low: float
    high: float
    """The estimate's interval at ``confidence``."""
    true_agreement: float
    """Share of all eligible answers that agree with the reference tier's answer."""
    true_retained: float | None
    """Right eligible answers as a share of right reference answers to the same questions."""
    cost: Decimal
    """What the comparisons cost."""
    share: float
    """That cost as a share of the run's spend."""

    @property
    def estimate(self) -> float:
        """Share of the compared answers that agreed."""
        return self.agreed / self.compared if self.compared else 0.0

    @property
    def holds(self) -> bool:
        """Whether the interval holds the true agreement."""
        return self.low <= self.true_agreement <= self.high

    def lines(self, reference: str) -> list[str]:
        """The report's lines for the terminal."""
        verdict = "inside" if self.holds else "OUTSIDE"
        retained = (
            f"; right answers {self.true_retained:.1%} of the {reference} tier's"
            if self.true_retained is not None
            else ""
        )
        return [
            f"Shadow quality  {self.estimate:.1%} agree with the {reference} tier "
            f"({self.low:.1%} to {self.high:.1%}, {self.confidence:.0%} interval): "
            f"{self.compared} of {self.eligible:,} eligible answers compared",
            f"  true figure   {self.true_agreement:.1%} of all {self.eligible:,} agree "
            f"({verdict} the interval){retained}",
            f"  shadow cost   ${self.cost:,.4f}  ({self.share:.1%} of the spend, comparisons "
            "included)",
        ]


def eligible(r: Result) -> bool:
    """Whether the sidecar may have compared this answer."""
    if r.status != 200:
        return False
    if r.cache == "semantic":
        return True
    return r.cache not in ("exact",) and bool(r.tier) and r.tier != REFERENCE


async def counts(metrics_url: str, timeout: float = 60.0) -> tuple[dict[str, float], Decimal]:
    """The sidecar's comparisons by result, and their cost, once they stopped changing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: tuple[dict[str, float], float] | None = None
    while True:
        page = await scrape(metrics_url)
        results = by_label(page, "tokenomy_shadow_comparisons_total", "result")
        skipped = by_label(page, "tokenomy_shadow_skipped_total", "reason")
        cost = sum(by_label(page, "tokenomy_shadow_cost_usd_total", "route").values())
        now = (results, sum(skipped.values()))
        if now == last or loop.time() > deadline:
            return results, Decimal(repr(cost))
        last = now
        await asyncio.sleep(SETTLE_SECONDS)


def report(
    questions: Sequence[Question],
    results: Sequence[Result],
    verdicts: dict[str, float],
    cost: Decimal,
    spend: Decimal,
    confidence: float,
) -> ShadowReport | None:
    """The estimate beside the truth; None when nothing was eligible."""
    chosen = [r for r in results if eligible(r)]
    if not chosen:
        return None
    agreed, compared = (
        int(verdicts.get("agree", 0)),
        int(verdicts.get("agree", 0) + verdicts.get("disagree", 0)),
    )
    low, high = wilson_interval(agreed, compared, confidence)
    qs = [questions[r.index] for r in chosen]
    agree = sum(same_structure(large_answer(q), r.text) for q, r in zip(qs, chosen, strict=True))
    right = sum(correct(q, r.text) for q, r in zip(qs, chosen, strict=True))
    right_large = sum(correct(q, large_answer(q)) for q in qs)
    return ShadowReport(
        eligible=len(chosen),
        compared=compared,
        agreed=agreed,
        confidence=confidence,
        low=low,
        high=high,
        true_agreement=agree / len(chosen),
        true_retained=right / right_large if right_large else None,
        cost=cost,
        share=float(cost / (spend + cost)) if spend + cost else 0.0,
    )
