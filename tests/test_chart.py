"""charts/tokenomy: lints, renders, validates against the Kubernetes schemas of the
supported versions, and renders what manifests/ renders (one install, two ways)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tokenomy_operator.controller import Controller
from tokenomy_operator.handlers import register
from tokenomy_operator.xds.server import AdsServer
from tokenomy_operator.xds.snapshot import SnapshotCache

from support import CRDS, REPO, kustomize

CHART = REPO / "charts" / "tokenomy"
SUPPORTED = [f"1.{minor}.0" for minor in range(29, 36)]
"""The chart's kubeVersion (>= 1.29, native sidecars) up to the e2e's 1.35."""
CLUSTER_SCOPED = {"nodes", "namespaces", "customresourcedefinitions"}
PROMETHEUS_KINDS = {"PodMonitor", "PrometheusRule"}
"""The Prometheus Operator's kinds: not in the Kubernetes schemas."""
ALL_MONITORING = ("monitoring.podMonitors=true,monitoring.prometheusRule=true,"
                  "monitoring.dashboard=true")  # fmt: skip


@pytest.fixture(scope="module")
def helm() -> Path:
    """Helm, built once per machine with the rest of the e2e binaries."""
    out = subprocess.run(
        ["bash", str(REPO / "e2e" / "build.sh")], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1]) / "helm"


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)


def template(helm: Path, *args: str) -> list[dict[str, Any]]:
    out = run_helm(helm, "template", "tokenomy", str(CHART), "-n", "tokenomy-system", *args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs}


def without_labels(doc: dict[str, Any]) -> dict[str, Any]:
    """The object as it acts: labels (Helm's own), and the chart's keep annotation, aside."""
    doc = json.loads(json.dumps(doc))
    meta = doc["metadata"]
    meta.pop("labels", None)
    annotations = meta.pop("annotations", {})
    annotations.pop("helm.sh/resource-policy", None)
    if annotations:
        meta["annotations"] = annotations
    return doc


def test_lint_is_clean(helm: Path) -> None:
    out = run_helm(helm, "lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_the_files_it_ships_are_the_sources_copies() -> None:
    pairs = [(CHART / "files" / "crds" / p.name, p) for p in CRDS.glob("tokenomy.dev_*.yaml")]
    pairs += [
        (CHART / "files" / name, REPO / "manifests" / "monitoring" / name)
        for name in ("dashboard.json", "prometheusrule.yaml")
    ]
    assert len(pairs) == 4
    stale = [str(copy) for copy, source in pairs if copy.read_bytes() != source.read_bytes()]
    assert not stale, f"out of date: {stale}; run scripts/sync-chart"
    shipped = {p.name for p in (CHART / "files" / "crds").iterdir()}
    assert shipped == {p.name for p in CRDS.glob("tokenomy.dev_*.yaml")}


def assert_renders_the_same(chart_docs: list[dict[str, Any]], folder: str) -> None:
    chart, manifests = by_key(chart_docs), by_key(kustomize(folder))
    # Helm installs into a namespace it is given (--create-namespace), not one it
    # renders; it pre-creates, empty, what the operator writes there, so that an
    # uninstall removes them (kustomize's namespace takes them along).
    del manifests[("Namespace", "", "tokenomy-system")]
    for owned in (("Secret", "tokenomy-webhook-tls"), ("Lease", "tokenomy-operator")):
        made = chart.pop((owned[0], "tokenomy-system", owned[1]))
        assert set(made) - {"apiVersion", "kind", "metadata", "type"} == set()
    assert sorted(chart) == sorted(manifests)
    for key, doc in chart.items():
        assert without_labels(doc) == without_labels(manifests[key]), key
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_defaults_with_monitoring_render_what_kustomize_renders(helm: Path) -> None:
    assert_renders_the_same(template(helm, "--set", ALL_MONITORING), "with-monitoring")


def test_the_namespaced_overlay_is_the_charts_namespaced_mode(helm: Path) -> None:
    namespaced = template(helm, "--set-json", 'watchNamespaces=["apps"]')
    assert_renders_the_same(namespaced, "namespaced")


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_object_validates_against_the_kubernetes_schema(helm: Path, version: str) -> None:
    namespaced = ["--set-json", 'watchNamespaces=["shop","lab"]']
    for args in ([], ["--set", ALL_MONITORING, *namespaced]):
        for doc in template(helm, *args):
            if doc["kind"] not in PROMETHEUS_KINDS:
                kubernetes_validate.validate(doc, version, strict=True)


def allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )


