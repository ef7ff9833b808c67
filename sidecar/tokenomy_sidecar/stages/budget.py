"""Stage 5c: the budget — reserve a request's cost before it is sent, reconcile after.

A request that will reach a model reserves an upper estimate of what it can
cost (its prompt, and ``max_tokens`` of answer, on every tier the cascade may
touch) from the sidecar's lease; once answered, the reservation becomes the
actual cost. When no lease can cover it, the policy's ``onExceeded`` decides:
``alert`` serves anyway, ``downgrade`` serves from the cheapest tier without
escalation, ``reject`` answers 429.

Leases come from a :class:`~tokenomy_api.ledger.Ledger`. A standalone sidecar
(``--config``) is the only replica of its policy and keeps the ledger itself
(:class:`LocalBudget`, in memory: a restart starts the period's count
again). Injected sidecars share the operator's ledger over the usage stream
(:mod:`tokenomy_sidecar.budget_client`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from tokenomy_api.clock import Clock
from tokenomy_api.compiled import CompiledBudget, CompiledTier
from tokenomy_api.ledger import Ledger
from tokenomy_api.periods import bounds
from tokenomy_api.usage_protocol import RequestUsage
from tokenomy_sidecar.errors import ApiError
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, Exchange, Quiet, TaskOutcome
from tokenomy_sidecar.request import prompt_text
from tokenomy_sidecar.routing.decision import estimate_tokens, walk
from tokenomy_sidecar.runtime import Runtime
from tokenomy_sidecar.wallet import Reservation, Wallet

MILLION = Decimal(1_000_000)
DEFAULT_OUTPUT_RESERVE = 1024
"""Output tokens reserved for a request that sets no ``max_tokens`` (set ``output.maxTokens``)."""
HOLDER = "self"


def estimate(tiers: Sequence[CompiledTier], body: dict[str, Any]) -> Decimal:
    """An upper estimate of a request's cost: its prompt and its answer on each tier it may try."""
    prompt = estimate_tokens(prompt_text(body))
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    output = limit if isinstance(limit, int) and limit > 0 else DEFAULT_OUTPUT_RESERVE
    n = body.get("n")
    samples = n if isinstance(n, int) and n > 0 else 1
    total = Decimal(0)
    for tier in tiers:
        price = max((b.price for b in tier.backends), key=lambda p: (p.output, p.input))
        total += (prompt * price.input + output * samples * price.output) / MILLION
    return total


def estimate_embedding(tier: CompiledTier, body: dict[str, Any]) -> Decimal:
    """An estimate of an embeddings request's cost: its input, on the tier's dearest backend."""
    given = body.get("input")
    # A string, a list of strings, a list of token ids, or a list of token-id lists.
    items = (
        given if isinstance(given, list) and not all(isinstance(t, int) for t in given) else [given]
    )
    tokens = 0
    for item in items:
        if isinstance(item, str):
            tokens += estimate_tokens(item)
        elif isinstance(item, list):
            tokens += len(item)
    price = max((b.price.input for b in tier.backends), default=Decimal(0))
    return tokens * price / MILLION


class BudgetKeeper(Protocol):
    """Where a sidecar's reservations come from."""

    async def reserve(self, amount: Decimal) -> Reservation | None:
        """Set ``amount`` aside, or None when the budget cannot cover it."""
        ...

    def settle(self, reservation: Reservation, usage: RequestUsage) -> None:
        """The request is done: count what it cost and used."""
        ...

    def exceeded_message(self, policy: str) -> str:
        """What a refused request is told: which budget, and when it resets."""
        ...

    def seconds_to_reset(self) -> int:
        """Whole seconds until the next period starts (for ``Retry-After``)."""
        ...


class Keepers(Protocol):
    """The budget keeper of each policy a sidecar serves."""

    def get(
        self,
        policy: str,
        budget: CompiledBudget | None,
        notices: Sequence[str] = (),
        version: str = "",
    ) -> BudgetKeeper | None:
        """The keeper of ``policy``, told the budget in force (and, for the operator, the
        notices of the config in force and its version); None when nothing is kept."""
        ...

    async def close(self) -> None:
        """Stop whatever the keepers run."""
        ...


def reset_message(budget: CompiledBudget, policy: str, end: datetime) -> str:
    """The refusal's words: which budget is spent and when it resets."""
    return (
        f"the {budget.period} budget of {budget.amount} USD of CostPolicy {policy} "
        f"is spent; it resets at {end.isoformat().replace('+00:00', 'Z')}"
    )


