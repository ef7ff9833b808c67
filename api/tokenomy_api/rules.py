"""Cross-field validation rules, declared once and enforced in two places.

A :class:`Rule` carries a CEL expression for the CRD schema
(``x-kubernetes-validations``, checked by the API server on ``kubectl
apply``) and the same rule as a Python predicate (checked when the compiler,
the sidecar or a test parses a resource without a cluster). Both report the
same message, so a user sees one wording wherever the mistake is caught.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class Rule:
    """A validation rule on one object of the schema."""

    cel: str
    """The CEL expression; ``self`` is the object the rule is declared on."""
    message: str
    """What the user reads when the rule fails: the fields involved and what to do."""
    check: Callable[[Any], bool]
    """The same rule in Python, given the parsed model; true when the object is valid."""

    def as_schema(self) -> dict[str, str]:
        """The rule as one entry of ``x-kubernetes-validations``."""
        return {"rule": self.cel, "message": self.message}


def check_rules(obj: object, rules: Iterable[Rule]) -> None:
    """Raise a validation error carrying the message of the first rule ``obj`` breaks."""
    for rule in rules:
        if not rule.check(obj):
            raise PydanticCustomError("rule", rule.message)