def test_namespaced_mode_grants_and_injects_only_the_watched_namespaces(helm: Path) -> None:
    watched = ["shop", "lab"]
    docs = template(
        helm, "--set", ALL_MONITORING, "--set-json", f"watchNamespaces={json.dumps(watched)}"
    )
    cluster = next(d for d in docs if d["kind"] == "ClusterRole")["rules"]
    roles = {
        d["metadata"]["namespace"]: d["rules"]
        for d in docs
        if d["kind"] == "Role" and d["metadata"]["name"] == "tokenomy-operator"
    }
    assert sorted(roles) == sorted(watched)
    bound = {d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding"}
    assert bound == {*watched, "tokenomy-system"}
    registry = register(Controller(SnapshotCache(), AdsServer(SnapshotCache()), writer=None))  # type: ignore[arg-type]
    for handler in registry._watching.get_all_handlers():
        group, resource = handler.selector.group or "", handler.selector.any_name
        for verb in ("list", "watch"):
            if resource in CLUSTER_SCOPED:
                assert allowed(cluster, group, resource, verb), (resource, verb)
            else:
                assert not allowed(cluster, group, resource, verb), (resource, verb)
                assert all(allowed(r, group, resource, verb) for r in roles.values()), resource
    for rules in roles.values():
        assert allowed(rules, "tokenomy.dev", "costpolicies/status", "patch")
        assert allowed(rules, "events.k8s.io", "events", "create")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace=")] == [
        f"--namespace={n}" for n in watched
    ]
    [hook] = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")["webhooks"]
    [expression] = hook["namespaceSelector"]["matchExpressions"]
    assert expression == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": watched}
    sidecars = next(d for d in docs if d["metadata"]["name"] == "tokenomy-sidecars")
    assert sidecars["spec"]["namespaceSelector"] == {"matchNames": watched}


def test_images_and_settings_reach_the_operator(helm: Path) -> None:
    docs = template(
        helm, "-n", "platform",
        "--set", "operator.image.repository=registry.example/op,operator.image.tag=1.2.3",
        "--set", "sidecar.image.repository=registry.example/sc,operator.replicas=3",
        "--set", "operator.logLevel=DEBUG,webhook.failurePolicy=Fail,webhook.timeoutSeconds=5",
    )  # fmt: skip
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/op:1.2.3"
    assert "--sidecar-image=registry.example/sc:0.1.0" in container["args"]  # appVersion
    assert "--log-level=DEBUG" in container["args"]
    assert deployment["spec"]["replicas"] == 3
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "ClusterRole"} >= {
        "platform"
    }
    [hook] = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")["webhooks"]
    assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Fail", 5)
    assert hook["clientConfig"]["service"]["namespace"] == "platform"
    # The release's namespace is never sent to its own webhook.
    assert "platform" in hook["namespaceSelector"]["matchExpressions"][0]["values"]


@pytest.mark.parametrize(
    ("values", "kept", "crds"),
    [
        ([], True, 2),
        (["--set", "crds.keep=false"], False, 2),
        (["--set", "crds.install=false"], None, 0),
    ],
)
def test_crds_are_kept_on_uninstall_unless_told(
    helm: Path, values: list[str], kept: bool | None, crds: int
) -> None:
    found = [d for d in template(helm, *values) if d["kind"] == "CustomResourceDefinition"]
    assert len(found) == crds
    for crd in found:
        keep = (crd["metadata"].get("annotations") or {}).get("helm.sh/resource-policy")
        assert (keep == "keep") is kept
        assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tokenomy"


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("webhook.failurePolicy=Maybe", "/webhook/failurePolicy"),
        ("operator.replicas=0", "/operator/replicas"),
        ("watchNamespaces[0]=Not_A_Name", "/watchNamespaces/0"),
        ("operator.replica=2", "'replica' not allowed"),
        ("webhook.timeoutSeconds=31", "/webhook/timeoutSeconds"),
    ],
)
def test_bad_values_are_refused_naming_the_field(helm: Path, setting: str, says: str) -> None:
    out = run_helm(helm, "template", "tokenomy", str(CHART), "--set", setting)
    assert out.returncode != 0
    assert says in out.stderr, out.stderr
