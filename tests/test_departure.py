"""The operator's two-step shutdown: unready and leaderless at once, stopped after the delay."""

from __future__ import annotations

import asyncio

import pytest

from tokenomy_operator.departure import Departure

pytestmark = pytest.mark.unit


async def test_the_first_signal_leaves_and_the_stop_follows_after_the_delay() -> None:
    handed_back: list[bool] = []
    departure = Departure(0.2, lambda: handed_back.append(True))
    departure.signal()
    assert departure.leaving.is_set()
    assert handed_back == [True]
    assert not departure.stop.is_set()  # still serving the webhook
    await asyncio.wait_for(departure.stop.wait(), 2)


async def test_a_second_signal_stops_at_once_and_leaves_only_once() -> None:
    handed_back: list[bool] = []
    departure = Departure(60, lambda: handed_back.append(True))
    departure.signal()
    departure.signal()
    assert departure.stop.is_set()
    assert handed_back == [True]
