"""Generate the CustomResourceDefinitions from the pydantic models.

The models are the single source of truth; ``crds/`` is their rendering, and
``tokenomy crds --check`` fails when the two drift. The output is a structural
schema as ``apiextensions.k8s.io/v1`` requires: every node typed, no ``$ref``,
no ``null`` branches, no ``additionalProperties: false`` (the API server
prunes unknown fields instead), and scalar defaults kept so that CEL rules can
read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from tokenomy_api.costpolicy import CostPolicy
from tokenomy_api.modelroute import ModelRoute
from tokenomy_api.names import (
    CATEGORY,
    COST_POLICY_KIND,
    COST_POLICY_PLURAL,
    COST_POLICY_SHORT_NAMES,
    COST_POLICY_SINGULAR,
    GROUP,
    MODEL_ROUTE_KIND,
    MODEL_ROUTE_PLURAL,
    MODEL_ROUTE_SHORT_NAMES,
    MODEL_ROUTE_SINGULAR,
    VERSION,
)

_READY = '.status.conditions[?(@.type=="Ready")].status'


@dataclass(frozen=True)
class CrdSpec:
    """What a CRD needs beyond the schema its model gives."""

    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    printer_columns: tuple[dict[str, str], ...]

    @property
    def file_name(self) -> str:
        """File name under ``crds/``, as controller-gen names them."""
        return f"{GROUP}_{self.plural}.yaml"


CRDS: tuple[CrdSpec, ...] = (
    CrdSpec(
        model=CostPolicy,
        kind=COST_POLICY_KIND,
        plural=COST_POLICY_PLURAL,
        singular=COST_POLICY_SINGULAR,
        short_names=COST_POLICY_SHORT_NAMES,
        printer_columns=(
            {"name": "Ready", "type": "string", "jsonPath": _READY},
            {"name": "Routes", "type": "string", "jsonPath": ".status.display.routes"},
            {"name": "Budget", "type": "string", "jsonPath": ".status.display.budget"},
            {"name": "Spend", "type": "string", "jsonPath": ".status.display.spend"},
            {"name": "Used", "type": "string", "jsonPath": ".status.spend.budgetUsed"},
            {"name": "Saved", "type": "string", "jsonPath": ".status.display.saved"},
            {"name": "Hit rate", "type": "string", "jsonPath": ".status.cacheHitRate"},
            {"name": "Sidecars", "type": "integer", "jsonPath": ".status.sidecars.acknowledged"},
            {
                "name": "Version",
                "type": "string",
                "jsonPath": ".status.configVersion",
                "priority": "1",
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
    CrdSpec(
        model=ModelRoute,
        kind=MODEL_ROUTE_KIND,
        plural=MODEL_ROUTE_PLURAL,
        singular=MODEL_ROUTE_SINGULAR,
        short_names=MODEL_ROUTE_SHORT_NAMES,
        printer_columns=(
            {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
            {"name": "Tiers", "type": "string", "jsonPath": ".status.display.tiers"},
            {"name": "Ready", "type": "string", "jsonPath": _READY},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
)

_DROP = {"title", "additionalProperties"}


def _clean_text(text: str) -> str:
    return " ".join(text.replace("``", "`").split())


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one pydantic JSON-schema node into its structural equivalent."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}  # the field's own description wins
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"only Optional[X] unions are structural, got {branches}")
        node = {**branches[0], **{k: v for k, v in node.items() if k != "description"}} | (
            {"description": node["description"]} if "description" in node else {}
        )
        return _structural(node, defs)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", 0) is None or isinstance(node.get("default"), dict):
        node.pop("default")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "description":
            out[key] = _clean_text(value)
        elif key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if node.get("additionalProperties") not in (None, False):
        out["additionalProperties"] = _structural(node["additionalProperties"], defs)
    return out


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of any API model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _structural(raw, defs)
    return schema


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a resource model, as a CRD version embeds it."""
    schema = structural_schema(model)
    properties = schema["properties"]
    # The API server owns metadata's schema; apiVersion and kind are checked by routing.
    properties["metadata"] = {"type": "object"}
    for key in ("apiVersion", "kind"):
        properties[key] = {"type": "string", "description": properties[key]["description"]}
    schema["required"] = ["spec"]
    return schema


def crd_manifest(spec: CrdSpec) -> dict[str, Any]:
    """The full CustomResourceDefinition object for one resource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{spec.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": spec.kind,
                "listKind": f"{spec.kind}List",
                "plural": spec.plural,
                "singular": spec.singular,
                "shortNames": list(spec.short_names),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(spec.model)},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {**c, "priority": int(c["priority"])} if "priority" in c else c
                        for c in spec.printer_columns
                    ],
                }
            ],
        },
    }


def render_crds() -> dict[str, str]:
    """Every CRD as YAML text, keyed by its file name under ``crds/``."""
    header = "# Generated by `tokenomy crds` from tokenomy_api; do not edit by hand.\n"
    return {
        spec.file_name: header
        + yaml.safe_dump(crd_manifest(spec), sort_keys=False, width=100, allow_unicode=True)
        for spec in CRDS
    }


REFERENCE_FILE = "REFERENCE.md"
"""The field reference written next to the CRDs."""


def render_kustomization() -> str:
    """``crds/kustomization.yaml``, so kustomize bases can include the CRDs."""
    body = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [spec.file_name for spec in CRDS],
    }
    return "# Generated by `tokenomy crds`; do not edit by hand.\n" + yaml.safe_dump(
        body, sort_keys=False
    )
