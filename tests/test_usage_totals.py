"""Usage totals (savings, hit rate, tier shares, spenders, tasks) and the alert rules, pure."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from tokenomy_api.costpolicy import Alerts
from tokenomy_api.usage_protocol import RequestUsage
from tokenomy_operator.spend.alerting import (
    BUCKET_SECONDS,
    MIN_REQUESTS,
    Check,
    History,
    Hold,
    Window,
    evaluate,
    period_window,
)
from tokenomy_operator.spend.totals import MAX_TASKS, Totals


def request(
    cost: str = "0.01",
    tier: str = "small",
    cache: str = "miss",
    tokens: tuple[int, int] = (100, 50),
    reference: bool = False,
    labels: tuple[tuple[str, str], ...] = (),
    task: str = "",
    saved: str = "0",
) -> RequestUsage:
    return RequestUsage(
        cost=Decimal(cost),
        saved=Decimal(saved),
        route="chat",
        tier=tier,
        reference=reference,
        cache=cache,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        labels=labels,
        task=task,
    )


def test_totals_read_like_status_and_survive_a_round_trip() -> None:
    totals = Totals()
    team = (("feature", "search"), ("team", "growth"))
    for _ in range(3):
        totals.add(request(tier="small", labels=team, task="t1", saved="0.04"))
    totals.add(request("0.10", tier="large", reference=True, labels=team, task="t2"))
    totals.add(request("0", cache="exact", tokens=(0, 0), task="t1", saved="0.10"))
    totals.add(request("0.30", tier="large", reference=True, saved="-0.05"))  # escalated
    status = totals.status()
    assert status["savings"] == "0.17"
    assert status["cacheHitRate"] == "17%"  # 1 of 6
    assert status["tierShares"] == [
        {"tier": "large", "share": "40%"},
        {"tier": "small", "share": "60%"},
    ]
    assert status["usage"]["referenceRequests"] == 2
    assert status["usage"]["inputTokens"] == 500
    assert status["spenders"][0] == {
        "key": "feature", "value": "search", "cost": "0.13", "tokens": 600, "requests": 4,
    }  # fmt: skip
    tasks = status["tasks"]
    assert (tasks["count"], tasks["requests"], tasks["cost"]) == (2, 5, "0.13")
    assert tasks["costPerTask"] == "0.065000"
    assert tasks["tokensPerTask"] == 300  # 600 tokens over two tasks
    assert [t["task"] for t in tasks["top"]] == ["t2", "t1"]  # most expensive first

    again = Totals.restore(status)
    assert again.status() == status
    again.add(request(task="t1"))  # a task known by id: not a new one
    assert again.status()["tasks"]["count"] == 2


def test_a_request_never_answered_is_not_counted_as_one() -> None:
    totals, window = Totals(), Window()
    failed = RequestUsage(Decimal("0.02"), route="chat", input_tokens=10)  # a cascade try, then 502
    for into in (totals, window):
        into.add(request())
        into.add(failed)
    assert (totals.requests, totals.input_tokens, dict(totals.tiers)) == (1, 110, {"small": 1})
    assert (window.requests, window.cost, window.tokens) == (1, Decimal("0.03"), 160)


def test_semantic_checks_bound_the_served_wrong_share_and_survive_a_restart() -> None:
    totals = Totals()
    for i in range(400):
        check = "wrong" if i % 100 == 0 else "correct"
        totals.add(dataclasses.replace(request(), semantic_check=check))
    totals.add(request(cache="semantic"))  # a hit: not a check
    status = totals.status()
    assert status["semanticChecks"] == {"checked": 400, "wrong": 4, "wrongHitBound": "3.0%"}
    assert Totals.restore(status).status()["semanticChecks"] == status["semanticChecks"]
    assert "semanticChecks" not in Totals().status()  # nothing checked: nothing claimed


def test_a_report_carries_its_semantic_check_and_nothing_else_is_read_as_one() -> None:
    usage = dataclasses.replace(request(), semantic_check="wrong")
    assert RequestUsage.from_report(usage.report(1)).semantic_check == "wrong"
    odd = usage.report(2)
    odd.semantic_check = "maybe"
    assert RequestUsage.from_report(odd).semantic_check == ""


def test_unreadable_totals_are_refused() -> None:
    with pytest.raises(ValueError, match="unreadable"):
        Totals.restore({"usage": {"requests": "many"}})


def test_task_ids_beyond_the_memory_cap_still_count() -> None:
    totals = Totals()
    totals.tasks = {f"t{i}": totals.tasked for i in range(MAX_TASKS)}
    totals.task_count = MAX_TASKS
    totals.add(request(task="one-more"))
    assert totals.task_count == MAX_TASKS + 1
    assert "one-more" not in totals.tasks


def window(
    hours: float = 1,
    requests: int = 100,
    cost: str = "1",
    hits: int = 30,
    tokens: int = 1000,
    reference: int = 20,
) -> Window:
    return Window(hours * 3600, Decimal(cost), requests, hits, tokens * (requests - hits),
                  reference)  # fmt: skip


def verdicts(
    current: Window, baseline: Window | None, spec: dict[str, object] | None = None
) -> dict[str, tuple[bool, str]]:
    alerts = Alerts.model_validate(spec or {}).resolved()
    return {c.condition: (c.breached, c.reason) for c in evaluate(alerts, current, baseline, None)}


STEADY = window(hours=24, cost="24")


@pytest.mark.parametrize(
    ("current", "fires"),
    [
        (window(), set()),
        # Spend per hour 1.6x the day's average: more than +50 %.
        (window(cost="1.6"), {"CostSpike"}),
        (window(cost="1.4"), set()),
        # 1250 tokens per request against 1000: more than +20 %.
        (window(tokens=1250), {"TokensPerRequestUp"}),
        (window(tokens=1150), set()),
        # Hit rate 18 % against 30 %: down more than 10 points.
        (window(hits=18, reference=23), {"CacheHitRateDown"}),
        (window(hits=22, reference=22), set()),
        # 32 % of model-answered requests on the largest tier against 28.6 %: not 10 points...
        (window(reference=22), set()),
        # ... 41 % is.
        (window(reference=29), {"LargestTierShareUp"}),
    ],
)
def test_each_alert_fires_past_its_default_threshold(current: Window, fires: set[str]) -> None:
    result = verdicts(current, STEADY)
    assert len(result) == 5
    assert result["TokensPerTaskUp"] == (False, "NotEnoughData")  # no task ended here
    assert {name for name, (breached, _) in result.items() if breached} == fires


def test_thresholds_and_switches_come_from_the_policy() -> None:
    spiky = window(cost="1.3")
    assert verdicts(spiky, STEADY)["CostSpike"][0] is False
    assert verdicts(spiky, STEADY, {"costSpike": {"threshold": 25}})["CostSpike"][0] is True
    off = verdicts(spiky, STEADY, {"costSpike": {"enabled": False}})
    assert "CostSpike" not in off


def test_too_little_traffic_or_history_is_not_judged() -> None:
    quiet = window(requests=MIN_REQUESTS - 1, hits=0, cost="9")
    assert verdicts(quiet, STEADY)["CostSpike"] == (False, "NotEnoughData")
    assert verdicts(window(cost="9"), None)["CostSpike"] == (False, "NotEnoughData")
    young = window(hours=0.5, cost="0.1")  # half an hour of history after a restart
    assert verdicts(window(cost="9"), young)["CostSpike"] == (False, "NotEnoughData")


def test_previous_period_baseline() -> None:
    alerts = Alerts.model_validate({"costSpike": {"baseline": "previousPeriod"}}).resolved()
    last_month = period_window(
        {
            "start": "2026-11-01T00:00:00Z",
            "end": "2026-12-01T00:00:00Z",  # 30 days
            "amount": "720",
            "usage": {"requests": 72000, "cacheHits": 0, "inputTokens": 7_200_000},
        }
    )
    assert last_month is not None
    checks = {c.condition: c for c in evaluate(alerts, window(cost="1.6"), None, last_month)}
    assert checks["CostSpike"].breached  # 1.6 USD/h against 1 USD/h
    assert "previous period: 1.0000 USD/h" in checks["CostSpike"].message
    assert checks["TokensPerRequestUp"].reason == "NotEnoughData"  # no moving average yet
    assert period_window({"start": "yesterday", "amount": "1"}) is None  # an edited status


def test_history_windows_split_the_last_hour_from_the_day_before() -> None:
    start = 100 * BUCKET_SECONDS
    history = History(started=start)
    for minute in range(0, 26 * 60, 10):  # a request every 10 minutes for 26 hours
        history.add(request("0.01"), start + minute * 60)
    now = start + 26 * 3600 - 60
    current = history.current(now)
    assert current.requests == 6
    assert 3000 <= current.seconds <= 3600
    day = history.moving_average(now)
    assert day.requests == 144
    assert day.seconds == 24 * 3600
    assert len(history.buckets) <= 150  # older buckets are dropped
    fresh = History(started=now - 600)  # restarted ten minutes ago
    assert fresh.current(now).seconds == 600
    assert fresh.moving_average(now).seconds == 0


def test_an_alert_turns_true_only_after_it_held() -> None:
    hold = Hold()
    breach = Check("CostSpike", True, "Breached", "up")
    first = hold.conditions([breach], now=0, hold=900)
    assert (first[0].breached, first[0].reason) == (False, "Pending")
    assert hold.conditions([breach], now=899, hold=900)[0].reason == "Pending"
    assert hold.conditions([breach], now=900, hold=900)[0].breached is True
    calm = Check("CostSpike", False, "WithinBaseline", "ok")
    hold.conditions([calm], now=901, hold=900)
    assert hold.conditions([breach], now=902, hold=900)[0].reason == "Pending"  # starts again


def test_tool_calls_count_in_spend_and_the_task_but_not_as_requests() -> None:
    totals = Totals()
    totals.add(request(cost="0.02", task="t1"))
    paid = RequestUsage(Decimal("0.01"), cache="miss", task="t1", tool="orders/lookup")
    hit = RequestUsage(
        Decimal(0), saved=Decimal("0.01"), cache="hit", task="t1", tool="orders/lookup"
    )
    totals.add(paid)
    totals.add(hit)
    status = totals.status()
    assert status["usage"]["requests"] == 1  # the model request only
    assert status["usage"]["cacheHits"] == 0  # a tool hit is not a response-cache hit
    assert (status["usage"]["toolCalls"], status["usage"]["toolCacheHits"]) == (2, 1)
    assert status["tasks"]["cost"] == "0.03"  # the task's cost includes its tool calls
    assert status["tasks"]["requests"] == 1
    assert status["savings"] == "0.01"
    restored = Totals.restore(status)
    assert (restored.tool_calls, restored.tool_cache_hits) == (2, 1)
    # The report survives the wire, its tool name included.
    assert RequestUsage.from_report(paid.report(1)).tool == "orders/lookup"


def test_the_cached_input_share_is_of_input_tokens() -> None:
    totals = Totals()
    totals.add(dataclasses.replace(request(tokens=(100, 10)), cached_input_tokens=75))
    totals.add(request(tokens=(100, 10)))
    status = totals.status()
    assert status["usage"]["cachedInputTokens"] == 75
    assert status["cachedInputShare"] == "38%"  # 75 of 200, whole percent like the hit rate
    assert Totals.restore(status).cached_input_tokens == 75
    report = RequestUsage(Decimal(0), input_tokens=10, cached_input_tokens=99).report(1)
    assert RequestUsage.from_report(report).cached_input_tokens == 10  # never more than input
