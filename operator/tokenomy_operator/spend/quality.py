"""Quality retained, as shadow comparisons measure it: agreement with an interval, per lever.

Pure. The sidecars report each comparison's verdict (the reference tier's
answer agreed with the one a cheaper lever served, or not); the totals keep
the counts per lever (``status.shadow``). Here they become what a person
reads (``status.quality``): the agreement rate per lever and overall, with a
two-sided Wilson interval at the policy's ``quality.confidence``, and the
``QualityBelowFloor`` condition, True while the interval's upper end of any
lever (or of all together) lies below ``quality.target``: the data then say,
at that confidence, that the lever keeps less than the floor.

Agreement with the reference is what is measured, not correctness: a cheaper
answer that disagrees with a wrong reference counts against the lever. It is
the quality the policy promises (a share of the reference tier's), measured
the strict way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tokenomy_api.bounds import wilson_interval

CONDITION = "QualityBelowFloor"
ALL = "all"
"""The lever name of every comparison together."""


@dataclass(frozen=True)
class Measured:
    """One lever's agreement and its interval."""

    lever: str
    compared: int
    agreed: int
    lower: float
    upper: float

    @property
    def rate(self) -> float:
        """Share of comparisons that agreed."""
        return self.agreed / self.compared if self.compared else 0.0


def measured(shadow: Mapping[str, Any] | None, confidence: float) -> list[Measured]:
    """Each lever's agreement from ``status.shadow`` counts, then all levers together."""
    out = []
    total, agreed = 0, 0
    for entry in (shadow or {}).get("comparisons") or []:
        n, k = int(entry["compared"]), int(entry["agreed"])
        total, agreed = total + n, agreed + k
        out.append(Measured(str(entry["lever"]), n, k, *wilson_interval(k, n, confidence)))
    if out:
        out.append(Measured(ALL, total, agreed, *wilson_interval(agreed, total, confidence)))
    return out


def percent(share: float) -> str:
    """A share as a percentage with one decimal, e.g. ``97.3%``."""
    return f"{share * 100:.1f}%"


def quality_status(
    shadow: Mapping[str, Any] | None, target: float, confidence: float, spend: Decimal | None
) -> dict[str, Any]:
    """``status.quality``: the floor, and each lever's agreement with its interval."""
    levers = measured(shadow, confidence)
    out: dict[str, Any] = {"floor": percent(target), "confidence": percent(confidence)}
    for m in levers:
        entry = {
            "lever": m.lever,
            "compared": m.compared,
            "agreement": percent(m.rate),
            "lower": percent(m.lower),
            "upper": percent(m.upper),
        }
        if m.lever == ALL:
            out.update({k: v for k, v in entry.items() if k != "lever"})
        else:
            out.setdefault("levers", []).append(entry)
    cost = Decimal(str((shadow or {}).get("cost", "0")))
    out["shadowCost"] = str(cost)
    if spend:
        out["shadowShare"] = percent(float(cost / spend))
    return out


@dataclass(frozen=True)
class Verdict:
    """The condition's state."""

    breached: bool
    reason: str
    message: str


def floor_verdict(shadow: Mapping[str, Any] | None, target: float, confidence: float) -> Verdict:
    """Whether measured quality is, at ``confidence``, below the floor ``target``."""
    levers = measured(shadow, confidence)
    if not levers:
        return Verdict(False, "NotEnoughData", "no shadow comparison yet this period")
    below = [m for m in levers if m.upper < target]
    shown = "; ".join(
        f"{m.lever}: {percent(m.rate)} of {m.compared} agreed "
        f"({percent(m.lower)} to {percent(m.upper)})"
        for m in (below or levers[-1:])
    )
    at = f"at {percent(confidence)} confidence, floor {percent(target)}"
    if below:
        return Verdict(True, "BelowFloor", f"below the floor {at}: {shown}")
    return Verdict(False, "AtOrAboveFloor", f"not below the floor {at}: {shown}")
