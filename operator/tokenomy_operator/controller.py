"""The control loop: on any change, reconcile, push snapshots, write statuses.

Changes arrive from kopf's watches as a poke, and sidecars' ACKs and NACKs
through the ADS server's callbacks as a refresh; whatever arrives within
``debounce`` seconds is handled together, so a burst of events costs one
sync. Only a poke reconciles (and the compile inside is redone only for
namespaces whose inputs changed); a refresh recounts the rollout and
rewrites statuses. Snapshots are rendered once per config version and shared
by every pod of the policy; statuses are written only when they differ from
what the resource already shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from tokenomy_api.clock import Clock, SystemClock
from tokenomy_api.compiled import SidecarConfig
from tokenomy_api.costpolicy import Alerts, Budget, CostPolicySpec
from tokenomy_api.names import COST_POLICY_PLURAL, MODEL_ROUTE_PLURAL, SIDECAR_CONFIG_TYPE_URL
from tokenomy_api.periods import rfc3339
from tokenomy_operator.metrics import OperatorMetrics
from tokenomy_operator.spend.alerting import (
    ALERT_CONDITIONS,
    HOLD_SECONDS,
    Hold,
    Window,
    evaluate,
    period_window,
)
from tokenomy_operator.spend.quality import CONDITION as QUALITY_CONDITION
from tokenomy_operator.spend.quality import floor_verdict, quality_status
from tokenomy_operator.spend.tuning import tune
from tokenomy_operator.spend.usage import UsageService
from tokenomy_operator.state import ClusterState, PolicyStatus, Reconciliation
from tokenomy_operator.status import (
    Rollout,
    budget_condition,
    condition,
    crossed_thresholds,
    policy_display,
    policy_status,
    route_status,
)
from tokenomy_operator.xds.resources import snapshot_for
from tokenomy_operator.xds.server import AdsServer
from tokenomy_operator.xds.snapshot import Snapshot, SnapshotCache

log = logging.getLogger(__name__)


class StatusWriter(Protocol):
    """Where statuses and Events go (the Kubernetes API, or a list in tests)."""

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        """Merge-patch the status subresource of a Tokenomy resource."""
        ...

    async def event(
        self, kind: str, namespace: str, name: str, type_: str, reason: str, message: str
    ) -> None:
        """Record an Event about a Tokenomy resource."""
        ...


class Controller:
    """Owns the cluster state and turns it into snapshots and statuses."""

    def __init__(
        self,
        cache: SnapshotCache,
        ads: AdsServer,
        writer: StatusWriter,
        clock: Clock | None = None,
        debounce: float = 0.05,
        metrics: OperatorMetrics | None = None,
        usage: UsageService | None = None,
        spend_interval: float = 15.0,
        alert_hold: float = HOLD_SECONDS,
        refresh_debounce: float = 0.5,
    ) -> None:
        self.cache = cache
        self.ads = ads
        self.writer = writer
        self.clock = clock or SystemClock()
        self.debounce = debounce
        """How long a poke waits for the rest of its burst before the reconcile."""
        self.refresh_debounce = refresh_debounce
        """How long a refresh (ACKs, NACKs) waits for more before statuses are rewritten:
        a rollout to thousands of sidecars rewrites them a few times, not once per ACK."""
        self.metrics = metrics or OperatorMetrics()
        self.usage = usage
        """Spend per policy, written into status and restored from it."""
        self.spend_interval = spend_interval
        """How often spend reaches status when nothing else changes."""
        self.alert_hold = alert_hold
        """How long an alert must hold before its condition turns True."""
        self.alert_holds: dict[str, Hold] = {}
        self.replies: dict[str, Reply] = {}
        """The latest answer of each connected sidecar to its config, by node id."""
        ads.listeners.append(self.metrics.xds_reply)
        ads.listeners.append(self._replied)
        ads.departures.append(self._departed)
        self.state = ClusterState()
        self._dirty = asyncio.Event()
        self._poked = asyncio.Event()
        self._changed = True
        self._rendered: dict[str, Snapshot] = {}
        self._written: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced: Callable[[Reconciliation], None] | None = None
        """Called after every sync, for tests and metrics."""
        self.latest: Reconciliation | None = None
        """The outcome of the last sync, which the injection webhook decides by."""
        self.leading = True
        """Whether this replica writes status and keeps the ledgers (see leadership.py)."""
        self.new_usage: Callable[[], UsageService] | None = None
        """Makes the ledgers a replica keeps while it leads; None: the ``usage`` given, always."""

    def lead(self, leading: bool) -> None:
        """Start or stop being the replica that writes status and keeps the ledgers.

        A new leader starts empty ledgers that wait, like a restarted
        operator's, until each policy's status (as the old leader last wrote
        it, seen through the watch) is restored into them; sidecars resend
        what status does not hold yet.
        """
        self.leading = leading
        self._written.clear()
        if self.new_usage is not None:
            self.usage = self.new_usage() if leading else None
        self.poke()

    def budget_of(self, policy: str) -> Budget | None:
        """The budget of a policy (``namespace/name``) in force, if it has one."""
        spec = self.latest.specs.get(policy) if self.latest is not None else None
        return spec.budget if spec is not None else None

    def poke(self) -> None:
        """The cluster state changed; reconcile soon."""
        self._changed = True
        self._poked.set()
        self._dirty.set()

    def refresh(self) -> None:
        """Only what statuses show changed (ACKs, spend); rewrite them soon."""
        self._dirty.set()

    def _replied(self, node: str, type_url: str, version: str, error: str) -> None:
        if type_url == SIDECAR_CONFIG_TYPE_URL:
            before = self.replies.get(node, Reply())
            if error:
                self.replies[node] = Reply(before.acked, version, error)
            else:
                self.replies[node] = Reply(version)
            self.refresh()

    def _departed(self, node: str) -> None:
        if self.replies.pop(node, None) is not None:
            self.refresh()

    async def run(self) -> None:
        """Sync after every burst of changes, until cancelled."""
        while True:
            await _wait(self._dirty, self.spend_interval if self.usage is not None else None)
            await asyncio.sleep(self.debounce)
            if not self._changed:
                await _wait(self._poked, self.refresh_debounce)
            self._dirty.clear()
            self._poked.clear()
            try:
                if self._changed or self.latest is None:
                    await self.sync()
                else:
                    await self.report(self.latest)
            except Exception:
                log.exception("sync failed; retrying on the next change")
                await asyncio.sleep(1)
                self.poke()

    def _snapshot(self, config: SidecarConfig) -> Snapshot:
        snapshot = self._rendered.get(config.version)
        if snapshot is None:
            snapshot = self._rendered[config.version] = snapshot_for(config)
        return snapshot

    async def sync(self) -> Reconciliation:
        """One reconcile: snapshots for every selected pod, then statuses."""
        self._changed = False
        with self.metrics.reconcile.time():
            result = self.state.reconcile()
        self.latest = result
        self._push(result)
        return await self.report(result)

    async def report(self, result: Reconciliation) -> Reconciliation:
        """Statuses (rollout, spend, alerts) for the last reconcile, without reconciling."""
        m = self.metrics
        m.nodes.set(self.ads.connected())
        ready = sum(1 for p in result.policies.values() if p.ready)
        m.policies.labels("true").set(ready)
        m.policies.labels("false").set(len(result.policies) - ready)
        await self._statuses(result)
        if self.synced is not None:
            self.synced(result)
        return result

    def _push(self, result: Reconciliation) -> None:
        """Put every selected pod's snapshot in place; the ADS server sends what changed."""
        wanted = {}
        for node, policy in result.nodes.items():
            config = result.configs.get(policy)
            if config is not None:
                wanted[node] = self._snapshot(config)
        for node in self.cache.nodes():
            if node not in wanted:
                self.cache.drop(node)
        for node, snapshot in wanted.items():
            self.cache.set(node, snapshot)
        self.metrics.snapshots.set(len(wanted))
        versions = {c.version for c in result.configs.values()}
        self._rendered = {v: s for v, s in self._rendered.items() if v in versions}

    async def _statuses(self, result: Reconciliation) -> None:
        """Write each resource's status (and Events) where it changed."""
        m = self.metrics
        now = rfc3339(datetime.datetime.fromtimestamp(self.clock.wall(), datetime.UTC))
        for key, observed in result.policies.items():
            namespace, name = key.split("/", 1)
            previous = self.state.policies.get((namespace, name), {}).get("status") or {}
            config = result.configs.get(key)
            notices = self.usage.notices(key, observed.version) if self.usage is not None else []
            status = policy_status(
                observed, self._rollout(observed, config), previous, now, notices
            )
            m.policy_unmanaged.labels(namespace, name).set(len(observed.unmanaged))
            warnings: list[int] = []
            tuned = False
            if self.usage is not None:
                self.usage.restore(key, previous)
                status.update(self.usage.status(key))
                spend = status.get("spend")
                spec = result.specs.get(key)
                budget = spec.budget if spec is not None else None
                if spec is not None:
                    status["conditions"] += self._alerts(
                        key, spec.alerts.resolved(), observed, previous, now
                    )
                    if spec.shadow.enabled or "shadow" in status:
                        status["conditions"].append(
                            self._quality(status, spec, observed, previous, now)
                        )
                    if spec.shadow.enabled and spec.shadow.auto_tune.enabled:
                        tuned = await self._tune(namespace, name, status, spec, previous, now)
                    self.metrics.policy_usage(namespace, name, status)
                if spend is not None and budget is not None:
                    status["conditions"].append(
                        budget_condition(
                            spend, budget, observed.generation,
                            previous.get("conditions") or [], now,
                        )
                    )  # fmt: skip
                    warnings = crossed_thresholds(previous.get("spend"), spend, budget)
            status["display"] = policy_display(result.specs.get(key), status)
            await self._write("CostPolicy", COST_POLICY_PLURAL, namespace, name, status, previous)
            for percent in warnings:  # none unless leading: a standby has no usage
                await self.writer.event(
                    "CostPolicy", namespace, name, "Warning", "BudgetThreshold",
                    f"{percent}% of the budget is spent ({status['spend']['amount']} USD)",
                )  # fmt: skip
            if self.usage is not None and "spend" in status:
                # Written (or already there): sidecars may now forget these reports.
                self.usage.persisted(key, status["spend"]["reports"])
            if tuned:
                self.poke()  # the compiler reads status.tuning: new thresholds go out
        if self.usage is not None:
            self.usage.keep_only(set(result.policies))
        self.alert_holds = {k: v for k, v in self.alert_holds.items() if k in result.policies}
        for key, observed_route in result.routes.items():
            namespace, name = key.split("/", 1)
            previous = self.state.routes.get((namespace, name), {}).get("status") or {}
            status = route_status(observed_route, previous, now)
            await self._write("ModelRoute", MODEL_ROUTE_PLURAL, namespace, name, status, previous)

    async def _tune(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        spec: CostPolicySpec,
        previous: Mapping[str, Any],
        now: str,
    ) -> bool:
        """``status.tuning`` from the comparisons; True when a threshold moved (an Event
        each, and the policy's own copy updated so the next compile sees it)."""
        tuning, changes = tune(
            previous.get("tuning") or [], status.get("shadow"), spec.quality.target,
            spec.quality.confidence, spec.shadow.auto_tune, now,
        )  # fmt: skip
        status["tuning"] = tuning
        if not changes:
            return False
        held = self.state.policies.get((namespace, name))
        if held is not None:
            held.setdefault("status", {})["tuning"] = tuning
        for change in changes:
            await self.writer.event(
                "CostPolicy", namespace, name, "Normal", change.reason, change.message
            )
        return True

    @staticmethod
    def _quality(
        status: dict[str, Any],
        spec: CostPolicySpec,
        observed: PolicyStatus,
        previous: Mapping[str, Any],
        now: str,
    ) -> dict[str, Any]:
        """``status.quality`` from the shadow comparisons, and its floor condition."""
        target, confidence = spec.quality.target, spec.quality.confidence
        spend = status.get("spend")
        amount = Decimal(str(spend["amount"])) if spend else None
        status["quality"] = quality_status(status.get("shadow"), target, confidence, amount)
        verdict = floor_verdict(status.get("shadow"), target, confidence)
        return condition(
            QUALITY_CONDITION, verdict.breached, verdict.reason, verdict.message,
            observed.generation, previous.get("conditions") or [], now,
        )  # fmt: skip

    def _alerts(
        self,
        key: str,
        alerts: Alerts,
        observed: PolicyStatus,
        previous: Mapping[str, Any],
        now: str,
    ) -> list[dict[str, Any]]:
        """The policy's alert conditions: the last hour against its baselines."""
        assert self.usage is not None
        wall = self.clock.wall()
        history = self.usage.history.get(key)
        current = history.current(wall) if history is not None else Window()
        moving = history.moving_average(wall) if history is not None else None
        checks = evaluate(alerts, current, moving, period_window(self.usage.previous.get(key)))
        hold = self.alert_holds.setdefault(key, Hold())
        before = previous.get("conditions") or []
        return [
            condition(
                c.condition, c.breached, c.reason, c.message, observed.generation, before, now
            )
            for c in hold.conditions(checks, wall, self.alert_hold)
        ]

    def _rollout(self, observed: PolicyStatus, config: SidecarConfig | None) -> Rollout:
        if config is None:
            return Rollout(len(observed.pods), 0, 0)
        current = config.version
        acknowledged = rejecting = 0
        errors = set()
        for node in observed.pods:
            reply = self.replies.get(node)
            if reply is None:
                continue
            if reply.acked == current:
                acknowledged += 1
            elif reply.rejected == current:
                rejecting += 1
                errors.add(reply.error)
        return Rollout(len(observed.pods), acknowledged, rejecting, tuple(sorted(errors)))

    async def _write(
        self,
        kind: str,
        plural: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        previous: Mapping[str, Any],
    ) -> None:
        key = (plural, f"{namespace}/{name}")
        if not self.leading or self._written.get(key) == status or _same(previous, status):
            return
        await self.writer.patch_status(plural, namespace, name, status)
        self._written[key] = status
        for event in _transitions(previous, status):
            await self.writer.event(kind, namespace, name, *event)


