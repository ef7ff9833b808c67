"""The sidecar process: the API server, the metrics server and their lifecycle."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokenomy_api import pod
from tokenomy_api.clock import Clock, SystemClock
from tokenomy_sidecar.batches import Batches
from tokenomy_sidecar.budget_client import RemoteKeepers
from tokenomy_sidecar.memory_budget import MemoryBudget
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.proxy import Proxy, not_found
from tokenomy_sidecar.routing.models import ModelFiles
from tokenomy_sidecar.runtime import ConfigHolder, Runtime, default_store_factory
from tokenomy_sidecar.semantic_budget import WrongHitBudget
from tokenomy_sidecar.semantic_index import SemanticIndex
from tokenomy_sidecar.semantic_share import SemanticShare, stream_of
from tokenomy_sidecar.stages.backend_choice import HealthTracker
from tokenomy_sidecar.stages.budget import Keepers, LocalKeepers
from tokenomy_sidecar.stages.upstream import Upstream
from tokenomy_sidecar.stores import CacheStore, RedisStore
from tokenomy_sidecar.tools.calls import ToolMeter
from tokenomy_sidecar.tools.http_proxy import HttpTools
from tokenomy_sidecar.tools.mcp_proxy import McpProxy

log = logging.getLogger(__name__)


@dataclass
class SidecarSettings:
    """How the sidecar serves; every field has a default fit for a pod."""

    listen_host: str = "127.0.0.1"
    """Address of the OpenAI-compatible API; loopback, since only the pod's app calls it."""
    listen_port: int = pod.API_PORT
    """Port of the API (0 picks a free one)."""
    metrics_host: str = "0.0.0.0"
    """Address of ``/metrics``, ``/healthz`` and ``/readyz``."""
    metrics_port: int = pod.METRICS_PORT
    """Port of the metrics server (0 picks a free one)."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body accepted; larger ones get a 413."""
    pod_region: str | None = None
    """Region the pod runs in, for ``placement.region.strategy: nearest``."""
    shutdown_grace_seconds: float = 30.0
    """Time in-flight requests get to finish after SIGTERM."""
    stream_idle_seconds: float = 300.0
    """Longest a backend's stream may go silent after its first byte; then it is ended as
    cut (and billed as estimated). Generous: reasoning models pause before they answer."""
    store_retire_seconds: float = 120.0
    """How long a cache store a config change replaced stays open for the requests still
    using it; then it is closed and its memory returned."""
    batch_poll_seconds: float = 30.0
    """How often a provider's batch is asked whether it is done."""
    upstream_connections: int = 1000
    """Connections to backends at most, across all of them."""
    models_dir: Path | None = None
    """Where trained routing models (``tokenomy router train``) are read from by name."""
    enforce_local_budget: bool = False
    """Keep the policy's budget in this process: right for a standalone sidecar, the only
    replica of its policy."""
    usage_address: str | None = None
    """The operator's usage stream (``host:port``, the xDS address): budgets shared by all
    of the policy's sidecars through leases."""
    node_id: str = ""
    """This sidecar's xDS node id, the base of its name on the usage stream."""
    pod_labels: dict[str, str] = field(default_factory=dict)
    """The pod's attribution labels (``TOKENOMY_POD_LABELS``, set by injection)."""


