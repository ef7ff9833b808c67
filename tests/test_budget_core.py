"""Budget groundwork: periods, the operator's lease ledger, the sidecar's wallet, no leaks."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tokenomy_api.ledger import LeaseSettings, Ledger, overshoot_bound
from tokenomy_api.periods import bounds, projected, share_used
from tokenomy_api.usage_protocol import RequestUsage
from tokenomy_sidecar.wallet import Reservation, Wallet


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "zone", "now", "start", "end"),
    [
        ("daily", "UTC", "2026-11-29T15:00", "2026-11-29T00:00", "2026-11-30T00:00"),
        # Berlin is UTC+1 in winter: its day starts at 23:00 UTC the day before.
        ("daily", "Europe/Berlin", "2026-11-29T23:30", "2026-11-29T23:00", "2026-11-30T23:00"),
        # A spring-forward day is 23 hours long.
        ("daily", "Europe/Berlin", "2026-03-29T12:00", "2026-03-28T23:00", "2026-03-29T22:00"),
        ("weekly", "UTC", "2026-11-29T15:00", "2026-11-23T00:00", "2026-11-30T00:00"),  # Sunday
        ("weekly", "UTC", "2026-11-30T00:00", "2026-11-30T00:00", "2026-12-07T00:00"),  # Monday
        ("monthly", "UTC", "2026-12-31T23:59", "2026-12-01T00:00", "2027-01-01T00:00"),
        ("monthly", "America/New_York", "2026-03-01T03:00", "2026-02-01T05:00", "2026-03-01T05:00"),
        ("monthly", "UTC", "2028-02-29T12:00", "2028-02-01T00:00", "2028-03-01T00:00"),
    ],
)
def test_period_bounds(period: str, zone: str, now: str, start: str, end: str) -> None:
    assert bounds(period, zone, utc(now)) == (utc(start), utc(end))  # type: ignore[arg-type]


def test_projection_and_share() -> None:
    start, end = utc("2026-11-01T00:00"), utc("2026-12-01T00:00")
    assert projected(Decimal(100), start, end, utc("2026-11-16T00:00")) == Decimal(200)
    assert projected(Decimal(5), start, end, start) == Decimal(5)
    assert share_used(Decimal("41.99"), Decimal(100)) == "41%"
    assert share_used(Decimal(150), Decimal(100)) == "150%"


def test_leases_shrink_as_the_budget_runs_low() -> None:
    settings = LeaseSettings(ttl_seconds=30, share=Decimal("0.5"), maximum_share=Decimal(1))
    ledger = Ledger(Decimal(100), settings)
    first = ledger.grant("a", Decimal(0), now=0)
    assert first.amount == Decimal(50)  # half of what is left, one holder
    second = ledger.grant("b", Decimal(0), now=0)
    assert second.amount == Decimal("12.5")  # half of the 50 left, split between two
    assert ledger.available() == Decimal("37.5")
    ledger.report("a", 1, Decimal(50))
    again = ledger.grant("a", Decimal(0), now=1)
    assert again.amount == Decimal("9.375")
    assert ledger.outstanding() + ledger.spent + ledger.available() == ledger.budget


def test_no_lease_takes_more_than_its_share_of_the_budget() -> None:
    ledger = Ledger(Decimal(100))  # default: at most 1 % of the budget per fresh lease
    assert ledger.grant("a", Decimal(0), now=0).amount == Decimal(1)
    assert ledger.grant("b", Decimal(0), now=0).amount == Decimal(1)


def test_an_expired_lease_returns_to_the_pool() -> None:
    ledger = Ledger(
        Decimal(10), LeaseSettings(ttl_seconds=30, share=Decimal(1), maximum_share=Decimal(1))
    )
    ledger.grant("a", Decimal(0), now=0)
    assert ledger.available() == 0
    ledger.expire(now=29)
    assert ledger.available() == 0
    ledger.expire(now=30)
    assert ledger.available() == Decimal(10)


def test_in_flight_money_stays_held_across_a_renewal() -> None:
    ledger = Ledger(
        Decimal(10), LeaseSettings(share=Decimal(1), minimum=Decimal(0), maximum_share=Decimal(1))
    )
    ledger.grant("a", Decimal(0), now=0)  # all 10
    renewed = ledger.grant("a", Decimal(4), now=1)  # 4 reserved by requests still running
    assert renewed.amount == Decimal(10)  # the 4 in flight plus the 6 nobody holds
    ledger.grant("b", Decimal(0), now=1)
    assert ledger.leases["b"].amount == 0  # nothing free: a's in-flight 4 is not up for grabs


def test_reports_count_once() -> None:
    ledger = Ledger(Decimal(10))
    assert ledger.report("a", 1, Decimal(1))
    assert ledger.report("a", 2, Decimal(1))
    assert not ledger.report("a", 2, Decimal(1))  # replayed after a reconnect
    assert not ledger.report("a", 1, Decimal(1))
    assert ledger.report("b", 1, Decimal(1))
    assert ledger.spent == Decimal(3)
    # A restarted operator resumes from what status holds: spend and the last numbers.
    resumed = Ledger(Decimal(10), spent=ledger.spent, sequence=dict(ledger.sequence))
    assert not resumed.report("a", 2, Decimal(1))
    assert resumed.report("a", 3, Decimal(1))
    assert resumed.spent == Decimal(4)


def test_wallet_reserves_then_reconciles() -> None:
    wallet = Wallet()
    assert wallet.reserve(Decimal(1), now=0) is None  # no lease yet
    wallet.renew(Decimal(3), expires=30)
    one = wallet.reserve(Decimal(2), now=1)
    assert one is not None
    assert wallet.reserve(Decimal(2), now=1) is None  # 2 reserved of 3: no room for 2 more
    report = wallet.settle(one, RequestUsage(Decimal("0.5")))
    assert (report.number, wallet.spent, wallet.reserved) == (1, Decimal("0.5"), 0)
    assert wallet.reserve(Decimal(2), now=31) is None  # the lease has expired
    wallet.acknowledged(1)
    assert wallet.unsent == []


def test_compacting_keeps_money_and_numbers_of_reports_never_sent() -> None:
    wallet = Wallet()
    for cost in ("0.1", "0.2", "0.3", "0.4"):
        wallet.settle(Reservation(Decimal(0)), RequestUsage(Decimal(cost), cache="miss"))
    assert wallet.compact(after=1) == 3  # report 1 was sent: it stays as it is
    assert [r.number for r in wallet.unsent] == [1, 4]
    merged = wallet.unsent[-1].usage
    assert (merged.cost, merged.cache) == (Decimal("0.9"), "")
    assert wallet.compact(after=4) == 0


async def spend_against(
    budget: Decimal,
    sidecars: int,
    concurrency: int,
    estimate: Decimal,
    actual: Decimal,
    use_leases: bool,
    seed: int,
) -> Decimal:
    """Sidecars spending at full speed until refused; what was spent in the end."""
    ledger = Ledger(budget, LeaseSettings(ttl_seconds=1e9, minimum=estimate))
    rng = random.Random(seed)
    clock = 0.0

    async def worker(name: str, wallet: Wallet, lock: asyncio.Lock) -> None:
        while True:
            if use_leases:
                async with lock:
                    held = wallet.reserve(estimate, clock)
                    if held is None:
                        lease = ledger.grant(name, wallet.reserved, clock)
                        wallet.renew(lease.amount, lease.expires)
                        held = wallet.reserve(estimate, clock)
                if held is None:
                    return
            elif ledger.spent >= budget:  # the naive check: look, then spend
                return
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)  # the call takes a while; others run meanwhile
            if use_leases:
                assert held is not None
                report = wallet.settle(held, RequestUsage(actual))
                ledger.report(name, report.number, report.cost)
                ledger.report(name, report.number, report.cost)  # a replay is not counted
            else:
                ledger.spent += actual

    tasks = []
    for s in range(sidecars):
        wallet, lock = Wallet(), asyncio.Lock()
        tasks += [worker(f"sidecar-{s}", wallet, lock) for _ in range(concurrency)]
    await asyncio.gather(*tasks)
    return ledger.spent


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_a_hundred_sidecars_never_overshoot_more_than_the_bound(seed: int) -> None:
    budget, estimate = Decimal(50), Decimal("0.010")
    # Reservations cover the cost: spend never passes the budget.
    exact = await spend_against(budget, 100, 4, estimate, Decimal("0.008"), True, seed)
    # ... and stops short by at most one reservation per sidecar (each lease's last crumbs).
    assert budget - 100 * estimate <= exact <= budget
    # Requests that cost more than reserved overshoot by at most the documented bound.
    under = Decimal("0.013")
    bound = overshoot_bound(100, 4, under - estimate)
    spent = await spend_against(budget, 100, 4, estimate, under, True, seed)
    assert budget < spent <= budget + bound
    # Without leases the same traffic blows through that bound: the test can fail.
    naive = await spend_against(budget, 100, 4, estimate, under, False, seed)
    assert naive > budget + bound


def test_a_reservation_larger_than_a_share_gets_a_lease_that_fits() -> None:
    ledger = Ledger(Decimal(2))  # 1 % of it, $0.02, is a share
    assert ledger.grant("a", Decimal(0), now=0).amount == Decimal("0.02")
    big = ledger.grant("a", Decimal(0), now=0, need=Decimal("0.5"))
    assert big.amount == Decimal("0.5")
    ledger.report("a", 1, Decimal("1.9"))
    # Never more than is left: the budget cannot be overshot by asking.
    assert ledger.grant("a", Decimal(0), now=1, need=Decimal(5)).amount == Decimal("0.1")
    assert ledger.outstanding() + ledger.spent + ledger.available() == ledger.budget
