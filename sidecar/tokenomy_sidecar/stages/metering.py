"""Stage 7: meter and settle — every call's tokens and cost, each request counted once.

Pure arithmetic first (:class:`Usage`, :func:`cost`, :func:`savings`, in
exact decimals), then :class:`Meter`, which every stage that calls a model
uses: :meth:`Meter.call` counts one backend call, :meth:`Meter.settle` the
request once it has its answer (savings against the reference tier,
attribution and task metrics, the usage report the budget stage sends).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tokenomy_api.compiled import Price
from tokenomy_api.usage_protocol import CACHE_HITS, RequestUsage
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.request import prompt_text
from tokenomy_sidecar.routing.decision import estimate_tokens

if TYPE_CHECKING:
    from tokenomy_sidecar.pipeline import Exchange
    from tokenomy_sidecar.stages.upstream import Reply

MILLION = Decimal(1_000_000)
LABEL_VALUES = 100
"""Distinct values of one attribution key that get series of their own in ``/metrics``; the
rest share ``other``. Clients choose the attribution header's values, and every value
would otherwise be a series forever."""
OTHER = "other"


@dataclass(frozen=True)
class Usage:
    """Tokens one answer used."""

    prompt: int = 0
    """Input tokens, cached ones included."""
    completion: int = 0
    """Output tokens."""
    cached: int = 0
    """Input tokens the provider read from its prompt cache."""

    @classmethod
    def from_openai(cls, usage: Any) -> Usage:
        """Read an OpenAI ``usage`` object; anything missing or malformed counts as 0."""
        if not isinstance(usage, dict):
            return cls()
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        return cls(
            prompt=_count(usage.get("prompt_tokens")),
            completion=_count(usage.get("completion_tokens")),
            cached=min(_count(cached), _count(usage.get("prompt_tokens"))),
        )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def cost(usage: Usage, price: Price) -> Decimal:
    """What ``usage`` costs at ``price`` (USD per million tokens)."""
    cached_price = price.cached_input if price.cached_input is not None else price.input
    total = (
        (usage.prompt - usage.cached) * price.input
        + usage.cached * cached_price
        + usage.completion * price.output
    )
    return total / MILLION


def savings(usage: Usage, paid: Decimal, reference: Price) -> Decimal:
    """What the answer would have cost on the reference tier, minus what it cost.

    Negative when a request cost more than the reference would have, e.g. a
    cascade that tried a small tier and then escalated.
    """
    return cost(usage, reference) - paid


def estimate_stream(body: Mapping[str, Any], chunks: int) -> Usage:
    """What a stream cut before its usage arrived used: its prompt, and one token per
    content chunk relayed (what OpenAI-compatible servers send)."""
    return Usage(prompt=estimate_tokens(prompt_text(body)), completion=chunks)


def usd(amount: Decimal) -> str:
    """An amount for a header: plain decimal notation, no exponent, no trailing zeros."""
    text = format(amount.normalize(), "f")
    return text if text != "-0" else "0"


def attribution(
    pod_labels: Mapping[str, str], wanted: Sequence[str], feature: str | None
) -> dict[str, str]:
    """Who a request is charged to: the pod's labels the policy names, the header's
    ``feature``."""
    out = {k: v for k, v in pod_labels.items() if k in wanted}
    if feature:
        out["feature"] = feature
    return out


class LabelBound:
    """Keeps a label's distinct values per policy and key under :data:`LABEL_VALUES`."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str, str], set[str]] = {}

    def shown(self, namespace: str, policy: str, key: str, value: str) -> str:
        """``value`` while the key has fewer than :data:`LABEL_VALUES` others, else ``other``."""
        seen = self._values.setdefault((namespace, policy, key), set())
        if value in seen:
            return value
        if len(seen) < LABEL_VALUES:
            seen.add(value)
            return value
        return OTHER


