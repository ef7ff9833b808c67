"""Names the cluster and the wire know Tokenomy's resources by."""

from __future__ import annotations

from typing import Final

GROUP: Final = "tokenomy.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CATEGORY: Final = "tokenomy"

COST_POLICY_KIND: Final = "CostPolicy"
COST_POLICY_PLURAL: Final = "costpolicies"
COST_POLICY_SINGULAR: Final = "costpolicy"
COST_POLICY_SHORT_NAMES: Final = ("cpol",)

MODEL_ROUTE_KIND: Final = "ModelRoute"
MODEL_ROUTE_PLURAL: Final = "modelroutes"
MODEL_ROUTE_SINGULAR: Final = "modelroute"
MODEL_ROUTE_SHORT_NAMES: Final = ("mroute",)

# xDS type URL of the compiled sidecar config. Model backends travel as the
# standard Envoy Cluster and ClusterLoadAssignment types, so a real Envoy can
# consume them; the policy has no Envoy equivalent and gets a type of its own.
# Its version is the contract's (tokenomy_api.compiled.CONTRACT), not the CRDs':
# a sidecar subscribes to the contract it can read.
SIDECAR_CONFIG_TYPE_URL: Final = "type.googleapis.com/tokenomy.dev.sidecar.v1.SidecarConfig"
