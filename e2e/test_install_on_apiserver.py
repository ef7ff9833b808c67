"""Every install path's objects, accepted by a real API server: kustomize's folders
and the Helm chart's renderings, applied as a server-side dry run with strict
field validation, with the Prometheus Operator's own PodMonitor and
PrometheusRule CRDs installed (from its Go module, by e2e/build.sh). Nothing is
created; what a schema or a CRD would refuse fails here, before a node tries it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from controlplane import apply_crds, build, kubectl

REPO = Path(__file__).resolve().parent.parent
KUSTOMIZE = ["with-monitoring", "namespaced", "argocd", "local-images"]
CHART = {
    "defaults": [],
    "monitoring": ["--set", "monitoring.podMonitors=true,monitoring.prometheusRule=true"
                   ",monitoring.dashboard=true"],
    "namespaced": ["--set-json", 'watchNamespaces=["apps","lab"]',
                   "--set", "monitoring.podMonitors=true,crds.keep=false"],
}  # fmt: skip
NAMESPACES = ("tokenomy-system", "apps", "lab")


@pytest.fixture(scope="module")
def cluster(admin: Path) -> Path:
    """The API server with the monitoring CRDs and the namespaces the objects go into."""
    [crds] = build().parent.glob("prometheus-operator-*-crds")
    files = [arg for crd in sorted(crds.glob("*.yaml")) for arg in ("-f", str(crd))]
    names = ["crd/podmonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com"]
    apply_crds(admin, files, names, NAMESPACES)
    return admin


def dry_run(admin: Path, text: str) -> list[str]:
    """What the API server would apply: kind/name of each object, or the refusal."""
    out = kubectl(
        admin, "apply", "--server-side", "--dry-run=server", "--validate=strict",
        "--field-manager=tokenomy-install-check", "--force-conflicts", "-o", "json", "-f", "-",
        stdin=text, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    items = listed.get("items", [listed])
    return [f"{i['kind']}/{i['metadata']['name']}" for i in items]


@pytest.mark.parametrize("folder", KUSTOMIZE)
def test_each_kustomize_folder_is_accepted(cluster: Path, folder: str) -> None:
    rendered = kubectl(cluster, "kustomize", str(REPO / "manifests" / folder)).stdout
    applied = dry_run(cluster, rendered)
    assert "Deployment/tokenomy-operator" in applied
    if folder == "with-monitoring":
        assert {"PodMonitor/tokenomy-sidecars", "PrometheusRule/tokenomy"} <= set(applied)


@pytest.mark.parametrize("values", sorted(CHART))
def test_each_chart_rendering_is_accepted(cluster: Path, values: str) -> None:
    helm = build() / "helm"
    out = subprocess.run(
        [str(helm), "template", "tokenomy", str(REPO / "charts" / "tokenomy"),
         "-n", "tokenomy-system", *CHART[values]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    applied = dry_run(cluster, out.stdout)
    assert "MutatingWebhookConfiguration/tokenomy-sidecar-injector" in applied
    if values == "namespaced":
        assert applied.count("Role/tokenomy-operator") == 2
