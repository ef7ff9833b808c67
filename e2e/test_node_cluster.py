"""The node tier: the operator and injected sidecars as Pods on a real kubelet node.

What a user does, step for step as the README's "Run it on a cluster" says:
apply the shipped manifests with the image names overlaid, apply an agent
with its policy and models in one go, and watch requests flow through the
injected sidecar to in-cluster models. Nothing here patches the manifests
for the test; the webhook is called through its Service as shipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cluster_view import SYSTEM, agent_lines, describe, get

from controlplane import kubectl, wait
from prometheus import Prometheus, dashboard_queries, shipped
from realnode import IMAGE_CACHE, NodeCluster

pytestmark = pytest.mark.node

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MEASURED: dict[str, float] = {}
"""Timings the README quotes, written to MEASUREMENTS after the module."""
MEASUREMENTS = IMAGE_CACHE / "node-measurements.json"


@pytest.fixture(scope="module")
def operator(cluster: NodeCluster) -> Iterator[NodeCluster]:
    """Scenario 1: the shipped manifests, applied; the operator Deployment Available."""
    admin = cluster.admin
    started = time.monotonic()
    kubectl(admin, "apply", "--server-side", "-k", str(REPO / "manifests" / "local-images"))
    rollout = kubectl(
        admin, "rollout", "status", "-n", SYSTEM, "deploy/tokenomy-operator", "--timeout=240s",
        check=False,
    )  # fmt: skip
    assert rollout.returncode == 0, describe(cluster, SYSTEM)
    MEASURED["apply_to_operator_available_s"] = time.monotonic() - started
    MEASURED.update(cluster.node.timings)
    yield cluster
    MEASUREMENTS.parent.mkdir(parents=True, exist_ok=True)
    MEASUREMENTS.write_text(json.dumps({k: round(v, 2) for k, v in MEASURED.items()}, indent=2))


def test_operator_is_available_and_its_webhook_trusted(operator: NodeCluster) -> None:
    admin = operator.admin
    deployment = get(admin, "-n", SYSTEM, "deploy/tokenomy-operator")
    available = {c["type"]: c["status"] for c in deployment["status"]["conditions"]}
    assert available["Available"] == "True"
    hook = get(admin, "mutatingwebhookconfiguration/tokenomy-sidecar-injector")
    assert hook["webhooks"][0]["clientConfig"].get("caBundle"), "the operator publishes its CA"
    # In-cluster auth works: the operator read the CRDs and wrote nothing as anonymous.
    logs = kubectl(admin, "logs", "-n", SYSTEM, "deploy/tokenomy-operator").stdout
    assert "system:anonymous" not in logs
    assert "KeyError" not in logs


@pytest.fixture(scope="module")
def agent(operator: NodeCluster) -> NodeCluster:
    """Scenarios 2-3: models, route, policy and agent Pod in one apply."""
    admin = operator.admin
    started = time.monotonic()
    kubectl(admin, "apply", "-f", str(REPO / "examples" / "cluster" / "agent.yaml"))

    def serving() -> bool:
        return any(line["ok"] for line in agent_lines(admin))

    try:
        wait(serving, 240, "the agent's first answer")
    except AssertionError as error:
        raise AssertionError(describe(operator, "shop")) from error
    MEASURED["pod_create_to_first_answer_s"] = time.monotonic() - started
    return operator


def test_the_pod_applied_with_its_policy_gets_a_native_sidecar(agent: NodeCluster) -> None:
    pod = get(agent.admin, "-n", "shop", "pod/agent")
    [sidecar] = [
        c for c in pod["spec"].get("initContainers", []) if c["name"] == "tokenomy-sidecar"
    ]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == agent.images["sidecar"]
    assert pod["metadata"]["annotations"]["tokenomy.dev/injected"] == "shop/agent"
    # PodTopologyLabels copied the node's region onto the Pod; the sidecar reads it.
    assert pod["metadata"]["labels"]["topology.kubernetes.io/region"] == "eu-west-1"


def test_requests_reach_the_models_through_the_sidecar(agent: NodeCluster) -> None:
    admin = agent.admin
    lines = wait(
        lambda: (ls := agent_lines(admin)) and sum(1 for x in ls if x.get("cache") == "exact") >= 5 and ls,
        120, "exact-cache hits",
    )  # fmt: skip
    failed = [x for x in lines if not x["ok"]]
    assert not failed, failed[:3]
    misses = [x for x in lines if x["cache"] == "miss"]
    # Spot preferred, nearest region: the in-cluster backend whose placement
    # came from the node's labels, not the cheaper far or on-demand ones.
    assert {x["backend"] for x in misses} == {"near"}, misses
    assert {x["tier"] for x in misses} == {"small"}


def test_status_shows_the_sidecar_and_its_spend(agent: NodeCluster) -> None:
    admin = agent.admin

    def reported() -> dict[str, Any] | None:
        status = get(admin, "-n", "shop", "costpolicy/agent").get("status") or {}
        spend = status.get("spend") or {}
        ok = (status.get("sidecars") or {}).get("acknowledged") == 1 and float(
            spend.get("amount") or 0
        ) > 0
        hit_rate = float(str(status.get("cacheHitRate") or "0").rstrip("%"))
        return status if ok and hit_rate > 0 else None

    try:
        status = wait(reported, 90, "spend and hit rate in the CostPolicy status")
    except AssertionError as error:
        shown = get(admin, "-n", "shop", "costpolicy/agent").get("status")
        raise AssertionError(
            f"{json.dumps(shown, indent=1)[:3000]}\n{describe(agent, SYSTEM)}"
        ) from error
    assert status["sidecars"]["unmanaged"] == 0
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Applied"]["status"] == "True"
    assert conditions["SidecarsInjected"]["status"] == "True"
    table = kubectl(admin, "get", "costpolicies", "-n", "shop").stdout
    assert "agent" in table
    # kubectl get reads status.display: money to the cent, every route and tier.
    display = status["display"]
    assert display["spend"].lstrip("<").startswith("$"), display
    assert any(w.lstrip("<").startswith("$") for w in table.split()), table  # spend moves on
    assert display["routes"] in table
    routes = kubectl(admin, "get", "modelroutes", "-n", "shop").stdout
    for item in get(admin, "-n", "shop", "modelroutes")["items"]:
        assert ",".join(t["name"] for t in item["spec"]["tiers"]) in routes, routes


def test_a_policy_change_reaches_the_running_sidecar_and_a_bad_one_is_refused(
    agent: NodeCluster,
) -> None:
    admin = agent.admin
    before = get(admin, "-n", "shop", "costpolicy/agent")["status"]["configVersion"]
    kubectl(admin, "patch", "-n", "shop", "costpolicy/agent", "--type=merge",
            "-p", '{"spec": {"cache": {"exact": {"enabled": false}}}}')  # fmt: skip
    seen = len(agent_lines(admin))
    wait(lambda: any(x.get("cache") != "exact" for x in agent_lines(admin)[seen + 2 :]),
         60, "answers without the exact cache")  # fmt: skip
    changed = get(admin, "-n", "shop", "costpolicy/agent")["status"]["configVersion"]
    assert changed != before
    pod = get(admin, "-n", "shop", "pod/agent")
    restarts = {s["name"]: s["restartCount"] for s in pod["status"]["initContainerStatuses"]}
    assert restarts["tokenomy-sidecar"] == 0  # no restart: the config came over xDS

    # Valid for the schema, not for the compiler: the cascade names a tier the route lacks.
    kubectl(admin, "patch", "-n", "shop", "costpolicy/agent", "--type=merge",
            "-p", '{"spec": {"cascade": {"tiers": ["small", "medium"]}}}')  # fmt: skip

    def refused() -> dict[str, Any] | None:
        status = get(admin, "-n", "shop", "costpolicy/agent")["status"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        return status if ready["status"] == "False" else None

    status = wait(refused, 60, "Ready=False on the invalid change")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert "spec.cascade.tiers[1]" in ready["message"]
    assert status["configVersion"] == changed  # the last good config stays in force
    seen = len(agent_lines(admin))
    wait(lambda: len(agent_lines(admin)) >= seen + 5, 60, "more answers")
    assert all(x["ok"] for x in agent_lines(admin)[seen:])
    kubectl(admin, "patch", "-n", "shop", "costpolicy/agent", "--type=json",
            "-p", '[{"op": "remove", "path": "/spec/cascade"}]')  # fmt: skip


def costs(lines: list[dict[str, Any]]) -> Decimal:
    return sum((Decimal(x["cost"]) for x in lines if x["ok"] and x.get("cost")), Decimal(0))


def test_the_standby_takes_over_without_a_failed_request_or_a_double_count(
    agent: NodeCluster,
) -> None:
    """Scenario 5: two replicas; the Lease holder is deleted while the agent keeps asking."""
    admin = agent.admin
    replicas = get(admin, "-n", SYSTEM, "pods", "-l", "app.kubernetes.io/name=tokenomy-operator")
    names = {p["metadata"]["name"] for p in replicas["items"]}
    assert len(names) == 2
    leader = get(admin, "-n", SYSTEM, "lease/tokenomy-operator")["spec"]["holderIdentity"]
    assert leader in names
    labelled = get(admin, "-n", SYSTEM, "pods", "-l", "tokenomy.dev/leader=true")["items"]
    assert [p["metadata"]["name"] for p in labelled] == [leader]
    before = agent_lines(admin)
    started = time.monotonic()
    kubectl(admin, "delete", "pod", "-n", SYSTEM, leader, "--wait=false")
    # The webhook keeps injecting while the leader goes (every replica serves it).
    kubectl(admin, "run", "probe", "-n", "shop", "--image", agent.images["sidecar"],
            "--labels", "app=agent", "--restart=Never", "--command", "--", "sleep", "3600")  # fmt: skip
    probe = get(admin, "-n", "shop", "pod/probe")
    assert [c["name"] for c in probe["spec"].get("initContainers", [])] == ["tokenomy-sidecar"]

    def new_leader() -> str:
        holder = get(admin, "-n", SYSTEM, "lease/tokenomy-operator")["spec"].get("holderIdentity")
        return holder if holder and holder != leader else ""

    successor = wait(new_leader, 60, "another replica to take the Lease", interval=0.2)
    MEASURED["leader_takeover_s"] = time.monotonic() - started
    MEASURED["taken_over_by_the_standby"] = float(successor in names)
    wait(lambda: len(agent_lines(admin)) >= len(before) + 30, 120, "answers after the takeover")
    after = agent_lines(admin)
    failed = [x for x in after[len(before) :] if not x["ok"]]
    assert not failed, failed[:3]

    # Spend resumes on the new leader: what was answered before the takeover
    # is all counted, and nothing twice (never more than the agent was billed).
    def spend() -> Decimal:
        status = get(admin, "-n", "shop", "costpolicy/agent").get("status") or {}
        return Decimal(str((status.get("spend") or {}).get("amount") or "0"))

    wait(lambda: spend() >= costs(before), 90, "spend to include every answer before the takeover")
    assert spend() <= costs(agent_lines(admin))
    kubectl(admin, "delete", "pod", "-n", "shop", "probe", "--wait=false")


def test_a_pod_admitted_before_its_policy_is_reported_unmanaged(agent: NodeCluster) -> None:
    admin = agent.admin
    kubectl(admin, "create", "namespace", "later")
    kubectl(admin, "run", "early", "-n", "later", "--image", agent.images["example-agent"],
            "--labels", "app=early", "--restart=Never")  # fmt: skip
    policy = {
        "apiVersion": "tokenomy.dev/v1alpha1",
        "kind": "CostPolicy",
        "metadata": {"name": "late", "namespace": "later"},
        "spec": {"selector": {"matchLabels": {"app": "early"}}, "routes": ["chat"]},
    }
    kubectl(admin, "apply", "-f", "-", stdin=json.dumps(policy))

    def flagged() -> dict[str, Any] | None:
        status = get(admin, "-n", "later", "costpolicy/late").get("status") or {}
        return status if (status.get("sidecars") or {}).get("unmanaged") == 1 else None

    status = wait(flagged, 60, "the unmanaged pod in status")
    injected = next(c for c in status["conditions"] if c["type"] == "SidecarsInjected")
    assert injected["status"] == "False"
    assert "later/early" in injected["message"]
    events = get(admin, "-n", "later", "events")["items"]
    assert any(e["reason"] == "PodsWithoutSidecar" and e["type"] == "Warning" for e in events)


def test_prometheus_finds_every_target_and_every_dashboard_panel_has_data(
    agent: NodeCluster, tmp_path: Path
) -> None:
    """Scenario 6: the shipped PodMonitors' selectors, rules and dashboard, on a real Prometheus."""
    admin = agent.admin
    kubectl(admin, "apply", "-f", str(HERE / "node" / "observed.yaml"))
    wait(lambda: any(x["ok"] for x in agent_lines(admin, "payments-agent", "payments")),
         180, "the payments agent's first answer")  # fmt: skip
    prometheus = Prometheus(tmp_path, admin)
    prometheus.start(agent.node.bin_dir / "prometheus")
    try:

        def up() -> dict[str, set[str]]:
            found: dict[str, set[str]] = {}
            for target in prometheus.api("targets")["activeTargets"]:
                if target["health"] == "up":
                    found.setdefault(target["labels"]["job"], set()).add(target["labels"]["pod"])
            return found

        def both() -> dict[str, set[str]] | None:
            found = up()
            sidecars = found.get("podMonitor/tokenomy-system/tokenomy-sidecars", set())
            operators = found.get("podMonitor/tokenomy-system/tokenomy-operator", set())
            return (
                found if {"agent", "payments-agent"} <= sidecars and len(operators) == 2 else None
            )

        try:
            found = wait(both, 90, "the sidecars and both operator replicas as targets up")
        except AssertionError as error:
            raise AssertionError(json.dumps(prometheus.api("targets"), indent=1)[-4000:]) from error
        # The stand-ins opted out (tokenomy.dev/inject=false): not scraped as sidecars.
        assert not any(
            p.startswith("standin") for p in found["podMonitor/tokenomy-system/tokenomy-sidecars"]
        )
        groups = prometheus.api("rules")["groups"]
        assert {g["name"] for g in groups} == {
            g["name"] for r in shipped()[1] for g in r["spec"]["groups"]
        }
        assert all(rule["health"] != "err" for g in groups for rule in g["rules"])
        for panel, query in dashboard_queries():
            # The alerts panel shows only True alerts, and none is (an alert
            # holds 15 minutes first): the series it filters must be there.
            expr = query.rstrip().removesuffix("== 1")
            wait(lambda e=expr: prometheus.query(e), 150, f"data for panel {panel!r}: {expr}")  # type: ignore[misc]
    finally:
        prometheus.stop()
