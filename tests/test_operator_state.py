"""The operator's reconcile: configs, pod assignment, statuses, last good config, topology."""

from __future__ import annotations

from typing import Any

import pytest

from tokenomy_api.compiler import ServiceEndpoint
from tokenomy_operator.state import ClusterState, Pod
from tokenomy_operator.topology import node_placement, service_endpoints

from helpers import backend, policy_doc, route_doc


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({}, (None, None, "on-demand")),
        (
            {
                "topology.kubernetes.io/region": "us-east-1",
                "topology.kubernetes.io/zone": "us-east-1a",
            },
            ("us-east-1", "us-east-1a", "on-demand"),
        ),
        ({"karpenter.sh/capacity-type": "spot"}, (None, None, "spot")),
        ({"karpenter.sh/capacity-type": "on-demand"}, (None, None, "on-demand")),
        ({"cloud.google.com/gke-spot": "true"}, (None, None, "spot")),
        ({"cloud.google.com/gke-preemptible": "true"}, (None, None, "spot")),
        ({"eks.amazonaws.com/capacityType": "SPOT"}, (None, None, "spot")),
        ({"eks.amazonaws.com/capacityType": "ON_DEMAND"}, (None, None, "on-demand")),
    ],
)
def test_node_placement(labels: dict[str, str], expected: tuple[Any, ...]) -> None:
    assert node_placement(labels) == expected


def service(name: str, *ports: tuple[str, int]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"ports": [{"name": n, "port": p} for n, p in ports]},
    }


def endpoint_slice(
    name: str, service_name: str, ports: list[tuple[str, int]], endpoints: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "ports": [{"name": n, "port": p} for n, p in ports],
        "endpoints": endpoints,
    }


def test_service_endpoints_follow_port_names_readiness_and_nodes() -> None:
    nodes = {
        "spot-1": {
            "topology.kubernetes.io/region": "us-east-1",
            "karpenter.sh/capacity-type": "spot",
        },
        "od-1": {
            "topology.kubernetes.io/region": "us-east-1",
            "topology.kubernetes.io/zone": "us-east-1b",
        },
    }
    slices = [
        endpoint_slice(
            "vllm-a",
            "vllm",
            [("http", 8080), ("metrics", 9090)],
            [
                {
                    "addresses": ["10.0.0.1"],
                    "conditions": {"ready": True},
                    "nodeName": "spot-1",
                    "zone": "us-east-1a",
                },
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}, "nodeName": "od-1"},
            ],
        ),
        endpoint_slice(
            "vllm-b",
            "vllm",
            [("http", 8080), ("metrics", 9090)],
            [
                {"addresses": ["10.0.0.3"], "nodeName": "od-1"},
            ],
        ),
    ]
    found = service_endpoints([service("vllm", ("http", 8000), ("metrics", 9000))], slices, nodes)
    assert found[("ns", "vllm", 8000)] == [
        ServiceEndpoint("10.0.0.1", 8080, "us-east-1", "us-east-1a", "spot"),
        ServiceEndpoint("10.0.0.3", 8080, "us-east-1", "us-east-1b", "on-demand"),
    ]
    assert [e.port for e in found[("ns", "vllm", 9000)]] == [9090, 9090]


def test_single_unnamed_port_maps_to_the_only_slice_port() -> None:
    slices = [endpoint_slice("s", "svc", [("", 8080)], [{"addresses": ["10.0.0.9"]}])]
    found = service_endpoints([service("svc", ("", 80))], slices, {})
    assert found[("ns", "svc", 80)] == [ServiceEndpoint("10.0.0.9", 8080)]


def pod(name: str, namespace: str = "ns", **labels: str) -> Pod:
    return Pod(namespace, name, labels, injected=True)


def state_with(*docs: dict[str, Any], pods: tuple[Pod, ...] = ()) -> ClusterState:
    state = ClusterState()
    for doc in docs:
        key = (doc["metadata"]["namespace"], doc["metadata"]["name"])
        (state.policies if doc["kind"] == "CostPolicy" else state.routes)[key] = doc
    for p in pods:
        state.pods[(p.namespace, p.name)] = p
    return state


def test_reconcile_compiles_and_assigns_selected_pods() -> None:
    state = state_with(
        route_doc(),
        policy_doc(),
        pods=(pod("a", app="agent"), pod("b", app="other"), pod("c", namespace="x", app="agent")),
    )
    result = state.reconcile()
    assert list(result.configs) == ["ns/agent"]
    assert result.nodes == {"ns/a": "ns/agent"}
    status = result.policies["ns/agent"]
    assert (status.ready, status.reason, status.pods) == (True, "Compiled", ("ns/a",))
    assert status.version == result.configs["ns/agent"].version
    assert result.routes["ns/chat"].ready
    assert result.routes["ns/chat"].endpoints == (("small", "s1", 1), ("large", "l1", 1))


