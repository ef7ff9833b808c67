"""The injection webhook: kopf's admission server calling the pure injection functions.

The decision is made from the controller's snapshot, which trails the API by
a watch event. A Pod applied together with the CostPolicy that selects it
(one ``kubectl apply``, an Argo CD sync) is admitted before that policy
reaches the watch, so when the snapshot finds no policy the webhook reads the
namespace's policies from the API, and when one selects the Pod it waits
briefly for the controller to compile it (the sidecar's Secret mounts come
from the compiled config).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tokenomy_api.compiled import SidecarConfig
from tokenomy_api.names import COST_POLICY_PLURAL, GROUP, VERSION
from tokenomy_api.resources import parse_documents
from tokenomy_operator.certs import WebhookCerts, generate, usable
from tokenomy_operator.controller import Controller
from tokenomy_operator.injection import NOT_SELECTED, InjectionSettings, decide, mutate

PolicyReader = Callable[[str], Awaitable[list[dict[str, Any]]]]
"""The CostPolicies of a namespace, read from the API server."""

log = logging.getLogger(__name__)

HANDLER_ID = "inject"
"""kopf serves the handler at ``/inject``; manifests/ points the webhook there."""


def register(
    registry: kopf.OperatorRegistry,
    controller: Controller,
    settings: InjectionSettings,
    read_policies: PolicyReader | None = None,
    settle: float = 5.0,
) -> None:
    """Add the Pod-create mutation handler to ``registry``.

    ``read_policies`` reads through to the API when the snapshot selects
    nothing; ``settle`` bounds the wait for a just-created policy's config
    (the webhook's own timeout is 10 s).
    """

    @kopf.on.mutate(
        "",
        "v1",
        "pods",
        id=HANDLER_ID,
        operations={"CREATE"},
        ignore_failures=True,
        registry=registry,
    )
    async def inject(body: kopf.Body, patch: kopf.Patch, warnings: list[str], **_: Any) -> None:
        pod = dict(body)
        # The API server sets the request's namespace on the object before admission.
        namespace = body.metadata.namespace or ""
        latest = controller.latest
        decision = decide(pod, namespace, latest.parsed if latest else [], settings)
        if decision.reason == NOT_SELECTED and read_policies is not None:
            try:
                fresh = parse_documents(("", d) for d in await read_policies(namespace))
            except Exception as error:  # the snapshot's answer stands
                log.warning("could not read CostPolicies of %s: %s", namespace, error)
            else:
                decision = decide(pod, namespace, fresh.policies, settings)
        if not decision.inject:
            log.debug("not injecting %s/%s: %s", namespace, body.metadata.name, decision.reason)
            return
        config = await _compiled(controller, decision.policy, settle)
        if config is None:
            warnings.append(
                f"tokenomy: CostPolicy {decision.policy} has not compiled yet; "
                "the sidecar gets no Secret mounts until the pod is recreated"
            )
        mutated = mutate(pod, decision, config, settings)
        for field in ("containers", "initContainers", "volumes"):
            if mutated["spec"].get(field) != pod.get("spec", {}).get(field):
                patch.spec[field] = mutated["spec"][field]
        patch.metadata.annotations.update(mutated["metadata"]["annotations"])
        log.info(
            "injected a sidecar into %s/%s (%s)", namespace, body.metadata.name, decision.reason
        )


async def _compiled(controller: Controller, policy: str, settle: float) -> SidecarConfig | None:
    """The policy's config in force, waiting up to ``settle`` seconds for a new one."""
    deadline = time.monotonic() + settle
    while True:
        latest = controller.latest
        config = latest.configs.get(policy) if latest is not None else None
        if config is not None or time.monotonic() >= deadline:
            return config
        controller.poke()
        await asyncio.sleep(0.05)


def policy_reader(api: client.ApiClient) -> PolicyReader:
    """Read a namespace's CostPolicies through ``api`` (list, which the operator may)."""
    objects = client.CustomObjectsApi(api)

    async def read(namespace: str) -> list[dict[str, Any]]:
        listing = await asyncio.to_thread(
            objects.list_namespaced_custom_object, GROUP, VERSION, namespace, COST_POLICY_PLURAL
        )
        items: list[dict[str, Any]] = listing.get("items") or []  # type: ignore[attr-defined]
        return items

    return read


TLS_SECRET_KEYS = ("ca.crt", "tls.crt", "tls.key")


async def shared_certs(
    api: client.ApiClient, namespace: str, name: str, hosts: list[str]
) -> WebhookCerts:
    """The webhook's certificates, the same for every replica, kept in a Secret.

    Each replica serves the webhook behind one Service, so all must present
    a certificate the one ``caBundle`` trusts. The first replica creates the
    Secret (or fills the empty one the Helm chart creates); the others (and
    restarts) read it; a Secret that no longer fits (other names, under 30
    days left) is replaced. Two replicas creating at
    once: the loser reads the winner's.
    """
    core = client.CoreV1Api(api)
    now = datetime.datetime.now(datetime.UTC)
    for _ in range(3):
        try:
            secret = await asyncio.to_thread(core.read_namespaced_secret, name, namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            secret = None
        if secret is not None:
            data = secret.data or {}
            if all(k in data for k in TLS_SECRET_KEYS):
                stored = WebhookCerts(*(base64.b64decode(data[k]) for k in TLS_SECRET_KEYS))
                if usable(stored, hosts, now):
                    return stored
        certs = generate(hosts)
        body = client.V1Secret(
            # Replacing keeps the read metadata: its resourceVersion (a write
            # another replica beat fails) and an installer's labels.
            metadata=secret.metadata
            if secret is not None and secret.metadata is not None
            else client.V1ObjectMeta(name=name, namespace=namespace),
            type="Opaque",
            data={
                k: base64.b64encode(v).decode()
                for k, v in zip(TLS_SECRET_KEYS, (certs.ca, certs.cert, certs.key), strict=True)
            },
        )
        try:
            if secret is None:
                await asyncio.to_thread(core.create_namespaced_secret, namespace, body)
            else:
                await asyncio.to_thread(core.replace_namespaced_secret, name, namespace, body)
        except ApiException as error:
            if error.status in (409, 422):
                continue  # another replica wrote first: use theirs
            raise
        return certs
    raise RuntimeError(f"could not agree on the webhook certificate in Secret {namespace}/{name}")


async def publish_ca(api: client.ApiClient, configuration: str, ca: bytes) -> None:
    """Put our CA into the MutatingWebhookConfiguration, so the API server trusts the webhook.

    A strategic merge patch keyed by each webhook's name sets ``caBundle``
    and nothing else, so the operator's field manager owns that one field:
    a Helm upgrade or a GitOps sync may change every other field (failure
    policy, selectors) without a conflict, and none of them is rewritten
    here. Needs only ``get`` and ``patch`` on that one configuration.
    """
    admission = client.AdmissionregistrationV1Api(api)
    current = await asyncio.to_thread(admission.read_mutating_webhook_configuration, configuration)
    bundle = base64.b64encode(ca).decode()
    body = {
        "webhooks": [
            {"name": hook.name, "clientConfig": {"caBundle": bundle}}
            for hook in current.webhooks or []
        ]
    }
    # A dict body goes as application/strategic-merge-patch+json.
    await asyncio.to_thread(admission.patch_mutating_webhook_configuration, configuration, body)
