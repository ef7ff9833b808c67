"""Prometheus metrics of the operator: xDS acknowledgements, nodes, reconciles."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class OperatorMetrics:
    """The operator's metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.xds_replies = Counter(
            "tokenomy_operator_xds_replies",
            "ACKs and NACKs received from xDS clients, by resource type.",
            ["type", "result"],
            registry=r,
        )
        self.nodes = Gauge("tokenomy_operator_xds_nodes", "xDS clients connected.", registry=r)
        self.snapshots = Gauge("tokenomy_operator_snapshots", "Nodes with a snapshot.", registry=r)
        self.policies = Gauge(
            "tokenomy_operator_policies", "CostPolicies by readiness.", ["ready"], registry=r
        )
        self.reconcile = Histogram(
            "tokenomy_operator_reconcile_duration_seconds",
            "Time to recompile everything and push snapshots.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )

    def xds_reply(self, node: str, type_url: str, version: str, error: str) -> None:
        """An AdsServer listener: count an ACK or a NACK."""
        self.xds_replies.labels(type_url.rsplit(".", 1)[-1], "nack" if error else "ack").inc()

    async def page(self, request: web.Request) -> web.Response:
        """Prometheus exposition."""
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


async def serve_metrics(metrics: OperatorMetrics, host: str, port: int) -> web.AppRunner:
    """``/metrics`` and ``/healthz`` on their own port."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics.page)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
