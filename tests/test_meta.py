"""Field types shared by the resources: durations, money, label selectors."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from tokenomy_api.meta import LabelSelector, Money, camel_path, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),
        ("30s", timedelta(seconds=30)),
        ("250ms", timedelta(milliseconds=250)),
        ("10m", timedelta(minutes=10)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(minutes=90)),
        ("1h0m0s", timedelta(hours=1)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "1 hour", "10", "1d", "-5s", "5S", "s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


MONEY: TypeAdapter[Decimal] = TypeAdapter(Money)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.15", Decimal("0.15")), ("2000", Decimal(2000)), (12, Decimal(12)), ("0", Decimal(0))],
)
def test_money_parses_exactly(value: Any, expected: Decimal) -> None:
    parsed = MONEY.validate_python(value)
    assert parsed == expected
    assert isinstance(parsed, Decimal)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.15, "write money as a string"),
        (True, "write money as a string"),
        ("-1", "is not an amount"),
        ("1e3", "is not an amount"),
        ("1,000", "is not an amount"),
        ("0.1234567891", "is not an amount"),
    ],
)
def test_money_refuses(value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MONEY.validate_python(value)


def test_money_serialises_as_plain_decimal_string() -> None:
    assert MONEY.dump_python(Decimal("2.50"), mode="json") == "2.50"
    assert MONEY.dump_python(Decimal("1E+1"), mode="json") == "10"


SELECTOR_CASES = [
    ({}, {"app": "x"}, True),
    ({"matchLabels": {"app": "agent"}}, {"app": "agent", "team": "a"}, True),
    ({"matchLabels": {"app": "agent"}}, {"app": "other"}, False),
    ({"matchLabels": {"app": "agent"}}, {}, False),
    (
        {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
        {"tier": "b"},
        True,
    ),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}, {}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    (
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]},
        {"tier": "a"},
        False,
    ),
    ({"matchExpressions": [{"key": "canary", "operator": "Exists"}]}, {"canary": ""}, True),
    ({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}, {"canary": "1"}, False),
    (
        {
            "matchLabels": {"app": "agent"},
            "matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}],
        },
        {"app": "agent"},
        True,
    ),
]


@pytest.mark.parametrize(("selector", "labels", "selected"), SELECTOR_CASES)
def test_label_selector(selector: dict[str, Any], labels: dict[str, str], selected: bool) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is selected


def test_label_selector_refuses_values_with_exists() -> None:
    with pytest.raises(ValidationError, match="values must be non-empty for In and NotIn"):
        LabelSelector.model_validate(
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}
        )


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (("spec",), "spec"),
        (("spec", "tiers", 0, "backends", 2, "url"), "spec.tiers[0].backends[2].url"),
        ((), ""),
    ],
)
def test_camel_path(loc: tuple[int | str, ...], path: str) -> None:
    assert camel_path(loc) == path
