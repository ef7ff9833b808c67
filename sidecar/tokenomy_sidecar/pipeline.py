"""The request pipeline: what one request becomes, and the stages it goes through.

An :class:`Exchange` is one request on its way through; it holds one record
per concern (what the client sent, caching, routing, spend), each written by
the stage that owns it. A :class:`Stage` is one module's work on a request:
``request`` runs in pipeline order until a stage answers (a cache hit, a
cascade's kept answer, the upstream reply); ``store`` runs, for the stages
that ran, once a fresh answer is complete (cache stores); ``close`` runs for
every stage at the very end, whatever happened (budget settlement).

An optimisation that fails does not fail the request. When an ``optional``
stage raises, the pipeline drops the records it and the stages before it
wrote (:meth:`Exchange.fail_open`), skips the optional stages after it, and
the request goes as the client wrote it to the route's default tier.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from tokenomy_api.compiled import CompiledRoute, CompiledTier
from tokenomy_api.usage_protocol import RequestUsage
from tokenomy_sidecar.errors import ApiError
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.request import ChatRequest, parse_chat
from tokenomy_sidecar.runtime import Runtime
from tokenomy_sidecar.semantic_budget import Candidate
from tokenomy_sidecar.wallet import Reservation

if TYPE_CHECKING:
    # Stages import this module; these are only named in annotations here.
    from tokenomy_sidecar.stages.budget import BudgetKeeper
    from tokenomy_sidecar.stages.metering import Usage
    from tokenomy_sidecar.stages.upstream import Reply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheDecision:
    """Whether a request may be answered from, and stored into, the cache."""

    partition: str
    """The partition entries are confined to."""
    lookup: bool
    """Whether a stored answer may be served."""
    store: bool
    """Whether a fresh answer may be stored."""
    reason: str
    """Why caching is off, for the ``bypass`` metric label; ``""`` when it is on."""


@dataclass
class CacheRecord:
    """What the cache stages decided and computed for a request."""

    decision: CacheDecision
    """The partition, and whether the request may be served from and stored into it."""
    key: str = ""
    """The exact cache's key; ``""`` when the exact cache does not apply."""
    context: str = ""
    """The semantic cache's exact part: a hash of the conversation around the question."""
    vector: Any = None
    """The question's embedding (a numpy row), computed once for lookup, routing and store."""
    candidate: Candidate | None = None
    """A near match the wrong-hit budget did not serve: the fresh answer tells whether it
    would have been right."""

    @classmethod
    def off(cls, reason: str) -> CacheRecord:
        """No caching for this request."""
        return cls(CacheDecision("", lookup=False, store=False, reason=reason))


@dataclass
class RoutingRecord:
    """Which tier answers, and why."""

    tier: CompiledTier
    """The tier that answers (while a cascade runs: the tier being tried)."""
    reason: str = "default"
    """Why (``x-tokenomy-route-reason``)."""
    straight: bool = False
    """A domain rule (or a spent budget) chose the tier: it answers, no cascade."""
    lever: str = "tier"
    """Savings lever for metrics: ``tier`` (default tier), ``routing`` or ``cascade``."""


@dataclass
class SpendRecord:
    """What the request cost, and where that is reported."""

    spent: Decimal = Decimal(0)
    """Every call for this request, cascade tries, verifier and embedding calls included."""
    input_tokens: int = 0
    output_tokens: int = 0
    """Tokens of every model call for this request."""
    cached_input_tokens: int = 0
    """Of the input tokens, the ones the provider read from its prompt cache."""
    keeper: BudgetKeeper | None = None
    """Where the request is reported (and its budget kept), if anywhere."""
    reservation: Reservation | None = None
    """Money set aside from the budget for this request; settled when it ends."""
    usage: RequestUsage | None = None
    """What the request used, once it was answered; reported when it ends."""
    estimated: bool = False
    """Some of the tokens are an estimate (a stream cut before its usage arrived)."""
    pruned_tokens: int = 0
    """Estimated input tokens of the tool definitions pruning removed."""
    trimmed_tokens: int = 0
    """Estimated input tokens trimming removed, net of any summary put in their place."""
    summary_cost: Decimal = Decimal(0)
    """Of ``spent``, what the summary of dropped turns cost (charged to the trim lever)."""


@dataclass(frozen=True)
class TaskOutcome:
    """How an agent task ended, as its app reports it."""

    success: bool
    score: float | None = None
    """The app's score, 0 to 1."""


