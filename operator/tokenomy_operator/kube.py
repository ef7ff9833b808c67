"""Writes to the Kubernetes API: status subresources and Events.

The official client is synchronous; calls run in a worker thread so the
event loop (kopf's watches, the xDS streams) never waits on the API server.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tokenomy_api.names import GROUP, VERSION

log = logging.getLogger(__name__)


class KubeStatusWriter:
    """Patches status subresources and records Events as ``tokenomy-operator``."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.events = client.EventsV1Api(api)

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        """Merge-patch ``status``; an object deleted meanwhile is not an error."""
        try:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, namespace, plural, name, {"status": status},
            )  # fmt: skip
        except ApiException as error:
            if error.status != 404:
                raise

    async def event(
        self, kind: str, namespace: str, name: str, type_: str, reason: str, message: str
    ) -> None:
        """Record an Event; failing to record one is logged, never fatal."""
        now = datetime.datetime.now(datetime.UTC)
        body = client.EventsV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}-", namespace=namespace),
            event_time=now,
            action="Reconcile",
            reason=reason,
            note=message[:1024],
            type=type_,
            reporting_controller="tokenomy.dev/operator",
            reporting_instance="tokenomy-operator",
            regarding=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=kind, namespace=namespace, name=name
            ),
        )
        try:
            await asyncio.to_thread(self.events.create_namespaced_event, namespace, body)
        except ApiException as error:
            log.warning(
                "could not record an Event on %s %s/%s: %s",
                kind,
                namespace,
                name,
                error.body or error.reason,
            )
