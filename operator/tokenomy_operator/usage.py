"""The operator's end of the usage stream: count sidecars' reports, grant budget leases.

One :class:`~tokenomy_api.ledger.Ledger` per CostPolicy and budget period;
a new period starts a new ledger. Policies without a budget are counted too
(their spend is wanted in status) and answered ``unlimited``.

The controller writes each ledger's spend into ``status.spend`` (with the
last report number counted per sidecar) and, after a restart, restores the
ledgers from there before any report is counted (:meth:`UsageService.restore`,
reports of a policy wait until it is restored), so nothing is lost or counted
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import grpc

from tokenomy_api.clock import Clock
from tokenomy_api.costpolicy import Budget
from tokenomy_api.ledger import LeaseSettings, Ledger
from tokenomy_api.periods import bounds, projected, share_used
from tokenomy_api.usage_protocol import SERVICE, OperatorMessage, SidecarMessage

log = logging.getLogger(__name__)

UNBUDGETED = Decimal("Infinity")
CENT = Decimal("0.01")
RESTORE_WAIT_SECONDS = 30.0


@dataclass
class Period:
    """A policy's ledger for one budget period."""

    start: datetime
    end: datetime
    ledger: Ledger


class UsageService:
    """Counts reports and grants leases for every policy."""

    def __init__(
        self,
        budget_of: Callable[[str], Budget | None],
        clock: Clock,
        settings: LeaseSettings | None = None,
        ready: bool = True,
    ) -> None:
        self.budget_of = budget_of
        self.clock = clock
        self.settings = settings or LeaseSettings()
        self.periods: dict[str, Period] = {}
        self.restored_all = ready
        """When False, a policy's reports wait until :meth:`restore` has seen its status."""
        self._seen: dict[str, asyncio.Event] = {}
        self._persisted: dict[str, dict[str, int]] = {}
        """Per policy, the last report number per sidecar that status holds."""

    def seen(self, policy: str) -> asyncio.Event:
        """Set once the policy's status has been read (or there is nothing to read)."""
        event = self._seen.get(policy)
        if event is None:
            event = self._seen[policy] = asyncio.Event()
            if self.restored_all:
                event.set()
        return event

    def restore(self, policy: str, spend: Mapping[str, Any] | None) -> bool:
        """Resume a policy's ledger from its ``status.spend``, if that is this period's.

        Called by the controller for every policy it sees; until then, that
        policy's reports wait, so none is counted into a ledger that a
        restore would then overwrite.
        """
        event = self.seen(policy)
        if event.is_set():
            return False
        event.set()
        if not spend or policy in self.periods:
            return False
        period, _ = self.period(policy)
        if spend.get("periodStart") != _rfc3339(period.start):
            return False  # a past period: this one starts from nothing
        try:
            period.ledger.spent = Decimal(str(spend.get("amount", "0")))
            period.ledger.sequence = {
                str(r["holder"]): int(r["number"]) for r in spend.get("reports") or []
            }
            self.persisted(policy, list(spend.get("reports") or []))
        except (InvalidOperation, KeyError, TypeError, ValueError):
            log.warning("status.spend of %s is unreadable; counting from zero", policy)
            period.ledger.spent, period.ledger.sequence = Decimal(0), {}
            return False
        return True

    def persisted(self, policy: str, reports: list[dict[str, Any]]) -> None:
        """Status now holds these report numbers: acknowledge up to them from now on."""
        self._persisted[policy] = {str(r["holder"]): int(r["number"]) for r in reports}

    def acknowledged(self, policy: str, holder: str) -> int:
        """The report number a sidecar may forget up to: counted, and safe in status.

        Without a controller writing status (``restored_all``), counted is enough.
        """
        counted = self.periods[policy].ledger.sequence.get(holder, 0)
        if self.restored_all:
            return counted
        return min(counted, self._persisted.get(policy, {}).get(holder, 0))

    def spend_status(self, policy: str) -> dict[str, Any] | None:
        """``status.spend`` for a policy whose sidecars have reported this period."""
        current = self.periods.get(policy)
        if current is None:
            return None
        budget = self.budget_of(policy)
        now = datetime.fromtimestamp(self.clock.wall(), UTC)
        spent = current.ledger.spent
        out: dict[str, Any] = {
            "amount": str(spent),
            "periodStart": _rfc3339(current.start),
            "projected": str(projected(spent, current.start, current.end, now).quantize(CENT)),
            "reports": [
                {"holder": h, "number": n} for h, n in sorted(current.ledger.sequence.items())
            ],
        }
        if budget is not None:
            out["budgetUsed"] = share_used(spent, budget.amount)
        return out

    def period(self, policy: str) -> tuple[Period, Budget | None]:
        """The policy's current period (a new ledger when the period turned over)."""
        budget = self.budget_of(policy)
        now = datetime.fromtimestamp(self.clock.wall(), UTC)
        if budget is None:
            start, end = bounds("monthly", "UTC", now)
        else:
            start, end = bounds(budget.period, budget.time_zone, now)
        amount = budget.amount if budget is not None else UNBUDGETED
        current = self.periods.get(policy)
        if current is None or current.start != start:
            current = Period(start, end, Ledger(amount, self.settings))
            self.periods[policy] = current
        current.ledger.budget = amount  # the policy may have been edited
        return current, budget

    def handle(self, message: Any) -> Any:
        """One sidecar message in, the answer out."""
        period, budget = self.period(message.policy)
        ledger = period.ledger
        for report in message.reports:
            try:
                cost = Decimal(report.cost_usd)
            except InvalidOperation:
                log.warning("report %d of %s has no valid cost", report.number, message.holder)
                continue
            ledger.report(message.holder, report.number, cost)
        answer = OperatorMessage(
            acknowledged=self.acknowledged(message.policy, message.holder),
            unlimited=budget is None,
            resets_at=_rfc3339(period.end),
        )
        if message.want_lease and budget is not None:
            try:
                in_flight = Decimal(message.in_flight_usd or "0")
            except InvalidOperation:
                in_flight = Decimal(0)
            lease = ledger.grant(message.holder, in_flight, self.clock.monotonic())
            answer.granted = True
            answer.lease_usd = str(lease.amount)
            answer.lease_seconds = self.settings.ttl_seconds
        return answer

    async def stream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """The ``Stream`` method: an answer for every message (once its policy is restored)."""
        async for message in requests:
            seen = self.seen(message.policy)
            if not seen.is_set():
                # A policy the controller has not read yet; a deleted one never will be.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(seen.wait(), RESTORE_WAIT_SECONDS)
            yield self.handle(message)


def add_to_server(service: UsageService, server: grpc.aio.Server) -> None:
    """Serve ``tokenomy.usage.v1.Usage`` on a gRPC server (before it starts)."""
    handler = grpc.stream_stream_rpc_method_handler(
        service.stream,
        request_deserializer=SidecarMessage.FromString,
        response_serializer=OperatorMessage.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Stream": handler}),)
    )


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
