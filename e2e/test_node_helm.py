"""The node tier, the Helm way: charts/tokenomy installed, upgraded and uninstalled
on the real node, as a platform team would, in namespaced mode.

After test_node_cluster.py on the same node: its kustomize install is taken
away first with ``kubectl delete -k`` (that path's uninstall, checked to leave
nothing). Then ``helm install`` into a namespace of its own, watching one
namespace; an agent there gets its sidecar and answers; ``helm upgrade``
changes the webhook and the replicas without losing the operator's caBundle;
``helm uninstall`` leaves nothing of the release in the cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from cluster_view import agent_lines, describe, get

from controlplane import build, kubectl, wait
from realnode import NodeCluster

pytestmark = pytest.mark.node

REPO = Path(__file__).resolve().parent.parent
RELEASE = "tokenomy"
HOME = "tokenomy"  # the release's namespace: not manifests/' tokenomy-system
WATCHED = "helm-shop"
CLUSTER_WIDE = (
    ("customresourcedefinition", "costpolicies.tokenomy.dev"),
    ("customresourcedefinition", "modelroutes.tokenomy.dev"),
    ("clusterrole", "tokenomy-operator"),
    ("clusterrolebinding", "tokenomy-operator"),
    ("mutatingwebhookconfiguration", "tokenomy-sidecar-injector"),
)


def helm(cluster: NodeCluster, *args: str) -> subprocess.CompletedProcess[str]:
    binary = build() / "helm"
    out = subprocess.run(
        [str(binary), "--kubeconfig", str(cluster.admin), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HELM_CACHE_HOME": str(cluster.plane.folder / "helm")},
    )
    assert out.returncode == 0, f"helm {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


def present(cluster: NodeCluster, kind: str, name: str, namespace: str = "") -> bool:
    where = ("-n", namespace) if namespace else ()
    out = kubectl(cluster.admin, "get", kind, name, *where, "--ignore-not-found", "-o", "name")
    return bool(out.stdout.strip())


def image(cluster: NodeCluster, name: str) -> tuple[str, str]:
    repository, _, tag = cluster.images[name].rpartition(":")
    return repository, tag


def agent_manifest() -> str:
    """examples/cluster/agent.yaml, moved into the watched namespace."""
    text = (REPO / "examples" / "cluster" / "agent.yaml").read_text()
    return re.sub(r"\bshop\b", WATCHED, text)


@pytest.fixture(scope="module")
def release(cluster: NodeCluster) -> NodeCluster:
    """manifests/ taken away, then the chart installed and Available."""
    admin = cluster.admin
    # The earlier module's agents would keep calling models: free the node's CPU.
    kubectl(admin, "delete", "namespace", "shop", "payments", "--ignore-not-found", "--wait=false")
    kubectl(admin, "delete", "-k", str(REPO / "manifests" / "local-images"),
            "--ignore-not-found", "--wait", "--timeout=240s")  # fmt: skip
    left = [f"{kind}/{name}" for kind, name in CLUSTER_WIDE if present(cluster, kind, name)]
    assert not left, f"kubectl delete -k left {left}"
    # A watched namespace gets a Role: it must exist first (Helm says so if not).
    kubectl(admin, "create", "namespace", WATCHED)
    operator, sidecar = image(cluster, "operator"), image(cluster, "sidecar")
    helm(
        cluster, "install", RELEASE, str(REPO / "charts" / "tokenomy"),
        "-n", HOME, "--create-namespace", "--wait", "--timeout=240s",
        "--set", f"operator.image.repository={operator[0]},operator.image.tag={operator[1]}",
        "--set", f"sidecar.image.repository={sidecar[0]},sidecar.image.tag={sidecar[1]}",
        "--set", "crds.keep=false",
        "--set-json", f"watchNamespaces={json.dumps([WATCHED])}",
    )  # fmt: skip
    return cluster


def ca_bundle(cluster: NodeCluster) -> str:
    hook = get(cluster.admin, "mutatingwebhookconfiguration/tokenomy-sidecar-injector")
    return str(hook["webhooks"][0]["clientConfig"].get("caBundle") or "")


def test_the_chart_brings_up_an_operator_that_fills_what_the_release_owns(
    release: NodeCluster,
) -> None:
    admin = release.admin
    deployment = get(admin, "-n", HOME, "deploy/tokenomy-operator")
    assert deployment["status"].get("availableReplicas") == 2
    assert ca_bundle(release), "the operator publishes its CA"
    # The Secret the chart created empty: filled, and still the release's.
    secret = get(admin, "-n", HOME, "secret/tokenomy-webhook-tls")
    assert {"ca.crt", "tls.crt", "tls.key"} <= set(secret.get("data") or {})
    assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    lease = get(admin, "-n", HOME, "lease/tokenomy-operator")
    assert lease["spec"].get("holderIdentity")
    assert lease["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    # Namespaced mode: the operator reads the watched namespace through a Role.
    assert present(release, "role", "tokenomy-operator", WATCHED)


def wait_for_injected_agent(cluster: NodeCluster) -> None:
    admin = cluster.admin
    kubectl(admin, "apply", "-f", "-", stdin=agent_manifest())

    def serving() -> bool:
        return any(line["ok"] for line in agent_lines(admin, namespace=WATCHED))

    try:
        wait(serving, 240, "the agent's first answer through the Helm-installed operator")
    except AssertionError as error:
        raise AssertionError(describe(cluster, WATCHED, system=HOME)) from error
    pod = get(admin, "-n", WATCHED, "pod/agent")
    names = [c["name"] for c in pod["spec"].get("initContainers", [])]
    assert "tokenomy-sidecar" in names
    assert (
        pod["spec"]["initContainers"][names.index("tokenomy-sidecar")]["image"]
        == (cluster.images["sidecar"])
    )


def test_an_agent_in_the_watched_namespace_gets_its_sidecar_and_answers(
    release: NodeCluster,
) -> None:
    wait_for_injected_agent(release)


def test_an_upgrade_changes_settings_and_keeps_the_operators_ca(release: NodeCluster) -> None:
    admin = release.admin
    before = ca_bundle(release)
    helm(
        release, "upgrade", RELEASE, str(REPO / "charts" / "tokenomy"), "-n", HOME,
        "--reuse-values", "--wait", "--timeout=240s",
        "--set", "webhook.timeoutSeconds=5,operator.replicas=1",
    )  # fmt: skip
    hook = get(admin, "mutatingwebhookconfiguration/tokenomy-sidecar-injector")["webhooks"][0]
    assert hook["timeoutSeconds"] == 5
    assert ca_bundle(release) == before, "the upgrade must not reset the operator's caBundle"
    wait(
        lambda: get(admin, "-n", HOME, "deploy/tokenomy-operator")["status"].get("replicas") == 1,
        120, "one replica after the upgrade",
    )  # fmt: skip
    history = json.loads(helm(release, "history", RELEASE, "-n", HOME, "-o", "json").stdout)
    assert [h["status"] for h in history] == ["superseded", "deployed"]
    # A Pod created after the upgrade is still injected (the webhook is still trusted).
    kubectl(admin, "delete", "pod", "agent", "-n", WATCHED, "--wait", "--timeout=120s")
    wait_for_injected_agent(release)


def test_uninstall_leaves_nothing_of_the_release(release: NodeCluster) -> None:
    admin = release.admin
    kubectl(admin, "delete", "namespace", WATCHED, "--wait=false")
    helm(release, "uninstall", RELEASE, "-n", HOME, "--wait", "--timeout=240s")
    left = [f"{kind}/{name}" for kind, name in CLUSTER_WIDE if present(release, kind, name)]
    for kind, name in (
        ("deployment", "tokenomy-operator"),
        ("service", "tokenomy-operator"),
        ("service", "tokenomy-operator-leader"),
        ("serviceaccount", "tokenomy-operator"),
        ("role", "tokenomy-operator-leader-election"),
        ("secret", "tokenomy-webhook-tls"),
        ("lease", "tokenomy-operator"),
    ):
        if present(release, kind, name, HOME):
            left.append(f"{HOME}/{kind}/{name}")
    labelled = kubectl(
        admin, "get", "all,roles,rolebindings,secrets,leases,configmaps", "-A",
        "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name",
    ).stdout.split()  # fmt: skip
    assert (left, labelled) == ([], [])
