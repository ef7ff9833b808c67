"""The Aggregated Discovery Service, State of the World, over grpc.aio.

Protocol rules followed (Envoy's xDS protocol docs):

- the node arrives on a stream's first request only; it is remembered;
- a request whose ``response_nonce`` is not the latest one sent for its
  type is stale and ignored;
- after a response, nothing more of that type is sent until the client
  answers it (ACK or NACK), as go-control-plane does;
- a NACK leaves the client's last good version in force, and the rejected
  version is not sent again; only a new snapshot version is (go-control-plane
  resends the rejected one forever);
- types go out in dependency order (clusters, endpoints, listeners, routes,
  then Tokenomy's), because Envoy applies them one type at a time;
- an empty ``resource_names`` means every resource, for every type,
  including Tokenomy's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

from tokenomy_api.names import SIDECAR_CONFIG_TYPE_URL
from tokenomy_operator.xds.snapshot import CHANGED, Snapshot, SnapshotCache, TypeResources

log = logging.getLogger(__name__)

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SIDECAR_CONFIG_TYPE_URL)
"""The order types are pushed in: what a resource refers to goes out before it."""


@dataclass
class TypeState:
    """One type on one stream."""

    subscribed: bool = False
    names: tuple[str, ...] = ()
    sent_version: str | None = None
    sent_names: tuple[str, ...] | None = None
    nonce: str = ""
    awaiting: bool = False
    acked: str = ""
    """The version the client last accepted."""
    rejected: str = ""
    """The version the client last refused, until it accepts another."""
    error: str = ""
    """Why it refused it."""


@dataclass
class StreamState:
    """One ADS stream."""

    node: str = ""
    types: dict[str, TypeState] = field(default_factory=dict)


Listener = Callable[[str, str, str, str], None]
"""Called with (node, type URL, version, error) on each ACK (error ``""``) or NACK."""

Departure = Callable[[str], None]
"""Called with the node id when a node's (latest) stream ends."""


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Serves a :class:`SnapshotCache` to every connected node."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.streams: dict[str, StreamState] = {}
        """Connected nodes (the latest stream of each)."""
        self.listeners: list[Listener] = []
        """Told of every ACK and NACK: how the control loop learns of rollouts."""
        self.departures: list[Departure] = []
        """Told when a node disconnects: its answers no longer stand."""
        self._nonces = itertools.count(1)

    async def StreamAggregatedResources(  # noqa: N802 - the gRPC method's name
        self,
        request_iterator: AsyncIterator[DiscoveryRequest],
        context: grpc.aio.ServicerContext[DiscoveryRequest, DiscoveryResponse],
    ) -> AsyncIterator[bytes]:
        """One node's stream: requests in, responses out, until either side ends it.

        Requests are handled as they are read, so an ACK (which usually asks
        for nothing) costs no second wake-up; this coroutine only sends what
        requests and snapshot changes produce, in the order they produced it.
        Responses go out serialized already (see :func:`serve`).
        """
        queue: asyncio.Queue[object] = asyncio.Queue()
        end, nameless = object(), object()
        state = StreamState()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    if not state.node:
                        if not request.node.id:
                            queue.put_nowait(nameless)
                            return
                        state.node = request.node.id
                        self.streams[state.node] = state
                        self.cache.watch(state.node, queue)
                        log.info("node %s connected", state.node)
                    for response in self._on_request(state, request):
                        queue.put_nowait(response)
            finally:
                queue.put_nowait(end)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await queue.get()
                if item is end:
                    return
                if item is nameless:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry a node id"
                    )
                if item is CHANGED:
                    for response in self._on_change(state):
                        yield response
                else:
                    assert isinstance(item, bytes)
                    yield item
        finally:
            reader.cancel()
            if state.node:
                self.cache.unwatch(state.node, queue)
                if self.streams.get(state.node) is state:
                    del self.streams[state.node]
                    for departure in self.departures:
                        departure(state.node)
                log.info("node %s disconnected", state.node)

    def connected(self) -> int:
        """How many nodes have a stream open."""
        return len(self.streams)

    def _on_request(self, state: StreamState, request: DiscoveryRequest) -> list[bytes]:
        ts = state.types.setdefault(request.type_url, TypeState())
        ts.subscribed = True
        ts.names = tuple(sorted(request.resource_names))
        if request.response_nonce:
            if request.response_nonce != ts.nonce:
                return []  # stale: answers a response that a newer one replaced
            ts.awaiting = False
            if request.HasField("error_detail"):
                ts.rejected, ts.error = ts.sent_version or "", request.error_detail.message
                log.warning(
                    "node %s rejected %s version %s: %s",
                    state.node, request.type_url, ts.rejected, ts.error,
                )  # fmt: skip
            else:
                ts.acked, ts.rejected, ts.error = request.version_info, "", ""
            for listener in self.listeners:
                listener(state.node, request.type_url, ts.sent_version or "", ts.error)
        return self._pending(state, [request.type_url])

    def _on_change(self, state: StreamState) -> list[bytes]:
        return self._pending(state, list(state.types))

    def _pending(self, state: StreamState, types: list[str]) -> list[bytes]:
        # A node whose snapshot was dropped (its policy deleted) gets empty
        # responses for what it had, so it stops using stale resources; a node
        # that never had one waits.
        snapshot = self.cache.get(state.node)
        if snapshot is None and not any(ts.sent_version for ts in state.types.values()):
            return []
        snapshot = snapshot or Snapshot()
        ordered = sorted(types, key=_push_rank) if len(types) > 1 else types
        out = []
        for type_url in ordered:
            ts = state.types[type_url]
            if not ts.subscribed or ts.awaiting:
                continue
            resources = snapshot.types.get(type_url) or _NONE
            names = ts.names if ts.names and type_url in (ENDPOINT, ROUTE) else ()
            if (resources.version, names) == (ts.sent_version, ts.sent_names):
                continue  # already sent; a rejected version waits for a new one
            ts.nonce = str(next(self._nonces))
            ts.sent_version, ts.sent_names, ts.awaiting = resources.version, names, True
            # Protobuf merges concatenated messages: the shared bytes plus this
            # stream's nonce are one DiscoveryResponse with every field set.
            nonce = DiscoveryResponse(nonce=ts.nonce).SerializeToString()
            out.append(resources.response(type_url, names) + nonce)
        return out


_NONE = TypeResources("", {})
"""What a type the snapshot lacks is served as: nothing, at version ``""``."""


def _push_rank(type_url: str) -> int:
    return ORDER.index(type_url) if type_url in ORDER else len(ORDER)


async def serve(
    server: AdsServer,
    address: str,
    also: Callable[[grpc.aio.Server], None] | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start a gRPC server with the ADS service on ``address`` (``host:port``, port 0 = any).

    ``also`` adds more services before the server starts (the usage stream).
    """
    grpc_server = grpc.aio.server()
    # As the generated add_AggregatedDiscoveryServiceServicer_to_server does,
    # but with no response serializer: the servicer yields bytes.
    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            server.StreamAggregatedResources,
            request_deserializer=DiscoveryRequest.FromString,
        )
    }
    grpc_server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),)
    )
    grpc_server.add_registered_method_handlers(ADS_SERVICE, handlers)
    if also is not None:
        also(grpc_server)
    port = grpc_server.add_insecure_port(address)
    await grpc_server.start()
    return grpc_server, port