async def _wait(event: asyncio.Event, timeout: float | None) -> None:
    """Until ``event`` is set or ``timeout`` passes.

    ``asyncio.timeout`` rather than ``wait_for``: wait_for runs the wait as a
    task of its own, and kopf cancels every task created after it started
    when it stops; the loop's own cancellation then waited forever on it.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


@dataclass(frozen=True)
class Reply:
    """What one sidecar last said about its config."""

    acked: str = ""
    """The version it last accepted."""
    rejected: str = ""
    """The version it last refused, until it accepts another."""
    error: str = ""
    """Why it refused it."""


BAD_WHEN_TRUE = frozenset({"BudgetExceeded", QUALITY_CONDITION, *ALERT_CONDITIONS})
"""Conditions whose ``True`` is the trouble (an Event of type Warning)."""


def _same(previous: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    return all(previous.get(k) == v for k, v in status.items())


def _transitions(
    previous: Mapping[str, Any], status: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """(type, reason, message) of an Event for every condition whose status changed."""
    before = {c["type"]: c.get("status") for c in previous.get("conditions") or []}
    out = []
    for c in status.get("conditions") or []:
        if c["type"] in BAD_WHEN_TRUE and c["type"] not in before and c["status"] == "False":
            continue  # an alert that starts out quiet is no news
        if before.get(c["type"]) != c["status"]:
            good = c["status"] == ("False" if c["type"] in BAD_WHEN_TRUE else "True")
            kind = "Normal" if good else "Warning"
            out.append((kind, c["reason"], f"{c['type']}: {c['message']}"))
    return out
