"""Thresholds that tune themselves: shadow comparisons move the cheaper levers' thresholds.

Pure. For each tunable lever (the cascade's threshold, the semantic cache's
threshold, the complexity router's cut) :func:`decide` reads the comparisons
made since the lever last changed and returns the lever's next state:

- **tighten** one ``step`` when the agreement's interval (at
  ``quality.confidence``) lies wholly below ``quality.target``, after at
  least :data:`MIN_TO_TIGHTEN` comparisons, up to ``maxOffset``; the offset it
  left is remembered as *known bad*;
- **loosen** one ``step`` when the interval lies wholly above the floor after
  ``minSamples`` comparisons, but never back to an offset known bad;
- otherwise leave it.

Every change starts the evidence afresh (``base_compared``/``base_agreed``):
a verdict only counts for the offset it was measured under. The known-bad
mark is the hysteresis: a lever that failed at an offset never returns to it,
so it cannot swing between two offsets. Comparisons still in flight at a
change (at most a handful per sidecar) count for the new offset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tokenomy_api.bounds import wilson_interval
from tokenomy_api.costpolicy import AutoTune

LEVERS = ("cascade", "semantic_cache", "routing")
"""The levers with a threshold to tune (the default tier's answers have none)."""
MIN_TO_TIGHTEN = 10
"""Comparisons a tightening needs at least, however far below the floor they are."""


@dataclass(frozen=True)
class Tuned:
    """One lever's tuning, as ``status.tuning`` keeps it."""

    lever: str
    offset: float = 0.0
    known_bad: float = -1.0
    base_compared: int = 0
    base_agreed: int = 0
    changed: str = ""

    def status(self) -> dict[str, Any]:
        """As ``status.tuning`` writes it."""
        return {
            "lever": self.lever,
            "offset": self.offset,
            "knownBad": self.known_bad,
            "baseCompared": self.base_compared,
            "baseAgreed": self.base_agreed,
            "changed": self.changed,
        }

    @classmethod
    def read(cls, entry: Mapping[str, Any]) -> Tuned:
        """From ``status.tuning``."""
        return cls(
            str(entry["lever"]),
            float(entry.get("offset", 0.0)),
            float(entry.get("knownBad", -1.0)),
            int(entry.get("baseCompared", 0)),
            int(entry.get("baseAgreed", 0)),
            str(entry.get("changed", "")),
        )


@dataclass(frozen=True)
class Change:
    """A change to one lever, for its Event."""

    reason: str
    """``ThresholdTightened`` or ``ThresholdLoosened``."""
    message: str


def decide(
    tuned: Tuned,
    compared: int,
    agreed: int,
    floor: float,
    confidence: float,
    spec: AutoTune,
    now: str,
) -> tuple[Tuned, Change | None]:
    """The lever's next state from its comparisons this period (``compared``, ``agreed``)."""
    if compared < tuned.base_compared or agreed < tuned.base_agreed:
        tuned = replace(tuned, base_compared=0, base_agreed=0)  # a new period: counts restart
    n, k = compared - tuned.base_compared, agreed - tuned.base_agreed
    low, high = wilson_interval(k, n, confidence)
    evidence = (
        f"{k} of {n} comparisons agreed since the last change ({k / n:.1%}; "
        f"{low:.1%} to {high:.1%} at {confidence:.0%} confidence), floor {floor:.1%}"
        if n
        else ""
    )
    offset = tuned.offset
    if n >= MIN_TO_TIGHTEN and high < floor and offset < spec.max_offset:
        new = _round(min(spec.max_offset, offset + spec.step))
        after = replace(tuned, offset=new, known_bad=max(tuned.known_bad, offset),
                        base_compared=compared, base_agreed=agreed, changed=now)  # fmt: skip
        return after, Change(
            "ThresholdTightened", f"{tuned.lever}: tightened {offset:g} -> {new:g}: {evidence}"
        )
    loosened = _round(max(0.0, offset - spec.step))
    if n >= spec.min_samples and low > floor and offset > 0 and loosened > tuned.known_bad:
        after = replace(tuned, offset=loosened, base_compared=compared, base_agreed=agreed,
                        changed=now)  # fmt: skip
        return after, Change(
            "ThresholdLoosened", f"{tuned.lever}: loosened {offset:g} -> {loosened:g}: {evidence}"
        )
    return tuned, None


def _round(value: float) -> float:
    return round(value, 6)


def tune(
    previous: Sequence[Mapping[str, Any]],
    shadow: Mapping[str, Any] | None,
    floor: float,
    confidence: float,
    spec: AutoTune,
    now: str,
) -> tuple[list[dict[str, Any]], list[Change]]:
    """Every tunable lever's next state (``status.tuning``) and the changes made."""
    known = {t.lever: t for t in map(Tuned.read, previous)}
    counts = {
        str(c["lever"]): (int(c["compared"]), int(c["agreed"]))
        for c in (shadow or {}).get("comparisons") or []
    }
    out, changes = [], []
    for lever in LEVERS:
        tuned = known.get(lever, Tuned(lever))
        if lever in counts:
            tuned, change = decide(tuned, *counts[lever], floor, confidence, spec, now)
            if change is not None:
                changes.append(change)
        if lever in counts or lever in known:
            out.append(tuned.status())
    return out, changes