class Sidecar:
    """One sidecar: owns the servers, the upstream session and the config holder."""

    def __init__(
        self,
        settings: SidecarSettings | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or SidecarSettings()
        self.clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self.rng = rng or random.Random()
        self.memory = MemoryBudget(256 * 1024 * 1024, self.metrics.cache_memory)
        self.holder = ConfigHolder(
            default_store_factory(self.clock, self.memory), ModelFiles(self.settings.models_dir)
        )
        self.holder.listeners.append(self._on_config)
        self.holder.retire = self._retire
        self._retiring: dict[CacheStore, asyncio.Task[None]] = {}
        self.health = HealthTracker()
        self.semantic = SemanticIndex(self.memory, self.clock)
        self.outcomes = WrongHitBudget()
        """The semantic cache's outcomes, this sidecar's and (through Redis) the others'."""
        self.share: SemanticShare | None = None
        """The semantic cache's shared record, when the cache store is a Redis."""
        self._share_key: tuple[int, str] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self.budgets: Keepers | None = None
        if self.settings.enforce_local_budget:
            self.budgets = LocalKeepers(self.clock)
        elif self.settings.usage_address:
            self.budgets = RemoteKeepers(
                self.settings.usage_address, self.settings.node_id, self.clock
            )
        self.draining = False
        self._runners: list[web.AppRunner] = []
        self._session: aiohttp.ClientSession | None = None
        self.proxy: Proxy | None = None
        """The API's request handling, once started."""
        self.batches: Batches | None = None
        """Batch jobs, once started."""
        self.api_url = ""
        self.metrics_url = ""

    def _retire(self, store: CacheStore) -> None:
        """Close a replaced store once the requests that started with it are done."""

        async def later() -> None:
            await asyncio.sleep(self.settings.store_retire_seconds)
            self._retiring.pop(store, None)
            await store.close()

        self._retiring[store] = asyncio.get_running_loop().create_task(later())

    def _on_config(self, runtime: Runtime) -> None:
        self._reshare(runtime)
        store = runtime.config.cache.store
        self.semantic.max_entries = store.max_entries
        self.memory.max_bytes = store.max_memory_bytes
        self.memory.enforce()
        self.metrics.cache_memory_limit.set(store.max_memory_bytes)
        policy = runtime.config.policy
        m = self.metrics
        m.config_info.clear()
        m.config_info.labels(policy.namespace, policy.name, runtime.config.version).set(1)
        # What dashboards and alert rules join on: the reference tier of each
        # route, and the budget.
        m.reference_tier.clear()
        for route in runtime.config.routes:
            m.reference_tier.labels(
                policy.namespace, policy.name, route.name, route.reference_tier
            ).set(1)
        m.budget.clear()
        budget = runtime.config.budget
        if budget is not None:
            m.budget.labels(policy.namespace, policy.name, budget.period).set(float(budget.amount))
        if runtime.config.placement.nearest and not self.settings.pod_region:
            log.warning(
                "placement.region.strategy is nearest but this pod's region is unknown "
                "(--pod-region, env TOKENOMY_POD_REGION; injected from the Pod's "
                "topology.kubernetes.io/region label): backends are ordered as for cheapest"
            )

    def _reshare(self, runtime: Runtime) -> None:
        """Follow the Redis stream of this config's scope (or stop), when that changed."""
        config = runtime.config
        store = runtime.store
        redis = store if config.cache.semantic.enabled and isinstance(store, RedisStore) else None
        key = (id(redis), stream_of(config)) if redis is not None else None
        if key == self._share_key:
            if self.share is not None:
                self.share.max_entries = config.cache.store.max_entries
            return
        old, self._share_key = self.share, key
        self.share = (
            SemanticShare(
                redis.client, key[1], self.semantic, config.cache.store.max_entries, self.outcomes
            )
            if redis is not None and key is not None
            else None
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # start() starts it
        if old is not None:
            self._stopping = loop.create_task(old.stop())
        if self.share is not None:
            self.share.start()

    # --- probes and metrics ------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive as long as the event loop answers."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready once a config is in force, until shutdown begins."""
        runtime = self.holder.current
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        if runtime is None:
            return web.json_response({"status": "no config yet"}, status=503)
        return web.json_response({"status": "ready", "version": runtime.config.version})

    async def metrics_page(self, request: web.Request) -> web.Response:
        """Prometheus exposition."""
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    # --- lifecycle -----------------------------------------------------------------

    def _api_app(
        self, proxy: Proxy, mcp: McpProxy, http_tools: HttpTools, batches: Batches
    ) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        batches.routes(app)
        app.router.add_post("/v1/chat/completions", proxy.chat_completions)
        app.router.add_post("/v1/embeddings", proxy.embeddings)
        app.router.add_get("/v1/models", proxy.models)
        app.router.add_post("/v1/tokenomy/feedback", proxy.feedback)
        app.router.add_post("/v1/tokenomy/tasks/{task}/outcome", proxy.task_outcomes.handle)
        app.router.add_route("*", "/mcp/{server}", mcp.handle)
        app.router.add_route("*", "/tools/{tool}", http_tools.handle)
        app.router.add_route("*", "/tools/{tool}/{path:.*}", http_tools.handle)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_route("*", "/{tail:.*}", not_found)
        return app

    def _metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    async def _serve(self, app: web.Application, host: str, port: int) -> str:
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=self.settings.shutdown_grace_seconds
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runners.append(runner)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        return f"http://{host}:{bound}"

    async def start(self) -> None:
        """Open the upstream session and start both servers."""
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.upstream_connections, limit_per_host=0, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        )
        upstream = Upstream(self._session, self.health, self.clock)
        proxy = Proxy(
            self.holder, upstream, self.metrics, self.clock, self.rng,
            self.semantic, lambda: self.share, self.outcomes, pod_region=s.pod_region,
            max_body_bytes=s.max_body_bytes, budgets=self.budgets, pod_labels=s.pod_labels,
            stream_idle_seconds=s.stream_idle_seconds,
        )  # fmt: skip
        self.proxy = proxy
        tool_meter = ToolMeter(self.metrics, self.budgets, s.pod_labels)
        mcp = McpProxy(self.holder, self._session, tool_meter, s.max_body_bytes)
        http_tools = HttpTools(self.holder, self._session, tool_meter, s.max_body_bytes)
        if self.share is not None:
            self.share.start()
        self.batches = Batches(
            self.holder, proxy.batch_pipeline, proxy.caller, proxy.meter, self._session,
            self.clock, s.max_body_bytes, s.batch_poll_seconds,
        )  # fmt: skip
        api = self._api_app(proxy, mcp, http_tools, self.batches)
        self.api_url = await self._serve(api, s.listen_host, s.listen_port)
        self.metrics_url = await self._serve(self._metrics_app(), s.metrics_host, s.metrics_port)
        log.info("serving the OpenAI API on %s, metrics on %s", self.api_url, self.metrics_url)

    async def stop(self) -> None:
        """Stop taking requests, let in-flight ones finish, close everything."""
        self.draining = True
        # The API first: it stops listening and lets in-flight requests finish while
        # /readyz on the metrics port answers "draining"; the metrics server last.
        for runner in self._runners:
            await runner.cleanup()
        if self.proxy is not None:
            await self.proxy.shadow.drain()  # before the budgets it reports to close
        if self.budgets is not None:
            await self.budgets.close()
        if self.share is not None:
            await self.share.stop()
        self._runners.clear()
        if self.batches is not None:
            await self.batches.close()
        if self.proxy is not None:
            await self.proxy.vectors.close()  # background embedding uses the session
        if self._session is not None:
            await self._session.close()
        runtime = self.holder.current
        for task in self._retiring.values():
            task.cancel()
        stores = [*self._retiring, *([runtime.store] if runtime is not None else [])]
        self._retiring.clear()
        for store in stores:
            await store.close()
