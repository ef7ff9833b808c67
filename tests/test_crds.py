"""The generated CRDs: in sync with the types, structural, valid v1, CEL rules that work."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tokenomy_api.crd import CRDS as CRD_SPECS
from tokenomy_api.crd import crd_manifest, render_crds

from helpers import CEL, cel_failures, expectations, with_defaults
from support import CRDS, EXAMPLES, INVALID, REPO

KUBERNETES_VERSIONS = ["1.34.0", "1.35.0"]
MANIFESTS = {spec.kind: crd_manifest(spec) for spec in CRD_SPECS}


def schema_of(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = MANIFESTS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenomy_cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


# --- in sync ----------------------------------------------------------------


def test_committed_crds_match_the_types() -> None:
    result = run_cli("crds", "--check")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in CRDS.glob("*.yaml")) == sorted(
        [*render_crds(), "kustomization.yaml"]
    )
    assert (CRDS / "REFERENCE.md").is_file()


def test_check_notices_drift_and_missing_files(tmp_path: Path) -> None:
    assert run_cli("crds", "--dir", str(tmp_path)).returncode == 0
    assert run_cli("crds", "--check", "--dir", str(tmp_path)).returncode == 0
    victim = tmp_path / "tokenomy.dev_modelroutes.yaml"
    victim.write_text(victim.read_text().replace("minLength: 1", "minLength: 2", 1))
    drifted = run_cli("crds", "--check", "--dir", str(tmp_path))
    assert drifted.returncode == 1
    assert "tokenomy.dev_modelroutes.yaml: out of date" in drifted.stderr
    victim.unlink()
    assert run_cli("crds", "--check", "--dir", str(tmp_path)).returncode == 1


# --- valid apiextensions.k8s.io/v1 ------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_crd_validates_against_the_kubernetes_schema(kind: str, version: str) -> None:
    kubernetes_validate.validate(MANIFESTS[kind], version, strict=True)


def test_the_validator_would_notice_a_broken_crd() -> None:
    broken = copy.deepcopy(MANIFESTS["ModelRoute"])
    spec_schema = broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["model"]["maxLength"] = "long"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_schema_is_structural(kind: str) -> None:
    forbidden = {"$ref", "anyOf", "oneOf", "allOf", "not", "const", "title", "$defs", "nullable"}
    for path, node in nodes(schema_of(kind)):
        assert not forbidden & node.keys(), f"{path}: {forbidden & node.keys()}"
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "default" in node:
            assert node["default"] is not None, path
            assert not isinstance(node["default"], dict), path
    assert schema_of(kind)["properties"]["metadata"] == {"type": "object"}


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_every_field_is_documented(kind: str) -> None:
    undocumented = [
        path
        for path, node in nodes(schema_of(kind))
        if path.count(".")
        and not path.endswith(("{}", ".metadata"))
        and not (path.endswith("[]") and node.get("type") != "object")
        and not node.get("description")
    ]
    assert undocumented == []


def test_names_and_subresources() -> None:
    for manifest in MANIFESTS.values():
        spec = manifest["spec"]
        assert spec["group"] == "tokenomy.dev"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["categories"] == ["tokenomy"]
        assert spec["names"]["shortNames"]
        [version] = spec["versions"]
        assert version["name"] == "v1alpha1"
        assert version["subresources"] == {"status": {}}


def _resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for part in re.findall(r"\.([A-Za-z]+)(\[[^\]]*\])?", json_path):
        name, index = part
        if node is None or name not in node.get("properties", {}):
            return None
        node = node["properties"][name]
        if index:
            node = node.get("items")
    return node


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_printer_columns_point_at_real_fields(kind: str) -> None:
    columns = MANIFESTS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert columns[-1]["name"] == "Age"
    for column in columns[:-1]:
        assert _resolve(schema_of(kind), column["jsonPath"]) is not None, column


def test_cost_policy_columns_show_what_issue_promised() -> None:
    columns = MANIFESTS["CostPolicy"]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert {"Ready", "Budget", "Spend", "Hit rate", "Age"} <= {c["name"] for c in columns}


# --- CEL rules, evaluated ---------------------------------------------------


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] in MANIFESTS]


def check_doc(doc: dict[str, Any]) -> list[tuple[str, str]]:
    schema = schema_of(doc["kind"])
    return cel_failures(schema, with_defaults(schema, doc))


def test_every_cel_rule_compiles() -> None:
    rules = [
        r
        for kind in MANIFESTS
        for _, n in nodes(schema_of(kind))
        for r in n.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 10
    for rule in rules:
        CEL.compile(rule["rule"])


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_valid_examples_pass_every_cel_rule(path: Path) -> None:
    for doc in documents(path):
        assert check_doc(doc) == []


CEL_INVALID = [p for p in sorted(INVALID.glob("*.yaml")) if expectations(p, "caught-by") == ["cel"]]


@pytest.mark.parametrize("path", CEL_INVALID, ids=lambda p: p.stem)
def test_cel_examples_break_exactly_their_rule(path: Path) -> None:
    expected = [line.rsplit(": ", 1)[-1] for line in expectations(path, "expect")]
    failures = [message for doc in documents(path) for _, message in check_doc(doc)]
    assert failures == expected


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(INVALID.glob("*.yaml")) if expectations(p, "caught-by") == ["compiler"]],
    ids=lambda p: p.stem,
)
def test_compiler_examples_pass_cel(path: Path) -> None:
    for doc in documents(path):
        assert check_doc(doc) == []
