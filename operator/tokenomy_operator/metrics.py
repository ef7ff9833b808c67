"""Prometheus metrics of the operator: xDS acknowledgements, nodes, reconciles."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from tokenomy_operator.spend.alerting import ALERT_CONDITIONS
from tokenomy_operator.spend.quality import CONDITION as QUALITY_CONDITION

BOUNDS = (("estimate", "agreement"), ("lower", "lower"), ("upper", "upper"))
"""The quality gauge's ``bound`` label, and the ``status.quality`` field it reads."""


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

        policy = ["namespace", "policy"]
        self.policy_spend = Gauge(
            "tokenomy_policy_spend_usd", "USD spent this budget period.", policy, registry=r
        )
        self.policy_savings = Gauge(
            "tokenomy_policy_savings_usd",
            "Net USD saved this period against the reference tier.",
            policy,
            registry=r,
        )
        self.policy_tasks = Gauge(
            "tokenomy_policy_tasks",
            "Distinct tasks (x-tokenomy-task) this period.",
            policy,
            registry=r,
        )
        self.policy_task_cost = Gauge(
            "tokenomy_policy_cost_per_task_usd",
            "Average USD per task this period.",
            policy,
            registry=r,
        )
        self.policy_task_tokens = Gauge(
            "tokenomy_policy_tokens_per_task",
            "Average tokens per task this period.",
            policy,
            registry=r,
        )
        self.policy_successful_task_cost = Gauge(
            "tokenomy_policy_cost_per_successful_task_usd",
            "USD of all tasks' requests this period per task whose app reported success.",
            policy,
            registry=r,
        )
        self.policy_task_success = Gauge(
            "tokenomy_policy_task_success_ratio",
            "Share of tasks with a reported outcome that succeeded this period.",
            policy,
            registry=r,
        )
        self.policy_unmanaged = Gauge(
            "tokenomy_policy_unmanaged_pods",
            "Pods the CostPolicy selects that run without a sidecar.",
            policy,
            registry=r,
        )
        self.policy_quality = Gauge(
            "tokenomy_policy_quality_retained",
            "Share of shadow comparisons this period in which the reference tier agreed with "
            "the answer a cheaper lever served, by lever (all: together) and bound (estimate, "
            "lower, upper: the interval at the policy's quality.confidence).",
            [*policy, "lever", "bound"],
            registry=r,
        )
        self.policy_shadow_cost = Gauge(
            "tokenomy_policy_shadow_cost_usd",
            "USD shadow comparisons cost this period (part of the spend).",
            policy,
            registry=r,
        )
        self.policy_alert = Gauge(
            "tokenomy_policy_alert",
            "1 while an alert condition of the CostPolicy is True.",
            [*policy, "alert"],
            registry=r,
        )

    def policy_usage(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Mirror a CostPolicy's usage status (spend, savings, tasks, alerts) as gauges."""
        spend = status.get("spend")
        if spend is not None:
            self.policy_spend.labels(namespace, name).set(float(spend["amount"]))
        if "savings" in status:
            self.policy_savings.labels(namespace, name).set(float(status["savings"]))
        tasks = status.get("tasks")
        if tasks:
            self.policy_tasks.labels(namespace, name).set(tasks["count"])
            self.policy_task_cost.labels(namespace, name).set(float(tasks["costPerTask"]))
            self.policy_task_tokens.labels(namespace, name).set(tasks["tokensPerTask"])
            if "costPerSuccessfulTask" in tasks:
                per = float(tasks["costPerSuccessfulTask"])
                self.policy_successful_task_cost.labels(namespace, name).set(per)
            ended = tasks.get("succeeded", 0) + tasks.get("failed", 0)
            if ended:
                rate = tasks["succeeded"] / ended
                self.policy_task_success.labels(namespace, name).set(rate)
        quality = status.get("quality")
        if quality:
            self.policy_shadow_cost.labels(namespace, name).set(float(quality["shadowCost"]))
            levers = [*quality.get("levers", []), {"lever": "all", **quality}]
            for entry in levers:
                if "agreement" not in entry:
                    continue
                for bound, key in (
                    ("estimate", "agreement"),
                    ("lower", "lower"),
                    ("upper", "upper"),
                ):
                    value = float(entry[key].rstrip("%")) / 100
                    self.policy_quality.labels(namespace, name, entry["lever"], bound).set(value)
        for c in status.get("conditions") or []:
            if c["type"] in ALERT_CONDITIONS or c["type"] == QUALITY_CONDITION:
                self.policy_alert.labels(namespace, name, c["type"]).set(c["status"] == "True")

    def xds_reply(self, node: str, type_url: str, version: str, error: str) -> None:
        """An AdsServer listener: count an ACK or a NACK."""
        self.xds_replies.labels(type_url.rsplit(".", 1)[-1], "nack" if error else "ack").inc()

    async def page(self, request: web.Request) -> web.Response:
        """Prometheus exposition."""
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


async def serve_metrics(
    metrics: OperatorMetrics,
    host: str,
    port: int,
    not_ready: Callable[[], Awaitable[str]] | None = None,
) -> web.AppRunner:
    """``/metrics``, ``/healthz`` and ``/readyz`` on their own port.

    ``not_ready`` says why the operator cannot serve yet ('' once it can);
    ``/readyz`` answers 503 with that reason until then, so a rollout waits
    for a replica that injects and serves, not merely one that listens.
    """

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        reason = await not_ready() if not_ready is not None else ""
        if reason:
            return web.json_response({"status": "not ready", "reason": reason}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/metrics", metrics.page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
