"""The OpenAI-compatible HTTP API of the sidecar, and the pipeline behind it.

Stages run in DESIGN.md's order: identify the route and partition, trim and
cap, exact and semantic cache, choose the starting tier (domain rules,
complexity routing), cascade (try cheaper tiers, judge, escalate), choose
backends, call upstream, meter and store. An unexpected error in a stage
before the upstream call sends the request, as the client wrote it, to the
route's default tier: a broken optimisation never breaks a request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tokenomy_api.clock import Clock
from tokenomy_api.compiled import (
    CompiledCascade,
    CompiledDomain,
    CompiledEmbedding,
    CompiledRoute,
    CompiledTier,
    Price,
)
from tokenomy_api.usage_protocol import RequestUsage
from tokenomy_sidecar.embedders import (
    Embedder,
    LocalEmbedder,
    RemoteEmbedder,
    Vectors,
)
from tokenomy_sidecar.errors import ApiError, error_response
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.request import ChatRequest, message_text, parse_chat, parse_json_object
from tokenomy_sidecar.routing.confidence import (
    DEFAULT_VERIFIER_PROMPT,
    Verdict,
    content,
    format_problem,
    judge,
    parse_verdict,
    verifier_messages,
)
from tokenomy_sidecar.routing.decision import Complexity, decide, estimate_tokens, walk
from tokenomy_sidecar.runtime import ConfigHolder, Runtime
from tokenomy_sidecar.semantic_index import SemanticIndex
from tokenomy_sidecar.sse import (
    DONE,
    assemble,
    cacheable,
    event_data,
    replay,
    split_events,
)
from tokenomy_sidecar.stages import identify, semantic_cache
from tokenomy_sidecar.stages.backend_choice import HealthTracker, rank
from tokenomy_sidecar.stages.budget import BudgetKeeper, Keepers, estimate, estimate_embedding
from tokenomy_sidecar.stages.cache_key import exact_key
from tokenomy_sidecar.stages.cascade import (
    VERIFIER_MAX_TOKENS,
    cascade_threshold,
    client_answer,
    pick,
    trial_body,
)
from tokenomy_sidecar.stages.metering import Usage, cost, savings, usd
from tokenomy_sidecar.stages.trim import cap_output, trim_prompt
from tokenomy_sidecar.stages.upstream import Reply, Upstream
from tokenomy_sidecar.wallet import Reservation

log = logging.getLogger(__name__)

NO_CACHE = identify.CacheDecision("", lookup=False, store=False, reason="fail-open")

# Stored entries start with the tier and backend that answered, then the body.
_SEPARATOR = b"\n"
TASK_HEADER = "x-tokenomy-task"
"""Names the agent task a request belongs to: cost and tokens per task."""
TASK_MAX = 256


@dataclass
class Exchange:
    """What one request became as it went through the pipeline."""

    runtime: Runtime
    route: CompiledRoute
    chat: ChatRequest
    started: float
    labels: tuple[str, str, str]
    decision: identify.CacheDecision = NO_CACHE
    key: str = ""
    tier: CompiledTier | None = None
    headers: dict[str, str] = field(default_factory=dict)
    vector: Vectors | None = None
    """The question's embedding, computed once for lookup and store."""
    semantic_partition: str = ""
    reason: str = "default"
    """Why the answering tier was chosen (``x-tokenomy-route-reason``)."""
    straight: bool = False
    """A domain rule chose the tier: it answers, no cascade."""
    lever: str = "tier"
    """Savings lever for metrics: ``tier`` (default tier), ``routing`` or ``cascade``."""
    spent: Decimal = Decimal(0)
    """What every call for this request cost, cascade tries and verifier calls included."""
    feature: str | None = None
    """The attribution header's value, when the policy names one and the request has it."""
    task: str = ""
    """The client's task id (``x-tokenomy-task``)."""
    embedding: bool = False
    """An embeddings request: nothing to save against the reference chat tier."""
    input_tokens: int = 0
    output_tokens: int = 0
    """Tokens of every model call for this request."""
    budget: BudgetKeeper | None = None
    """Where the request is reported (and its budget kept), if anywhere."""
    reservation: Reservation | None = None
    """Money set aside from the budget for this request; settled when it ends."""
    usage: RequestUsage | None = None
    """What the request used, once it was answered; reported when it ends."""


