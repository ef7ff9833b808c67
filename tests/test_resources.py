"""Parsing documents into resources: kinds, Lists, Secrets, duplicates."""

from __future__ import annotations

import base64
from typing import Any

from tokenomy_api.resources import parse_documents

from helpers import policy_doc, route_doc


def parse(*docs: Any) -> Any:
    return parse_documents(("f.yaml", d) for d in docs)


def test_policies_routes_and_sources() -> None:
    result = parse(route_doc(), policy_doc())
    assert [r.metadata.name for r in result.routes] == ["chat"]
    assert [p.metadata.name for p in result.policies] == ["agent"]
    assert result.source_of("CostPolicy", "ns", "agent") == "f.yaml"
    assert result.problems == []


def test_namespace_defaults_like_kubectl() -> None:
    doc = route_doc()
    del doc["metadata"]["namespace"]
    assert parse(doc).routes[0].metadata.namespace == "default"


def test_kubernetes_list_is_expanded() -> None:
    result = parse({"apiVersion": "v1", "kind": "List", "items": [route_doc(), policy_doc()]})
    assert len(result.routes) == 1
    assert len(result.policies) == 1


def test_other_apis_are_ignored_and_empty_documents_skipped() -> None:
    result = parse({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}, None)
    assert (result.routes, result.policies, result.problems) == ([], [], [])


def test_secrets_decode_data_and_string_data() -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "keys", "namespace": "ns"},
        "data": {"a": base64.b64encode(b"from-data").decode()},
        "stringData": {"b": "from-string"},
    }
    [parsed] = parse(secret).secrets
    assert parsed.data == {"a": b"from-data", "b": b"from-string"}


def test_bad_base64_names_the_key() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "k"}, "data": {"x": "!!"}}
    [problem] = parse(secret).problems
    assert str(problem) == "f.yaml: Secret default/k: data.x: not valid base64"


def test_duplicates_are_reported_once_and_the_first_kept() -> None:
    first = route_doc()
    second = route_doc(model="other")
    result = parse(first, second)
    assert [r.spec.model for r in result.routes] == ["chat"]
    assert [str(p) for p in result.problems] == [
        "f.yaml: ModelRoute ns/chat: defined twice (also in f.yaml)"
    ]


def test_unknown_version_of_our_group() -> None:
    doc = {**policy_doc(), "apiVersion": "tokenomy.dev/v1"}
    [problem] = parse(doc).problems
    assert "unknown kind tokenomy.dev/v1 CostPolicy" in str(problem)


def test_every_validation_error_is_reported() -> None:
    doc = route_doc()
    doc["spec"]["tiers"][0]["backends"][0]["weight"] = -1
    doc["spec"]["tiers"][1]["name"] = "Not_A_Label"
    fields = sorted(p.field for p in parse(doc).problems)
    assert fields == ["spec.tiers[0].backends[0].weight", "spec.tiers[1].name"]
