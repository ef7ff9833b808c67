"""manifests/ renders with kustomize, validates, and agrees with the code it deploys."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from tokenomy_operator.controller import Controller
from tokenomy_operator.handlers import register
from tokenomy_operator.injection import InjectionSettings
from tokenomy_operator.leadership import LEADER_LABEL
from tokenomy_operator.webhook import HANDLER_ID
from tokenomy_operator.xds.server import AdsServer
from tokenomy_operator.xds.snapshot import SnapshotCache

from support import kustomize


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize("base")


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def test_base_renders_everything_the_operator_needs(base: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in base)
    assert kinds == sorted(
        ["CustomResourceDefinition"] * 2
        + [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
            "Service",
            "MutatingWebhookConfiguration",
        ]
    )


def test_built_in_kinds_validate(base: list[dict[str, Any]]) -> None:
    for doc in base:
        kubernetes_validate.validate(doc, "1.35.0", strict=True)


def test_webhook_points_at_the_handler_and_never_blocks(base: list[dict[str, Any]]) -> None:
    [hook] = one(base, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["clientConfig"]["service"]["path"] == f"/{HANDLER_ID}"
    assert hook["failurePolicy"] == "Ignore"
    excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert set(InjectionSettings().excluded_namespaces) == set(excluded)
    services = {d["metadata"]["name"]: d for d in base if d["kind"] == "Service"}
    service = services[hook["clientConfig"]["service"]["name"]]
    assert {p["port"] for p in service["spec"]["ports"]} == {15010, 443}


def test_injected_sidecars_reach_both_services_and_the_leader_is_labelled(
    base: list[dict[str, Any]],
) -> None:
    services = {d["metadata"]["name"]: d for d in base if d["kind"] == "Service"}
    settings = InjectionSettings()
    for address in (settings.xds_address, settings.usage_address):
        name, namespace = address.split(".")[:2]
        assert name in services, address
        assert namespace == "tokenomy-system"
    leader = services["tokenomy-operator-leader"]["spec"]["selector"]
    assert leader[LEADER_LABEL] == "true"
    rules = one(base, "Role")["rules"]
    assert allowed(rules, "coordination.k8s.io", "leases", "update")
    assert allowed(rules, "", "pods", "patch")
    args = one(base, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--leader-election=tokenomy-operator" in args


def allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )


def test_rbac_covers_every_watch_and_write(base: list[dict[str, Any]]) -> None:
    rules = one(base, "ClusterRole")["rules"]
    registry = register(Controller(SnapshotCache(), AdsServer(SnapshotCache()), writer=None))  # type: ignore[arg-type]
    for handler in registry._watching.get_all_handlers():
        selector = handler.selector
        for verb in ("list", "watch"):
            assert allowed(rules, selector.group or "", selector.any_name, verb), (selector, verb)
    for resource in ("costpolicies/status", "modelroutes/status"):
        assert allowed(rules, "tokenomy.dev", resource, "patch")
    assert allowed(rules, "events.k8s.io", "events", "create")
    [webhook_rule] = [r for r in rules if "mutatingwebhookconfigurations" in r["resources"]]
    assert webhook_rule["resourceNames"] == ["tokenomy-sidecar-injector"]
    # Nothing is written to Pods, nothing reads Secrets.
    assert not any(
        v in r["verbs"]
        for r in rules
        if "pods" in r["resources"]
        for v in ("create", "update", "patch", "delete")
    )
    assert not any("secrets" in r["resources"] for r in rules)


def test_monitoring_renders() -> None:
    rendered = kustomize("monitoring")
    docs = {d["kind"]: d for d in rendered}
    assert sorted(docs) == ["ConfigMap", "PodMonitor", "PrometheusRule"]
    monitors = {d["metadata"]["name"]: d["spec"] for d in rendered if d["kind"] == "PodMonitor"}
    assert monitors["tokenomy-sidecars"]["podMetricsEndpoints"][0]["port"] == "tkn-metrics"
    # The operator's port name and labels, as the Deployment declares them.
    deployment = next(d for d in kustomize("base") if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    operator = monitors["tokenomy-operator"]
    assert operator["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert operator["podMetricsEndpoints"][0]["port"] in ports
    dashboard = docs["ConfigMap"]
    assert dashboard["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(dashboard["data"]["dashboard.json"])["uid"] == "tokenomy"


def test_local_images_overlay_renames_both_images_only() -> None:
    base, local = kustomize("base"), kustomize("local-images")
    assert len(base) == len(local)
    [container] = one(local, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("localhost/tokenomy/operator:")
    sidecar = [a for a in container["args"] if a.startswith("--sidecar-image=")]
    assert sidecar == ["--sidecar-image=localhost/tokenomy/sidecar:0.1.0"]
    [before] = one(base, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(container["args"]) == len(before["args"])
