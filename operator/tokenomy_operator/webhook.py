"""The injection webhook: kopf's admission server calling the pure injection functions."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import kopf
from kubernetes import client

from tokenomy_operator.controller import Controller
from tokenomy_operator.injection import InjectionSettings, decide, mutate

log = logging.getLogger(__name__)

HANDLER_ID = "inject"
"""kopf serves the handler at ``/inject``; manifests/ points the webhook there."""


def register(
    registry: kopf.OperatorRegistry, controller: Controller, settings: InjectionSettings
) -> None:
    """Add the Pod-create mutation handler to ``registry``."""

    @kopf.on.mutate(
        "",
        "v1",
        "pods",
        id=HANDLER_ID,
        operations={"CREATE"},
        ignore_failures=True,
        registry=registry,
    )
    def inject(body: kopf.Body, patch: kopf.Patch, warnings: list[str], **_: Any) -> None:
        pod = dict(body)
        # The API server sets the request's namespace on the object before admission.
        namespace = body.metadata.namespace or ""
        latest = controller.latest
        if latest is None:
            warnings.append("tokenomy: the operator has not synced yet; pod left unchanged")
            return
        decision = decide(pod, namespace, latest.parsed, settings)
        if not decision.inject:
            log.debug("not injecting %s/%s: %s", namespace, body.metadata.name, decision.reason)
            return
        mutated = mutate(pod, decision, latest.configs.get(decision.policy), settings)
        for field in ("containers", "initContainers", "volumes"):
            if mutated["spec"].get(field) != pod.get("spec", {}).get(field):
                patch.spec[field] = mutated["spec"][field]
        patch.metadata.annotations.update(mutated["metadata"]["annotations"])
        log.info(
            "injected a sidecar into %s/%s (%s)", namespace, body.metadata.name, decision.reason
        )


async def publish_ca(api: client.ApiClient, configuration: str, ca: bytes) -> None:
    """Put our CA into the MutatingWebhookConfiguration, so the API server trusts the webhook.

    Read, change, replace: a PUT with the read ``resourceVersion`` cannot
    overwrite a concurrent change (it fails instead), and needs only ``get``
    and ``update`` on that one configuration.
    """
    admission = client.AdmissionregistrationV1Api(api)
    current = await asyncio.to_thread(admission.read_mutating_webhook_configuration, configuration)
    bundle = base64.b64encode(ca).decode()
    for hook in current.webhooks or []:
        hook.client_config.ca_bundle = bundle
    await asyncio.to_thread(
        admission.replace_mutating_webhook_configuration, configuration, current
    )
