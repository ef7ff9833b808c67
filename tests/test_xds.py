"""xDS: snapshots, the ADS server's protocol rules, and the sidecar's client against it."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.json_format import MessageToDict
from google.rpc.status_pb2 import Status

from tokenomy_api.compiled import SidecarConfig
from tokenomy_api.compiler import compile_configs
from tokenomy_api.names import SIDECAR_CONFIG_TYPE_URL
from tokenomy_operator.xds.resources import snapshot_for
from tokenomy_operator.xds.server import CLUSTER, ENDPOINT, AdsServer, serve
from tokenomy_operator.xds.snapshot import SnapshotCache, make_snapshot
from tokenomy_sidecar.app import Sidecar, SidecarSettings
from tokenomy_sidecar.credentials import Credentials
from tokenomy_sidecar.xds_client import XdsSource

from harness_envoy import envoy_binary, static_bootstrap
from helpers import backend, policy, route
from support import StandinFactory

NODE = "default/agent-7f9c"


def config(standin_url: str = "http://127.0.0.1:9/v1", **spec: Any) -> SidecarConfig:
    tiers = [
        {"name": "small", "backends": [backend("s", url=standin_url)]},
        {
            "name": "large",
            "backends": [
                backend("l", url=standin_url, capacity="spot"),
                backend("l2", url="http://127.0.0.2:9/v1"),
            ],
        },
    ]
    routes = [route(namespace="default", tiers=tiers, **spec)]
    return compile_configs([policy(namespace="default")], routes).configs["default/agent"]


# --- snapshots ---------------------------------------------------------------


def test_a_shared_serialized_response_plus_a_nonce_is_the_whole_response() -> None:
    items = {n: ClusterLoadAssignment(cluster_name=n) for n in ("a", "b", "c")}
    resources = {ENDPOINT: {n: _any(m) for n, m in items.items()}}
    typed = make_snapshot(resources).types[ENDPOINT]
    for names in ((), ("c", "a"), ("zz",)):
        wire = typed.response(ENDPOINT, names) + DiscoveryResponse(nonce="7").SerializeToString()
        chosen = [resources[ENDPOINT][n] for n in (names or sorted(items)) if n in items]
        assert DiscoveryResponse.FromString(wire) == DiscoveryResponse(
            version_info=typed.version, resources=chosen, type_url=ENDPOINT, nonce="7"
        )
        assert typed.response(ENDPOINT, names) is typed.response(ENDPOINT, names)  # built once


def _any(message: ClusterLoadAssignment) -> AnyProto:
    wrapped = AnyProto()
    wrapped.Pack(message)
    return wrapped


def test_versions_are_content_hashes_per_type() -> None:
    a, b = snapshot_for(config()), snapshot_for(config())
    assert a.version(SIDECAR_CONFIG_TYPE_URL) == b.version(SIDECAR_CONFIG_TYPE_URL)
    changed = snapshot_for(config(defaultTier="small"))
    assert changed.version(SIDECAR_CONFIG_TYPE_URL) != a.version(SIDECAR_CONFIG_TYPE_URL)
    assert changed.version(CLUSTER) == a.version(CLUSTER)  # clusters did not change
    cache = SnapshotCache()
    assert cache.set(NODE, a) is True
    assert cache.set(NODE, b) is False  # same content: nobody is woken
    assert cache.set(NODE, changed) is True
    cache.drop(NODE)
    assert cache.nodes() == []


def test_tiers_become_envoy_clusters_with_priorities_and_prices() -> None:
    snapshot = snapshot_for(config())
    assert sorted(snapshot.types[CLUSTER].items) == ["default/chat/large", "default/chat/small"]
    cla = snapshot.types[ENDPOINT].items["default/chat/large"]
    assignment = ClusterLoadAssignment()
    cla.Unpack(assignment)
    assert [g.priority for g in assignment.endpoints] == [0, 1]  # spot first under "prefer"
    metadata = MessageToDict(assignment.endpoints[0].lb_endpoints[0].metadata)
    assert metadata["filterMetadata"]["tokenomy"]["backend"] == "l"
    assert metadata["filterMetadata"]["tokenomy"]["price_input_usd_per_mtok"] == "1"


def test_rendered_clusters_pass_envoy_validation(tmp_path: Path) -> None:
    snapshot = snapshot_for(config())
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(static_bootstrap(snapshot)))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # And the check would notice a broken one.
    bad = static_bootstrap(snapshot)
    bad["static_resources"]["clusters"][0]["connect_timeout"] = "-1s"
    path.write_text(json.dumps(bad))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0


# --- the ADS server with a raw client ------------------------------------------


class RawClient:
    """A hand-driven ADS stream, to test the server's protocol rules."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.requests: asyncio.Queue[DiscoveryRequest] = asyncio.Queue()
        self.responses: asyncio.Queue[DiscoveryResponse | BaseException] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[DiscoveryRequest]:
            while True:
                yield await self.requests.get()

        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            outgoing()
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        # Reading in its own task: cancelling a read() would cancel the whole RPC.
        try:
            async for response in self.call:
                self.responses.put_nowait(response)
        except grpc.aio.AioRpcError as error:
            self.responses.put_nowait(error)

    def send(self, **fields: Any) -> None:
        self.requests.put_nowait(DiscoveryRequest(type_url=SIDECAR_CONFIG_TYPE_URL, **fields))

    async def receive(self, timeout: float = 2.0) -> DiscoveryResponse:
        item = await asyncio.wait_for(self.responses.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def nothing(self, wait: float = 0.2) -> bool:
        await asyncio.sleep(wait)
        return self.responses.empty()


@pytest.fixture
async def ads() -> AsyncIterator[tuple[AdsServer, SnapshotCache, str]]:
    cache = SnapshotCache()
    server = AdsServer(cache)
    grpc_server, port = await serve(server, "127.0.0.1:0")
    yield server, cache, f"127.0.0.1:{port}"
    await grpc_server.stop(None)


async def test_node_is_remembered_stale_nonces_ignored_nacks_not_resent(ads: Any) -> None:
    server, cache, address = ads
    events: list[tuple[str, str, str, str]] = []
    server.listeners.append(lambda *e: events.append(e))
    cache.set(NODE, snapshot_for(config()))
    async with grpc.aio.insecure_channel(address) as channel:
        client = RawClient(channel)
        client.send(node=Node(id=NODE))
        first = await client.receive()
        assert first.type_url == SIDECAR_CONFIG_TYPE_URL
        assert len(first.resources) == 1
        # A stale nonce is ignored: nothing happens, nothing is recorded.
        client.send(version_info=first.version_info, response_nonce="not-the-latest")
        assert await client.nothing()
        assert events == []
        # NACK (no node this time: the server remembers it from the first request).
        client.send(response_nonce=first.nonce, error_detail=Status(code=3, message="bad field x"))
        assert await client.nothing()
        assert events == [(NODE, SIDECAR_CONFIG_TYPE_URL, first.version_info, "bad field x")]
        state = server.streams[NODE].types[SIDECAR_CONFIG_TYPE_URL]
        assert (state.rejected, state.error) == (first.version_info, "bad field x")
        # The same snapshot again is not resent; a new version is.
        cache.set(NODE, snapshot_for(config()))
        assert await client.nothing()
        cache.set(NODE, snapshot_for(config(defaultTier="small")))
        second = await client.receive()
        assert second.version_info != first.version_info
        client.send(version_info=second.version_info, response_nonce=second.nonce)
        await asyncio.sleep(0.1)
        assert events[-1] == (NODE, SIDECAR_CONFIG_TYPE_URL, second.version_info, "")
        assert (state.acked, state.rejected) == (second.version_info, "")


async def test_first_request_without_a_node_is_refused(ads: Any) -> None:
    _, _, address = ads
    async with grpc.aio.insecure_channel(address) as channel:
        client = RawClient(channel)
        client.send()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await client.receive()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_only_the_changed_node_is_pushed(ads: Any) -> None:
    _, cache, address = ads
    cache.set("a", snapshot_for(config()))
    cache.set("b", snapshot_for(config()))
    async with grpc.aio.insecure_channel(address) as channel:
        a, b = RawClient(channel), RawClient(channel)
        for client, node in ((a, "a"), (b, "b")):
            client.send(node=Node(id=node))
            response = await client.receive()
            client.send(version_info=response.version_info, response_nonce=response.nonce)
        cache.set("a", snapshot_for(config(defaultTier="small")))
        assert (await a.receive()).version_info
        assert await b.nothing()


# --- the sidecar's client ---------------------------------------------------------


async def start_sidecar(
    address: str, credentials: Credentials | None = None
) -> tuple[Sidecar, XdsSource, asyncio.Task[None]]:
    sidecar = Sidecar(SidecarSettings(listen_port=0, metrics_port=0, metrics_host="127.0.0.1"))
    source = XdsSource(
        address,
        NODE,
        sidecar.holder,
        sidecar.metrics,
        credentials or Credentials(),
        backoff_base=0.02,
        backoff_max=0.1,
    )
    await sidecar.start()
    return sidecar, source, asyncio.create_task(source.run())


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_sidecar_applies_acks_and_serves_each_new_version(
    ads: Any, standin: StandinFactory
) -> None:
    server, cache, address = ads
    model = await standin(name="m")
    sidecar, _source, task = await start_sidecar(address)
    try:
        first = config(model.url)
        cache.set(NODE, snapshot_for(first))
        await wait_for(lambda: sidecar.holder.current is not None)
        assert sidecar.holder.current.config.version == first.version
        await wait_for(lambda: server.streams[NODE].types[SIDECAR_CONFIG_TYPE_URL].acked != "")
        changed = config(model.url, defaultTier="small")
        cache.set(NODE, snapshot_for(changed))
        await wait_for(lambda: sidecar.holder.current.config.version == changed.version)
        client = openai.AsyncOpenAI(base_url=sidecar.api_url + "/v1", api_key="x", max_retries=0)
        response = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}]
        )
        await client.close()
        assert response.headers["x-tokenomy-tier"] == "small"
    finally:
        task.cancel()
        await sidecar.stop()


