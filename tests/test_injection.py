"""Injection: the decision table, and the mutated Pod against golden files.

Regenerate the golden files after an intended change with
``UPDATE_GOLDEN=1 pytest tests/test_injection.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenomy_api.compiled import CompiledCascade
from tokenomy_api.compiler import compile_configs
from tokenomy_api.loader import load_resources
from tokenomy_api.pod import SIDECAR_CONTAINER
from tokenomy_operator.injection import (
    INJECTED,
    Decision,
    InjectionSettings,
    decide,
    models_of,
    mutate,
)

from helpers import policy
from support import EXAMPLES

GOLDEN = Path(__file__).parent / "golden" / "injection"
SETTINGS = InjectionSettings()


def pod_doc(
    labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "labels": labels or {}, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "app"}], **spec},
    }


POLICIES = [
    policy("agent", namespace="ns"),
    policy("all", namespace="ns", selector={"matchLabels": {"tier": "x"}}),
]


@pytest.mark.parametrize(
    ("pod", "namespace", "expected"),
    [
        (
            pod_doc({"app": "agent"}),
            "ns",
            Decision(True, "selected by CostPolicy agent", "ns/agent"),
        ),
        (pod_doc({"app": "other"}), "ns", Decision(False, "no CostPolicy selects the pod")),
        (pod_doc({"app": "agent"}), "elsewhere", Decision(False, "no CostPolicy selects the pod")),
        (
            pod_doc({"app": "agent"}),
            "kube-system",
            Decision(False, "namespace kube-system is excluded"),
        ),
        (
            pod_doc({"app": "agent"}, hostNetwork=True),
            "ns",
            Decision(False, "hostNetwork pods share the node's loopback"),
        ),
        (
            pod_doc({"app": "agent", "tokenomy.dev/inject": "false"}),
            "ns",
            Decision(False, "opted out with tokenomy.dev/inject=false"),
        ),
        (
            pod_doc({"app": "agent"}, {"tokenomy.dev/inject": "false"}),
            "ns",
            Decision(False, "opted out with tokenomy.dev/inject=false"),
        ),
        (
            pod_doc({"app": "agent"}, {INJECTED: "ns/agent"}),
            "ns",
            Decision(False, "already injected"),
        ),
    ],
)
def test_decision(pod: dict[str, Any], namespace: str, expected: Decision) -> None:
    assert decide(pod, namespace, POLICIES, SETTINGS) == expected


def test_oldest_selecting_policy_wins() -> None:
    older = policy("zzz-older", namespace="ns")
    older.metadata.creation_timestamp = "2026-01-01T00:00:00Z"  # type: ignore[misc]
    newer = policy("aaa-newer", namespace="ns")
    newer.metadata.creation_timestamp = "2026-06-01T00:00:00Z"  # type: ignore[misc]
    assert (
        decide(pod_doc({"app": "agent"}), "ns", [newer, older], SETTINGS).policy == "ns/zzz-older"
    )


def example_config() -> Any:
    resources = load_resources([EXAMPLES])
    return compile_configs(resources.policies, resources.routes).configs["support/support-agent"]


CASES = {
    "native": SETTINGS,
    "legacy-sidecar": InjectionSettings(native_sidecar=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mutated_pod_matches_golden(case: str) -> None:
    pod = yaml.safe_load((GOLDEN / "app-pod.input.yaml").read_text())
    decision = decide(pod, "support", [p for p in load_resources([EXAMPLES]).policies], CASES[case])
    assert decision.inject
    mutated = mutate(pod, decision, example_config(), CASES[case])
    golden = GOLDEN / f"app-pod.{case}.expected.yaml"
    rendered = yaml.safe_dump(mutated, sort_keys=False)
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text()


def test_mutation_facts() -> None:
    pod = yaml.safe_load((GOLDEN / "app-pod.input.yaml").read_text())
    original = yaml.safe_dump(pod)
    mutated = mutate(pod, Decision(True, "", "support/support-agent"), example_config(), SETTINGS)
    assert yaml.safe_dump(pod) == original  # the input is not modified
    sidecar = mutated["spec"]["initContainers"][0]
    assert sidecar["name"] == SIDECAR_CONTAINER
    assert sidecar["restartPolicy"] == "Always"
    mounts = {m["mountPath"] for m in sidecar["volumeMounts"]}
    assert mounts == {
        "/var/run/tokenomy/secrets/azure-openai-credentials",
        "/var/run/tokenomy/secrets/openai-credentials",
    }
    agent, worker = mutated["spec"]["containers"]
    assert "volumeMounts" not in agent  # keys reach the sidecar only
    assert {e["name"]: e.get("value") for e in agent["env"]}[
        "OPENAI_BASE_URL"
    ] == "http://127.0.0.1:15100/v1"
    assert {e["name"]: e.get("value") for e in worker["env"]}[
        "OPENAI_BASE_URL"
    ] == "http://my-own-gateway:8080/v1"
    assert mutated["metadata"]["annotations"][INJECTED] == "support/support-agent"
    # Idempotent: the injected pod is not injected again.
    assert decide(mutated, "support", load_resources([EXAMPLES]).policies, SETTINGS) == Decision(
        False, "already injected"
    )


def test_trained_models_are_mounted_from_their_configmaps() -> None:
    pod = yaml.safe_load((GOLDEN / "app-pod.input.yaml").read_text())
    config = example_config()
    assert models_of(config) == []  # the built-in model needs no mount
    routing = config.routing.model_copy(
        update={"complexity": True, "complexity_model": "my-router"}
    )
    confidence = CompiledCascade(method="scorer", samples=3, scorer="my-scorer", format_checks=True)
    trained = config.model_copy(update={"routing": routing, "cascade": confidence})
    assert models_of(trained) == ["my-router", "my-scorer"]
    mutated = mutate(pod, Decision(True, "", "support/support-agent"), trained, SETTINGS)
    sidecar = mutated["spec"]["initContainers"][0]
    assert {"name": "tokenomy-models", "mountPath": "/etc/tokenomy/models", "readOnly": True} in (
        sidecar["volumeMounts"]
    )
    [volume] = [v for v in mutated["spec"]["volumes"] if v["name"] == "tokenomy-models"]
    assert volume["projected"]["sources"] == [
        {"configMap": {"name": n, "items": [{"key": "model.npz", "path": f"{n}.npz"}]}}
        for n in ("my-router", "my-scorer")
    ]
    assert all("tokenomy-models" not in str(c) for c in mutated["spec"]["containers"])
