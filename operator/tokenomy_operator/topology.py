"""Where in-cluster model servers run: endpoints from EndpointSlices, placement from Nodes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tokenomy_api.compiler import ServiceEndpoint, ServiceKey
from tokenomy_api.modelroute import Capacity

REGION = "topology.kubernetes.io/region"
ZONE = "topology.kubernetes.io/zone"


def node_placement(labels: Mapping[str, str]) -> tuple[str | None, str | None, Capacity]:
    """(region, zone, capacity) from a Node's labels, for Karpenter, GKE and EKS."""
    capacity: Capacity = "on-demand"
    if (
        labels.get("karpenter.sh/capacity-type", "").lower() == "spot"
        or labels.get("cloud.google.com/gke-spot", "").lower() == "true"
        or labels.get("cloud.google.com/gke-preemptible", "").lower() == "true"
        or labels.get("eks.amazonaws.com/capacityType", "").upper() == "SPOT"
    ):
        capacity = "spot"
    return labels.get(REGION), labels.get(ZONE), capacity


def service_endpoints(
    services: Iterable[Mapping[str, Any]],
    slices: Iterable[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, str]],
) -> dict[ServiceKey, list[ServiceEndpoint]]:
    """Ready endpoints of every Service port, placed by their Node's labels.

    A Service port maps to the EndpointSlice port of the same name (the only
    one, for single-port Services), as kube-proxy does.
    """
    by_service: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        name = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        if name:
            by_service.setdefault((meta.get("namespace", "default"), name), []).append(s)
    out: dict[ServiceKey, list[ServiceEndpoint]] = {}
    for service in services:
        meta = service.get("metadata") or {}
        namespace, name = meta.get("namespace", "default"), meta.get("name", "")
        ports = (service.get("spec") or {}).get("ports") or []
        for port in ports:
            found: list[ServiceEndpoint] = []
            for s in by_service.get((namespace, name), []):
                slice_ports = s.get("ports") or []
                match = [p for p in slice_ports if p.get("name", "") == port.get("name", "")]
                if not match and len(slice_ports) == 1 and len(ports) == 1:
                    match = slice_ports
                if not match or match[0].get("port") is None:
                    continue
                for endpoint in s.get("endpoints") or []:
                    if (endpoint.get("conditions") or {}).get("ready") is False:
                        continue
                    region, zone, capacity = node_placement(
                        nodes.get(endpoint.get("nodeName", ""), {})
                    )
                    zone = endpoint.get("zone") or zone
                    found.extend(
                        ServiceEndpoint(address, int(match[0]["port"]), region, zone, capacity)
                        for address in endpoint.get("addresses") or []
                    )
            out[(namespace, name, int(port["port"]))] = sorted(found, key=lambda e: e.address)
    return out
