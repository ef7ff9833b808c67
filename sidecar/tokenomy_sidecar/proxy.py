"""The OpenAI-compatible HTTP API of the sidecar: intake, and the stages in their order.

Intake reads and checks a request (a 4xx names what is wrong) and makes it an
:class:`~tokenomy_sidecar.pipeline.Exchange`; the pipeline's stages do the
rest (:mod:`tokenomy_sidecar.pipeline` says how they run and fail open);
:mod:`tokenomy_sidecar.respond` writes the answer. Adding a stage is writing
its module under ``stages/`` and naming it in :meth:`Proxy.chat_stages`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import orjson
from aiohttp import web

from tokenomy_api.clock import Clock
from tokenomy_api.compiled import CompiledRoute
from tokenomy_sidecar.errors import ApiError, error_response
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Exchange, Pipeline, Stage
from tokenomy_sidecar.request import parse_chat, parse_embeddings
from tokenomy_sidecar.respond import Writer
from tokenomy_sidecar.runtime import ConfigHolder, Runtime
from tokenomy_sidecar.semantic_budget import WrongHitBudget
from tokenomy_sidecar.semantic_index import SemanticIndex
from tokenomy_sidecar.semantic_share import SemanticShare
from tokenomy_sidecar.stages.batch_park import Park
from tokenomy_sidecar.stages.budget import Budget, Keepers
from tokenomy_sidecar.stages.cascade import Cascade
from tokenomy_sidecar.stages.exact_cache import ExactCache
from tokenomy_sidecar.stages.forward import Forward
from tokenomy_sidecar.stages.identify import Identify
from tokenomy_sidecar.stages.metering import Meter
from tokenomy_sidecar.stages.pack import Pack
from tokenomy_sidecar.stages.prune_tools import PruneTools
from tokenomy_sidecar.stages.route import Route
from tokenomy_sidecar.stages.semantic_cache import REMEMBERED, SemanticCache
from tokenomy_sidecar.stages.shadow import Shadow
from tokenomy_sidecar.stages.summarize import Summarize
from tokenomy_sidecar.stages.trim import Trim
from tokenomy_sidecar.stages.upstream import Caller, Upstream
from tokenomy_sidecar.tasks import OUTCOME_HEADER, TaskOutcomes, outcome_header, task_of
from tokenomy_sidecar.vectors import SharedVectors


class Proxy:
    """Request handlers; one per sidecar."""

    def __init__(
        self,
        holder: ConfigHolder,
        upstream: Upstream,
        metrics: Metrics,
        clock: Clock,
        rng: random.Random,
        semantic: SemanticIndex,
        share: Callable[[], SemanticShare | None] = lambda: None,
        outcomes: WrongHitBudget | None = None,
        pod_region: str | None = None,
        max_body_bytes: int = 8 * 1024 * 1024,
        budgets: Keepers | None = None,
        pod_labels: Mapping[str, str] | None = None,
        stream_idle_seconds: float = 300.0,
    ) -> None:
        self.holder = holder
        self.metrics = metrics
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        meter = Meter(metrics, pod_labels or {})
        caller = Caller(upstream, meter, rng, pod_region)
        vectors = self.vectors = SharedVectors(upstream.session, meter)
        budget = Budget(budgets, metrics)
        self.task_outcomes = TaskOutcomes(holder, budget, metrics)
        self.semantic_cache = SemanticCache(
            metrics, meter, semantic, vectors, share, outcomes or WrongHitBudget()
        )
        self.caller, self.meter = caller, meter
        self.shadow = Shadow(caller, vectors, metrics, rng)
        stages = self.chat_stages(
            metrics, meter, caller, vectors, self.semantic_cache, budget, self.shadow
        )
        self.chat_pipeline = Pipeline(stages, metrics)
        # A batch job's lines: the same stages up to the calls, which the job makes together.
        online = (Pack, Cascade, Forward, Shadow)
        self.batch_pipeline = Pipeline(
            [*(s for s in stages if not isinstance(s, online)), Park()], metrics
        )
        self.embeddings_pipeline = Pipeline(
            [budget, Forward(caller, meter, path="/embeddings")], metrics
        )
        self.writer = Writer(metrics, clock, stream_idle_seconds)

    @staticmethod
    def chat_stages(
        metrics: Metrics,
        meter: Meter,
        caller: Caller,
        vectors: SharedVectors,
        semantic_cache: SemanticCache,
        budget: Budget,
        shadow: Shadow,
    ) -> list[Stage]:
        """A chat request's stages, in DESIGN.md's order. The shadow stage comes first so
        that its ``close`` (a comparison, once the answer is written) follows no other
        stage's; it does nothing before the answer."""
        return [
            shadow,
            Identify(),
            Trim(),
            ExactCache(metrics, meter),
            semantic_cache,
            PruneTools(metrics, vectors),
            Route(metrics, vectors),
            budget,
            Summarize(caller, meter, metrics),
            Pack(caller, meter, metrics),
            Cascade(caller, meter, metrics),
            Forward(caller, meter),
        ]

    # --- intake ------------------------------------------------------------------

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

    async def _serve(
        self, pipeline: Pipeline, x: Exchange, request: web.Request
    ) -> web.StreamResponse:
        """Run the stages, write the answer, let the stages store it and settle."""
        self.metrics.in_flight.inc()
        try:
            answer, ran = await pipeline.run(x)
            response = await self.writer.write(request, x, answer)
            if answer.fresh and answer.completion is not None:
                await pipeline.store(x, answer, ran)
            return response
        except ApiError as error:
            return error.response(x.headers)
        finally:
            self.metrics.in_flight.dec()
            await pipeline.close(x)

    # --- endpoints ---------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        started = self.clock.monotonic()
        try:
            runtime = self._runtime()
            raw = await self._read(request)
            chat = parse_chat(raw)
            route = self._route(runtime, chat.model)
            task = task_of(request.headers)
            outcome = outcome_header(request.headers.get(OUTCOME_HEADER, ""), task)
        except ApiError as error:
            return await self._refuse(request, error)
        if outcome is not None:
            policy = runtime.config.policy
            result = "success" if outcome.success else "failure"
            self.metrics.task_outcomes.labels(policy.namespace, policy.name, result).inc()
        header = runtime.config.attribution.header
        x = Exchange(
            runtime,
            route,
            raw,
            chat,
            started,
            client_headers=request.headers,
            feature=request.headers.get(header) if header else None,
            task=task,
            outcome=outcome,
        )
        return await self._serve(self.chat_pipeline, x, request)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/embeddings``: routed, retried and metered like chat, never cached."""
        started = self.clock.monotonic()
        try:
            runtime = self._runtime()
            raw = await self._read(request)
            chat = parse_embeddings(raw)
            route = self._route(runtime, chat.model)
        except ApiError as error:
            return await self._refuse(request, error)
        x = Exchange(runtime, route, raw, chat, started, embedding=True)
        return await self._serve(self.embeddings_pipeline, x, request)

    async def feedback(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/tokenomy/feedback``: ``{"id": response id, "correct": false}`` reports
        a semantic cache hit that answered another question (the wrong-hit budget learns)."""
        try:
            body = orjson.loads(await self._read(request))
        except (orjson.JSONDecodeError, ApiError) as error:
            reason = error.message if isinstance(error, ApiError) else "body is not JSON"
            return error_response(400, reason)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return error_response(400, "body must be an object with a string `id`", param="id")
        correct = body.get("correct", False)
        if not isinstance(correct, bool):
            return error_response(400, "`correct` must be true or false", param="correct")
        if not await self.semantic_cache.feedback(body["id"], correct):
            message = (
                f"no semantic cache hit with id `{body['id']}` is remembered here (the "
                f"newest {REMEMBERED:,} served under a wrong-hit budget are)"
            )
            return error_response(404, message, param="id", code="not_found")
        return web.json_response({"id": body["id"], "recorded": True}, status=202)

    async def models(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models``: the model names of the routes in force."""
        runtime = self.holder.current
        models = sorted(runtime.routes) if runtime is not None else []
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "tokenomy"} for m in models]
        return web.json_response({"object": "list", "data": data})


async def not_found(request: web.Request) -> web.Response:
    """Unknown paths get an OpenAI-style 404."""
    return error_response(404, f"no endpoint {request.method} {request.path}", code="not_found")
