"""The usage-and-lease stream between sidecars and the operator, served next to ADS.

``tokenomy.usage.v1.Usage/Stream`` is a bidirectional gRPC stream: a sidecar
sends numbered usage reports and asks for budget leases; the operator
acknowledges the reports it counted and grants leases. Envoy's Load
Reporting Service was the other candidate; it reports per-interval deltas
with no sequence number, so a report replayed after a reconnect could not be
told from a new one and would be counted twice. This one numbers reports per
sidecar (and per sidecar start), which makes replays harmless.

The messages are protobuf, built here from a descriptor so that no generated
code is checked in. Money travels as decimal strings, never as floats.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "tokenomy.usage.v1.Usage"
METHOD = f"/{SERVICE}/Stream"

_F = descriptor_pb2.FieldDescriptorProto

# (name, number, type, label, message type for TYPE_MESSAGE fields)
_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    "Report": [
        ("number", 1, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        ("cost_usd", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ],
    "SidecarMessage": [
        ("holder", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("policy", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("reports", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".tokenomy.usage.v1.Report"),
        ("want_lease", 4, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ("in_flight_usd", 5, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ],
    "OperatorMessage": [
        ("acknowledged", 1, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
        ("lease_usd", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("lease_seconds", 3, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
        ("granted", 4, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ("unlimited", 5, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ("resets_at", 6, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
    ],
}


def _classes() -> dict[str, Any]:
    proto = descriptor_pb2.FileDescriptorProto(
        name="tokenomy/usage/v1/usage.proto", package="tokenomy.usage.v1", syntax="proto3"
    )
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
    service = proto.service.add(name="Usage")
    service.method.add(
        name="Stream",
        input_type=".tokenomy.usage.v1.SidecarMessage",
        output_type=".tokenomy.usage.v1.OperatorMessage",
        client_streaming=True,
        server_streaming=True,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    built = message_factory.GetMessages([proto], pool=pool)
    return {name.rsplit(".", 1)[1]: cls for name, cls in built.items()}


_BUILT = _classes()
Report: Any = _BUILT["Report"]
"""A numbered usage report: ``number``, ``cost_usd``."""
SidecarMessage: Any = _BUILT["SidecarMessage"]
"""Reports, and optionally a lease request with the money in flight."""
OperatorMessage: Any = _BUILT["OperatorMessage"]
"""What was counted, and the lease granted (``granted``) or that there is no budget."""
