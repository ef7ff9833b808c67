"""What the operator knows of the cluster, and what follows from it.

kopf handlers put objects in; :meth:`ClusterState.reconcile` computes, as a
pure function of them, the config every sidecar should have and the status
every resource should show. An invalid change never takes a config away: the
last good config of a policy stays in force, and its status says why the new
one was refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenomy_api.compiled import SidecarConfig
from tokenomy_api.compiler import compile_configs
from tokenomy_api.costpolicy import CostPolicy
from tokenomy_api.names import COST_POLICY_KIND, MODEL_ROUTE_KIND
from tokenomy_api.problems import Problem
from tokenomy_api.resources import parse_documents
from tokenomy_operator.topology import service_endpoints

Key = tuple[str, str]
"""(namespace, name)."""


@dataclass(frozen=True)
class Pod:
    """The parts of a Pod the operator needs."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    injected: bool = False
    """Whether the pod carries a Tokenomy sidecar (the injection annotation)."""
    opted_out: bool = False
    """Whether the pod is never to be injected (``tokenomy.dev/inject=false``, host network)."""

    @property
    def node_id(self) -> str:
        """The xDS node id its sidecar uses: ``namespace/name``."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PolicyStatus:
    """What a CostPolicy's status should say."""

    generation: int
    ready: bool
    reason: str
    message: str
    version: str
    """Version of the config in force (the last good one when the spec is invalid)."""
    pods: tuple[str, ...]
    """Node ids of the selected pods that carry a sidecar."""
    unmanaged: tuple[str, ...] = ()
    """Node ids of selected pods without a sidecar that did not opt out: admitted
    before the policy existed or while the webhook was unreachable."""


@dataclass(frozen=True)
class RouteStatus:
    """What a ModelRoute's status should say."""

    generation: int
    ready: bool
    reason: str
    message: str
    endpoints: tuple[tuple[str, str, int], ...]
    """(tier, backend, ready endpoints)."""


@dataclass(frozen=True)
class Reconciliation:
    """The outcome of one reconcile."""

    configs: dict[str, SidecarConfig]
    """The config in force per policy key."""
    parsed: list[CostPolicy]
    """The policies that passed their schema, for the injection decision."""
    nodes: dict[str, str]
    """Policy key per node id of every selected pod."""
    policies: dict[str, PolicyStatus]
    routes: dict[str, RouteStatus]


@dataclass
class ClusterState:
    """Objects seen through the watches, as plain dicts."""

    policies: dict[Key, dict[str, Any]] = field(default_factory=dict)
    routes: dict[Key, dict[str, Any]] = field(default_factory=dict)
    pods: dict[Key, Pod] = field(default_factory=dict)
    services: dict[Key, dict[str, Any]] = field(default_factory=dict)
    slices: dict[Key, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    last_good: dict[str, SidecarConfig] = field(default_factory=dict)
    """The last config each policy compiled to; kept in force while its spec is invalid."""

    def reconcile(self) -> Reconciliation:
        """Compile everything and decide configs, pod assignments and statuses."""
        docs = [("", d) for d in (*self.routes.values(), *self.policies.values())]
        resources = parse_documents(docs)
        endpoints = service_endpoints(self.services.values(), self.slices.values(), self.nodes)
        compilation = compile_configs(resources.policies, resources.routes, endpoints)
        problems: dict[tuple[str, str], list[Problem]] = {}
        for problem in [*resources.problems, *compilation.problems]:
            problems.setdefault((problem.kind, f"{problem.namespace}/{problem.name}"), []).append(
                problem
            )
        for key, config in compilation.configs.items():
            self.last_good[key] = config
        live = {f"{ns}/{name}" for ns, name in self.policies}
        for key in list(self.last_good):
            if key not in live:
                del self.last_good[key]  # a deleted policy takes its config along
        configs = dict(self.last_good)
        nodes = self._assign(resources.policies)
        return Reconciliation(
            configs=configs,
            parsed=resources.policies,
            nodes=nodes,
            policies=self._policy_statuses(problems, configs, nodes),
            routes=self._route_statuses(problems, endpoints),
        )

    def _assign(self, policies: list[CostPolicy]) -> dict[str, str]:
        """Each pod goes to the oldest policy of its namespace that selects it (then by name)."""
        ordered = sorted(policies, key=lambda p: (p.metadata.creation_timestamp, p.metadata.name))
        nodes: dict[str, str] = {}
        for pod in self.pods.values():
            for policy in ordered:
                if policy.metadata.namespace == pod.namespace and policy.spec.selector.matches(
                    pod.labels
                ):
                    nodes[pod.node_id] = f"{policy.metadata.namespace}/{policy.metadata.name}"
                    break
        return nodes

    def _policy_statuses(
        self,
        problems: Mapping[tuple[str, str], list[Problem]],
        configs: Mapping[str, SidecarConfig],
        nodes: Mapping[str, str],
    ) -> dict[str, PolicyStatus]:
        out = {}
        injected = {p.node_id for p in self.pods.values() if p.injected}
        exempt = {p.node_id for p in self.pods.values() if p.opted_out}
        for (namespace, name), body in self.policies.items():
            key = f"{namespace}/{name}"
            found = problems.get((COST_POLICY_KIND, key), [])
            config = configs.get(key)
            pods = tuple(sorted(n for n, p in nodes.items() if p == key and n in injected))
            unmanaged = tuple(
                sorted(n for n, p in nodes.items() if p == key and n not in injected | exempt)
            )
            generation = int((body.get("metadata") or {}).get("generation") or 0)
            if found:
                kept = f" The last good config ({config.version}) stays in force." if config else ""
                message = _describe(found)
                out[key] = PolicyStatus(
                    generation,
                    False,
                    "InvalidSpec",
                    message + kept,
                    config.version if config else "",
                    pods,
                    unmanaged,
                )
            else:
                version = config.version if config else ""
                out[key] = PolicyStatus(
                    generation,
                    True,
                    "Compiled",
                    f"config version {version}",
                    version,
                    pods,
                    unmanaged,
                )
        return out

    def _route_statuses(
        self, problems: Mapping[tuple[str, str], list[Problem]], endpoints: Mapping[Any, Any]
    ) -> dict[str, RouteStatus]:
        out = {}
        for (namespace, name), body in self.routes.items():
            key = f"{namespace}/{name}"
            found = problems.get((MODEL_ROUTE_KIND, key), [])
            counts = []
            for tier in (body.get("spec") or {}).get("tiers") or []:
                for backend in tier.get("backends") or []:
                    service = backend.get("service")
                    if service:
                        ready = len(
                            endpoints.get((namespace, service.get("name"), service.get("port")), [])
                        )
                    else:
                        ready = 1
                    counts.append((tier.get("name", ""), backend.get("name", ""), ready))
            generation = int((body.get("metadata") or {}).get("generation") or 0)
            if found:
                message = _describe(found)
                out[key] = RouteStatus(generation, False, "InvalidSpec", message, tuple(counts))
            else:
                out[key] = RouteStatus(generation, True, "Valid", "", tuple(counts))
        return out


def _describe(problems: list[Problem]) -> str:
    """Problems of one resource as one message: ``field: reason; field: reason``."""
    return "; ".join(f"{p.field}: {p.reason}" if p.field else p.reason for p in problems)
