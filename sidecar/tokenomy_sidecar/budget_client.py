"""An injected sidecar's usage reports and budget leases over the operator's usage stream.

Every request of every policy is reported (cost, savings, tier, cache,
tokens, attribution labels, task), budget or not: the operator sums them
into the policy's status and alerts. With a budget, every sidecar of a
policy spends from leases the operator grants out of one ledger, so
replicas share the budget. Reports are numbered; the ones the
operator has not acknowledged are sent again after a reconnect and counted
once. A sidecar that restarts takes a new name (node id plus a random
suffix), so its numbering starting again at 1 is never mistaken for replays.

While the operator is unreachable the policy's ``failMode`` applies:
``lease`` keeps spending what the current lease still covers (until it
expires), ``stop`` refuses at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import grpc

from tokenomy_api.clock import Clock
from tokenomy_api.compiled import CompiledBudget
from tokenomy_api.periods import bounds
from tokenomy_api.usage_protocol import METHOD, OperatorMessage, RequestUsage, SidecarMessage
from tokenomy_sidecar.stages.budget import BudgetKeeper, reset_message
from tokenomy_sidecar.wallet import Reservation, Wallet

log = logging.getLogger(__name__)

LEASE_WAIT_SECONDS = 2.0
"""How long a request waits for a lease before its budget counts as spent."""
LEASE_ROUNDS = 16
"""Lease requests one reservation may make while its sidecar's other requests take what
the grants bring; a grant with nothing free in it ends the rounds at once."""
EXPIRY_MARGIN = 0.9
"""Share of a lease's life the sidecar spends it for (clocks drift; the operator's rules)."""
FLUSH_SECONDS = 0.05
"""Reports are sent at most this long after a request ends, several at a time."""
MAX_UNSENT = 10_000
"""Reports kept one by one while the operator is away; past this, the ones never sent are
merged into one (money and tokens exact, per-request detail dropped), so memory stays
bounded however long the outage."""


class RemoteBudget:
    """One policy's budget for this sidecar."""

    def __init__(
        self, address: str, node: str, policy: str, budget: CompiledBudget | None, clock: Clock
    ) -> None:
        self.address = address
        self.holder = f"{node}#{secrets.token_hex(4)}"
        self.policy = policy
        self.budget = budget
        self.clock = clock
        self.wallet = Wallet()
        self.connected = False
        self.unlimited = False
        self.resets_at: datetime | None = None
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._waiter: asyncio.Future[bool] | None = None
        """Resolves when the pending lease request is answered (True) or its stream
        breaks (False)."""
        self._flushing = False
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()
        self._sent = 0
        """The highest report number sent on the current stream."""
        self._mark = Decimal(0)
        """What had settled when the pending lease was asked for."""
        self.notices: tuple[str, ...] = ()
        """What the config in force cannot save; every message carries it."""
        self.version = ""
        """The version of that config (the operator reads only notices of its current one)."""

    def start(self) -> None:
        """Connect, and keep reconnecting, in the background."""
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Send what is left, then stop."""
        if self._task is not None:
            if self.connected and self.wallet.unsent:
                self._outbox.put_nowait(self._message(everything=True))
                await asyncio.sleep(FLUSH_SECONDS)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- the stream ----------------------------------------------------------------

    def _message(
        self, want_lease: bool = False, everything: bool = False, need: Decimal = Decimal(0)
    ) -> Any:
        # Reports stay unacknowledged until the operator has them in status; they
        # are sent once, and all of them again after a reconnect.
        reports = [
            r.usage.report(r.number)
            for r in self.wallet.unsent
            if everything or r.number > self._sent
        ]
        if self.wallet.unsent:
            self._sent = max(self._sent, self.wallet.unsent[-1].number)
        return SidecarMessage(
            holder=self.holder,
            policy=self.policy,
            reports=reports,
            want_lease=want_lease,
            in_flight_usd=str(self.wallet.reserved),
            need_usd=str(need) if want_lease else "",
            notices=list(self.notices),
            config_version=self.version,
        )

    async def _requests(self, outbox: asyncio.Queue[Any]) -> AsyncIterator[Any]:
        yield self._message(everything=True)  # on every (re)connect: all not acknowledged
        while True:
            yield await outbox.get()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            # Each stream reads its own queue: the request iterator of a stream that broke
            # can outlive it, and would otherwise take (and lose) the next lease request.
            self._outbox = asyncio.Queue()
            try:
                async with grpc.aio.insecure_channel(self.address) as channel:
                    call = channel.stream_stream(
                        METHOD,
                        request_serializer=SidecarMessage.SerializeToString,
                        response_deserializer=OperatorMessage.FromString,
                    )(self._requests(self._outbox))
                    async for answer in call:
                        self.connected = True
                        backoff = 0.1
                        self._on_answer(answer)
            except grpc.aio.AioRpcError as error:
                log.warning("usage stream to %s: %s", self.address, error.code().name)
            except Exception:
                log.exception("usage stream to %s failed", self.address)
            self.connected = False
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(False)
            await asyncio.sleep(backoff)
            backoff = min(5.0, backoff * 2)

    def _on_answer(self, answer: Any) -> None:
        self._first.set()
        self.wallet.acknowledged(answer.acknowledged)
        self.unlimited = answer.unlimited
        if answer.resets_at:
            self.resets_at = datetime.fromisoformat(answer.resets_at)
        if answer.granted:
            expires = self.clock.monotonic() + answer.lease_seconds * EXPIRY_MARGIN
            self.wallet.renew(Decimal(answer.lease_usd), expires, self._mark)
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(True)

    def _flush(self) -> None:
        self._flushing = False
        # While away, nothing is queued: the reconnect sends every report not acknowledged.
        if self.connected and self.wallet.unsent:
            self._outbox.put_nowait(self._message())

    # --- BudgetKeeper ------------------------------------------------------------

    async def reserve(self, amount: Decimal) -> Reservation | None:
        """From the current lease, or a new one; None when the budget cannot cover it."""
        if self.budget is None:
            return Reservation(Decimal(0))  # reports only
        if not self._first.is_set():
            # Just started: give the stream a moment to come up before judging.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first.wait(), LEASE_WAIT_SECONDS)
        if self.unlimited:
            return Reservation(Decimal(0))
        if not self.connected and self.budget.fail_mode == "stop":
            return None
        # Requests of this sidecar share its lease: a grant covers the one that asked,
        # and the others waiting ask again. Only a grant with nothing free in it says the
        # budget is spent; a stream that broke meanwhile is judged by the fail mode.
        for _ in range(LEASE_ROUNDS):
            held = self.wallet.reserve(amount, self.clock.monotonic())
            if held is not None or not self.connected:
                return held
            if self._waiter is None or self._waiter.done():
                self._waiter = asyncio.get_running_loop().create_future()
                self._mark = self.wallet.settled
                self._outbox.put_nowait(self._message(want_lease=True, need=amount))
            try:
                granted = await asyncio.wait_for(asyncio.shield(self._waiter), LEASE_WAIT_SECONDS)
            except TimeoutError:
                return None
            if granted and self.wallet.free <= 0:
                return None  # granted nothing new: the budget is spent
        return None

    def settle(self, reservation: Reservation, usage: RequestUsage) -> None:
        """Count the request and send its report soon."""
        self.wallet.settle(reservation, usage)
        if len(self.wallet.unsent) > MAX_UNSENT:
            merged = self.wallet.compact(after=self._sent)
            if merged:
                log.warning("operator away: %d usage reports merged into one", merged)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush)

    def _end(self) -> datetime:
        if self.resets_at is not None:
            return self.resets_at
        now = datetime.fromtimestamp(self.clock.wall(), UTC)
        if self.budget is None:
            return bounds("monthly", "UTC", now)[1]  # how the operator counts unbudgeted spend
        return bounds(self.budget.period, self.budget.time_zone, now)[1]

    def exceeded_message(self, policy: str) -> str:
        """Which budget is spent and when it resets."""
        assert self.budget is not None  # without a budget nothing is refused
        return reset_message(self.budget, policy, self._end())

    def seconds_to_reset(self) -> int:
        """Whole seconds until the next period starts."""
        return max(1, int(self._end().timestamp() - self.clock.wall()) + 1)


@dataclass
class RemoteKeepers:
    """Under the operator: one usage stream per policy, with the budget if it has one."""

    address: str
    node: str
    clock: Clock
    budgets: dict[str, RemoteBudget] = field(default_factory=dict)

    def get(
        self,
        policy: str,
        budget: CompiledBudget | None,
        notices: Sequence[str] = (),
        version: str = "",
    ) -> BudgetKeeper:
        """The policy's budget, updated to the one in force."""
        keeper = self.budgets.get(policy)
        if keeper is None:
            keeper = self.budgets[policy] = RemoteBudget(
                self.address, self.node, policy, budget, self.clock
            )
            keeper.start()
        keeper.budget = budget
        keeper.notices, keeper.version = tuple(notices), version
        return keeper

    async def close(self) -> None:
        """Flush and close every stream."""
        for keeper in self.budgets.values():
            await keeper.close()
