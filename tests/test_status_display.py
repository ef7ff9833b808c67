"""What ``kubectl get`` shows: every tier and route, the budget with its unit, money to the
cent (the exact figures stay in status)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tokenomy_api.readable import dollars
from tokenomy_operator.state import RouteStatus
from tokenomy_operator.status import policy_display, route_status

from helpers import policy


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("0", "$0.00"),
        ("12.345678", "$12.35"),
        ("1234567.8", "$1,234,567.80"),
        ("0.004", "<$0.01"),  # not nothing, but under a cent
        ("0.005", "$0.01"),
        ("-0.4", "-$0.40"),
        ("-0.0001", "-<$0.01"),
        (Decimal("7.1E+2"), "$710.00"),
    ],
)
def test_money_is_shown_to_the_cent(amount: str | Decimal, shown: str) -> None:
    assert dollars(amount) == shown


@pytest.mark.parametrize(
    ("spec", "status", "shown"),
    [
        ({}, {}, {"routes": "chat"}),
        (
            {"routes": ["chat", "embed", "code"], "budget": {"amount": "100", "period": "weekly"}},
            {"spend": {"amount": "12.345"}, "savings": "3.1"},
            {"routes": "chat,embed,code", "budget": "100 USD/week", "spend": "$12.35",
             "saved": "$3.10"},
        ),
        ({"budget": {"amount": "2.50"}}, {}, {"routes": "chat", "budget": "2.5 USD/month"}),
        ({"budget": {"amount": "1000.00", "period": "daily"}}, {},
         {"routes": "chat", "budget": "1000 USD/day"}),
    ],
)  # fmt: skip
def test_a_policy_shows_all_its_routes_and_its_budget_with_unit(
    spec: dict[str, Any], status: dict[str, Any], shown: dict[str, str]
) -> None:
    assert policy_display(policy(**spec).spec, status) == shown


def test_without_a_spec_only_usage_is_shown() -> None:
    assert policy_display(None, {"spend": {"amount": "1"}}) == {"spend": "$1.00"}


def test_a_route_shows_every_tier_once_cheapest_first() -> None:
    observed = RouteStatus(1, True, "Valid", "", (
        ("small", "a", 1), ("small", "b", 1), ("medium", "c", 1), ("large", "d", 0)))  # fmt: skip
    assert route_status(observed, {}, "now")["display"] == {"tiers": "small,medium,large"}
