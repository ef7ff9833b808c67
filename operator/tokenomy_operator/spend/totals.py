"""What a policy's sidecars reported in one period, beyond the money the ledger counts.

Pure: :class:`Totals` adds up :class:`~tokenomy_api.usage_protocol.RequestUsage`
reports into the status fields a person reads (savings, cache hit rate,
share per tier, top spenders, cost per task) and the counts a restarted
operator resumes from (``status.usage``, ``status.spenders``,
``status.tasks``). They are written in the same status patch as the report
numbers, so a restart neither loses nor double counts them.

Distinct tasks are counted by id in memory, up to :data:`MAX_TASKS` per
policy and period; after a restart only the ten most expensive are known by
id, so a task running across the restart may be counted twice in
``tasks.count`` (its cost and tokens are not).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Self, TypeVar

from tokenomy_api.bounds import wilson_upper
from tokenomy_api.usage_protocol import RequestUsage

ZERO = Decimal(0)
MAX_TASKS = 100_000
"""Task ids remembered per policy and period; more are counted but not told apart."""
TOP_SPENDERS = 50
TOP_TASKS = 10


@dataclass
class Share:
    """Cost, tokens and requests of one spender or task."""

    cost: Decimal = ZERO
    tokens: int = 0
    requests: int = 0

    def add(self, usage: RequestUsage) -> None:
        """Count one request (a tool call, or an outcome alone, adds its cost only)."""
        self.cost += usage.cost
        self.tokens += usage.input_tokens + usage.output_tokens
        self.requests += usage.is_request

    def status(self) -> dict[str, Any]:
        """Cost, tokens and requests as status writes them."""
        return {"cost": str(self.cost), "tokens": self.tokens, "requests": self.requests}

    @classmethod
    def read(cls, entry: Mapping[str, Any]) -> Self:
        """From a status entry."""
        return cls(Decimal(str(entry.get("cost", "0"))), int(entry.get("tokens", 0)),
                   int(entry.get("requests", 0)))  # fmt: skip


@dataclass
class Agreement:
    """Shadow comparisons of one lever: how many, and how many the reference agreed with."""

    compared: int = 0
    agreed: int = 0

    def add(self, agreed: bool) -> None:
        """Count one verdict."""
        self.compared += 1
        self.agreed += agreed


@dataclass
class Task(Share):
    """One task: its share, what answered it, and how it ended."""

    tiers: set[str] = field(default_factory=set)
    """Tiers that answered any of its requests."""
    levers: set[str] = field(default_factory=set)
    """Levers that answered any of its requests."""
    outcome: str = ""
    """``success``, ``failure``, or ``""`` while none was reported."""

    def add(self, usage: RequestUsage) -> None:
        """Count one request, and what answered it."""
        super().add(usage)
        if usage.tier and usage.cache:
            self.tiers.add(usage.tier)
        if usage.lever:
            self.levers.add(usage.lever)


@dataclass
class Outcomes:
    """Tasks that reported how they ended, and how."""

    succeeded: int = 0
    failed: int = 0
    scored: int = 0
    score_sum: float = 0.0
    tiers: dict[str, Agreement] = field(default_factory=dict)
    """Per tier: tasks it answered in that ended (``compared``), and those that succeeded."""
    levers: dict[str, Agreement] = field(default_factory=dict)
    """The same per lever."""

    def count(self, task: Task | None, outcome: str, sign: int) -> None:
        """Count (``sign`` 1) or take back (-1) one task's outcome."""
        success = outcome == "success"
        self.succeeded += sign * success
        self.failed += sign * (not success)
        for names, table in ((task.tiers, self.tiers), (task.levers, self.levers)) if task else ():
            for name in names:
                entry = table.setdefault(name, Agreement())
                entry.compared += sign
                entry.agreed += sign * success

    def status(self, tasked: Share) -> dict[str, Any]:
        """The outcome fields of ``status.tasks``."""
        ended = self.succeeded + self.failed
        out: dict[str, Any] = {"succeeded": self.succeeded, "failed": self.failed}
        if ended:
            out["successRate"] = percent(self.succeeded, ended)
        if self.succeeded:
            per = tasked.cost / self.succeeded
            out["costPerSuccessfulTask"] = str(per.quantize(MICRO))
            out["tokensPerSuccessfulTask"] = tasked.tokens // self.succeeded
        if self.scored:
            out["scored"] = self.scored
            out["meanScore"] = f"{self.score_sum / self.scored:.3f}"
        for key, table in (("byTier", self.tiers), ("byLever", self.levers)):
            rows = [(name, a) for name, a in sorted(table.items()) if a.compared > 0]
            if rows:
                out[key] = [
                    {"name": name, "tasks": a.compared, "succeeded": a.agreed,
                     "successRate": percent(a.agreed, a.compared)}
                    for name, a in rows
                ]  # fmt: skip
        return out

    @classmethod
    def read(cls, tasks: Mapping[str, Any]) -> Outcomes:
        """From ``status.tasks``."""
        out = cls(
            succeeded=int(tasks.get("succeeded", 0)),
            failed=int(tasks.get("failed", 0)),
            scored=int(tasks.get("scored", 0)),
        )
        out.score_sum = float(tasks.get("meanScore", 0)) * out.scored
        for key, table in (("byTier", out.tiers), ("byLever", out.levers)):
            for row in tasks.get(key) or []:
                table[str(row["name"])] = Agreement(int(row["tasks"]), int(row["succeeded"]))
        return out


