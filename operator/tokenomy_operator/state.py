"""What the operator knows of the cluster, and what follows from it.

kopf handlers put objects in; :meth:`ClusterState.reconcile` computes, as a
pure function of them, the config every sidecar should have and the status
every resource should show. An invalid change never takes a config away: the
last good config of a policy stays in force, and its status says why the new
one was refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenomy_api.compiled import SidecarConfig, canonical_json
from tokenomy_api.compiler import Compilation, ServiceEndpoint, ServiceKey, compile_configs
from tokenomy_api.costpolicy import CostPolicy, CostPolicySpec
from tokenomy_api.names import COST_POLICY_KIND, MODEL_ROUTE_KIND
from tokenomy_api.pod import node_id
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
        return node_id(self.namespace, self.name)


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
    no_effect: str = ""
    """The fields the spec sets that have no effect in this version, with why."""


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
    specs: dict[str, CostPolicySpec]
    """The spec each config in force was compiled from: the operator-only parts
    (alerts, budget warnings) come from it, never from the sidecars' config."""
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
    last_good: dict[str, tuple[SidecarConfig, CostPolicySpec]] = field(default_factory=dict)
    """The last config each policy compiled to, with its spec; kept in force while the
    policy's spec is invalid."""
    compiled: dict[str, _Compiled] = field(default_factory=dict)
    """The last compile of each namespace, redone only when its inputs change."""

    def reconcile(self) -> Reconciliation:
        """Compile what changed and decide configs, pod assignments and statuses."""
        endpoints = service_endpoints(self.services.values(), self.slices.values(), self.nodes)
        namespaces = {ns for ns, _ in self.routes} | {ns for ns, _ in self.policies}
        self.compiled = {ns: self._compile(ns, endpoints) for ns in sorted(namespaces)}
        parsed = [p for c in self.compiled.values() for p in c.policies]
        problems: dict[tuple[str, str], list[Problem]] = {}
        for problem in (p for c in self.compiled.values() for p in c.problems):
            problems.setdefault((problem.kind, f"{problem.namespace}/{problem.name}"), []).append(
                problem
            )
        specs = {f"{p.metadata.namespace}/{p.metadata.name}": p.spec for p in parsed}
        for compiled in self.compiled.values():
            for key, config in compiled.configs.items():
                self.last_good[key] = (config, specs[key])
        live = {f"{ns}/{name}" for ns, name in self.policies}
        for key in list(self.last_good):
            if key not in live:
                del self.last_good[key]  # a deleted policy takes its config along
        configs = {key: config for key, (config, _) in self.last_good.items()}
        nodes = self._assign(parsed)
        return Reconciliation(
            configs=configs,
            specs={key: spec for key, (_, spec) in self.last_good.items()},
            parsed=parsed,
            nodes=nodes,
            policies=self._policy_statuses(problems, configs, nodes, self._notices()),
            routes=self._route_statuses(problems, endpoints),
        )

    def _compile(
        self, namespace: str, endpoints: Mapping[ServiceKey, list[ServiceEndpoint]]
    ) -> _Compiled:
        """One namespace's compile: the previous one while its inputs are unchanged.

        Inputs are the specs and identities of its policies and routes and
        the endpoints of its Services; statuses (rewritten every few seconds)
        and ACKs are not, so they never cause a compile.
        """
        docs = [
            d for key, d in (*self.routes.items(), *self.policies.items()) if key[0] == namespace
        ]
        seen = {k: v for k, v in endpoints.items() if k[0] == namespace}
        fingerprint = hashlib.sha256(
            canonical_json([[_compiled_part(d) for d in docs], sorted(map(repr, seen.items()))])
        ).digest()
        previous = self.compiled.get(namespace)
        if previous is not None and previous.fingerprint == fingerprint:
            return previous
        resources = parse_documents([("", d) for d in docs])
        compilation: Compilation = compile_configs(resources.policies, resources.routes, seen)
        return _Compiled(
            fingerprint,
            resources.policies,
            compilation.configs,
            [*resources.problems, *compilation.problems],
            compilation.notices,
        )

    def _notices(self) -> dict[str, str]:
        """Each policy's fields without effect, as its status says them."""
        found: dict[str, list[Problem]] = {}
        for notice in (n for c in self.compiled.values() for n in c.notices):
            found.setdefault(f"{notice.namespace}/{notice.name}", []).append(notice)
        return {key: _describe(notices) for key, notices in found.items()}

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
        notices: Mapping[str, str],
    ) -> dict[str, PolicyStatus]:
        out = {}
        injected = {p.node_id for p in self.pods.values() if p.injected}
        managed = injected | {p.node_id for p in self.pods.values() if p.opted_out}
        selected: dict[str, list[str]] = {}
        for node, policy in nodes.items():
            selected.setdefault(policy, []).append(node)
        for (namespace, name), body in self.policies.items():
            key = f"{namespace}/{name}"
            found = problems.get((COST_POLICY_KIND, key), [])
            config = configs.get(key)
            mine = sorted(selected.get(key, ()))
            pods = tuple(n for n in mine if n in injected)
            unmanaged = tuple(n for n in mine if n not in managed)
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
                    notices.get(key, ""),
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
                    notices.get(key, ""),
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


@dataclass(frozen=True)
class _Compiled:
    """One namespace's compile and the fingerprint of what it was compiled from."""

    fingerprint: bytes
    policies: list[CostPolicy]
    configs: dict[str, SidecarConfig]
    problems: list[Problem]
    notices: list[Problem]


def _compiled_part(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What of a resource the compiler reads: everything but status and bookkeeping (of
    status, only what ``shadow.autoTune`` decided)."""
    meta = doc.get("metadata") or {}
    kept = {k: v for k, v in meta.items() if k not in ("resourceVersion", "managedFields")}
    tuning = (doc.get("status") or {}).get("tuning")
    return {
        **{k: v for k, v in doc.items() if k != "status"},
        "metadata": kept,
        **({"tuning": tuning} if tuning else {}),
    }


def _describe(problems: list[Problem]) -> str:
    """Problems of one resource as one message: ``field: reason; field: reason``."""
    return "; ".join(f"{p.field}: {p.reason}" if p.field else p.reason for p in problems)
