"""The CostPolicy's alerts: the last hour against a baseline, as conditions.

The same four rules as ``manifests/monitoring/prometheusrule.yaml``, with
each policy's own thresholds and baseline from ``spec.alerts``:

- ``CostSpike``: spend per hour up more than ``costSpike.threshold`` percent;
- ``TokensPerRequestUp``: tokens per model-answered request up more than
  ``tokensPerRequest.threshold`` percent;
- ``CacheHitRateDown``: share of requests answered from cache down more than
  ``cacheHitDrop.threshold`` points;
- ``LargestTierShareUp``: share of model-answered requests on the route's
  reference (largest) tier up more than ``largeTierShift.threshold`` points;
- ``TokensPerTaskUp``: tokens per task that ended (reported an outcome) up
  more than ``tokensPerTask.threshold`` percent. A task's tokens are all of
  its requests' this period, counted when its outcome arrives; the sidecars
  cannot see a whole task, so this one has no Prometheus twin.

The current value is the last hour. ``movingAverage`` compares it with the
24 hours before it (from 10-minute buckets kept in memory: after an operator
restart the baseline is rebuilt from what arrives, and needs an hour);
``previousPeriod`` with the whole previous budget period (kept in status).
An alert needs :data:`MIN_REQUESTS` on both sides, and fires only after it
has held for ``hold`` seconds (Prometheus' ``for: 15m``).

Pure: the clock's readings come in as arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from tokenomy_api.costpolicy import Alert, Alerts
from tokenomy_api.usage_protocol import RequestUsage

BUCKET_SECONDS = 600
CURRENT_BUCKETS = 6
"""The current window: this bucket and the five before it (50 to 60 minutes)."""
BASELINE_BUCKETS = 144
"""The moving average's window: the 24 hours before the current one."""
MIN_REQUESTS = 20
"""Requests each side needs before an alert is judged."""
MIN_BASELINE_SECONDS = 3600.0
"""Time the moving average must cover before it is trusted."""
HOLD_SECONDS = 900.0
"""How long an alert must hold before its condition turns True."""


@dataclass
class Window:
    """Usage over a stretch of time."""

    seconds: float = 0.0
    cost: Decimal = Decimal(0)
    requests: int = 0
    cache_hits: int = 0
    tokens: int = 0
    reference_requests: int = 0
    tasks_ended: int = 0
    """Tasks that reported an outcome."""
    task_tokens: int = 0
    """Their tokens."""

    def add(self, usage: RequestUsage) -> None:
        """Count one request (one never answered adds its cost and tokens only; a shadow
        comparison its cost only, so it moves no tokens-per-request figure)."""
        self.cost += usage.cost
        if usage.shadow:
            return
        self.requests += bool(usage.cache)
        self.cache_hits += usage.hit
        self.tokens += usage.input_tokens + usage.output_tokens
        self.reference_requests += usage.reference and not usage.hit

    def merge(self, other: Window) -> None:
        """Add another window's counts (not its time)."""
        self.cost += other.cost
        self.requests += other.requests
        self.cache_hits += other.cache_hits
        self.tokens += other.tokens
        self.reference_requests += other.reference_requests
        self.tasks_ended += other.tasks_ended
        self.task_tokens += other.task_tokens

    @property
    def model_requests(self) -> int:
        """Requests not answered from cache."""
        return self.requests - self.cache_hits

    def cost_per_hour(self) -> float | None:
        """USD per hour."""
        return float(self.cost) * 3600 / self.seconds if self.seconds > 0 else None

    def tokens_per_request(self) -> float | None:
        """Tokens per model-answered request."""
        return self.tokens / self.model_requests if self.model_requests else None

    def tokens_per_task(self) -> float | None:
        """Tokens per task that ended."""
        return self.task_tokens / self.tasks_ended if self.tasks_ended else None

    def hit_rate(self) -> float | None:
        """Share of requests answered from cache."""
        return self.cache_hits / self.requests if self.requests else None

    def reference_share(self) -> float | None:
        """Share of model-answered requests on the reference tier."""
        return self.reference_requests / self.model_requests if self.model_requests else None


