"""Sidecar injection: whether a new Pod gets a sidecar, and what changes if it does.

Both are pure functions of the Pod, its namespace and the policies, like
Istio's injection decision, so they are table-tested and golden-tested
without a cluster. The webhook only calls them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenomy_api import pod as contract
from tokenomy_api.compiled import SidecarConfig
from tokenomy_api.costpolicy import CostPolicy
from tokenomy_api.pod import INJECTED_ANNOTATION as INJECTED
from tokenomy_api.pod import MODEL_KEY, MODELS_DIR, OPT_OUT, SECRETS_DIR

REGION_LABEL = "topology.kubernetes.io/region"


@dataclass(frozen=True)
class InjectionSettings:
    """What injected sidecars look like; every field has a default fit for most clusters."""

    image: str = "tokenomy/sidecar:0.1.0"
    """Sidecar image."""
    xds_address: str = "tokenomy-operator-leader.tokenomy-system.svc:15010"
    """Where sidecars reach the operator's xDS server: the leader, whose status
    counts the sidecars that acknowledged a version from the streams it serves."""
    usage_address: str = "tokenomy-operator-leader.tokenomy-system.svc:15010"
    """Where sidecars send usage and ask for budget leases (the leader)."""
    listen_port: int = contract.API_PORT
    """Port of the OpenAI API on the pod's loopback."""
    metrics_port: int = contract.METRICS_PORT
    """Port of ``/metrics`` and the probes."""
    native_sidecar: bool = True
    """An init container with ``restartPolicy: Always`` (Kubernetes 1.29+): up first, down last."""
    excluded_namespaces: tuple[str, ...] = (
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "tokenomy-system",
    )
    """Namespaces never injected."""
    resources: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: {
            "requests": {"cpu": "50m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        }
    )
    """Sidecar resources."""


NOT_SELECTED = "no CostPolicy selects the pod"
"""The one refusal that newer policies (not yet seen through the watch) can overturn."""


@dataclass(frozen=True)
class Decision:
    """Whether to inject, which policy's config the sidecar serves, and why."""

    inject: bool
    reason: str
    policy: str = ""


def opted_out(pod: Mapping[str, Any]) -> str:
    """Why a Pod is never injected whatever selects it ('' if it is not exempt)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if (pod.get("spec") or {}).get("hostNetwork"):
        return "hostNetwork pods share the node's loopback"
    if labels.get(OPT_OUT) == "false" or annotations.get(OPT_OUT) == "false":
        return f"opted out with {OPT_OUT}=false"
    return ""


def decide(
    pod: Mapping[str, Any],
    namespace: str,
    policies: Sequence[CostPolicy],
    settings: InjectionSettings,
) -> Decision:
    """Inject a Pod selected by a CostPolicy of its namespace, unless something says not to."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if namespace in settings.excluded_namespaces:
        return Decision(False, f"namespace {namespace} is excluded")
    exempt = opted_out(pod)
    if exempt:
        return Decision(False, exempt)
    if INJECTED in annotations:
        return Decision(False, "already injected")
    selecting = sorted(
        (
            p
            for p in policies
            if p.metadata.namespace == namespace and p.spec.selector.matches(labels)
        ),
        key=lambda p: (p.metadata.creation_timestamp, p.metadata.name),
    )
    if not selecting:
        return Decision(False, NOT_SELECTED)
    chosen = selecting[0].metadata.name
    return Decision(True, f"selected by CostPolicy {chosen}", f"{namespace}/{chosen}")


def secrets_of(config: SidecarConfig) -> list[str]:
    """Names of the Secrets the sidecar needs: provider keys, embedder key, Redis password."""
    names = {
        b.credentials.name
        for r in config.routes
        for t in r.tiers
        for b in t.backends
        if b.credentials
    }
    for route in config.routes:
        if route.embedding is not None and route.embedding.credentials is not None:
            names.add(route.embedding.credentials.name)
    redis = config.cache.store.redis
    if redis is not None and redis.password is not None:
        names.add(redis.password.name)
    return sorted(names)


def models_of(config: SidecarConfig) -> list[str]:
    """ConfigMaps holding trained models the policy names (the built-in model needs none)."""
    names = set()
    if config.routing.complexity and config.routing.complexity_model != "builtin":
        names.add(config.routing.complexity_model)
    confidence = config.cascade
    scorer = confidence.scorer if confidence is not None and confidence.method == "scorer" else None
    if scorer is not None and scorer != "builtin":
        names.add(scorer)
    return sorted(names)


def _models_volume(models: list[str]) -> dict[str, Any]:
    # One projected volume: each ConfigMap's model.npz appears as NAME.npz.
    sources = [
        {"configMap": {"name": m, "items": [{"key": MODEL_KEY, "path": f"{m}.npz"}]}}
        for m in models
    ]
    return {"name": "tokenomy-models", "projected": {"sources": sources}}


def _sidecar(settings: InjectionSettings, secrets: list[str], models: list[str]) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/readyz", "port": settings.metrics_port}, "periodSeconds": 5}
    container: dict[str, Any] = {
        "name": contract.SIDECAR_CONTAINER,
        "image": settings.image,
        "args": [
            "sidecar",
            "--xds",
            settings.xds_address,
            "--usage",
            settings.usage_address,
            "--listen",
            f"127.0.0.1:{settings.listen_port}",
            "--metrics",
            f"0.0.0.0:{settings.metrics_port}",
            "--secrets-dir",
            SECRETS_DIR,
        ],
        "env": [
            {
                "name": contract.ENV_POD_NAME,
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            },
            {
                "name": contract.ENV_POD_NAMESPACE,
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            # For placement.region.strategy: nearest. Kubernetes 1.35 copies the
            # node's topology labels onto the Pod when it is bound
            # (PodTopologyLabelsAdmission, on by default); on older clusters the
            # value is empty and the sidecar says it cannot place by region.
            {
                "name": contract.ENV_POD_REGION,
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{REGION_LABEL}']"}},
            },
        ],
        # Port names are at most 15 characters.
        "ports": [{"name": "tkn-metrics", "containerPort": settings.metrics_port}],
        "readinessProbe": probe,
        "startupProbe": {**copy.deepcopy(probe), "periodSeconds": 1, "failureThreshold": 60},
        "resources": copy.deepcopy(dict(settings.resources)),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": f"tokenomy-secret-{s}", "mountPath": f"{SECRETS_DIR}/{s}", "readOnly": True}
            for s in secrets
        ],
    }
    if models:
        container["volumeMounts"].append(
            {"name": "tokenomy-models", "mountPath": MODELS_DIR, "readOnly": True}
        )
    if settings.native_sidecar:
        container["restartPolicy"] = "Always"
    return container


def mutate(
    pod: Mapping[str, Any],
    decision: Decision,
    config: SidecarConfig | None,
    settings: InjectionSettings,
) -> dict[str, Any]:
    """The Pod with the sidecar added: a new object, the input untouched.

    Provider keys, and the ConfigMaps of trained routing models the policy
    names, are mounted into the sidecar only. Application containers get
    ``OPENAI_BASE_URL`` (and ``OPENAI_API_BASE`` for older SDKs) pointing at
    the sidecar, unless they set either themselves: that is the app's choice.
    """
    out = copy.deepcopy(dict(pod))
    spec = out.setdefault("spec", {})
    secrets = secrets_of(config) if config is not None else []
    base_url = f"http://127.0.0.1:{settings.listen_port}/v1"
    names = ("OPENAI_BASE_URL", "OPENAI_API_BASE")
    for container in spec.get("containers") or []:
        env = container.setdefault("env", [])
        if not {e.get("name") for e in env} & set(names):
            env.extend({"name": name, "value": base_url} for name in names)
    models = models_of(config) if config is not None else []
    sidecar = _sidecar(settings, secrets, models)
    labels = (out.get("metadata") or {}).get("labels") or {}
    wanted = config.attribution.pod_labels if config is not None else []
    attribution = {k: labels[k] for k in wanted if k in labels}
    if attribution:
        # Spend is charged to these (team, feature...): the pod's values at creation.
        value = json.dumps(attribution, sort_keys=True)
        sidecar["env"].append({"name": contract.ENV_POD_LABELS, "value": value})
    if settings.native_sidecar:
        spec["initContainers"] = [sidecar, *(spec.get("initContainers") or [])]
    else:
        spec["containers"] = [*(spec.get("containers") or []), sidecar]
    spec["volumes"] = [
        *(spec.get("volumes") or []),
        *({"name": f"tokenomy-secret-{s}", "secret": {"secretName": s}} for s in secrets),
        *([_models_volume(models)] if models else []),
    ]
    annotations = out.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[INJECTED] = decision.policy
    return out
