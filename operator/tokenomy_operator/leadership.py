"""Leader election among operator replicas over a ``coordination.k8s.io`` Lease.

Every replica watches, compiles and serves the injection webhook from its
own state: those are reads, and two replicas serving admissions means a
replica can go without an admission noticing. The leader serves what must
come from one place: the sidecars' streams (xDS, whose ACKs its status
counts, and usage, whose spend ledgers and budget leases must exist once)
and the status writes. It labels its own Pod ``tokenomy.dev/leader=true``;
the ``tokenomy-operator-leader`` Service selects that label, and injected
sidecars dial it. A standby keeps its watches warm, so taking over is a
relabel and a restore, not a start.

The decision is a pure function of the Lease and the clock
(:func:`decide`), table-tested; :class:`LeaseElector` is the I/O around it,
in the manner of client-go's leaderelection: acquire or renew every
``renew`` seconds, consider a holder gone ``duration`` seconds after its
last renewal, and hand the Lease back on shutdown so a standby takes over at
its next try instead of after ``duration``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

LEADER_LABEL = "tokenomy.dev/leader"
"""On the leader's Pod only; the leader Service selects it."""


@dataclass(frozen=True)
class LeaseView:
    """The parts of a Lease's spec the decision reads."""

    holder: str
    renewed: datetime.datetime | None
    duration: float


@dataclass(frozen=True)
class Verdict:
    """Whether to write the Lease as ours, and whether we lead after that write."""

    take: bool
    reason: str


def decide(lease: LeaseView | None, me: str, now: datetime.datetime) -> Verdict:
    """Take (or renew) the Lease when it is ours, free, or its holder stopped renewing."""
    if lease is None:
        return Verdict(True, "no lease yet")
    if lease.holder == me:
        return Verdict(True, "renewing")
    if not lease.holder:
        return Verdict(True, "released by its holder")
    if lease.renewed is None or now - lease.renewed > datetime.timedelta(seconds=lease.duration):
        return Verdict(True, f"{lease.holder} stopped renewing")
    return Verdict(False, f"held by {lease.holder}")


@dataclass
class LeaseSettings:
    """How the election is run; the defaults are client-go's, shortened for fast failover."""

    duration: float = 15.0
    """Seconds after its last renewal that a holder is considered gone."""
    renew: float = 2.0
    """Seconds between tries to acquire or renew."""


class LeaseElector:
    """Runs the election for ``identity`` and tells ``on_change(leading)`` when it flips."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        on_change: Callable[[bool], Awaitable[None]],
        settings: LeaseSettings | None = None,
    ) -> None:
        self.leases = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.on_change = on_change
        self.settings = settings or LeaseSettings()
        self.leading = False
        self._renewed: datetime.datetime | None = None

    def _now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    async def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info(
                "%s %s leadership (%s)", self.identity, "took" if leading else "lost", self.name
            )
            try:
                await self.on_change(leading)
            except Exception as error:  # e.g. the Pod label; the election goes on
                log.warning("after the leadership change: %s", error)

    async def run(self) -> None:
        """Try every ``renew`` seconds until cancelled; on cancel, hand the Lease back."""
        try:
            while True:
                try:
                    await self._set(await asyncio.to_thread(self._try))
                except Exception as error:  # an API hiccup: not leading until renewed
                    log.warning("leader election: %s", error)
                    if self.leading and self._expired_for_us():
                        await self._set(False)
                await asyncio.sleep(self.settings.renew)
        finally:
            if self.leading:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._release)
                await self._set(False)

    def _expired_for_us(self) -> bool:
        last = self._renewed
        return last is None or (self._now() - last).total_seconds() > self.settings.duration

    def _read(self) -> client.V1Lease | None:
        try:
            return self.leases.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _try(self) -> bool:
        now = self._now()
        lease = self._read()
        spec = (lease.spec if lease is not None else None) or client.V1LeaseSpec()
        view = None
        if lease is not None:
            view = LeaseView(
                spec.holder_identity or "",
                spec.renew_time or spec.acquire_time,
                float(spec.lease_duration_seconds or self.settings.duration),
            )
        if not decide(view, self.identity, now).take:
            return False
        ours = view is not None and view.holder == self.identity
        transitions = spec.lease_transitions or 0
        body = client.V1Lease(
            # The read metadata (its resourceVersion makes the write a
            # compare-and-swap; its labels are an installer's, e.g. Helm's).
            metadata=lease.metadata
            if lease is not None and lease.metadata is not None
            else client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=int(self.settings.duration),
                renew_time=now,
                acquire_time=spec.acquire_time if ours else now,
                lease_transitions=transitions if ours or lease is None else transitions + 1,
            ),
        )
        try:
            if lease is None:
                self.leases.create_namespaced_lease(self.namespace, body)
            else:
                self.leases.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as error:
            if error.status in (409, 422):  # another replica wrote first
                return False
            raise
        self._renewed = now
        return True

    def _release(self) -> None:
        lease = self._read()
        if lease is None or lease.spec is None or lease.spec.holder_identity != self.identity:
            return
        lease.spec.holder_identity = ""
        lease.spec.renew_time = self._now()
        self.leases.replace_namespaced_lease(self.name, self.namespace, lease)
        log.info("%s handed back %s", self.identity, self.name)


async def label_own_pod(api: client.ApiClient, namespace: str, pod: str, leading: bool) -> None:
    """Put the leader label on this replica's Pod, or take it off."""
    patch = {"metadata": {"labels": {LEADER_LABEL: "true" if leading else None}}}
    await asyncio.to_thread(client.CoreV1Api(api).patch_namespaced_pod, pod, namespace, patch)
