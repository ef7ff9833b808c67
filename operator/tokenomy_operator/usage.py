"""The operator's end of the usage stream: count sidecars' reports, grant budget leases.

One :class:`~tokenomy_api.ledger.Ledger` per CostPolicy and budget period;
a new period starts a new ledger. Policies without a budget are counted too
(their spend is wanted in status) and answered ``unlimited``.

Not built yet: writing the ledgers' spend into CostPolicy status, and
resuming them from status after a restart (the ledger supports it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import grpc

from tokenomy_api.clock import Clock
from tokenomy_api.costpolicy import Budget
from tokenomy_api.ledger import LeaseSettings, Ledger
from tokenomy_api.periods import bounds
from tokenomy_api.usage_protocol import SERVICE, OperatorMessage, SidecarMessage

log = logging.getLogger(__name__)

UNBUDGETED = Decimal("Infinity")


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
    ) -> None:
        self.budget_of = budget_of
        self.clock = clock
        self.settings = settings or LeaseSettings()
        self.periods: dict[str, Period] = {}

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
            acknowledged=ledger.sequence.get(message.holder, 0),
            unlimited=budget is None,
            resets_at=period.end.isoformat().replace("+00:00", "Z"),
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
        """The ``Stream`` method: an answer for every message."""
        async for message in requests:
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
