"""The usage-and-lease stream between sidecars and the operator, served next to ADS.

``tokenomy.usage.v1.Usage/Stream`` is a bidirectional gRPC stream: a sidecar
sends numbered usage reports and asks for budget leases; the operator
acknowledges the reports it counted and grants leases. Envoy's Load
Reporting Service was the other candidate; it reports per-interval deltas
with no sequence number, so a report replayed after a reconnect could not be
told from a new one and would be counted twice. This one numbers reports per
sidecar (and per sidecar start), which makes replays harmless.

The messages are protobuf, built here from a descriptor so that no generated
code is checked in. Money travels as decimal strings, never as floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "tokenomy.usage.v1.Usage"
SEMANTIC_CHECKS = frozenset({"correct", "wrong"})
SHADOW_LEVERS = frozenset({"semantic_cache", "routing", "cascade", "tier"})
"""What a shadow comparison can have measured: an answer from the semantic cache, or from a
tier cheaper than the reference chosen by routing, the cascade or the route's default."""
VERDICTS = frozenset({"agree", "disagree"})
OUTCOMES = frozenset({"success", "failure"})
METHOD = f"/{SERVICE}/Stream"
TOOL_MAX = 300
LEVER_MAX = 64
"""Longest ``server/tool`` name kept from a report."""

_F = descriptor_pb2.FieldDescriptorProto