class Meter:
    """Counts what requests cost and save, into metrics and each request's spend record."""

    def __init__(self, metrics: Metrics, pod_labels: Mapping[str, str]) -> None:
        self.metrics = metrics
        self.pod_labels = dict(pod_labels)
        self.bound = LabelBound()

    def call(self, x: Exchange, reply: Reply, usage: Usage, tier: str | None = None) -> Decimal:
        """Count one backend call for ``tier`` (the answering tier where unset); returns
        what the call cost."""
        backend = reply.candidate.backend
        labels = (*x.labels, tier or x.routing.tier.name, backend.name)
        m = self.metrics
        paid = cost(usage, backend.price)
        if usage.prompt or usage.completion:
            m.tokens.labels(*labels, "input").inc(usage.prompt)
            m.tokens.labels(*labels, "cached_input").inc(usage.cached)
            m.tokens.labels(*labels, "output").inc(usage.completion)
        m.money(m.cost, paid, *labels)
        self._add(x, paid, usage)
        return paid

    def embedding(self, x: Exchange, usage: Usage) -> None:
        """Count a call to the route's embedder (semantic cache, domain routing)."""
        spec = x.route.embedding
        if spec is None or spec.price is None or not usage.prompt:
            return
        paid = cost(usage, spec.price)
        self.metrics.money(self.metrics.cost, paid, *x.labels, "embedding", spec.model)
        self._add(x, paid, Usage())

    def settle(self, x: Exchange, reply: Reply, usage: Usage, source: str) -> None:
        """Count the request once, with what it saved against the reference tier.

        ``usage`` is the answer served; the reference tier is priced for the
        same answer. A cascade that escalated can cost more than that: the
        difference goes to the overspend counter, since counters cannot go down.
        """
        m = self.metrics
        tier = x.routing.tier.name
        m.requests.labels(
            *x.labels, tier, reply.candidate.backend.name, source, str(reply.status)
        ).inc()
        spend = x.spend
        price = reply.candidate.backend.price
        paid = spend.spent - spend.summary_cost
        saved = Decimal(0) if x.embedding else savings(usage, paid, x.route.reference_price)
        m.money(m.savings, saved, *x.labels, x.routing.lever)
        m.money(m.overspend, -saved, *x.labels, x.routing.lever)
        if spend.pruned_tokens:
            # The definitions pruning removed, at the answering backend's input price.
            pruned = cost(Usage(prompt=spend.pruned_tokens), price)
            m.money(m.savings, pruned, *x.labels, "tool_pruning")
            saved += pruned
        if spend.trimmed_tokens or spend.summary_cost:
            # The same for the turns trimming dropped, less what their summary cost.
            trimmed = cost(Usage(prompt=spend.trimmed_tokens), price) - spend.summary_cost
            m.money(m.savings, trimmed, *x.labels, "trim")
            m.money(m.overspend, -trimmed, *x.labels, "trim")
            saved += trimmed
        self.record(x, tier, source, saved)

    def hit(self, x: Exchange, tier: str, usage: Usage, source: str) -> None:
        """Count a request the cache answered: it saved the reference tier's price."""
        m = self.metrics
        saved = cost(usage, x.route.reference_price) - x.spend.spent
        m.money(m.savings, saved, *x.labels, f"{source}_cache")
        m.requests.labels(*x.labels, tier, "", source, "200").inc()
        self.record(x, tier, source, saved)

    def record(self, x: Exchange, tier: str, source: str, saved: Decimal) -> None:
        """What the request used: to the attribution and task metrics, and its usage report."""
        m = self.metrics
        spend = x.spend
        labels = self._attribution(x)
        tokens = spend.input_tokens + spend.output_tokens
        policy = x.labels[:2]
        for key, value in labels.items():
            shown = self.bound.shown(*policy, key, value)
            m.money(m.attributed_cost, spend.spent, *policy, key, shown)
            if tokens:
                m.attributed_tokens.labels(*policy, key, shown).inc(tokens)
        if x.task:
            m.task_requests.labels(*policy).inc()
            m.money(m.task_cost, spend.spent, *policy)
            if tokens:
                m.task_tokens.labels(*policy).inc(tokens)
        spend.usage = RequestUsage(
            cost=spend.spent,
            saved=saved,
            route=x.route.name,
            tier=tier,
            reference=tier == x.route.reference_tier,
            cache=source,
            input_tokens=spend.input_tokens,
            output_tokens=spend.output_tokens,
            cached_input_tokens=spend.cached_input_tokens,
            labels=tuple(sorted(labels.items())),
            task=x.task,
            estimated=spend.estimated,
            lever=f"{source}_cache" if source in CACHE_HITS else x.routing.lever,
        )

    def failures(self, x: Exchange, reply: Reply, tier: str) -> None:
        """Count the tries that failed before a backend answered."""
        for backend, reason in reply.failures:
            self.metrics.upstream_errors.labels(*x.labels, tier, backend, reason).inc()
        if reply.failures:
            self.metrics.retries.labels(*x.labels, tier).inc(len(reply.failures))

    def _add(self, x: Exchange, paid: Decimal, usage: Usage) -> None:
        x.spend.spent += paid
        x.spend.input_tokens += usage.prompt
        x.spend.output_tokens += usage.completion
        x.spend.cached_input_tokens += usage.cached

    def _attribution(self, x: Exchange) -> dict[str, str]:
        return attribution(self.pod_labels, x.runtime.config.attribution.pod_labels, x.feature)
