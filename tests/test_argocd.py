"""Argo CD (#21): the health checks, run as Argo CD runs them (Lua 5.1), against the
CostPolicy and ModelRoute captured from the real API server in the e2e suite
(``TOKENOMY_CAPTURE=tests/golden/argocd pytest -m apiserver``), and the manifests."""

from __future__ import annotations

import json
from typing import Any

import lupa.lua51 as lua
import pytest
import yaml

from support import REPO, kustomize

pytestmark = pytest.mark.unit

ARGOCD = REPO / "manifests" / "argocd"
CAPTURED = REPO / "tests" / "golden" / "argocd"


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD would compute them: ``obj`` is the resource."""
    runtime = lua.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = to_lua(runtime, obj)
    result = runtime.execute(script)
    return str(result["status"]), str(result["message"] or "")


def to_lua(runtime: Any, value: Any) -> Any:
    """JSON as Argo CD hands it to Lua: objects and arrays become tables (arrays 1-based)."""
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def captured(kind: str, state: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CAPTURED / f"{kind}-{state}.json").read_text())
    return data


COSTPOLICY = (ARGOCD / "health-costpolicy.lua").read_text()
MODELROUTE = (ARGOCD / "health-modelroute.lua").read_text()


@pytest.mark.parametrize(
    ("state", "status", "message"),
    [
        ("healthy", "Healthy", "1 sidecar(s) run version"),
        ("progressing", "Progressing", "0 of 1 sidecars run version"),
        ("invalid", "Degraded", 'spec.cascade.tiers[1]: ModelRoute "chat" has no tier "medium"'),
    ],
)
def test_costpolicy_health_from_captured_statuses(state: str, status: str, message: str) -> None:
    got = health(COSTPOLICY, captured("costpolicy", state))
    assert got[0] == status
    assert message in got[1]


def test_costpolicy_health_without_status_or_behind_its_generation() -> None:
    fresh = {k: v for k, v in captured("costpolicy", "healthy").items() if k != "status"}
    assert health(COSTPOLICY, fresh)[0] == "Progressing"
    behind = captured("costpolicy", "healthy")
    behind["metadata"]["generation"] = behind["status"]["observedGeneration"] + 1
    assert health(COSTPOLICY, behind) == (
        "Progressing",
        f"The operator has not yet reconciled generation {behind['metadata']['generation']}",
    )
    rejected = captured("costpolicy", "healthy")
    applied = next(c for c in rejected["status"]["conditions"] if c["type"] == "Applied")
    applied.update(status="False", reason="Rejected", message="1 sidecar(s) rejected the config")
    assert health(COSTPOLICY, rejected)[0] == "Degraded"


def test_modelroute_health_from_captured_statuses() -> None:
    assert health(MODELROUTE, captured("modelroute", "healthy"))[0] == "Healthy"
    broken = captured("modelroute", "healthy")
    broken["status"]["conditions"][-1].update(status="False", message="no ready endpoint for x")
    assert health(MODELROUTE, broken) == ("Degraded", "no ready endpoint for x")
    fresh = {k: v for k, v in broken.items() if k != "status"}
    assert health(MODELROUTE, fresh)[0] == "Progressing"


def test_the_configmap_carries_the_scripts_as_they_are() -> None:
    data = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())["data"]
    assert data["resource.customizations.health.tokenomy.dev_CostPolicy"] == COSTPOLICY
    assert data["resource.customizations.health.tokenomy.dev_ModelRoute"] == MODELROUTE


def test_the_application_ignores_only_the_ca_bundle_the_operator_writes() -> None:
    app = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    assert app["spec"]["source"]["path"] == "manifests/argocd"
    assert (REPO / app["spec"]["source"]["path"] / "kustomization.yaml").is_file()
    [ignored] = app["spec"]["ignoreDifferences"]
    webhook = next(d for d in kustomize("base") if d["kind"] == "MutatingWebhookConfiguration")
    assert ignored["name"] == webhook["metadata"]["name"]
    assert ignored["jqPathExpressions"] == [".webhooks[].clientConfig.caBundle"]
    assert "RespectIgnoreDifferences=true" in app["spec"]["syncPolicy"]["syncOptions"]


def test_crds_sync_before_everything_else() -> None:
    docs = kustomize("argocd")
    waves = {
        (d["kind"], d["metadata"]["name"]): (d["metadata"].get("annotations") or {}).get(
            "argocd.argoproj.io/sync-wave", "0"
        )
        for d in docs
    }
    assert {w for (kind, _), w in waves.items() if kind == "CustomResourceDefinition"} == {"-1"}
    assert {w for (kind, _), w in waves.items() if kind != "CustomResourceDefinition"} == {"0"}
    assert len(docs) == len(kustomize("base"))


def test_top_level_and_monitoring_overlays_render() -> None:
    base, top, monitored = kustomize("base"), kustomize(""), kustomize("with-monitoring")
    assert top == base
    extra = sorted(d["kind"] for d in monitored if d not in base)
    assert extra == ["ConfigMap", "PodMonitor", "PodMonitor", "PrometheusRule"]
