"""Agent tasks: the id that groups a task's requests, and the outcome an app reports for it.

An app names the task a request belongs to with ``x-tokenomy-task``; the
operator sums cost and tokens per task. How a task ended comes in one of two
ways, both reported to the operator as the task's outcome (a later one
replaces an earlier one):

- ``x-tokenomy-task-outcome: success`` (or ``failure``, optionally
  ``; score=0.8``) on the task's last call;
- ``POST /v1/tokenomy/tasks/{task}/outcome`` with ``{"success": true,
  "score": 0.8}``, when the app learns the outcome after its last call (a
  ticket closed, a test suite run).

The operator then has cost and tokens per *successful* task, and success
rates by the tiers and levers that answered the task's requests.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from tokenomy_sidecar.errors import ApiError
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import TaskOutcome
from tokenomy_sidecar.runtime import ConfigHolder
from tokenomy_sidecar.stages.budget import Budget

TASK_HEADER = "x-tokenomy-task"
"""Names the agent task a request belongs to: cost and tokens per task."""
OUTCOME_HEADER = "x-tokenomy-task-outcome"
"""On a task's last call: how the task ended."""
TASK_MAX = 256
OUTCOMES = {"success": True, "failure": False}


def task_of(headers: Any) -> str:
    """The request's task id; a 400 when it is too long."""
    task = str(headers.get(TASK_HEADER, ""))
    if len(task) > TASK_MAX:
        raise ApiError(400, f"header {TASK_HEADER} is longer than {TASK_MAX} characters")
    return task


def _score(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{where} must be a number from 0 to 1", param="score")
    if not 0 <= value <= 1:
        raise ApiError(400, f"{where} must be from 0 to 1, not {value}", param="score")
    return float(value)


def outcome_header(text: str, task: str) -> TaskOutcome | None:
    """The outcome header's value (``success`` or ``failure``, ``; score=0.8`` optional);
    None when absent, a 400 when malformed or without a task."""
    if not text:
        return None
    if not task:
        raise ApiError(400, f"header {OUTCOME_HEADER} needs header {TASK_HEADER} (the task)")
    word, _, rest = text.partition(";")
    success = OUTCOMES.get(word.strip().lower())
    if success is None:
        raise ApiError(400, f"header {OUTCOME_HEADER} must be success or failure, not {word!r}")
    score = None
    if rest.strip():
        key, _, value = rest.strip().partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if key.strip().lower() != "score" or not math.isfinite(number):
            raise ApiError(400, f"header {OUTCOME_HEADER}: expected `; score=<0..1>` after it")
        score = _score(number, f"{OUTCOME_HEADER}'s score")
    return TaskOutcome(success, score)


def outcome_body(raw: bytes) -> TaskOutcome:
    """``{"success": bool, "score": number}`` (score optional); a 400 naming the field."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be an object")
    success = body.get("success")
    if not isinstance(success, bool):
        raise ApiError(400, "`success` must be true or false", param="success")
    return TaskOutcome(success, _score(body.get("score"), "`score`"))


class TaskOutcomes:
    """``POST /v1/tokenomy/tasks/{task}/outcome``."""

    def __init__(self, holder: ConfigHolder, budget: Budget, metrics: Metrics) -> None:
        self.holder = holder
        self.budget = budget
        self.metrics = metrics

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Report how a task ended; 202 once it is on its way to the operator."""
        task = request.match_info["task"]
        runtime = self.holder.current
        try:
            if len(task) > TASK_MAX:
                raise ApiError(400, f"task id is longer than {TASK_MAX} characters")
            if runtime is None:
                raise ApiError(503, "the sidecar has no configuration yet", "server_error")
            outcome = outcome_body(await request.read())
        except ApiError as error:
            return error.response()
        policy = runtime.config.policy
        self.metrics.task_outcomes.labels(
            policy.namespace, policy.name, "success" if outcome.success else "failure"
        ).inc()
        reported = self.budget.report_outcome(runtime, task, outcome)
        return web.json_response({"task": task, "reported": reported}, status=202)