@dataclass
class Exchange:
    """One request on its way through the pipeline."""

    runtime: Runtime
    """The config in force when the request arrived, used to the end."""
    route: CompiledRoute
    """The route the request's model names."""
    raw: bytes
    """The body as the client sent it, for fail-open."""
    chat: ChatRequest
    """The request as the stages changed it."""
    started: float
    """Monotonic time of arrival."""
    client_headers: Mapping[str, str] = field(default_factory=dict)
    """The request's headers as the client sent them."""
    feature: str | None = None
    """The attribution header's value, when the policy names one and the request has it."""
    task: str = ""
    """The client's task id (``x-tokenomy-task``)."""
    outcome: TaskOutcome | None = None
    """How the task ended, when this is its last call (``x-tokenomy-task-outcome``)."""
    embedding: bool = False
    """An embeddings request: nothing to save against the reference chat tier."""
    dropped: list[dict[str, Any]] = field(default_factory=list)
    """Messages the history window dropped, oldest first; a summary may stand in for them."""
    park: Callable[[Exchange], Awaitable[Answer]] | None = None
    """For a line of a batch job: hands it to the job, which answers it with the others."""
    cache: CacheRecord = field(default_factory=lambda: CacheRecord.off("not-identified"))
    routing: RoutingRecord = field(init=False)
    spend: SpendRecord = field(default_factory=SpendRecord)
    labels: tuple[str, str, str] = field(init=False)
    """(namespace, policy, route): the labels every metric of this request carries."""
    headers: dict[str, str] = field(default_factory=dict)
    """Headers the answer (or the error) carries."""
    answer: Answer | None = None
    """What the stages answered with, once one did (a relayed stream's completion is
    filled in as it is written)."""
    shadowed: bool = False
    """Sampled for a shadow comparison, if its answer turns out eligible (a relayed stream
    is then assembled as it is written)."""

    def __post_init__(self) -> None:
        self.routing = RoutingRecord(self.route.tier(self.route.default_tier))
        policy = self.runtime.config.policy
        self.labels = (policy.namespace, policy.name, self.route.name)

    @property
    def source(self) -> str:
        """How a model's answer to this request counts: ``miss``, or ``bypass`` (no lookup)."""
        return "miss" if self.cache.decision.lookup else "bypass"

    def answered_by(self, reply: Reply) -> None:
        """Put the headers that say who answered a fresh answer, and why, on the answer."""
        self.headers.update(
            {
                "x-tokenomy-cache": self.source,
                "x-tokenomy-tier": self.routing.tier.name,
                "x-tokenomy-backend": reply.candidate.backend.name,
                "x-tokenomy-route-reason": self.routing.reason,
            }
        )

    def fail_open(self, stage: str) -> None:
        """Forget what the optimisations did: the client's request, to the default tier."""
        self.chat = parse_chat(self.raw)
        self.spend.pruned_tokens = 0  # the client's tools again
        self.spend.trimmed_tokens = 0  # and its messages
        self.dropped = []
        self.cache = CacheRecord.off("fail-open")
        self.routing = RoutingRecord(
            self.route.tier(self.route.default_tier), reason=f"fail-open ({stage})"
        )


@dataclass
class Answer:
    """What a stage answered with; :mod:`tokenomy_sidecar.respond` writes it."""

    source: str
    """``exact`` or ``semantic`` (a cache hit), ``miss`` or ``bypass`` (a model answered)."""
    status: int = 200
    body: bytes = b""
    """The JSON body as it came (a reply, or a stored entry)."""
    content_type: str = "application/json"
    completion: dict[str, Any] | None = None
    """The parsed completion, when there is one: replayed as SSE to a streaming client,
    and what the cache stores."""
    reply: Reply | None = None
    """The backend's reply that produced the answer; its open stream is relayed."""
    settle: Callable[[Usage], Decimal] | None = None
    """For a relayed stream: meters and settles it once its usage is known, returning
    what the request cost."""

    @property
    def fresh(self) -> bool:
        """A model answered (not the cache)."""
        return self.source in ("miss", "bypass")


class Stage(Protocol):
    """One step of the pipeline; a module under ``stages/`` owns each."""

    name: str
    """Label of the ``tokenomy_fail_open_total`` metric when it fails."""
    optional: bool
    """An optimisation: when it fails, the request still goes through (fail open)."""

    async def request(self, x: Exchange) -> Answer | None:
        """Work on the request; an answer ends the walk (later stages do not run)."""
        ...

    async def store(self, x: Exchange, answer: Answer) -> None:
        """A fresh, complete answer exists (not run for cache hits or errors)."""
        ...

    async def close(self, x: Exchange) -> None:
        """The request is over, however it ended."""
        ...


class Quiet:
    """Defaults for a stage with nothing to do after the answer."""

    async def store(self, x: Exchange, answer: Answer) -> None:
        """Nothing to store."""

    async def close(self, x: Exchange) -> None:
        """Nothing to settle."""


class Pipeline:
    """Stages in order, and the fail-open rule."""

    def __init__(self, stages: Sequence[Stage], metrics: Metrics) -> None:
        self.stages = tuple(stages)
        self.metrics = metrics

    async def run(self, x: Exchange) -> tuple[Answer, list[Stage]]:
        """Walk the stages until one answers; returns the answer and the stages that ran."""
        ran: list[Stage] = []
        failed = False
        for stage in self.stages:
            if failed and stage.optional:
                continue
            ran.append(stage)
            try:
                answer = await stage.request(x)
            except Exception as error:
                if not stage.optional or isinstance(error, ApiError):
                    raise  # a refusal (4xx) is no failure, and only optimisations fail open
                log.exception(
                    "stage %s failed; sending the request to the default tier", stage.name
                )
                self.metrics.fail_open.labels(*x.labels, stage.name).inc()
                x.fail_open(stage.name)
                failed = True
                continue
            if answer is not None:
                x.answer = answer
                return answer, ran
        raise RuntimeError("no stage answered: the last stage must always answer")

    async def store(self, x: Exchange, answer: Answer, ran: Sequence[Stage]) -> None:
        """Tell the stages that ran of a fresh, complete answer."""
        for stage in ran:
            await stage.store(x, answer)

    async def close(self, x: Exchange) -> None:
        """Tell every stage the request is over."""
        for stage in self.stages:
            await stage.close(x)
