"""Per-node snapshots of xDS resources, versioned by content, with change notification.

Modelled on go-control-plane's snapshot cache: the operator sets a snapshot
per node (a pod's sidecar, or an Envoy); streams serving that node are woken
when it changes. Versions are content hashes per type, so setting the same
content again changes nothing and wakes nobody; a type whose content already
has a version (Tokenomy's config, :func:`tokenomy_api.compiled.content_version`)
keeps that one, so one content never has two versions.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from google.protobuf.any_pb2 import Any as AnyProto


@dataclass(frozen=True)
class TypeResources:
    """One type's resources in a snapshot."""

    version: str
    """Content hash of the resources (names and bytes)."""
    items: Mapping[str, AnyProto]
    """Resources by name."""
    _wire: dict[tuple[str, tuple[str, ...]], bytes] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def response(self, type_url: str, names: tuple[str, ...] = ()) -> bytes:
        """The serialized DiscoveryResponse for these resources, without a nonce.

        Every stream of every pod sharing this snapshot is sent the same bytes:
        serializing them once instead of once per stream is most of what a
        rollout to many sidecars costs the operator in Python. ``names`` picks
        a subset (all when empty).
        """
        key = (type_url, names)
        wire = self._wire.get(key)
        if wire is None:
            chosen = [self.items[n] for n in (names or self.items) if n in self.items]
            wire = DiscoveryResponse(
                version_info=self.version, resources=chosen, type_url=type_url
            ).SerializeToString()
            self._wire[key] = wire
        return wire


@dataclass(frozen=True)
class Snapshot:
    """Everything one node should have, by type URL."""

    types: Mapping[str, TypeResources] = field(default_factory=dict)

    @cached_property
    def versions(self) -> dict[str, str]:
        """The version of every type it has."""
        return {t: r.version for t, r in self.types.items()}

    def version(self, type_url: str) -> str:
        """The version of a type, ``""`` when the snapshot has none of it."""
        resources = self.types.get(type_url)
        return resources.version if resources else ""


def make_snapshot(
    resources: Mapping[str, Mapping[str, AnyProto]], versions: Mapping[str, str] | None = None
) -> Snapshot:
    """A snapshot from resources by type URL and name, each type versioned by its content.

    ``versions`` gives the version of types whose content is versioned already.
    """
    versions = versions or {}
    types = {}
    for type_url, items in resources.items():
        version = versions.get(type_url) or _digest(items)
        types[type_url] = TypeResources(version, dict(sorted(items.items())))
    return Snapshot(types)


def _digest(items: Mapping[str, AnyProto]) -> str:
    digest = hashlib.sha256()
    for name in sorted(items):
        digest.update(name.encode() + b"\0" + items[name].SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


class SnapshotCache:
    """Snapshots by node id, and the queues of the streams watching each node."""

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._watchers: dict[str, set[asyncio.Queue[object]]] = {}

    def get(self, node: str) -> Snapshot | None:
        """The node's snapshot, if any."""
        return self._snapshots.get(node)

    def set(self, node: str, snapshot: Snapshot) -> bool:
        """Put a snapshot in place; wakes the node's streams only if any type's version changed."""
        previous = self._snapshots.get(node)
        if previous is snapshot:
            return False  # pods of one policy share their snapshot: the common case
        self._snapshots[node] = snapshot
        changed = previous is None or previous.versions != snapshot.versions
        if changed:
            self._notify(node)
        return changed

    def drop(self, node: str) -> None:
        """Forget a node (its pod was deleted)."""
        if self._snapshots.pop(node, None) is not None:
            self._notify(node)

    def nodes(self) -> list[str]:
        """Nodes that have a snapshot."""
        return sorted(self._snapshots)

    def watch(self, node: str, queue: asyncio.Queue[object]) -> None:
        """Have ``queue`` told whenever the node's snapshot changes."""
        self._watchers.setdefault(node, set()).add(queue)

    def unwatch(self, node: str, queue: asyncio.Queue[object]) -> None:
        """Stop telling ``queue``."""
        watchers = self._watchers.get(node)
        if watchers is not None:
            watchers.discard(queue)
            if not watchers:
                del self._watchers[node]

    def _notify(self, node: str) -> None:
        for queue in self._watchers.get(node, ()):
            queue.put_nowait(CHANGED)


CHANGED = object()
"""The message a watching stream's queue receives when its node's snapshot changed."""
