"""The sidecar's xDS client: subscribe to its config, apply it, ACK or NACK, reconnect.

The sidecar subscribes to the Tokenomy type only. A config that does not
parse, whose version does not match its content, or that cannot be applied
(a Secret key is missing) is NACKed with the reason, and the config in force
stays. When the operator is away the sidecar keeps serving its last good
config and reconnects with exponential backoff and full jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.rpc.status_pb2 import Status
from pydantic import ValidationError

from tokenomy_api import xds_type
from tokenomy_api.names import SIDECAR_CONFIG_TYPE_URL
from tokenomy_sidecar.credentials import Credentials
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.runtime import ConfigHolder, ConfigRejectedError

log = logging.getLogger(__name__)

INVALID_ARGUMENT = 3


class XdsSource:
    """Feeds a :class:`ConfigHolder` from the operator's ADS stream."""

    def __init__(
        self,
        address: str,
        node_id: str,
        holder: ConfigHolder,
        metrics: Metrics,
        credentials: Credentials,
        rng: random.Random | None = None,
        backoff_base: float = 0.25,
        backoff_max: float = 30.0,
    ) -> None:
        self.address = address
        self.node = Node(id=node_id, cluster="tokenomy-sidecar")
        self.holder = holder
        self.metrics = metrics
        self.credentials = credentials
        self.rng = rng or random.Random()
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.acked = ""
        """The version last accepted (sent back with every request, as Envoy does)."""
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Stream until cancelled, reconnecting after every failure."""
        failures = 0
        while True:
            try:
                async for _ in self._stream():
                    failures = 0
            except grpc.aio.AioRpcError as error:
                log.warning("xDS stream to %s ended: %s", self.address, error.code().name)
            self.connected.clear()
            failures += 1
            ceiling = min(self.backoff_max, self.backoff_base * 2 ** min(failures, 20))
            await asyncio.sleep(self.rng.uniform(0, ceiling))

    async def _stream(self) -> AsyncIterator[None]:
        """One connection; yields after each response handled."""
        requests: asyncio.Queue[DiscoveryRequest] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[DiscoveryRequest]:
            while True:
                yield await requests.get()

        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.StreamAggregatedResources(outgoing())
            requests.put_nowait(
                DiscoveryRequest(
                    node=self.node, type_url=SIDECAR_CONFIG_TYPE_URL, version_info=self.acked
                )
            )
            async for response in call:
                self.connected.set()
                requests.put_nowait(self._handle(response))
                yield

    def _handle(self, response: DiscoveryResponse) -> DiscoveryRequest:
        """Apply a response; the request returned ACKs or NACKs it."""
        try:
            configs = [
                xds_type.decode(r.value)
                for r in response.resources
                if r.type_url == SIDECAR_CONFIG_TYPE_URL
            ]
            if len(configs) > 1:
                raise ConfigRejectedError(f"expected one SidecarConfig, got {len(configs)}")
            if configs:
                self.holder.apply(configs[0], self.credentials)
            elif self.holder.current is not None:
                # The policy is gone: keep the routes, drop the optimisations.
                log.warning("no policy governs this pod any more; passing requests through")
                self.holder.apply(self.holder.current.config.pass_through(), self.credentials)
        except (ValueError, ValidationError, ConfigRejectedError) as error:
            message = " ".join(str(error).split())
            log.error("refusing config version %s: %s", response.version_info, message)
            self.metrics.config_updates.labels("rejected").inc()
            return DiscoveryRequest(
                type_url=SIDECAR_CONFIG_TYPE_URL,
                version_info=self.acked,
                response_nonce=response.nonce,
                error_detail=Status(code=INVALID_ARGUMENT, message=message),
            )
        self.acked = response.version_info
        self.metrics.config_updates.labels("applied").inc()
        return DiscoveryRequest(
            type_url=SIDECAR_CONFIG_TYPE_URL,
            version_info=response.version_info,
            response_nonce=response.nonce,
        )