def _tier(route: CompiledRoute, name: str) -> CompiledTier:
    return next(t for t in route.tiers if t.name == name)


def reference_price(route: CompiledRoute) -> Price:
    """The price savings are measured against: the reference tier's first backend."""
    return _tier(route, route.reference_tier).backends[0].price


class Proxy:
    """Request handlers; one per sidecar."""

    def __init__(
        self,
        holder: ConfigHolder,
        upstream: Upstream,
        health: HealthTracker,
        metrics: Metrics,
        clock: Clock,
        rng: random.Random,
        semantic: SemanticIndex,
        pod_region: str | None = None,
        max_body_bytes: int = 8 * 1024 * 1024,
        budgets: Keepers | None = None,
        pod_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.holder = holder
        self.upstream = upstream
        self.health = health
        self.metrics = metrics
        self.clock = clock
        self.rng = rng
        self.semantic = semantic
        self.pod_region = pod_region
        self.max_body_bytes = max_body_bytes
        self.budgets = budgets
        self.pod_labels = dict(pod_labels or {})
        self._embedders: dict[tuple[str, str], Embedder] = {}
        self._examples: dict[tuple[str, str], dict[str, Vectors]] = {}
        self._examples_lock = asyncio.Lock()

    # --- request intake --------------------------------------------------------

    def _runtime(self) -> Runtime:
        runtime = self.holder.current
        if runtime is None:
            raise ApiError(503, "the sidecar has no configuration yet", "server_error")
        return runtime

    async def _read(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise self._too_large()
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large() from None

    def _too_large(self) -> ApiError:
        return ApiError(413, f"request body is larger than {self.max_body_bytes} bytes")

    def _route(self, runtime: Runtime, model: str) -> CompiledRoute:
        route = runtime.routes.get(model)
        if route is None:
            served = ", ".join(sorted(runtime.routes)) or "none"
            raise ApiError(
                404,
                f"model `{model}` is not served here (served: {served})",
                param="model",
                code="model_not_found",
            )
        return route

    async def _refuse(self, request: web.Request, error: ApiError) -> web.StreamResponse:
        self.metrics.invalid_requests.labels(str(error.status)).inc()
        response = error.response()
        if error.status == 413:
            # Send the error, then close: the unread rest of the body would
            # otherwise keep the connection (and shutdown) waiting.
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            if request.transport is not None:
                request.transport.close()
        return response

    # --- chat completions ------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        started = self.clock.monotonic()
        try:
            runtime = self._runtime()
            raw = await self._read(request)
            chat = parse_chat(raw)
            route = self._route(runtime, chat.model)
            task = request.headers.get(TASK_HEADER, "")
            if len(task) > TASK_MAX:
                raise ApiError(400, f"header {TASK_HEADER} is longer than {TASK_MAX} characters")
        except ApiError as error:
            return await self._refuse(request, error)
        config = runtime.config
        policy = config.policy
        x = Exchange(runtime, route, chat, started, (policy.namespace, policy.name, route.name))
        header = config.attribution.header
        x.feature = request.headers.get(header) if header else None
        x.task = task
        self._keeper(x)
        self.metrics.in_flight.inc()
        try:
            hit = await self._prepare(x, request, raw)
            if hit is not None:
                return await self._serve_hit(x, request, *hit)
            return await self._forward(x, request)
        except ApiError as error:
            return error.response(x.headers)
        finally:
            self.metrics.in_flight.dec()
            self._report(x)

    async def _prepare(
        self, x: Exchange, request: web.Request, raw: bytes
    ) -> tuple[bytes, str, float] | None:
        """Run the stages before the upstream call; returns a cached entry on a hit."""
        config = x.runtime.config
        stage = "identify"
        try:
            x.decision = identify.decide(config, x.chat.body, request.headers)
            stage = "trim"
            trim_prompt(x.chat.body, config.prompt)
            cap_output(x.chat.body, config.output)
            x.tier = _tier(x.route, x.route.default_tier)
            if config.cache.exact.enabled and (x.decision.lookup or x.decision.store):
                stage = "cache_key"
                x.key = exact_key(x.decision.partition, x.chat.body)
            stage = "exact_cache"
            entry = await self._lookup(x)
            if entry is not None:
                return entry, "exact", 1.0
            stage = "semantic_cache"
            hit = await self._semantic_lookup(x)
            if hit is not None:
                return hit
            stage = "route"
            await self._decide(x)
            return None
        except Exception:
            log.exception("stage %s failed; sending the request to the default tier", stage)
            self.metrics.fail_open.labels(*x.labels, stage).inc()
            x.chat = parse_chat(raw)
            x.decision = NO_CACHE
            x.key = ""
            x.vector = None
            x.semantic_partition = ""
            x.tier = _tier(x.route, x.route.default_tier)
            x.reason, x.lever = f"fail-open ({stage})", "tier"
            return None

    async def _lookup(self, x: Exchange) -> bytes | None:
        if not x.runtime.config.cache.exact.enabled:
            return None
        lookups = self.metrics.cache_lookups
        if not x.decision.lookup:
            lookups.labels(*x.labels, "exact", "bypass").inc()
            return None
        try:
            entry = await x.runtime.store.get(x.decision.partition, x.key)
        except Exception:
            # A cache that is down is a miss, not an outage.
            log.warning("cache lookup failed", exc_info=True)
            lookups.labels(*x.labels, "exact", "error").inc()
            return None
        lookups.labels(*x.labels, "exact", "hit" if entry is not None else "miss").inc()
        return entry

    def _embedder(self, x: Exchange) -> Embedder:
        spec: CompiledEmbedding | None = x.route.embedding
        assert spec is not None  # the compiler requires it for the semantic cache
        key = (x.route.name, spec.model_dump_json())
        embedder = self._embedders.get(key)
        if embedder is None:
            if spec.provider == "local":
                embedder = LocalEmbedder()
            else:
                ref = spec.credentials
                secret = x.runtime.credential_for(ref) if ref is not None else None
                embedder = RemoteEmbedder(
                    self.upstream.session,
                    spec.url or "",
                    spec.model,
                    secret,
                    x.route.retry.timeout_seconds,
                )
            self._embedders[key] = embedder
        return embedder

    async def _embed(self, x: Exchange) -> Vectors | None:
        """The question's vector, computed once per request; None when there is no question."""
        if x.vector is None:
            text = semantic_cache.question(x.chat.body)
            if text is None:
                return None
            vectors, usage = await self._embedder(x).embed([text])
            x.vector = vectors[0]
            price = x.route.embedding.price if x.route.embedding else None
            if price is not None and usage.prompt:
                model = x.route.embedding.model if x.route.embedding else ""
                paid = cost(usage, price)
                self.metrics.money(self.metrics.cost, paid, *x.labels, "embedding", model)
                x.spent += paid
        return x.vector

    async def _semantic_lookup(self, x: Exchange) -> tuple[bytes, str, float] | None:
        semantic = x.runtime.config.cache.semantic
        if not semantic.enabled:
            return None
        lookups = self.metrics.cache_lookups
        if not x.decision.lookup:
            lookups.labels(*x.labels, "semantic", "bypass").inc()
            return None
        x.semantic_partition = semantic_cache.context_partition(x.decision.partition, x.chat.body)
        try:
            vector = await self._embed(x)
        except Exception:
            # An embedder that is down is a miss, not an outage.
            log.warning("embedding for the semantic cache failed", exc_info=True)
            lookups.labels(*x.labels, "semantic", "error").inc()
            return None
        found = self.semantic.search(x.semantic_partition, vector) if vector is not None else None
        if found is None or found[0] < semantic.threshold:
            lookups.labels(*x.labels, "semantic", "miss").inc()
            return None
        lookups.labels(*x.labels, "semantic", "hit").inc()
        return found[1], "semantic", found[0]

    # --- routing and cascade -----------------------------------------------------

    async def _decide(self, x: Exchange) -> None:
        """Choose the starting tier: domain rules, then complexity, else the default."""
        config = x.runtime.config
        routing = config.routing
        question = semantic_cache.question(x.chat.body)
        similarity = None
        if question is not None and x.route.embedding is not None:
            examples = await self._domain_vectors(x)
            if examples:
                vector = await self._embed(x)
                if vector is not None:
                    scores = {name: float((m @ vector).max()) for name, m in examples.items()}
                    similarity = functools.partial(_similarity, scores)
        complexity = None
        model = x.runtime.complexity
        if routing.complexity and model is not None:
            prompt = "\n".join(message_text(m) for m in x.chat.body.get("messages") or [])
            complexity = Complexity(
                gain=model.score(question or prompt),
                cut=model.cut,
                input_tokens=estimate_tokens(prompt),
                output_tokens=model.mean_output_tokens,
                mean_input_tokens=model.mean_input_tokens,
            )
        decision = decide(x.route, routing, question, similarity, complexity)
        x.tier = _tier(x.route, decision.tier)
        x.reason = decision.reason
        x.straight = decision.kind == "domain"
        if not x.straight and len(walk(x.route, decision.tier)) > 1:
            x.lever = "cascade"
        elif decision.kind != "default":
            x.lever = "routing"
        self.metrics.route_decisions.labels(*x.labels, decision.tier, decision.kind).inc()

    async def _domain_vectors(self, x: Exchange) -> dict[str, Vectors]:
        """Each domain's example embeddings, computed once per config version and route."""
        key = (x.runtime.config.version, x.route.name)
        cached = self._examples.get(key)
        if cached is not None:
            return cached
        # One request embeds them; requests arriving meanwhile wait for it.
        async with self._examples_lock:
            cached = self._examples.get(key)
            if cached is None:
                cached = {}
                for domain in x.runtime.config.routing.domains:
                    if domain.examples:
                        vectors, _ = await self._embedder(x).embed(domain.examples)
                        cached[domain.name] = vectors
                self._examples[key] = cached
        return cached

    async def _cascade(
        self, x: Exchange, request: web.Request, tiers: Sequence[str]
    ) -> web.StreamResponse | None:
        """Try the cheaper tiers in turn; the first answer judged good enough is served.

        Returns None when every cheaper tier was passed over: ``x.tier`` is
        then the last tier, which answers as usual (streamed if asked).
        """
        confidence = x.runtime.config.cascade
        assert confidence is not None  # the compiler sets it whenever cascade tiers exist
        question = semantic_cache.question(x.chat.body) or ""
        trail = []
        for name in tiers[:-1]:
            x.tier = _tier(x.route, name)
            kept: dict[str, Any] | None = None
            reply: Reply | None = None
            try:
                verdict, kept, reply = await self._try_tier(x, x.tier, confidence, question)
            except Exception as error:
                # A tier that fails, or an answer that cannot be judged, escalates.
                log.warning("cascade try on %s failed: %s", name, error)
                verdict = Verdict(False, None, "error")
            shown = f" {verdict.confidence:.2f}" if verdict.confidence is not None else ""
            trail.append(f"{name} {verdict.reason}{shown}")
            if verdict.accept and kept is not None and reply is not None:
                x.reason = f"{x.reason}; cascade: {', '.join(trail)}"
                return await self._serve_kept(x, request, reply, kept)
            self.metrics.escalations.labels(*x.labels, name, verdict.reason).inc()
        x.tier = _tier(x.route, tiers[-1])
        x.reason = f"{x.reason}; cascade: {', '.join(trail)} -> {tiers[-1]}"
        return None

    async def _try_tier(
        self, x: Exchange, tier: CompiledTier, confidence: CompiledCascade, question: str
    ) -> tuple[Verdict, dict[str, Any] | None, Reply]:
        """One cascade try: ask the tier, judge its answer; every call is metered."""
        reply = await self._send(x, tier, trial_body(x.chat.body, confidence), stream=False)
        completion = _completion(reply)
        usage = Usage.from_openai(completion.get("usage") if completion else None)
        self._meter(x, reply, usage, final=False)
        if completion is None:
            return Verdict(False, None, "error"), None, reply
        choice, value = pick(completion, confidence, question, x.runtime.scorer)
        if confidence.method == "verifier":
            value = await self._verify(x, tier, confidence, question, content(choice))
        checks = confidence.format_checks or confidence.method == "format"
        problem = format_problem(choice, x.chat.body) if checks else None
        verdict = judge(
            confidence.method, value, cascade_threshold(tier, confidence, x.runtime.scorer), problem
        )
        return verdict, client_answer(completion, choice, x.chat.body), reply

    async def _verify(
        self,
        x: Exchange,
        tier: CompiledTier,
        confidence: CompiledCascade,
        question: str,
        answer: str,
    ) -> float | None:
        """Ask the same tier how likely its answer is right; None if it will not say."""
        template = confidence.verifier_prompt or DEFAULT_VERIFIER_PROMPT
        body = {
            "messages": verifier_messages(template, question, answer),
            "max_tokens": VERIFIER_MAX_TOKENS,
            "temperature": 0,
        }
        reply = await self._send(x, tier, body, stream=False)
        completion = _completion(reply)
        self._meter(x, reply, Usage.from_openai(completion and completion.get("usage")), False)
        if completion is None or not completion.get("choices"):
            return None
        return parse_verdict(content(completion["choices"][0]))

    async def _serve_kept(
        self, x: Exchange, request: web.Request, reply: Reply, completion: dict[str, Any]
    ) -> web.StreamResponse:
        """Serve the answer a cascade kept, as JSON or as the stream the client asked for."""
        x.headers = {**self._answer_headers(x, reply), "x-tokenomy-cost-usd": usd(x.spent)}
        self._settle(x, reply, Usage.from_openai(completion.get("usage")))
        await self._store(x, reply, completion)
        cache = x.headers["x-tokenomy-cache"]
        if x.chat.stream:
            response = web.StreamResponse(headers={**x.headers, **_SSE_HEADERS})
            await response.prepare(request)
            self._observe_first_byte(x, cache)
            await response.write(b"".join(replay(completion, x.chat.client_wants_usage)))
            await response.write_eof()
        else:
            body = orjson.dumps(completion)
            response = web.Response(body=body, content_type="application/json", headers=x.headers)
            self._observe_first_byte(x, cache)
        self._observe_done(x, cache)
        return response

    async def _store(self, x: Exchange, reply: Reply, completion: dict[str, Any]) -> None:
        cache = x.runtime.config.cache
        exact = bool(x.key)
        semantic = cache.semantic.enabled and bool(x.semantic_partition or x.decision.partition)
        if not (x.decision.store and (exact or semantic)):
            return
        stores = self.metrics.cache_stores
        if not cacheable(completion):
            stores.labels(*x.labels, "not_cacheable").inc()
            return
        backend = reply.candidate.backend.name
        tier = x.tier.name if x.tier else ""
        entry = f"{tier}\n{backend}\n".encode() + orjson.dumps(completion)
        try:
            if exact:
                ttl = cache.exact.ttl_seconds
                await x.runtime.store.put(x.decision.partition, x.key, entry, ttl)
            if semantic:
                x.semantic_partition = x.semantic_partition or semantic_cache.context_partition(
                    x.decision.partition, x.chat.body
                )
                vector = await self._embed(x)
                if vector is not None:
                    ttl = cache.semantic.ttl_seconds
                    self.semantic.add(x.semantic_partition, vector, entry, ttl)
        except Exception:
            log.warning("cache store failed", exc_info=True)
            stores.labels(*x.labels, "error").inc()
            return
        stores.labels(*x.labels, "stored").inc()

    async def _serve_hit(
        self, x: Exchange, request: web.Request, entry: bytes, kind: str, similarity: float
    ) -> web.StreamResponse:
        tier, backend, body = entry.split(_SEPARATOR, 2)
        completion = orjson.loads(body)
        usage = Usage.from_openai(completion.get("usage"))
        saved = cost(usage, reference_price(x.route)) - x.spent
        self.metrics.money(self.metrics.savings, saved, *x.labels, f"{kind}_cache")
        self._record(x, tier.decode(), kind, saved)
        headers = {
            "x-tokenomy-cache": kind,
            "x-tokenomy-tier": tier.decode(),
            "x-tokenomy-backend": backend.decode(),
            "x-tokenomy-cost-usd": "0",
        }
        if kind == "semantic":
            headers["x-tokenomy-similarity"] = f"{similarity:.4f}"
        self.metrics.requests.labels(*x.labels, tier.decode(), "", kind, "200").inc()
        if x.chat.stream:
            response = web.StreamResponse(headers={**headers, **_SSE_HEADERS})
            await response.prepare(request)
            self._observe_first_byte(x, kind)
            await response.write(b"".join(replay(completion, x.chat.client_wants_usage)))
            await response.write_eof()
        else:
            response = web.Response(body=body, content_type="application/json", headers=headers)
            self._observe_first_byte(x, kind)
        self._observe_done(x, kind)
        return response

    async def _send(
        self,
        x: Exchange,
        tier: CompiledTier,
        body: dict[str, Any],
        stream: bool,
        path: str = "/chat/completions",
    ) -> Reply:
        """Send a body to a tier's backends in placement order, within the retry budget."""
        candidates = rank(
            tier, x.runtime.config.placement, self.pod_region, self.health.endpoints,
            self.clock.monotonic(), self.rng,
        )  # fmt: skip
        reply = await self.upstream.send(
            candidates,
            path,
            body,
            x.route.retry.attempts,
            x.route.retry.timeout_seconds,
            x.runtime.credential,
            stream,
        )
        self._count_failures(x, reply, tier.name)
        return reply

    def _answer_headers(self, x: Exchange, reply: Reply) -> dict[str, str]:
        assert x.tier is not None
        return {
            "x-tokenomy-cache": "miss" if x.decision.lookup else "bypass",
            "x-tokenomy-tier": x.tier.name,
            "x-tokenomy-backend": reply.candidate.backend.name,
            "x-tokenomy-route-reason": x.reason,
        }

    def _keeper(self, x: Exchange) -> None:
        """Where the request is reported and its budget kept (None standalone without budget)."""
        if self.budgets is not None:
            config = x.runtime.config
            x.budget = self.budgets.get(config.policy.key, config.budget)

    def _report(self, x: Exchange) -> None:
        """Report what the request used and settle its reservation; failures that cost count."""
        if x.budget is None:
            return
        if x.reservation is not None or x.usage is not None or x.spent > 0:
            usage = x.usage or RequestUsage(x.spent, route=x.route.name)
            x.budget.settle(x.reservation or Reservation(Decimal(0)), usage)

    async def _admit(self, x: Exchange) -> None:
        """Reserve the request's cost from the budget, or apply ``onExceeded``.

        Embeddings are never downgraded (another model's vectors would not
        match the ones stored): past the budget they are served or refused.
        """
        spec = x.runtime.config.budget
        budget = x.budget
        if spec is None or budget is None:
            return
        assert x.tier is not None
        key = x.runtime.config.policy.key
        if x.embedding:
            cost = estimate_embedding(x.tier, x.chat.body)
        else:
            names = [x.tier.name] if x.straight else walk(x.route, x.tier.name)
            cost = estimate([_tier(x.route, n) for n in names], x.chat.body)
        x.reservation = await budget.reserve(cost)
        if x.reservation is not None:
            return
        self.metrics.budget_exceeded.labels(*x.labels[:2], spec.on_exceeded).inc()
        if spec.on_exceeded == "reject":
            x.headers = {"retry-after": str(budget.seconds_to_reset())}
            raise ApiError(
                429, budget.exceeded_message(key), "budget_exceeded", code="budget_exceeded"
            )
        # Served past the budget: counted when done, reserved nothing.
        x.reservation = Reservation(Decimal(0))
        if spec.on_exceeded == "downgrade" and not x.embedding:
            x.tier, x.straight = x.route.tiers[0], True
            x.reason = f"{x.reason}; budget spent: cheapest tier"
        else:
            x.reason = f"{x.reason}; budget spent"

    async def _forward(self, x: Exchange, request: web.Request) -> web.StreamResponse:
        assert x.tier is not None
        await self._admit(x)
        tiers = [x.tier.name] if x.straight else walk(x.route, x.tier.name)
        if len(tiers) > 1:
            kept = await self._cascade(x, request, tiers)
            if kept is not None:
                return kept
        body = x.chat.body
        if x.chat.stream:
            # Ask for usage so the stream can be metered; the extra chunk is
            # removed again if the client did not ask for it.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        reply = await self._send(x, x.tier, body, x.chat.stream)
        x.headers = self._answer_headers(x, reply)
        if reply.stream is not None:
            return await self._pipe(x, request, reply)
        usage = Usage()
        completion = _completion(reply)
        if completion is not None:
            usage = Usage.from_openai(completion.get("usage"))
            await self._store(x, reply, completion)
        paid = self._meter(x, reply, usage)
        x.headers["x-tokenomy-cost-usd"] = usd(paid)
        response = web.Response(
            status=reply.status,
            body=reply.body,
            content_type=reply.content_type or "application/json",
            headers=x.headers,
        )
        self._observe_first_byte(x, x.headers["x-tokenomy-cache"])
        self._observe_done(x, x.headers["x-tokenomy-cache"])
        return response

    async def _pipe(self, x: Exchange, request: web.Request, reply: Reply) -> web.StreamResponse:
        """Relay a stream event by event; meter it and store it once it is complete."""
        upstream = reply.stream
        assert upstream is not None
        response = web.StreamResponse(headers={**x.headers, **_SSE_HEADERS})
        keep: list[bytes] | None = [] if (x.key and x.decision.store) else None
        usage = Usage()
        complete = False
        buffer = bytearray()
        try:
            await response.prepare(request)
            self._observe_first_byte(x, x.headers["x-tokenomy-cache"])
            async for data in upstream.content.iter_any():
                buffer.extend(data)
                out = []
                for event in split_events(buffer):
                    if event.startswith(DONE):
                        complete = True
                        paid = self._meter(x, reply, usage)
                        # SSE comments are ignored by clients; this one tells a
                        # person reading the stream what the answer cost.
                        out.append(f": x-tokenomy-cost-usd {usd(paid)}\n\n".encode())
                        out.append(event + b"\n\n")
                        continue
                    forward = True
                    if b'"usage":{' in event or b'"usage": {' in event:
                        data_obj = event_data(event)
                        if data_obj is not None:
                            usage = Usage.from_openai(data_obj.get("usage"))
                            forward = bool(data_obj.get("choices")) or x.chat.client_wants_usage
                    if forward:
                        out.append(event + b"\n\n")
                    if keep is not None:
                        keep.append(event)
                if out:
                    await response.write(b"".join(out))
        except (aiohttp.ClientError, TimeoutError, ConnectionResetError):
            log.warning("stream from %s was cut", reply.candidate.backend.name)
        finally:
            upstream.release()
        if not complete:
            self.metrics.upstream_errors.labels(
                *x.labels, x.tier.name if x.tier else "", reply.candidate.backend.name, "stream_cut"
            ).inc()
            self._meter(x, reply, usage)
            # Tell the client the answer is incomplete rather than end it quietly.
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        if keep is not None:
            completion = assemble(keep)
            if completion is not None:
                await self._store(x, reply, completion)
        self._observe_done(x, x.headers["x-tokenomy-cache"])
        return response

    # --- metering and observation ---------------------------------------------

    def _meter(self, x: Exchange, reply: Reply, usage: Usage, final: bool = True) -> Decimal:
        """Count one backend call's tokens and cost; the final one also settles the request.

        Returns what the request has cost so far, every call included.
        """
        backend = reply.candidate.backend
        tier = x.tier.name if x.tier else ""
        labels = (*x.labels, tier, backend.name)
        m = self.metrics
        paid = cost(usage, backend.price)
        if usage.prompt or usage.completion:
            m.tokens.labels(*labels, "input").inc(usage.prompt)
            m.tokens.labels(*labels, "cached_input").inc(usage.cached)
            m.tokens.labels(*labels, "output").inc(usage.completion)
        m.money(m.cost, paid, *labels)
        x.spent += paid
        x.input_tokens += usage.prompt
        x.output_tokens += usage.completion
        if final:
            self._settle(x, reply, usage)
        return x.spent

    def _settle(self, x: Exchange, reply: Reply, usage: Usage) -> None:
        """Count the request once, with what it saved against the reference tier.

        ``usage`` is the answer served; the reference tier is priced for the
        same answer. A cascade that escalated can cost more than that: the
        difference goes to the overspend counter, since counters cannot go down.
        """
        m = self.metrics
        tier = x.tier.name if x.tier else ""
        cache = x.headers.get("x-tokenomy-cache", "miss")
        m.requests.labels(
            *x.labels, tier, reply.candidate.backend.name, cache, str(reply.status)
        ).inc()
        saved = Decimal(0) if x.embedding else savings(usage, x.spent, reference_price(x.route))
        m.money(m.savings, saved, *x.labels, x.lever)
        m.money(m.overspend, -saved, *x.labels, x.lever)
        self._record(x, tier, cache, saved)

    def _record(self, x: Exchange, tier: str, cache: str, saved: Decimal) -> None:
        """What the request used: to the attribution and task metrics, and its usage report."""
        m = self.metrics
        labels = self._attribution(x)
        tokens = x.input_tokens + x.output_tokens
        for key, value in labels.items():
            m.money(m.attributed_cost, x.spent, *x.labels[:2], key, value)
            if tokens:
                m.attributed_tokens.labels(*x.labels[:2], key, value).inc(tokens)
        if x.task:
            m.task_requests.labels(*x.labels[:2]).inc()
            m.money(m.task_cost, x.spent, *x.labels[:2])
            if tokens:
                m.task_tokens.labels(*x.labels[:2]).inc(tokens)
        x.usage = RequestUsage(
            cost=x.spent,
            saved=saved,
            route=x.route.name,
            tier=tier,
            reference=tier == x.route.reference_tier,
            cache=cache,
            input_tokens=x.input_tokens,
            output_tokens=x.output_tokens,
            labels=tuple(sorted(labels.items())),
            task=x.task,
        )

    def _attribution(self, x: Exchange) -> dict[str, str]:
        """Who this request is charged to: the pod's labels, the header for ``feature``."""
        wanted = x.runtime.config.attribution.pod_labels
        out = {k: v for k, v in self.pod_labels.items() if k in wanted}
        if x.feature:
            out["feature"] = x.feature
        return out

    def _count_failures(self, x: Exchange, reply: Reply, tier: str) -> None:
        for backend, reason in reply.failures:
            self.metrics.upstream_errors.labels(*x.labels, tier, backend, reason).inc()
        if reply.failures:
            self.metrics.retries.labels(*x.labels, tier).inc(len(reply.failures))

    def _observe_first_byte(self, x: Exchange, cache: str) -> None:
        elapsed = self.clock.monotonic() - x.started
        self.metrics.first_byte.labels(*x.labels, cache).observe(elapsed)

    def _observe_done(self, x: Exchange, cache: str) -> None:
        elapsed = self.clock.monotonic() - x.started
        self.metrics.duration.labels(*x.labels, cache).observe(elapsed)

    # --- embeddings and models -------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/embeddings``: routed, retried and metered like chat, never cached."""
        started = self.clock.monotonic()
        try:
            runtime = self._runtime()
            body = parse_json_object(await self._read(request))
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise ApiError(400, "`model` is required and must be a string", param="model")
            if "input" not in body:
                raise ApiError(400, "`input` is required", param="input")
            route = self._route(runtime, model)
        except ApiError as error:
            return await self._refuse(request, error)
        policy = runtime.config.policy
        chat = ChatRequest(body=body, model=model, stream=False, client_wants_usage=False)
        x = Exchange(runtime, route, chat, started, (policy.namespace, policy.name, route.name))
        x.tier = _tier(route, route.default_tier)
        x.embedding = True
        self._keeper(x)
        try:
            await self._admit(x)
            reply = await self._send(x, x.tier, body, stream=False, path="/embeddings")
        except ApiError as error:
            self._report(x)
            return error.response(x.headers)
        x.headers = {"x-tokenomy-cache": "bypass"}
        answer = _completion(reply)
        usage = Usage.from_openai(answer.get("usage")) if answer is not None else Usage()
        paid = self._meter(x, reply, usage)
        self._report(x)
        headers = {
            "x-tokenomy-tier": x.tier.name,
            "x-tokenomy-backend": reply.candidate.backend.name,
            "x-tokenomy-cost-usd": usd(paid),
        }
        return web.Response(
            status=reply.status, body=reply.body, content_type=reply.content_type, headers=headers
        )

    async def models(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models``: the model names of the routes in force."""
        runtime = self.holder.current
        models = sorted(runtime.routes) if runtime is not None else []
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "tokenomy"} for m in models]
        return web.json_response({"object": "list", "data": data})


_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def not_found(request: web.Request) -> web.Response:
    """Unknown paths get an OpenAI-style 404."""
    return error_response(404, f"no endpoint {request.method} {request.path}", code="not_found")


def _similarity(scores: dict[str, float], domain: CompiledDomain) -> float:
    return scores.get(domain.name, 0.0)


def _completion(reply: Reply) -> dict[str, Any] | None:
    """A successful reply's JSON object; None for an error, or a 200 that is not one."""
    if reply.status != 200:
        return None
    try:
        parsed = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        log.warning("backend %s sent a 200 that is not a JSON object", reply.candidate.backend.name)
        return None
    return parsed
