"""What the node tier reads of its cluster: objects, an agent's log lines, and
everything a failed wait should print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controlplane import kubectl
from realnode import NodeCluster

SYSTEM = "tokenomy-system"
"""The operator's namespace as manifests/ installs it."""


def get(admin: Path, *args: str) -> Any:
    return json.loads(kubectl(admin, "get", "-o", "json", *args).stdout)


def agent_lines(admin: Path, pod: str = "agent", namespace: str = "shop") -> list[dict[str, Any]]:
    out = kubectl(admin, "logs", "-n", namespace, pod, "-c", "agent", check=False)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def describe(cluster: NodeCluster, namespace: str, system: str = SYSTEM) -> str:
    """What a failed wait needs: every Pod's containers, Events, every operator
    replica's log (the webhook may have been served by either) and what the API
    server said about calling the webhook (a fail-open admission shows only there)."""
    admin = cluster.admin
    containers = (
        "jsonpath={range .items[*]}{.metadata.name}: init=[{.spec.initContainers[*].name}] "
        'containers=[{.spec.containers[*].name}] {.metadata.annotations}{"\\n"}{end}'
    )
    parts = [
        kubectl(admin, *args, check=False).stdout[-limit:]
        for args, limit in (
            (("get", "pods", "-A", "-o", "wide"), 3000),
            (("get", "pods", "-n", namespace, "-o", containers), 3000),
            (("get", "events", "-A", "--sort-by=.lastTimestamp"), 3000),
            (("get", "costpolicies", "-A", "-o", "jsonpath={.items[*].status.conditions}"), 2000),
            (("logs", "-n", system, "-l", "app.kubernetes.io/name=tokenomy-operator",
              "--prefix", "--tail=40"), 8000),
        )
    ]  # fmt: skip
    apiserver = cluster.plane.folder / "apiserver.log"
    if apiserver.exists():
        lines = apiserver.read_text(errors="replace").splitlines()
        parts.append("\n".join(x for x in lines if "webhook" in x.lower())[-3000:])
    return "\n".join(parts)
