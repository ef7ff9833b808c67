"""Problems found in user input, each naming the resource, the field and the reason."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from tokenomy_api.meta import camel_path


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with one resource; ``str()`` is the line a user reads."""

    kind: str
    """Kind of the resource, e.g. ``CostPolicy``; empty for a problem with a whole file."""
    namespace: str
    """Namespace of the resource."""
    name: str
    """Name of the resource."""
    field: str
    """Path of the offending field, e.g. ``spec.tiers[0].backends``; empty for the whole."""
    reason: str
    """What is wrong and, where it helps, what to do."""
    source: str = ""
    """File the resource came from, when it came from one."""

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if not self.kind:
            return f"{where}{self.reason}"
        field = f"{self.field}: " if self.field else ""
        return f"{where}{self.kind} {self.namespace}/{self.name}: {field}{self.reason}"


def problems_from_validation(
    error: ValidationError, kind: str, namespace: str, name: str, source: str = ""
) -> list[Problem]:
    """Turn pydantic's errors into problems with Kubernetes-style field paths."""
    out = []
    for item in error.errors(include_url=False):
        reason = _reason(item["type"], item["msg"])
        out.append(Problem(kind, namespace, name, camel_path(item["loc"]), reason, source))
    return out


def _reason(error_type: str, message: str) -> str:
    if error_type == "missing":
        return "required"
    if error_type == "extra_forbidden":
        return "unknown field"
    return message.removeprefix("Value error, ")