async def test_sidecar_nacks_a_config_it_cannot_apply_and_keeps_the_old(ads: Any) -> None:
    server, cache, address = ads
    sidecar, _source, task = await start_sidecar(address)
    try:
        good = config()
        cache.set(NODE, snapshot_for(good))
        await wait_for(lambda: sidecar.holder.current is not None)
        needs_key = compile_configs(
            [policy(namespace="default")],
            [
                route(
                    namespace="default",
                    tiers=[
                        {
                            "name": "t",
                            "backends": [
                                backend(
                                    "b", credentials={"secretRef": {"name": "keys", "key": "k"}}
                                )
                            ],
                        }
                    ],
                )
            ],
        ).configs["default/agent"]
        cache.set(NODE, snapshot_for(needs_key))
        state = server.streams[NODE].types[SIDECAR_CONFIG_TYPE_URL]
        await wait_for(lambda: state.error != "")
        assert "Secret keys not available: keys/k" in state.error
        assert state.acked == snapshot_for(good).version(SIDECAR_CONFIG_TYPE_URL)
        assert sidecar.holder.current.config.version == good.version
    finally:
        task.cancel()
        await sidecar.stop()


async def test_sidecar_keeps_serving_while_the_operator_is_away_and_reconnects() -> None:
    cache = SnapshotCache()
    server = AdsServer(cache)
    grpc_server, port = await serve(server, "127.0.0.1:0")
    cache.set(NODE, snapshot_for(config()))
    sidecar, source, task = await start_sidecar(f"127.0.0.1:{port}")
    try:
        await wait_for(lambda: sidecar.holder.current is not None)
        version = sidecar.holder.current.config.version
        await grpc_server.stop(None)
        await wait_for(lambda: not source.connected.is_set())
        assert sidecar.holder.current.config.version == version  # last good config stays
        restarted = AdsServer(cache)
        grpc_server, _ = await serve(restarted, f"127.0.0.1:{port}")
        await wait_for(
            lambda: (
                NODE in restarted.streams
                and restarted.streams[NODE].types[SIDECAR_CONFIG_TYPE_URL].acked
                == source.acked
                != ""
            )
        )
        assert sidecar.holder.current.config.version == version
    finally:
        task.cancel()
        await grpc_server.stop(None)
        await sidecar.stop()


async def test_deleted_policy_turns_the_sidecar_into_a_pass_through(ads: Any) -> None:
    server, cache, address = ads
    sidecar, _, task = await start_sidecar(address)
    try:
        with_cache = config()
        cache.set(NODE, snapshot_for(with_cache))
        await wait_for(lambda: sidecar.holder.current is not None)
        assert sidecar.holder.current.config.cache.exact.enabled
        cache.drop(NODE)
        await wait_for(lambda: not sidecar.holder.current.config.cache.exact.enabled)
        assert sidecar.holder.current.config == with_cache.pass_through()
        state = server.streams[NODE].types[SIDECAR_CONFIG_TYPE_URL]
        await wait_for(lambda: state.sent_version == "" and not state.awaiting)  # empty, ACKed
    finally:
        task.cancel()
        await sidecar.stop()
