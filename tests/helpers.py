"""Builders for resources in tests: small valid defaults, overridable per case."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import celpy

from tokenomy_api.costpolicy import CostPolicy
from tokenomy_api.modelroute import ModelRoute


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in; dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def backend(name: str, **fields: Any) -> dict[str, Any]:
    """A backend dict with a URL and a price unless overridden."""
    return {
        "name": name,
        "model": f"model-{name}",
        "url": f"https://{name}.example.com/v1",
        "price": {"input": "1", "output": "2"},
        **fields,
    }


def route_doc(name: str = "chat", namespace: str = "ns", **spec: Any) -> dict[str, Any]:
    """A ModelRoute document with two tiers (small, large) unless ``spec`` overrides them."""
    base = {
        "model": name,
        "tiers": [
            {"name": "small", "backends": [backend("s1")]},
            {"name": "large", "backends": [backend("l1", price={"input": "10", "output": "30"})]},
        ],
    }
    return {
        "apiVersion": "tokenomy.dev/v1alpha1",
        "kind": "ModelRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": deep_merge(base, spec),
    }


def policy_doc(
    name: str = "agent", namespace: str = "ns", routes: tuple[str, ...] = ("chat",), **spec: Any
) -> dict[str, Any]:
    """A CostPolicy document selecting ``app=agent`` and using ``routes``."""
    base = {"selector": {"matchLabels": {"app": "agent"}}, "routes": list(routes)}
    return {
        "apiVersion": "tokenomy.dev/v1alpha1",
        "kind": "CostPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": deep_merge(base, spec),
    }


def route(name: str = "chat", namespace: str = "ns", **spec: Any) -> ModelRoute:
    """A parsed ModelRoute; see :func:`route_doc`."""
    return ModelRoute.model_validate(route_doc(name, namespace, **spec))


def policy(
    name: str = "agent", namespace: str = "ns", routes: tuple[str, ...] = ("chat",), **spec: Any
) -> CostPolicy:
    """A parsed CostPolicy; see :func:`policy_doc`."""
    return CostPolicy.model_validate(policy_doc(name, namespace, routes, **spec))


def expectations(path: Path, key: str) -> list[str]:
    """Values of ``# key: value`` header lines of an example file."""
    return re.findall(rf"^# {key}: (.+)$", path.read_text(), flags=re.MULTILINE)


CEL = celpy.Environment()


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Apply schema defaults the way the API server does before validating."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = with_defaults(sub, out[name])
        return out
    if isinstance(value, list) and "items" in schema:
        return [with_defaults(schema["items"], item) for item in value]
    return value


def cel_failures(schema: dict[str, Any], value: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, message) of every CEL rule the value breaks."""
    failed = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = CEL.program(CEL.compile(rule["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(value)})
        if not isinstance(result, celpy.celtypes.BoolType):
            raise AssertionError(f"{path}: rule {rule['rule']!r} gave {result!r}")
        if not result:
            failed.append((path or "<root>", rule["message"]))
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                failed += cel_failures(sub, value[name], f"{path}.{name}" if path else name)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            failed += cel_failures(schema["items"], item, f"{path}[{i}]")
    return failed
