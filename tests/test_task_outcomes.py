"""Task outcomes (#20): apps report how tasks ended; the operator computes cost per successful
task, success rates by tier and lever, and the tokens-per-task alert."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import aiohttp
import openai
import pytest

from tokenomy_api.costpolicy import Alerts
from tokenomy_api.usage_protocol import RequestUsage
from tokenomy_operator.spend.alerting import History, evaluate
from tokenomy_operator.spend.totals import Totals
from tokenomy_sidecar.errors import ApiError
from tokenomy_sidecar.pipeline import TaskOutcome
from tokenomy_sidecar.tasks import outcome_body, outcome_header

from helpers import policy_doc, route_doc
from support import SidecarFactory

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("header", "task", "outcome"),
    [
        ("", "t", None),
        ("success", "t", TaskOutcome(True)),
        (" Failure ", "t", TaskOutcome(False)),
        ("success; score=0.75", "t", TaskOutcome(True, 0.75)),
        ("failure;score=0", "t", TaskOutcome(False, 0.0)),
    ],
)
def test_outcome_headers(header: str, task: str, outcome: TaskOutcome | None) -> None:
    assert outcome_header(header, task) == outcome


@pytest.mark.parametrize(
    ("header", "task", "message"),
    [
        ("success", "", "needs header x-tokenomy-task"),
        ("done", "t", "must be success or failure"),
        ("success; score=high", "t", "score=<0..1>"),
        ("success; grade=0.5", "t", "score=<0..1>"),
        ("success; score=1.5", "t", "from 0 to 1"),
        ("success; score=nan", "t", "score=<0..1>"),
    ],
)
def test_bad_outcome_headers_are_named(header: str, task: str, message: str) -> None:
    with pytest.raises(ApiError, match=message) as raised:
        outcome_header(header, task)
    assert raised.value.status == 400


@pytest.mark.parametrize(
    ("body", "result"),
    [
        (b'{"success": true}', TaskOutcome(True)),
        (b'{"success": false, "score": 0.5}', TaskOutcome(False, 0.5)),
        (b'{"success": false, "score": 1}', TaskOutcome(False, 1.0)),
        (b"nope", "not JSON"),
        (b"[true]", "must be an object"),
        (b'{"success": "yes"}', "`success` must be true or false"),
        (b'{"success": true, "score": -0.1}', "from 0 to 1"),
        (b'{"success": true, "score": true}', "must be a number"),
    ],
)
def test_outcome_bodies(body: bytes, result: TaskOutcome | str) -> None:
    if isinstance(result, TaskOutcome):
        assert outcome_body(body) == result
        return
    with pytest.raises(ApiError, match=result):
        outcome_body(body)


def request(task: str, cost: str, tier: str = "small", lever: str = "routing", **more: Any) -> Any:
    fields: dict[str, Any] = {"route": "chat", "tier": tier, "cache": "miss", "task": task,
                              "lever": lever, "input_tokens": 100, "output_tokens": 20, **more}  # fmt: skip
    return RequestUsage(Decimal(cost), **fields)


def outcome(task: str, success: bool, score: float | None = None) -> RequestUsage:
    result = "success" if success else "failure"
    return RequestUsage(Decimal(0), task=task, outcome=result, score=score)


def test_cost_per_successful_task_counts_the_failures_cost_too() -> None:
    totals = Totals()
    for usage in (
        request("t1", "0.01"), request("t1", "0.09", tier="large", lever="cascade"),
        request("t2", "0.02", cache="semantic", tier="small", lever="semantic_cache"),
        request("t3", "0.04"),  # still running: no outcome
        outcome("t1", True, 0.9), outcome("t2", False, 0.1),
    ):  # fmt: skip
        totals.add(usage)
    tasks = totals.status()["tasks"]
    assert (tasks["count"], tasks["succeeded"], tasks["failed"]) == (3, 1, 1)
    assert tasks["successRate"] == "50%"
    assert tasks["costPerSuccessfulTask"] == "0.160000"  # all four tasks' spend, one success
    assert tasks["tokensPerSuccessfulTask"] == 480
    assert tasks["meanScore"] == "0.500"
    assert tasks["byTier"] == [
        {"name": "large", "tasks": 1, "succeeded": 1, "successRate": "100%"},
        {"name": "small", "tasks": 2, "succeeded": 1, "successRate": "50%"},
    ]
    assert [row["name"] for row in tasks["byLever"]] == ["cascade", "routing", "semantic_cache"]
    assert totals.status()["usage"]["requests"] == 4  # outcomes alone are no requests

    # The app retried t2 and it worked: the later outcome replaces the earlier one.
    totals.add(outcome("t2", True))
    tasks = totals.status()["tasks"]
    assert (tasks["succeeded"], tasks["failed"]) == (2, 0)
    assert tasks["costPerSuccessfulTask"] == "0.080000"
    semantic = next(r for r in tasks["byLever"] if r["name"] == "semantic_cache")
    assert semantic["successRate"] == "100%"
    # A restarted operator resumes the counts from status.
    assert Totals.restore(totals.status()).status()["tasks"] == tasks


def test_an_outcome_reported_over_the_wire_keeps_its_fields() -> None:
    back = RequestUsage.from_report(outcome("t9", False, 0.3).report(1))
    assert (back.task, back.outcome, back.score) == ("t9", "failure", 0.3)
    report = outcome("t9", True).report(2)
    report.score, report.task = "7", ""
    back = RequestUsage.from_report(report)
    assert (back.outcome, back.score) == ("", None)  # no task: no outcome; no such score


def test_tokens_per_task_alert_judges_ended_tasks() -> None:
    """A day of tasks at 1,000 tokens, then an hour at 1,500: up 50 % > 20 %."""
    hour = 3600.0
    history = History(started=0.0)
    now = 0.0
    for i in range(24 * 20):  # 20 tasks an hour for a day
        now = i * hour / 20
        history.task_ended(1000, now)
        history.add(request(f"t{i}", "0.01"), now)
    for i in range(25):
        now = 24 * hour + i * hour / 25
        history.task_ended(1500, now)
        history.add(request(f"u{i}", "0.01"), now)
    now = 25 * hour
    checks = evaluate(Alerts().resolved(), history.current(now), history.moving_average(now), None)
    check = next(c for c in checks if c.condition == "TokensPerTaskUp")
    assert check.breached
    assert "1500 tokens per task" in check.message
    # previousPeriod keeps no per-task baseline: this rule compares with the previous day.
    daily = Alerts.model_validate({"tokensPerTask": {"baseline": "previousPeriod"}}).resolved()
    checks = evaluate(daily, history.current(now), history.moving_average(now), None)
    assert next(c for c in checks if c.condition == "TokensPerTaskUp").breached
    # Few ended tasks are not judged.
    quiet = History(started=0.0)
    quiet.task_ended(1000, 10.0)
    checks = evaluate(Alerts().resolved(), quiet.current(hour), quiet.moving_average(hour), None)
    assert next(c for c in checks if c.condition == "TokensPerTaskUp").reason == "NotEnoughData"


@pytest.mark.integration
async def test_the_outcome_endpoint_and_header_refuse_bad_input(sidecar: SidecarFactory) -> None:
    running = await sidecar(route_doc(namespace="default"), policy_doc(namespace="default"))
    url = f"{running.sidecar.api_url}/v1/tokenomy/tasks"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/t1/outcome", json={"success": True}) as r:
            assert r.status == 202
            assert await r.json() == {"task": "t1", "reported": False}  # standalone: metrics
        async with session.post(f"{url}/t1/outcome", json={"score": 2}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["param"] == "success"
        async with session.post(f"{url}/{'x' * 300}/outcome", json={"success": True}) as r:
            assert r.status == 400
    assert running.metric("tokenomy_task_outcomes_total", outcome="success") == 1
    client = running.client()
    with pytest.raises(openai.BadRequestError, match="needs header x-tokenomy-task"):
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-tokenomy-task-outcome": "success"},
        )  # fmt: skip