def test_oldest_policy_wins_a_pod_selected_twice() -> None:
    older = policy_doc("older")
    older["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    newer = policy_doc("newer")
    newer["spec"]["selector"] = {}
    newer["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    result = state_with(
        route_doc(), newer, older, pods=(pod("a", app="agent"), pod("b"))
    ).reconcile()
    assert result.nodes == {"ns/a": "ns/older", "ns/b": "ns/newer"}


def test_invalid_change_keeps_the_last_good_config_and_says_why() -> None:
    state = state_with(route_doc(), policy_doc())
    good = state.reconcile().configs["ns/agent"]
    state.policies[("ns", "agent")] = policy_doc(
        cascade={"enabled": True, "tiers": ["small", "huge"]}
    ) | {"metadata": {"namespace": "ns", "name": "agent", "generation": 2}}
    result = state.reconcile()
    assert result.configs["ns/agent"] == good
    status = result.policies["ns/agent"]
    assert not status.ready
    assert status.reason == "InvalidSpec"
    assert status.generation == 2
    assert 'spec.cascade.tiers[1]: ModelRoute "chat" has no tier "huge"' in status.message
    assert f"The last good config ({good.version}) stays in force." in status.message


def test_fields_without_effect_reach_the_policy_status() -> None:
    listed = {"upstreams": [{"name": "w", "url": "http://weather"}]}  # but the proxy is off
    state = state_with(route_doc(), policy_doc(tools=listed))
    status = state.reconcile().policies["ns/agent"]
    assert status.ready  # still compiles and runs
    assert status.no_effect.startswith("spec.tools.enabled: is false")
    state.policies[("ns", "agent")] = policy_doc()
    assert state.reconcile().policies["ns/agent"].no_effect == ""


def test_schema_errors_name_the_field_too() -> None:
    bad = policy_doc(cache={"semantic": {"threshold": 2}})
    status = state_with(route_doc(), bad).reconcile().policies["ns/agent"]
    assert status.message.startswith(
        "spec.cache.semantic.threshold: Input should be less than or equal to 1"
    )
    assert status.version == ""


def test_broken_route_is_reported_on_the_route_and_the_policy() -> None:
    route = route_doc(tiers=[{"name": "t", "backends": [backend("b", price=None)]}])
    result = state_with(route, policy_doc()).reconcile()
    assert not result.routes["ns/chat"].ready
    assert "price: missing price" in result.routes["ns/chat"].message
    assert 'ModelRoute "chat" has problems of its own' in result.policies["ns/agent"].message


def test_deleted_policy_takes_its_config_along() -> None:
    state = state_with(route_doc(), policy_doc(), pods=(pod("a", app="agent"),))
    assert state.reconcile().configs
    del state.policies[("ns", "agent")]
    result = state.reconcile()
    assert result.configs == {}
    assert result.nodes == {}


def test_service_backends_get_their_endpoints() -> None:
    route = route_doc(
        tiers=[
            {
                "name": "t",
                "backends": [
                    {
                        "name": "vllm",
                        "model": "llama",
                        "service": {"name": "vllm", "port": 8000},
                        "price": {"input": "0", "output": "0"},
                    }
                ],
            }
        ]
    )
    state = state_with(route, policy_doc())
    state.services[("ns", "vllm")] = service("vllm", ("http", 8000))
    state.slices[("ns", "vllm-x")] = endpoint_slice(
        "vllm-x", "vllm", [("http", 8080)], [{"addresses": ["10.1.1.1"]}]
    )
    result = state.reconcile()
    endpoint_urls = [
        e.url for e in result.configs["ns/agent"].routes[0].tiers[0].backends[0].endpoints
    ]
    assert endpoint_urls == ["http://10.1.1.1:8080/v1"]
    assert result.routes["ns/chat"].endpoints == (("t", "vllm", 1),)


def test_selected_pods_without_a_sidecar_are_unmanaged_unless_they_opted_out() -> None:
    state = state_with(route_doc(), policy_doc(), pods=())
    state.pods = {
        ("ns", "with"): Pod("ns", "with", {"app": "agent"}, injected=True),
        ("ns", "early"): Pod("ns", "early", {"app": "agent"}),
        ("ns", "out"): Pod("ns", "out", {"app": "agent"}, opted_out=True),
        ("ns", "other"): Pod("ns", "other", {"app": "other"}),
    }
    status = state.reconcile().policies["ns/agent"]
    assert status.pods == ("ns/with",)
    assert status.unmanaged == ("ns/early",)
