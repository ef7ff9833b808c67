"""The pod contract: the names injection writes into a Pod and the sidecar reads back.

Injection (operator) and the sidecar's command line (data plane) must agree
on these; both import them from here, so neither spells them itself.
"""

from __future__ import annotations

from typing import Final

INJECTED_ANNOTATION: Final = "tokenomy.dev/injected"
"""Annotation naming the policy a pod's sidecar serves; present, it makes injection
idempotent, and it is how the operator knows a pod carries a sidecar."""
OPT_OUT: Final = "tokenomy.dev/inject"
"""Label (or annotation) a pod sets to ``"false"`` to never get a sidecar."""
SIDECAR_CONTAINER: Final = "tokenomy-sidecar"
"""Name of the injected container."""

API_PORT: Final = 15100
"""The sidecar's OpenAI-compatible API, on the pod's loopback."""
METRICS_PORT: Final = 15090
"""The sidecar's ``/metrics``, ``/healthz`` and ``/readyz``."""

SECRETS_DIR: Final = "/var/run/tokenomy/secrets"
"""Where each Secret a config names is mounted: ``<dir>/<secret name>/<key>``."""
MODELS_DIR: Final = "/etc/tokenomy/models"
"""Where trained routing models are mounted, as ``NAME.npz``."""
MODEL_KEY: Final = "model.npz"
"""The ConfigMap key a trained routing model is read from."""

ENV_POD_NAME: Final = "POD_NAME"
ENV_POD_NAMESPACE: Final = "POD_NAMESPACE"
"""Downward-API values: with the name, the sidecar's xDS node id (:func:`node_id`)."""
ENV_XDS_ADDRESS: Final = "TOKENOMY_XDS_ADDRESS"
"""The operator's xDS address."""
ENV_USAGE_ADDRESS: Final = "TOKENOMY_USAGE_ADDRESS"
"""Where usage reports go (the leader's Service)."""
ENV_POD_REGION: Final = "TOKENOMY_POD_REGION"
"""The pod's region (from its ``topology.kubernetes.io/region`` label), for placement."""
ENV_POD_LABELS: Final = "TOKENOMY_POD_LABELS"
"""The pod's attribution labels as a JSON object."""


def node_id(namespace: str, name: str) -> str:
    """The xDS node id of a pod's sidecar: ``namespace/name``."""
    return f"{namespace}/{name}"