@dataclass
class Totals:
    """A policy's reports in one period."""

    requests: int = 0
    """Requests answered (from cache or a model)."""
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    """Of the input tokens, the ones providers read from their prompt caches."""
    reference_requests: int = 0
    saved: Decimal = ZERO
    tiers: Counter[str] = field(default_factory=Counter)
    """Requests per answering tier (cache hits not included)."""
    spenders: dict[tuple[str, str], Share] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    task_count: int = 0
    """Distinct tasks; can exceed ``len(tasks)`` (see the module's note)."""
    tasked: Share = field(default_factory=Share)
    """All requests that named a task."""
    outcomes: Outcomes = field(default_factory=Outcomes)
    """How the tasks that reported an outcome ended."""
    checked: int = 0
    """Servable semantic near matches sent to the model to check them (a random sample)."""
    checked_wrong: int = 0
    """Of those, the ones whose stored answer the model's contradicted."""
    tool_calls: int = 0
    """Calls through the tool proxy."""
    tool_cache_hits: int = 0
    """Of those, the ones answered from its cache."""
    saved_by_lever: dict[str, Decimal] = field(default_factory=dict)
    """Net savings by the lever that answered (a request's trimming and tool pruning
    savings go to the lever that answered it)."""
    shadow: dict[str, Agreement] = field(default_factory=dict)
    """Shadow comparisons per lever."""
    shadow_cost: Decimal = ZERO
    """What shadow comparisons cost (part of the period's spend)."""

    def add(self, usage: RequestUsage) -> None:
        """Count one request's report (one that was never answered adds its cost only)."""
        if usage.shadow:
            # A comparison, not a request: its own line, and no request, tier or task.
            self.shadow_cost += usage.cost
            self.input_tokens += usage.input_tokens
            self.output_tokens += usage.output_tokens
            if usage.verdict:
                self.shadow.setdefault(usage.shadow, Agreement()).add(usage.verdict == "agree")
            return
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cached_input_tokens += usage.cached_input_tokens
        self.saved += usage.saved
        if usage.saved and usage.lever:
            lever = usage.lever
            self.saved_by_lever[lever] = self.saved_by_lever.get(lever, ZERO) + usage.saved
        if usage.tool:
            self.tool_calls += 1
            self.tool_cache_hits += usage.cache == "hit"
        elif usage.cache:
            self.requests += 1
        if usage.semantic_check:
            self.checked += 1
            self.checked_wrong += usage.semantic_check == "wrong"
        if usage.tool:
            pass  # neither a cache hit nor a tier's answer of a model request
        elif usage.hit:
            self.cache_hits += 1
        elif usage.tier:
            self.tiers[usage.tier] += 1
            self.reference_requests += usage.reference
        for label in usage.labels:
            self.spenders.setdefault(label, Share()).add(usage)
        if usage.task:
            self.tasked.add(usage)
            task = self.tasks.get(usage.task)
            if task is None:
                self.task_count += 1
                if len(self.tasks) < MAX_TASKS:
                    task = self.tasks[usage.task] = Task()
            if task is not None:
                task.add(usage)
            if usage.outcome:
                self._ended(task, usage)

    def _ended(self, task: Task | None, usage: RequestUsage) -> None:
        """A task reported its outcome; a later report replaces an earlier one."""
        if task is not None and task.outcome:
            self.outcomes.count(task, task.outcome, -1)
        self.outcomes.count(task, usage.outcome, 1)
        if task is not None:
            task.outcome = usage.outcome
        if usage.score is not None:
            self.outcomes.scored += 1
            self.outcomes.score_sum += usage.score

    def task_tokens(self, task: str) -> int | None:
        """Tokens of a task this period, if it is known by id."""
        known = self.tasks.get(task)
        return known.tokens if known is not None else None

    @property
    def model_requests(self) -> int:
        """Requests a model answered (or tried to): all but cache hits."""
        return self.requests - self.cache_hits

    def status(self) -> dict[str, Any]:
        """The status fields: readable shares and the counts behind them."""
        out: dict[str, Any] = {
            "savings": str(self.saved),
            "usage": {
                "requests": self.requests,
                "cacheHits": self.cache_hits,
                "inputTokens": self.input_tokens,
                "outputTokens": self.output_tokens,
                "cachedInputTokens": self.cached_input_tokens,
                "referenceRequests": self.reference_requests,
                "tiers": [{"tier": t, "requests": n} for t, n in sorted(self.tiers.items())],
                "saved": str(self.saved),
                "toolCalls": self.tool_calls,
                "toolCacheHits": self.tool_cache_hits,
                "savedByLever": [
                    {"lever": lever, "saved": str(amount)}
                    for lever, amount in sorted(self.saved_by_lever.items())
                ],
            },
        }
        if self.requests:
            out["cacheHitRate"] = percent(self.cache_hits, self.requests)
        if self.input_tokens:
            out["cachedInputShare"] = percent(self.cached_input_tokens, self.input_tokens)
        answered = sum(self.tiers.values())
        if answered:
            out["tierShares"] = [
                {"tier": t, "share": percent(n, answered)} for t, n in sorted(self.tiers.items())
            ]
        if self.checked:
            bound = wilson_upper(self.checked_wrong, self.checked)
            out["semanticChecks"] = {
                "checked": self.checked,
                "wrong": self.checked_wrong,
                "wrongHitBound": f"{bound:.1%}",
            }
        if self.shadow or self.shadow_cost:
            out["shadow"] = {
                "cost": str(self.shadow_cost),
                "comparisons": [
                    {"lever": lever, "compared": a.compared, "agreed": a.agreed}
                    for lever, a in sorted(self.shadow.items())
                ],
            }
        if self.spenders:
            ranked = _top(self.spenders, TOP_SPENDERS)
            out["spenders"] = [{"key": k, "value": v, **share.status()} for (k, v), share in ranked]
        if self.task_count:
            top = _top(self.tasks, TOP_TASKS)  # of up to MAX_TASKS, every status write
            out["tasks"] = {
                "count": self.task_count,
                **self.tasked.status(),
                "costPerTask": str((self.tasked.cost / self.task_count).quantize(MICRO)),
                "tokensPerTask": self.tasked.tokens // self.task_count,
                "top": [{"task": t, **share.status()} for t, share in top],
                **self.outcomes.status(self.tasked),
            }
        return out

    @classmethod
    def restore(cls, status: Mapping[str, Any]) -> Totals:
        """The totals a status holds (as :meth:`status` wrote them); ValueError if unreadable."""
        try:
            usage = status.get("usage") or {}
            totals = cls(
                requests=int(usage.get("requests", 0)),
                cache_hits=int(usage.get("cacheHits", 0)),
                input_tokens=int(usage.get("inputTokens", 0)),
                output_tokens=int(usage.get("outputTokens", 0)),
                cached_input_tokens=int(usage.get("cachedInputTokens", 0)),
                reference_requests=int(usage.get("referenceRequests", 0)),
                saved=Decimal(str(usage.get("saved", "0"))),
                tool_calls=int(usage.get("toolCalls", 0)),
                tool_cache_hits=int(usage.get("toolCacheHits", 0)),
                tiers=Counter(
                    {str(t["tier"]): int(t["requests"]) for t in usage.get("tiers") or []}
                ),
                saved_by_lever={
                    str(s["lever"]): Decimal(str(s["saved"]))
                    for s in usage.get("savedByLever") or []
                },
            )
            for entry in status.get("spenders") or []:
                totals.spenders[(str(entry["key"]), str(entry["value"]))] = Share.read(entry)
            shadow = status.get("shadow") or {}
            totals.shadow_cost = Decimal(str(shadow.get("cost", "0")))
            for entry in shadow.get("comparisons") or []:
                totals.shadow[str(entry["lever"])] = Agreement(
                    int(entry["compared"]), int(entry["agreed"])
                )
            checks = status.get("semanticChecks") or {}
            totals.checked = int(checks.get("checked", 0))
            totals.checked_wrong = int(checks.get("wrong", 0))
            tasks = status.get("tasks") or {}
            if tasks:
                totals.task_count = int(tasks.get("count", 0))
                totals.tasked = Share.read(tasks)
                totals.tasks = {str(t["task"]): Task.read(t) for t in tasks.get("top") or []}
                totals.outcomes = Outcomes.read(tasks)
        except (InvalidOperation, KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"unreadable usage totals: {error}") from None
        return totals


MICRO = Decimal("0.000001")
K = TypeVar("K", str, tuple[str, str])
S = TypeVar("S", bound=Share)


def _top(shares: Mapping[K, S], n: int) -> list[tuple[K, S]]:
    """The ``n`` largest by cost (ties by name), without sorting them all."""
    return heapq.nsmallest(n, shares.items(), key=lambda kv: (-kv[1].cost, kv[0]))


def percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` as a whole percentage, e.g. ``37%``."""
    return f"{round(part * 100 / whole)}%"
