"""Field types and objects shared by every Tokenomy resource.

They follow Kubernetes conventions: camelCase on the wire, durations written
the way Go's ``time.Duration`` prints them, money as decimal strings, and
conditions shaped like ``metav1.Condition``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from tokenomy_api.rules import Rule, check_rules

DURATION_PATTERN = r"^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}

MONEY_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,9})?$"
_MONEY = re.compile(MONEY_PATTERN)

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def parse_duration(text: str) -> timedelta:
    """Parse a Kubernetes duration such as ``90s``, ``1h30m`` or ``250ms``."""
    if text == "0":
        return timedelta(0)
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration like 30s, 10m or 1h30m")
    seconds = sum(
        (Decimal(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text)),
        Decimal(0),
    )
    return timedelta(seconds=float(seconds))


def _check_duration(value: object) -> object:
    if isinstance(value, str):
        parse_duration(value)
    return value


Duration = Annotated[
    str,
    BeforeValidator(_check_duration),
    Field(pattern=DURATION_PATTERN),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration such as 30s, 10m or 1h30m.",
        }
    ),
]
"""A duration as Kubernetes writes it (Go ``time.Duration`` syntax: ms, s, m, h)."""


def _to_money(value: object) -> object:
    # Floats are refused rather than converted: 0.1 as a float is not 0.1,
    # and the API server refuses a YAML float for an int-or-string field too.
    if isinstance(value, (bool, float)):
        raise ValueError('write money as a string such as "0.15" so it stays exact')
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str):
        if not _MONEY.fullmatch(value):
            raise ValueError(f'{value!r} is not an amount like "12" or "0.15" (USD, no sign)')
        return Decimal(value)
    return value


Money = Annotated[
    Decimal,
    BeforeValidator(_to_money),
    PlainSerializer(lambda d: format(d, "f"), return_type=str),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "pattern": MONEY_PATTERN,
            "description": 'An amount in USD as a decimal string, e.g. "0.15".',
        }
    ),
]
"""Money in USD: a non-negative decimal written as a string (or a whole number)."""

DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
"""A lowercase RFC 1123 label, like a Kubernetes object or port name."""

ResourceName = Annotated[str, Field(min_length=1, max_length=253)]
"""The name of a Kubernetes object in the same namespace."""

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
"""A number from 0 to 1 inclusive."""


WIRE = ConfigDict(
    alias_generator=to_camel,
    populate_by_name=True,
    extra="forbid",
    frozen=True,
    use_attribute_docstrings=True,
)
"""How every Tokenomy type is written: camelCase, frozen, unknown fields refused."""


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields refused.

    Cross-field rules are declared once in ``rules`` and enforced twice: as
    CEL ``x-kubernetes-validations`` by the API server, and here by pydantic,
    with the same message in both places.
    """

    model_config = ConfigDict(**WIRE, ser_json_inf_nan="strings")

    rules: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        if "rules" in cls.__dict__ and cls.rules:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [rule.as_schema() for rule in cls.rules]
        return schema

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        check_rules(self, self.rules)
        return self


class SecretKeyRef(ApiModel):
    """A key in a Secret of the same namespace."""

    name: ResourceName
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1, max_length=253)]
    """Key inside the Secret's data."""


class LabelSelectorRequirement(ApiModel):
    """One expression of a label selector, as in ``metav1.LabelSelectorRequirement``."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0 "
            ": !has(self.values) || size(self.values) == 0",
            message="values must be non-empty for In and NotIn, and empty for Exists "
            "and DoesNotExist",
            check=lambda s: (len(s.values) > 0) == (s.operator in ("In", "NotIn")),
        ),
    )

    key: Annotated[str, Field(min_length=1, max_length=317)]
    """The label key the expression applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key's value relates to ``values``."""
    values: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=64)
    """Values for ``In`` and ``NotIn``; empty for ``Exists`` and ``DoesNotExist``."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a set of labels satisfies this expression."""
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        inside = present and labels[self.key] in self.values
        return inside if self.operator == "In" else not inside


class LabelSelector(ApiModel):
    """A label selector as in ``metav1.LabelSelector``; an empty one selects everything."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    """Labels a pod must carry with exactly these values."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)
    """Expressions a pod's labels must all satisfy."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a set of labels is selected."""
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            e.matches(labels) for e in self.match_expressions
        )


class Condition(ApiModel):
    """A status condition, shaped like ``metav1.Condition``."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    """The aspect the condition describes, e.g. ``Ready``."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    observed_generation: Annotated[int, Field(ge=0)] = 0
    """The ``metadata.generation`` the condition was computed from."""
    last_transition_time: str = ""
    """When ``status`` last changed (RFC 3339)."""
    reason: Annotated[str, Field(max_length=1024)] = ""
    """A CamelCase word for programs, e.g. ``InvalidSpec``."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """What a person needs to know, e.g. which field is wrong and why."""


class ObjectMeta(BaseModel):
    """The part of ``metav1.ObjectMeta`` Tokenomy reads; other fields pass through."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: ResourceName
    """Name of the object, unique within its namespace."""
    namespace: ResourceName = "default"
    """Namespace of the object (``default`` when a file leaves it out, as kubectl does)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels of the object."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations of the object."""
    generation: int = 0
    """Generation of the spec, set by the API server."""
    uid: str = ""
    """Unique id, set by the API server."""
    creation_timestamp: str = ""
    """When the object was created (RFC 3339), set by the API server."""


def camel_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as a field path: ``spec.tiers[0].name``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def dump(model: BaseModel) -> dict[str, Any]:
    """Serialise a model as the API server would store it (camelCase, no ``None``)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
