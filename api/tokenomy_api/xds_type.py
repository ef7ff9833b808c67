"""The Tokenomy xDS resource: the compiled config as a protobuf message of one field.

On the wire the resource is ``message SidecarConfig { bytes config_json = 1; }``
(the same wire format as ``google.protobuf.BytesValue``) under the type URL
:data:`~tokenomy_api.names.SIDECAR_CONFIG_TYPE_URL`. The field holds the
canonical JSON of :class:`~tokenomy_api.compiled.SidecarConfig`, so the
contract stays the pydantic model and no generated code is needed; a real
Envoy never subscribes to the type and never sees it. Encoding by hand keeps
this package free of protobuf.
"""

from __future__ import annotations

from tokenomy_api.compiled import SidecarConfig

_FIELD_1_BYTES = 0x0A  # field number 1, wire type 2 (length-delimited)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode(config: SidecarConfig) -> bytes:
    """The resource's protobuf bytes (what goes into ``Any.value``)."""
    body = config.to_json()
    return bytes([_FIELD_1_BYTES]) + _varint(len(body)) + body


def decode(data: bytes) -> SidecarConfig:
    """Parse and verify a resource; raises ValueError saying what is wrong."""
    if not data or data[0] != _FIELD_1_BYTES:
        raise ValueError("not a Tokenomy SidecarConfig resource (field 1 missing)")
    length = shift = 0
    position = 1
    while True:
        if position >= len(data):
            raise ValueError("truncated SidecarConfig resource")
        byte = data[position]
        position += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = data[position : position + length]
    if len(body) != length or position + length != len(data):
        raise ValueError("SidecarConfig resource length does not match its content")
    return SidecarConfig.from_json(body)
