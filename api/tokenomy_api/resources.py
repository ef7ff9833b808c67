"""Parse the YAML a user would ``kubectl apply`` into typed resources.

Pure: documents in, resources and problems out. Reading files is
:mod:`tokenomy_api.loader`'s job.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tokenomy_api.costpolicy import CostPolicy
from tokenomy_api.modelroute import ModelRoute
from tokenomy_api.names import API_VERSION, COST_POLICY_KIND, GROUP, MODEL_ROUTE_KIND
from tokenomy_api.problems import Problem, problems_from_validation

_MODELS: dict[str, type[CostPolicy] | type[ModelRoute]] = {
    COST_POLICY_KIND: CostPolicy,
    MODEL_ROUTE_KIND: ModelRoute,
}


@dataclass(frozen=True)
class Secret:
    """A Kubernetes Secret's data, for a sidecar running without a cluster."""

    namespace: str
    name: str
    data: dict[str, bytes]


@dataclass(frozen=True)
class ResourceSet:
    """Everything parsed from a set of documents."""

    policies: list[CostPolicy] = field(default_factory=list)
    routes: list[ModelRoute] = field(default_factory=list)
    secrets: list[Secret] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    sources: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """Where each resource came from, by (kind, namespace, name)."""

    def source_of(self, kind: str, namespace: str, name: str) -> str:
        """The file a resource came from, or ``""``."""
        return self.sources.get((kind, namespace, name), "")


def _identity(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return (
        str(doc.get("kind", "")),
        str(meta.get("namespace") or "default"),
        str(meta.get("name") or "<unnamed>"),
    )


def _expand(docs: Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    for source, doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List" and doc.get("apiVersion") == "v1":
            yield from ((source, item) for item in doc.get("items") or [])
        elif doc is not None:
            yield source, doc


def _secret(doc: dict[str, Any], source: str) -> Secret | Problem:
    kind, namespace, name = _identity(doc)
    data: dict[str, bytes] = {}
    try:
        for key, value in (doc.get("data") or {}).items():
            data[str(key)] = base64.b64decode(str(value), validate=True)
    except binascii.Error:
        return Problem(kind, namespace, name, f"data.{key}", "not valid base64", source)
    for key, value in (doc.get("stringData") or {}).items():
        data[str(key)] = str(value).encode()
    return Secret(namespace, name, data)


def parse_documents(docs: Iterable[tuple[str, Any]]) -> ResourceSet:
    """Parse ``(source, document)`` pairs; documents of other APIs are ignored.

    Every problem is collected: one bad resource never hides another.
    """
    out = ResourceSet()
    for source, doc in _expand(docs):
        if not isinstance(doc, dict):
            out.problems.append(Problem("", "", "", "", "a document must be a mapping", source))
            continue
        identity = _identity(doc)
        kind, namespace, name = identity
        api_version = str(doc.get("apiVersion", ""))
        if identity in out.sources and (api_version.startswith(f"{GROUP}/") or kind == "Secret"):
            where = out.sources[identity]
            reason = f"defined twice (also in {where})" if where else "defined twice"
            out.problems.append(Problem(kind, namespace, name, "", reason, source))
            continue
        if api_version == "v1" and kind == "Secret":
            secret = _secret(doc, source)
            if isinstance(secret, Problem):
                out.problems.append(secret)
            else:
                out.secrets.append(secret)
                out.sources[identity] = source
            continue
        if not api_version.startswith(f"{GROUP}/"):
            continue
        model = _MODELS.get(kind)
        if api_version != API_VERSION or model is None:
            reason = f"unknown kind {api_version} {kind}; this release serves {API_VERSION} " + (
                " and ".join(sorted(_MODELS))
            )
            out.problems.append(Problem(kind or "?", namespace, name, "", reason, source))
            continue
        try:
            resource = model.model_validate(doc)
        except ValidationError as error:
            out.problems.extend(problems_from_validation(error, kind, namespace, name, source))
            continue
        out.sources[identity] = source
        if isinstance(resource, CostPolicy):
            out.policies.append(resource)
        else:
            out.routes.append(resource)
    return out