@dataclass
class LocalBudget:
    """A standalone sidecar's budget: its own ledger per period, and its wallet."""

    budget: CompiledBudget
    clock: Clock
    wallet: Wallet = field(default_factory=Wallet)
    _ledger: Ledger | None = None
    _period: tuple[datetime, datetime] | None = None

    def update(self, budget: CompiledBudget) -> None:
        """A new config's budget: same period and spend, new amount and rules."""
        self.budget = budget
        if self._ledger is not None:
            self._ledger.budget = budget.amount
        self._period = None  # the period or time zone may have changed

    def period(self) -> tuple[datetime, datetime]:
        """The current period's start and end, in UTC."""
        now = datetime.fromtimestamp(self.clock.wall(), UTC)
        if self._period is None or not self._period[0] <= now < self._period[1]:
            period = bounds(self.budget.period, self.budget.time_zone, now)
            if self._period is not None and period[0] != self._period[0]:
                self._ledger = None  # a new period: nothing spent yet
                self.wallet = Wallet()
            self._period = period
        return self._period

    def _the_ledger(self) -> Ledger:
        self.period()
        if self._ledger is None:
            self._ledger = Ledger(self.budget.amount)
        return self._ledger

    async def reserve(self, amount: Decimal) -> Reservation | None:
        """Set ``amount`` aside, renewing the lease when it runs out; None when spent."""
        ledger = self._the_ledger()
        now = self.clock.monotonic()
        held = self.wallet.reserve(amount, now)
        if held is None:
            lease = ledger.grant(HOLDER, self.wallet.reserved, now, need=amount)
            self.wallet.renew(lease.amount, lease.expires)
            held = self.wallet.reserve(amount, now)
        return held

    def settle(self, reservation: Reservation, usage: RequestUsage) -> None:
        """The request is done: count what it cost."""
        report = self.wallet.settle(reservation, usage)
        self._the_ledger().report(HOLDER, report.number, report.cost)
        self.wallet.acknowledged(report.number)

    def exceeded_message(self, policy: str) -> str:
        """What a refused request is told: which budget, and when it resets."""
        return reset_message(self.budget, policy, self.period()[1])

    def seconds_to_reset(self) -> int:
        """Whole seconds until the next period starts (for ``Retry-After``)."""
        end = self.period()[1]
        return max(1, int(end.timestamp() - self.clock.wall()) + 1)


@dataclass
class LocalKeepers:
    """Standalone: one in-process budget per policy."""

    clock: Clock
    budgets: dict[str, LocalBudget] = field(default_factory=dict)

    def get(
        self,
        policy: str,
        budget: CompiledBudget | None,
        notices: Sequence[str] = (),
        version: str = "",
    ) -> BudgetKeeper | None:
        """The policy's budget, updated to the one in force; None without one.

        Standalone, usage goes to metrics only: there is no status to report it to.
        """
        if budget is None:
            return None
        keeper = self.budgets.get(policy)
        if keeper is None:
            keeper = self.budgets[policy] = LocalBudget(budget, self.clock)
        elif keeper.budget != budget:
            keeper.update(budget)
        return keeper

    async def close(self) -> None:
        """Nothing runs in the background."""


def with_outcome(usage: RequestUsage, outcome: TaskOutcome) -> RequestUsage:
    """``usage`` carrying how its task ended."""
    return replace(usage, outcome="success" if outcome.success else "failure",
                   score=outcome.score)  # fmt: skip


class Budget(Quiet):
    """Reserves each request's cost before any call, and reports what it used at the end."""

    name = "budget"
    optional = False

    def __init__(self, keepers: Keepers | None, metrics: Metrics) -> None:
        self.keepers = keepers
        self.metrics = metrics

    async def request(self, x: Exchange) -> Answer | None:
        """Reserve, or apply ``onExceeded``: refuse (429), downgrade, or serve and count.

        Embeddings are never downgraded (another model's vectors would not
        match the ones stored): past the budget they are served or refused.
        """
        config = x.runtime.config
        x.spend.keeper = keeper = self._keeper(x)
        spec = config.budget
        if spec is None or keeper is None:
            return None
        routing = x.routing
        if x.embedding:
            cost = estimate_embedding(routing.tier, x.chat.body)
        else:
            names = [routing.tier.name] if routing.straight else walk(x.route, routing.tier.name)
            cost = estimate([x.route.tier(n) for n in names], x.chat.body)
        x.spend.reservation = await keeper.reserve(cost)
        if x.spend.reservation is not None:
            return None
        self.metrics.budget_exceeded.labels(*x.labels[:2], spec.on_exceeded).inc()
        if spec.on_exceeded == "reject":
            x.headers["retry-after"] = str(keeper.seconds_to_reset())
            raise ApiError(
                429,
                keeper.exceeded_message(config.policy.key),
                "budget_exceeded",
                code="budget_exceeded",
            )
        # Served past the budget: counted when done, reserved nothing.
        x.spend.reservation = Reservation(Decimal(0))
        if spec.on_exceeded == "downgrade" and not x.embedding:
            routing.tier, routing.straight = x.route.tiers[0], True
            routing.reason = f"{routing.reason}; budget spent: cheapest tier"
        else:
            routing.reason = f"{routing.reason}; budget spent"
        return None

    async def close(self, x: Exchange) -> None:
        """Report what the request used and settle its reservation; failures that cost count.

        Every request is reported (a hit too: the operator counts hits), once.
        """
        spend = x.spend
        keeper = spend.keeper or self._keeper(x)  # a cache hit never reached request()
        if keeper is None:
            return
        if spend.reservation is not None or spend.usage is not None or spend.spent > 0:
            usage = spend.usage or RequestUsage(spend.spent, route=x.route.name, task=x.task)
            if x.outcome is not None:
                usage = with_outcome(usage, x.outcome)
            keeper.settle(spend.reservation or Reservation(Decimal(0)), usage)

    def report_outcome(self, runtime: Runtime, task: str, outcome: TaskOutcome) -> bool:
        """Report a task's outcome on its own; False where nothing is reported to."""
        if self.keepers is None:
            return False
        config = runtime.config
        keeper = self.keepers.get(config.policy.key, config.budget, runtime.notices, config.version)
        if keeper is None:
            return False
        keeper.settle(
            Reservation(Decimal(0)), with_outcome(RequestUsage(Decimal(0), task=task), outcome)
        )
        return True

    def _keeper(self, x: Exchange) -> BudgetKeeper | None:
        """Where the request is reported and its budget kept (None standalone without budget)."""
        if self.keepers is None:
            return None
        config = x.runtime.config
        return self.keepers.get(config.policy.key, config.budget, x.runtime.notices, config.version)