@dataclass
class History:
    """One policy's usage in 10-minute buckets, the last 25 hours, in memory."""

    started: float
    """Wall time counting began: before it, no bucket means no data, not no traffic."""
    buckets: dict[int, Window] = field(default_factory=dict)

    def add(self, usage: RequestUsage, now: float) -> None:
        """Count a request reported at ``now``."""
        self._bucket(now).add(usage)

    def task_ended(self, tokens: int, now: float) -> None:
        """Count a task whose outcome arrived at ``now``, with all its tokens."""
        bucket = self._bucket(now)
        bucket.tasks_ended += 1
        bucket.task_tokens += tokens

    def _bucket(self, now: float) -> Window:
        index = int(now // BUCKET_SECONDS)
        bucket = self.buckets.setdefault(index, Window())
        oldest = index - CURRENT_BUCKETS - BASELINE_BUCKETS + 1
        for old in [i for i in self.buckets if i < oldest]:
            del self.buckets[old]
        return bucket

    def _window(self, first: int, after: int, end: float) -> Window:
        window = Window(seconds=max(0.0, end - max(self.started, first * BUCKET_SECONDS)))
        for index in range(first, after):
            bucket = self.buckets.get(index)
            if bucket is not None:
                window.merge(bucket)
        return window

    def current(self, now: float) -> Window:
        """The last hour (50 to 60 minutes of it)."""
        index = int(now // BUCKET_SECONDS)
        return self._window(index - CURRENT_BUCKETS + 1, index + 1, now)

    def moving_average(self, now: float) -> Window:
        """The 24 hours before the current window (what of them was counted)."""
        first_current = int(now // BUCKET_SECONDS) - CURRENT_BUCKETS + 1
        return self._window(
            first_current - BASELINE_BUCKETS, first_current, first_current * BUCKET_SECONDS
        )


@dataclass(frozen=True)
class Rule:
    """One alert: its condition, the measure it watches and how a rise is told."""

    name: str
    """Field of :class:`~tokenomy_api.costpolicy.Alerts`."""
    condition: str
    measure: Callable[[Window], float | None]
    relative: bool
    """Threshold in percent of the baseline (else in percentage points)."""
    up: bool
    """Fires on a rise (else on a fall)."""
    shown: Callable[[float], str]
    count: Callable[[Window], int] = lambda w: w.requests
    """What each side needs :data:`MIN_REQUESTS` of."""
    unit: str = "requests"
    daily_only: bool = False
    """Always judged against the previous day: the previous period keeps no baseline
    for it."""


RULES = (
    Rule("cost_spike", "CostSpike", Window.cost_per_hour, True, True, lambda v: f"{v:.4f} USD/h"),
    Rule("tokens_per_request", "TokensPerRequestUp", Window.tokens_per_request, True, True,
         lambda v: f"{v:.0f} tokens per request"),
    Rule("cache_hit_drop", "CacheHitRateDown", Window.hit_rate, False, False,
         lambda v: f"a cache hit rate of {v:.1%}"),
    Rule("large_tier_shift", "LargestTierShareUp", Window.reference_share, False, True,
         lambda v: f"{v:.1%} of requests on the largest tier"),
    Rule("tokens_per_task", "TokensPerTaskUp", Window.tokens_per_task, True, True,
         lambda v: f"{v:.0f} tokens per task", lambda w: w.tasks_ended, "ended tasks", True),
)  # fmt: skip
ALERT_CONDITIONS = frozenset(rule.condition for rule in RULES)


@dataclass(frozen=True)
class Check:
    """One alert's verdict now."""

    condition: str
    breached: bool
    reason: str
    message: str


def check(rule: Rule, alert: Alert, current: Window, baseline: Window | None) -> Check:
    """Whether ``current`` has moved past ``baseline`` by more than the alert's threshold."""
    threshold = alert.threshold or 0
    against = "the previous period" if alert.baseline == "previousPeriod" else "the previous day"
    enough = baseline is not None and min(rule.count(current), rule.count(baseline)) >= MIN_REQUESTS
    if alert.baseline == "movingAverage" and baseline is not None:
        enough = enough and baseline.seconds >= MIN_BASELINE_SECONDS
    now = rule.measure(current)
    then = rule.measure(baseline) if baseline is not None and enough else None
    if now is None or then is None:
        wanted = f"needs {MIN_REQUESTS} {rule.unit} in the last hour and in {against}"
        return Check(rule.condition, False, "NotEnoughData", wanted)
    if rule.relative:
        limit = then * (1 + threshold / 100)
        breached = now > limit if rule.up else now < then * (1 - threshold / 100)
        change = f"{threshold}%"
    else:
        limit = then + threshold / 100 if rule.up else then - threshold / 100
        breached = now > limit if rule.up else now < limit
        change = f"{threshold} points"
    direction = "up" if rule.up else "down"
    verdict = "more" if breached else "not more"
    message = (
        f"last hour: {rule.shown(now)}; {against}: {rule.shown(then)} "
        f"({direction} {verdict} than {change})"
    )
    return Check(rule.condition, breached, "Breached" if breached else "WithinBaseline", message)


def evaluate(
    alerts: Alerts,
    current: Window,
    moving_average: Window | None,
    previous_period: Window | None,
) -> list[Check]:
    """Every enabled alert of a policy (``alerts`` with defaults filled in)."""
    out = []
    for rule in RULES:
        alert: Alert = getattr(alerts, rule.name)
        if not alert.enabled:
            continue
        daily = alert.baseline == "movingAverage" or rule.daily_only
        baseline = moving_average if daily else previous_period
        if daily and alert.baseline != "movingAverage":
            alert = alert.model_copy(update={"baseline": "movingAverage"})
        out.append(check(rule, alert, current, baseline))
    return out


@dataclass
class Hold:
    """Since when each alert of a policy has been breached (in memory)."""

    since: dict[str, float] = field(default_factory=dict)

    def conditions(self, checks: list[Check], now: float, hold: float) -> list[Check]:
        """The checks as conditions: a breach turns True once it has held ``hold`` seconds."""
        out = []
        for c in checks:
            if not c.breached:
                self.since.pop(c.condition, None)
                out.append(c)
                continue
            held = now - self.since.setdefault(c.condition, now)
            if held >= hold:
                out.append(c)
            else:
                message = f"{c.message}; for {held:.0f}s of the {hold:.0f}s it must hold"
                out.append(Check(c.condition, False, "Pending", message))
        return out


def period_window(previous: Mapping[str, Any] | None) -> Window | None:
    """The previous period (``status.previousPeriod``) as a baseline; None if unreadable."""
    if not previous:
        return None
    try:
        usage = previous.get("usage") or {}
        began, ended = (datetime.fromisoformat(str(previous[k])) for k in ("start", "end"))
        return Window(
            seconds=(ended - began).total_seconds(),
            cost=Decimal(str(previous.get("amount", "0"))),
            requests=int(usage.get("requests", 0)),
            cache_hits=int(usage.get("cacheHits", 0)),
            tokens=int(usage.get("inputTokens", 0)) + int(usage.get("outputTokens", 0)),
            reference_requests=int(usage.get("referenceRequests", 0)),
        )
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError):
        return None  # an edited status: no previousPeriod baseline rather than no sync