# (name, number, type, label, message type for TYPE_MESSAGE fields)
_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    "Label": [
        ("key", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("value", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ],
    "Report": [
        ("number", 1, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        ("cost_usd", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("saved_usd", 3, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("route", 4, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("tier", 5, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("reference", 6, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ("cache", 7, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("input_tokens", 8, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        ("output_tokens", 9, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        ("labels", 10, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".tokenomy.usage.v1.Label"),
        ("task", 11, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("estimated", 12, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ("semantic_check", 13, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        # A call through the tool proxy ("server/tool"), not a model request.
        ("tool", 14, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("cached_input_tokens", 15, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        # A shadow comparison ("lever"), not a request: did the reference tier agree?
        ("shadow", 16, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("verdict", 17, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        # A task's outcome ("success" or "failure"), with the app's score if it gave one.
        ("outcome", 18, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("score", 19, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("lever", 20, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ],
    "SidecarMessage": [
        ("holder", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("policy", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("reports", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".tokenomy.usage.v1.Report"),
        ("want_lease", 4, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ("in_flight_usd", 5, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("need_usd", 6, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        # Levers the sidecar's config in force asks for that save nothing there.
        ("notices", 7, _F.TYPE_STRING, _F.LABEL_REPEATED, ""),
        ("config_version", 8, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ],
    "OperatorMessage": [
        ("acknowledged", 1, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        ("lease_usd", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("lease_seconds", 3, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("granted", 4, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ("unlimited", 5, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ("resets_at", 6, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ],
}


def _classes() -> dict[str, Any]:
    proto = descriptor_pb2.FileDescriptorProto(
        name="tokenomy/usage/v1/usage.proto", package="tokenomy.usage.v1", syntax="proto3"
    )
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
    service = proto.service.add(name="Usage")
    service.method.add(
        name="Stream",
        input_type=".tokenomy.usage.v1.SidecarMessage",
        output_type=".tokenomy.usage.v1.OperatorMessage",
        client_streaming=True,
        server_streaming=True,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    built = message_factory.GetMessages([proto], pool=pool)
    return {name.rsplit(".", 1)[1]: cls for name, cls in built.items()}


_BUILT = _classes()
Label: Any = _BUILT["Label"]
"""An attribution label: ``key``, ``value``."""
Report: Any = _BUILT["Report"]
"""A numbered usage report of one request (see :class:`RequestUsage` for the fields)."""
SidecarMessage: Any = _BUILT["SidecarMessage"]
"""Reports, and optionally a lease request with the money in flight."""
OperatorMessage: Any = _BUILT["OperatorMessage"]
"""What was counted, and the lease granted (``granted``) or that there is no budget."""


CACHE_HITS = frozenset({"exact", "semantic"})
"""``cache`` values of a request answered from cache."""


@dataclass(frozen=True)
class RequestUsage:
    """What one request used, as a sidecar reports it."""

    cost: Decimal
    """USD every model call of the request cost (cascade tries and verifier calls included)."""
    saved: Decimal = Decimal(0)
    """USD saved against the reference tier; negative when an escalation cost more."""
    route: str = ""
    """The ModelRoute that served it."""
    tier: str = ""
    """The tier whose answer was served; for a cache hit, the tier that first answered."""
    reference: bool = False
    """Whether that tier is the route's reference (largest) tier."""
    cache: str = ""
    """``exact`` or ``semantic`` for a hit, ``miss``, ``bypass``; empty when never answered."""
    input_tokens: int = 0
    """Input tokens of every model call of the request."""
    output_tokens: int = 0
    """Output tokens of every model call of the request."""
    cached_input_tokens: int = 0
    """Of the input tokens, the ones the provider read from its prompt cache."""
    labels: tuple[tuple[str, str], ...] = ()
    """Attribution labels (pod labels, the feature header), sorted by key."""
    task: str = ""
    """The client's task id (``x-tokenomy-task``), if it sent one."""
    estimated: bool = False
    """Tokens (and so cost) estimated, not reported by the backend: a stream the backend
    cut before its usage arrived is billed for its prompt and the chunks relayed."""
    semantic_check: str = ""
    """``correct`` or ``wrong``: a servable semantic near match this request was sent to
    the model to check (the wrong-hit budget's exploration), and what the answer showed."""
    tool: str = ""
    """For a call through the tool proxy, ``server/tool`` (``cache`` is then ``hit`` or
    ``miss``); empty for a model request."""
    shadow: str = ""
    """For a shadow comparison, the lever whose answer was compared (one of
    :data:`SHADOW_LEVERS`); ``cost`` and the tokens are then the comparison's."""
    verdict: str = ""
    """For a shadow comparison: ``agree`` or ``disagree`` (the reference tier's answer
    against the one served); empty when the comparison failed (its cost still counts)."""
    outcome: str = ""
    """For a task's outcome (``task`` names it): ``success`` or ``failure``."""
    score: float | None = None
    """The app's score of the task's outcome (0 to 1), if it gave one."""
    lever: str = ""
    """What answered: ``exact_cache``, ``semantic_cache``, ``routing``, ``cascade`` or
    ``tier`` (the route's default tier)."""

    @property
    def is_request(self) -> bool:
        """A model request: not a tool call, a shadow comparison or an outcome alone."""
        return not (self.tool or self.shadow or (self.outcome and not self.route))

    @property
    def hit(self) -> bool:
        """Answered from cache."""
        return self.cache in CACHE_HITS

    def report(self, number: int) -> Any:
        """The numbered protobuf report."""
        return Report(
            number=number,
            cost_usd=str(self.cost),
            saved_usd=str(self.saved),
            route=self.route,
            tier=self.tier,
            reference=self.reference,
            cache=self.cache,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cached_input_tokens,
            labels=[Label(key=k, value=v) for k, v in self.labels],
            task=self.task,
            estimated=self.estimated,
            semantic_check=self.semantic_check,
            tool=self.tool,
            shadow=self.shadow,
            verdict=self.verdict,
            outcome=self.outcome,
            score="" if self.score is None else repr(self.score),
            lever=self.lever,
        )

    @classmethod
    def from_report(cls, report: Any) -> RequestUsage:
        """Read a protobuf report; raises ValueError when its cost is not a number."""
        try:
            cost = Decimal(report.cost_usd)
            saved = Decimal(report.saved_usd or "0")
        except InvalidOperation:
            raise ValueError(f"report {report.number} has no valid cost") from None
        if not cost.is_finite() or not saved.is_finite():
            raise ValueError(f"report {report.number} has no valid cost")
        if cost < 0:
            # Spend only grows: a negative cost would hand budget back to whoever sent it.
            raise ValueError(f"report {report.number} has a negative cost ({cost})")
        return cls(
            cost=cost,
            saved=saved,
            route=report.route,
            tier=report.tier,
            reference=report.reference,
            cache=report.cache,
            input_tokens=report.input_tokens,
            output_tokens=report.output_tokens,
            cached_input_tokens=min(report.cached_input_tokens, report.input_tokens),
            labels=tuple((label.key, label.value) for label in report.labels),
            task=report.task,
            estimated=report.estimated,
            semantic_check=report.semantic_check
            if report.semantic_check in SEMANTIC_CHECKS
            else "",
            tool=report.tool[:TOOL_MAX],
            shadow=report.shadow if report.shadow in SHADOW_LEVERS else "",
            verdict=report.verdict if report.verdict in VERDICTS else "",
            outcome=report.outcome if report.outcome in OUTCOMES and report.task else "",
            score=_score(report.score),
            lever=report.lever[:LEVER_MAX],
        )


def _score(text: str) -> float | None:
    """A reported score in [0, 1]; None when absent or not such a number."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None
