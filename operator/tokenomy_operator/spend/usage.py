"""The operator's end of the usage stream: count sidecars' reports, grant budget leases.

One :class:`~tokenomy_api.ledger.Ledger` per CostPolicy and budget period;
a new period starts a new ledger. Policies without a budget are counted too
(their spend is wanted in status) and answered ``unlimited``.

Besides money, each report's tier, cache outcome, tokens, attribution
labels and task add up into :class:`~tokenomy_operator.spend.totals.Totals`
(savings, cache hit rate, tier shares, spenders, tasks) and into the
10-minute buckets alerts compare (:class:`~tokenomy_operator.spend.alerting.History`).

The controller writes each ledger's spend into ``status.spend`` (with the
last report number counted per sidecar) and the totals beside it, and after
a restart restores both from there before any report is counted
(:meth:`UsageService.restore`; reports of a policy wait until it is
restored), so nothing is lost or counted twice. When a period ends, its
totals move to ``status.previousPeriod``, the ``previousPeriod`` baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import grpc

from tokenomy_api.clock import Clock
from tokenomy_api.costpolicy import Budget
from tokenomy_api.ledger import LeaseSettings, Ledger
from tokenomy_api.periods import bounds, projected, rfc3339, share_used
from tokenomy_api.usage_protocol import SERVICE, OperatorMessage, RequestUsage, SidecarMessage
from tokenomy_operator.spend.alerting import History
from tokenomy_operator.spend.totals import Totals

log = logging.getLogger(__name__)

UNBUDGETED = Decimal("Infinity")
CENT = Decimal("0.01")
RESTORE_WAIT_SECONDS = 30.0
HOLDER_TTL_SECONDS = 24 * 3600.0
"""A sidecar name silent this long leaves ``status.spend.reports``: pods come and go (a new
name per start), and status must not grow with every one. Only a sidecar that missed the
acknowledgement of its last reports and then stays away this long would send them again."""


@dataclass
class Period:
    """A policy's ledger for one budget period."""

    start: datetime
    end: datetime
    ledger: Ledger
    totals: Totals = field(default_factory=Totals)


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
        self.history: dict[str, History] = {}
        """Per policy, recent usage in buckets: the ``movingAverage`` baseline of alerts."""
        self.previous: dict[str, dict[str, Any]] = {}
        """Per policy, ``status.previousPeriod``: the last period's totals."""
        self.restored_all = ready
        """When False, a policy's reports wait until :meth:`restore` has seen its status."""
        self._seen: dict[str, asyncio.Event] = {}
        self._persisted: dict[str, dict[str, int]] = {}
        self._active: dict[str, dict[str, float]] = {}
        """Per policy, when each sidecar name last sent anything (wall time)."""
        self._notices: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {}
        """Per policy and sidecar name, the config version it runs and what it cannot save."""
        """Per policy, the last report number per sidecar that status holds."""

    def seen(self, policy: str) -> asyncio.Event:
        """Set once the policy's status has been read (or there is nothing to read)."""
        event = self._seen.get(policy)
        if event is None:
            event = self._seen[policy] = asyncio.Event()
            if self.restored_all:
                event.set()
        return event

    def restore(self, policy: str, status: Mapping[str, Any] | None) -> bool:
        """Resume a policy's ledger and totals from its status, if that is this period's.

        Called by the controller for every policy it sees; until then, that
        policy's reports wait, so none is counted into a ledger that a
        restore would then overwrite.
        """
        event = self.seen(policy)
        if event.is_set():
            return False
        event.set()
        if policy in self.periods:
            return False
        status = status or {}
        if status.get("previousPeriod"):
            self.previous[policy] = dict(status["previousPeriod"])
        spend = status.get("spend")
        if not spend:
            return False
        period, _ = self.period(policy)
        try:
            amount = Decimal(str(spend.get("amount", "0")))
            totals = Totals.restore(status)
            if spend.get("periodStart") != rfc3339(period.start):
                # A past period: this one starts from nothing, that one is the baseline.
                began = datetime.fromisoformat(str(spend["periodStart"]))
                _, ended = self._bounds(self.budget_of(policy), began)
                self.previous[policy] = _previous(rfc3339(began), rfc3339(ended), amount, status)
                return False
            sequence = {str(r["holder"]): int(r["number"]) for r in spend.get("reports") or []}
        except (InvalidOperation, KeyError, TypeError, ValueError):
            log.warning("status of %s is unreadable; counting from zero", policy)
            return False
        period.ledger.spent, period.ledger.sequence, period.totals = amount, sequence, totals
        self._active[policy] = dict.fromkeys(sequence, self.clock.wall())
        self.persisted(policy, list(spend.get("reports") or []))
        return True

    def keep_only(self, policies: set[str]) -> None:
        """Forget the counts of deleted policies (their status went with them)."""
        tables = (
            self.periods, self.history, self.previous, self._persisted, self._active,
            self._notices,
        )  # fmt: skip
        for table in tables:
            for gone in [p for p in table if p not in policies]:
                del table[gone]

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

    def notices(self, policy: str, version: str) -> list[str]:
        """What sidecars running ``version`` of the policy's config say it cannot save
        (distinct, sorted); sidecars on another version, or long silent, are not heard."""
        active = self._active.get(policy, {})
        silent_since = self.clock.wall() - HOLDER_TTL_SECONDS
        heard = self._notices.get(policy, {})
        for holder in [h for h in heard if active.get(h, 0.0) < silent_since]:
            del heard[holder]
        return sorted({n for v, notices in heard.values() if v == version for n in notices})

    def status(self, policy: str) -> dict[str, Any]:
        """The status fields of a policy's usage: spend, totals, the previous period."""
        current = self.period(policy)[0] if policy in self.periods else None  # may turn over
        out: dict[str, Any] = {}
        if policy in self.previous:
            out["previousPeriod"] = self.previous[policy]
        if current is None:
            return out
        out["spend"] = self._spend(policy, current)
        out.update(current.totals.status())
        return out

    def _spend(self, policy: str, current: Period) -> dict[str, Any]:
        """``status.spend``, without the names of sidecars long gone."""
        active = self._active.setdefault(policy, {})
        silent_since = self.clock.wall() - HOLDER_TTL_SECONDS
        for holder in [h for h in current.ledger.sequence if active.get(h, 0.0) < silent_since]:
            del current.ledger.sequence[holder]
            active.pop(holder, None)
        budget = self.budget_of(policy)
        now = datetime.fromtimestamp(self.clock.wall(), UTC)
        spent = current.ledger.spent
        out: dict[str, Any] = {
            "amount": str(spent),
            "periodStart": rfc3339(current.start),
            "periodEnd": rfc3339(current.end),
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
        start, end = self._bounds(budget, datetime.fromtimestamp(self.clock.wall(), UTC))
        amount = budget.amount if budget is not None else UNBUDGETED
        current = self.periods.get(policy)
        if current is None or current.start != start:
            if current is not None:
                self.previous[policy] = _previous(
                    rfc3339(current.start), rfc3339(current.end), current.ledger.spent,
                    current.totals.status(),
                )  # fmt: skip
            current = Period(start, end, Ledger(amount, self.settings))
            self.periods[policy] = current
        current.ledger.budget = amount  # the policy may have been edited
        return current, budget

    @staticmethod
    def _bounds(budget: Budget | None, moment: datetime) -> tuple[datetime, datetime]:
        """The period around ``moment``: the budget's, else a calendar month in UTC."""
        if budget is None:
            return bounds("monthly", "UTC", moment)
        return bounds(budget.period, budget.time_zone, moment)

    def handle(self, message: Any) -> Any:
        """One sidecar message in, the answer out."""
        period, budget = self.period(message.policy)
        ledger = period.ledger
        self._active.setdefault(message.policy, {})[message.holder] = self.clock.wall()
        self._notices.setdefault(message.policy, {})[message.holder] = (
            message.config_version,
            tuple(message.notices),
        )
        history = self.history.get(message.policy)
        if history is None:
            history = self.history[message.policy] = History(self.clock.wall())
        for report in message.reports:
            try:
                usage = RequestUsage.from_report(report)
            except ValueError as error:
                log.warning("%s from %s", error, message.holder)
                continue
            if ledger.report(message.holder, report.number, usage.cost):
                period.totals.add(usage)
                history.add(usage, self.clock.wall())
                tokens = period.totals.task_tokens(usage.task) if usage.outcome else None
                if tokens is not None:
                    history.task_ended(tokens, self.clock.wall())
        answer = OperatorMessage(
            acknowledged=self.acknowledged(message.policy, message.holder),
            unlimited=budget is None,
            resets_at=rfc3339(period.end),
        )
        if message.want_lease and budget is not None:
            in_flight, need = _amount(message.in_flight_usd), _amount(message.need_usd)
            lease = ledger.grant(message.holder, in_flight, self.clock.monotonic(), need=need)
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


class LeaderUsage:
    """The usage stream as a replica serves it: its ledgers while it leads, else a refusal.

    Sidecars send usage to the leader's Service; one that reaches a standby
    (the label moved a moment ago) is told so and reconnects, keeping its
    reports until a leader acknowledges them.
    """

    def __init__(self, current: Callable[[], UsageService | None]) -> None:
        self.current = current

    async def stream(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """``Stream``, delegated to the ledgers in force."""
        service = self.current()
        if service is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "this operator replica is not the leader: usage goes to the "
                "tokenomy-operator-leader Service",
            )
            return
        async for answer in service.stream(requests, context):
            yield answer


def add_to_server(service: UsageService | LeaderUsage, server: grpc.aio.Server) -> None:
    """Serve ``tokenomy.usage.v1.Usage`` on a gRPC server (before it starts)."""
    handler = grpc.stream_stream_rpc_method_handler(
        service.stream,
        request_deserializer=SidecarMessage.FromString,
        response_serializer=OperatorMessage.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Stream": handler}),)
    )


def _previous(start: str, end: str, amount: Decimal, status: Mapping[str, Any]) -> dict[str, Any]:
    """``status.previousPeriod`` from a period's totals (as :meth:`Totals.status` wrote them)."""
    return {"start": start, "end": end, "amount": str(amount), "usage": status.get("usage") or {}}


def _amount(text: str) -> Decimal:
    """A sidecar's decimal string; anything but a finite, non-negative amount is 0."""
    try:
        value = Decimal(text or "0")
    except InvalidOperation:
        return Decimal(0)
    return value if value.is_finite() and value > 0 else Decimal(0)
