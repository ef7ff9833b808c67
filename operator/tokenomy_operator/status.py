"""Status bodies for CostPolicies and ModelRoutes, as pure functions of what was observed.

Conditions follow ``metav1.Condition``: ``lastTransitionTime`` moves only when
a condition's status changes, so rewriting the same status is a no-op that
the controller can skip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tokenomy_api.costpolicy import Budget, CostPolicySpec
from tokenomy_api.readable import dollars
from tokenomy_operator.state import PolicyStatus, RouteStatus


@dataclass(frozen=True)
class Rollout:
    """How the selected sidecars took a policy's current config."""

    matched: int
    acknowledged: int
    rejecting: int
    errors: tuple[str, ...] = ()
    """Distinct NACK messages of sidecars rejecting the current version."""


def condition(
    kind: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    """One condition; keeps the previous transition time when the status did not change."""
    value = "True" if status else "False"
    before = next((c for c in previous if c.get("type") == kind), None)
    since = before["lastTransitionTime"] if before and before.get("status") == value else now
    return {
        "type": kind,
        "status": value,
        "observedGeneration": generation,
        "lastTransitionTime": since,
        "reason": reason,
        "message": message[:32768],
    }


def _ready(
    observed: PolicyStatus | RouteStatus, previous: Sequence[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    """``Ready``: the spec compiles, or the field and reason why not."""
    return condition(
        "Ready",
        observed.ready,
        observed.reason,
        observed.message,
        observed.generation,
        previous,
        now,
    )


def policy_status(
    observed: PolicyStatus,
    rollout: Rollout,
    previous: Mapping[str, Any],
    now: str,
    notices: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``status`` of a CostPolicy (spend and budget fields are not written here);
    ``notices``: what the sidecars on the current version say saves nothing."""
    conditions = previous.get("conditions") or []
    if rollout.rejecting:
        applied = (
            False,
            "Rejected",
            f"{rollout.rejecting} sidecar(s) rejected the config: " + "; ".join(rollout.errors),
        )
    elif rollout.acknowledged < rollout.matched:
        applied = (
            False,
            "Pending",
            f"{rollout.acknowledged} of {rollout.matched} sidecars run version {observed.version}",
        )
    else:
        applied = (
            True,
            "AllAcknowledged",
            f"{rollout.matched} sidecar(s) run version {observed.version}",
        )
    return {
        "observedGeneration": observed.generation,
        "configVersion": observed.version,
        "sidecars": {
            "matched": rollout.matched,
            "acknowledged": rollout.acknowledged,
            "rejecting": rollout.rejecting,
            "unmanaged": len(observed.unmanaged),
        },
        "conditions": [
            _ready(observed, conditions, now),
            condition(
                "Applied", applied[0], applied[1], applied[2], observed.generation, conditions, now
            ),
            _injected(observed, conditions, now),
            _in_effect(observed, notices, conditions, now),
        ],
    }


def _in_effect(
    observed: PolicyStatus,
    notices: Sequence[str],
    previous: Sequence[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    """``FieldsInEffect``: whether every lever the spec sets acts — as compiled, and as the
    sidecars running the current version found it (a trained model whose calibration
    supports no saving at the policy's quality target saves nothing)."""
    said = "; ".join([*([observed.no_effect] if observed.no_effect else []), *notices])
    return condition(
        "FieldsInEffect",
        not said,
        "NoEffect" if said else "AllInEffect",
        said or "every field the spec sets is acted on",
        observed.generation,
        previous,
        now,
    )


SHOWN_UNMANAGED = 10
"""Pods named in the ``SidecarsInjected`` message; the count covers the rest."""


def _injected(
    observed: PolicyStatus, previous: Sequence[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    """``SidecarsInjected``: whether every pod the policy selects runs its sidecar.

    A pod admitted before its policy existed, or while the webhook was down
    (``failurePolicy: Ignore`` lets it start), runs unmanaged until it is
    recreated; this condition (and its Warning Event) is how anyone learns.
    """
    if not observed.unmanaged:
        return condition(
            "SidecarsInjected", True, "AllInjected",
            "every selected pod runs a sidecar", observed.generation, previous, now,
        )  # fmt: skip
    names = ", ".join(observed.unmanaged[:SHOWN_UNMANAGED])
    more = len(observed.unmanaged) - SHOWN_UNMANAGED
    if more > 0:
        names += f" and {more} more"
    message = (
        f"{len(observed.unmanaged)} selected pod(s) run without a sidecar: {names}; "
        "they were admitted before the policy existed or while the webhook was "
        "unreachable: recreate them (e.g. kubectl rollout restart)"
    )
    return condition(
        "SidecarsInjected", False, "PodsWithoutSidecar", message, observed.generation, previous, now
    )


def route_status(observed: RouteStatus, previous: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The ``status`` of a ModelRoute."""
    conditions = previous.get("conditions") or []
    missing = [f"{tier}/{backend}" for tier, backend, count in observed.endpoints if count == 0]
    resolved = (
        (False, "NoEndpoints", "no ready endpoint for " + ", ".join(missing))
        if missing
        else (True, "Resolved", "every backend has a ready endpoint")
    )
    return {
        "observedGeneration": observed.generation,
        "backends": [
            {"tier": tier, "name": backend, "endpoints": count}
            for tier, backend, count in observed.endpoints
        ],
        "conditions": [
            _ready(observed, conditions, now),
            condition("ResolvedRefs", *resolved, observed.generation, conditions, now),
        ],
        "display": {"tiers": ",".join(dict.fromkeys(t for t, _, _ in observed.endpoints))},
    }


PERIODS = {"daily": "day", "weekly": "week", "monthly": "month"}


def policy_display(spec: CostPolicySpec | None, status: Mapping[str, Any]) -> dict[str, str]:
    """``status.display``: the printer columns' text, from the spec and the status written."""
    out: dict[str, str] = {}
    if spec is not None:
        out["routes"] = ",".join(spec.routes)
        if spec.budget is not None:
            amount = spec.budget.amount.normalize()
            out["budget"] = f"{amount:f} USD/{PERIODS[spec.budget.period]}"
    spend = status.get("spend")
    if spend is not None:
        out["spend"] = dollars(spend["amount"])
    if status.get("savings") is not None:
        out["saved"] = dollars(status["savings"])
    return out


def budget_condition(
    spend: Mapping[str, Any],
    budget: Budget,
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    """``BudgetExceeded``: whether this period's spend has reached the budget."""
    spent = Decimal(str(spend["amount"]))
    exceeded = spent >= budget.amount
    message = f"{spent} of {budget.amount} USD spent this {budget.period} period"
    if exceeded:
        message += f"; requests are handled as onExceeded: {budget.on_exceeded} says"
    reason = "BudgetSpent" if exceeded else "WithinBudget"
    return condition("BudgetExceeded", exceeded, reason, message, generation, previous, now)


def crossed_thresholds(
    before: Mapping[str, Any] | None, spend: Mapping[str, Any], budget: Budget
) -> list[int]:
    """The ``warnAt`` percentages this spend passed since ``before`` (same period only)."""

    def used(s: Mapping[str, Any] | None) -> Decimal:
        if not s or s.get("periodStart") != spend.get("periodStart"):
            return Decimal(0)
        return Decimal(str(s["amount"])) * 100 / budget.amount

    was, now = used(before), used(spend)
    return [t for t in sorted(budget.warn_at) if was < t <= now]
