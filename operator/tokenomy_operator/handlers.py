"""kopf handlers: every watched object goes into the controller's state, then a poke.

Event handlers store no state on the objects (no annotations, no finalizers),
so watching Pods never writes to Pods. The operator's own work happens in the
controller's loop, started with the operator.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf
from kubernetes import client

from tokenomy_api.names import COST_POLICY_PLURAL, GROUP, MODEL_ROUTE_PLURAL, VERSION
from tokenomy_api.pod import INJECTED_ANNOTATION
from tokenomy_operator.controller import Controller
from tokenomy_operator.injection import opted_out
from tokenomy_operator.state import Pod

log = logging.getLogger(__name__)


def _key(body: kopf.Body) -> tuple[str, str]:
    return body.metadata.namespace or "", body.metadata.name or ""


def _store(table: dict[Any, Any], key: Any, event: kopf.RawEvent, value: Any) -> None:
    if event["type"] == "DELETED":
        table.pop(key, None)
    else:
        table[key] = value


def register(
    controller: Controller, webhook_server: kopf.WebhookServer | None = None
) -> kopf.OperatorRegistry:
    """A registry with the handlers feeding ``controller`` (and serving webhooks, if given)."""
    registry = kopf.OperatorRegistry()
    state = controller.state

    @kopf.on.event(GROUP, VERSION, COST_POLICY_PLURAL, registry=registry)
    async def on_policy(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        _store(state.policies, _key(body), event, dict(body))
        controller.poke()

    @kopf.on.event(GROUP, VERSION, MODEL_ROUTE_PLURAL, registry=registry)
    async def on_route(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        _store(state.routes, _key(body), event, dict(body))
        controller.poke()

    @kopf.on.event("", "v1", "pods", registry=registry)
    async def on_pod(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        namespace, name = _key(body)
        terminating = body.metadata.get("deletionTimestamp") is not None
        pod = Pod(
            namespace,
            name,
            dict(body.metadata.labels or {}),
            injected=INJECTED_ANNOTATION in (body.metadata.annotations or {}),
            opted_out=bool(opted_out(body)),
        )
        previous = state.pods.get((namespace, name))
        if event["type"] == "DELETED" or terminating:
            state.pods.pop((namespace, name), None)
        else:
            state.pods[(namespace, name)] = pod
        if previous != state.pods.get((namespace, name)):
            controller.poke()  # status changes of a pod alone do not matter

    @kopf.on.event("", "v1", "services", registry=registry)
    async def on_service(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        _store(
            state.services,
            _key(body),
            event,
            {"metadata": dict(body.metadata), "spec": dict(body.spec)},
        )
        controller.poke()

    @kopf.on.event("discovery.k8s.io", "v1", "endpointslices", registry=registry)
    async def on_slice(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        _store(state.slices, _key(body), event, dict(body))
        controller.poke()

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def on_node(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        labels = dict(body.metadata.labels or {})
        name = body.metadata.name or ""
        if state.nodes.get(name) == labels and event["type"] != "DELETED":
            return  # a node's heartbeats change its status, not its placement
        _store(state.nodes, name, event, labels)
        controller.poke()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # Our own registry has none of kopf's default login handlers: reuse the
        # official client's configuration, already loaded (in-cluster or kubeconfig).
        return connection_info(
            client.Configuration.get_default_copy(), datetime.datetime.now(datetime.UTC)
        )

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.watching.server_timeout = 300
        if webhook_server is not None:
            settings.admission.server = webhook_server

    return registry


TOKEN_RECHECK = datetime.timedelta(minutes=1)
"""How long kopf keeps a token read from a refreshing source before asking again."""


def connection_info(config: client.Configuration, now: datetime.datetime) -> kopf.ConnectionInfo:
    """kopf's credentials from the official client's loaded configuration.

    In a Pod the client's in-cluster loader keeps the ServiceAccount token
    under ``BearerToken`` with a refresh hook that re-reads the token file
    (the kubelet rotates bound tokens; one read once stops working within
    about an hour); a kubeconfig token sits under ``authorization``.
    ``get_api_key_with_prefix`` runs the hook first. With a hook, the
    credentials expire after ``TOKEN_RECHECK``, so kopf logs in again and
    picks up a rotated token before the old one is refused.
    """
    header = (
        config.get_api_key_with_prefix("BearerToken")
        or config.get_api_key_with_prefix("authorization")
        or ""
    )
    parts = header.split(" ", 1)
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    refreshing = config.refresh_api_key_hook is not None and bool(token)
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        scheme=scheme or None,
        token=token or None,
        expiration=now + TOKEN_RECHECK if refreshing else None,
    )
