"""Leader election among operator replicas: the decision over a Lease, table-tested."""

from __future__ import annotations

import datetime

import pytest

from tokenomy_operator.leadership import LeaseView, decide

NOW = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)


def ago(seconds: float) -> datetime.datetime:
    return NOW - datetime.timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("lease", "take", "reason"),
    [
        (None, True, "no lease yet"),
        (LeaseView("a", ago(1), 15), True, "renewing"),
        (LeaseView("a", ago(60), 15), True, "renewing"),  # ours, even if late
        (LeaseView("", ago(1), 15), True, "released by its holder"),
        (LeaseView("b", ago(14), 15), False, "held by b"),
        (LeaseView("b", ago(16), 15), True, "b stopped renewing"),
        (LeaseView("b", None, 15), True, "b stopped renewing"),
    ],
)
def test_who_takes_the_lease(lease: LeaseView | None, take: bool, reason: str) -> None:
    verdict = decide(lease, "a", NOW)
    assert (verdict.take, verdict.reason) == (take, reason)
