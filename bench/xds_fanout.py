"""Control-plane fan-out: a CostPolicy change reaching 1,000 connected sidecars.

The operator's real pieces run in this process — ClusterState, Controller,
SnapshotCache, AdsServer on gRPC — with 1,000 injected pods selected by one
policy. A child process opens one ADS stream per simulated sidecar and ACKs
every response, as the sidecar does. Measured: time from the policy change
to each sidecar's ACK of the new version (p50, p99, all), and this process's
memory.

    python bench/xds_fanout.py [--sidecars 1000] [--changes 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tokenomy_api.names import SIDECAR_CONFIG_TYPE_URL
from tokenomy_operator.controller import Controller
from tokenomy_operator.state import Pod
from tokenomy_operator.xds.server import AdsServer, serve
from tokenomy_operator.xds.snapshot import SnapshotCache

from helpers import policy_doc, route_doc


class NullWriter:
    async def patch_status(self, *args: Any) -> None:
        return None

    async def event(self, *args: Any) -> None:
        return None


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def clients(address: str, count: int) -> None:
    """The child: ``count`` ADS streams that ACK everything."""

    async def one(i: int, channel: grpc.aio.Channel) -> None:
        queue: asyncio.Queue[DiscoveryRequest] = asyncio.Queue()

        async def outgoing():  # type: ignore[no-untyped-def]
            while True:
                yield await queue.get()

        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            outgoing()
        )
        queue.put_nowait(
            DiscoveryRequest(node=Node(id=f"bench/pod-{i}"), type_url=SIDECAR_CONFIG_TYPE_URL)
        )
        async for response in call:
            queue.put_nowait(
                DiscoveryRequest(
                    type_url=SIDECAR_CONFIG_TYPE_URL,
                    version_info=response.version_info,
                    response_nonce=response.nonce,
                )
            )

    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, count // 100))]
    await asyncio.gather(*(one(i, channels[i % len(channels)]) for i in range(count)))


async def main(sidecars: int, changes: int) -> None:
    cache = SnapshotCache()
    ads = AdsServer(cache)
    server, port = await serve(ads, "127.0.0.1:0")
    controller = Controller(cache, ads, NullWriter(), debounce=0.0)  # type: ignore[arg-type]
    state = controller.state
    state.routes[("bench", "chat")] = route_doc(namespace="bench")
    state.policies[("bench", "agent")] = policy_doc(namespace="bench")
    for i in range(sidecars):
        state.pods[("bench", f"pod-{i}")] = Pod(
            "bench", f"pod-{i}", {"app": "agent"}, injected=True
        )
    await controller.sync()
    acks: dict[str, dict[str, float]] = {}
    ads.listeners.append(
        lambda node, type_url, version, error: (
            acks.setdefault(version, {}).setdefault(node, time.perf_counter())
            if not error
            else None
        )
    )
    child = subprocess.Popen(
        [sys.executable, __file__, "--clients", f"127.0.0.1:{port}", "--sidecars", str(sidecars)]
    )
    try:
        first = cache.get("bench/pod-0").version(SIDECAR_CONFIG_TYPE_URL)  # type: ignore[union-attr]
        deadline = time.monotonic() + 120
        while len(acks.get(first, {})) < sidecars:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(acks.get(first, {}))} sidecars connected")
            await asyncio.sleep(0.05)
        print(
            f"{sidecars} sidecars connected and on version {first}; operator RSS {rss_mib():.0f} MiB"
        )
        all_latencies = []
        for change in range(changes):
            state.policies[("bench", "agent")] = policy_doc(
                namespace="bench", output={"maxTokens": 100 + change}
            )
            started = time.perf_counter()
            await controller.sync()
            version = cache.get("bench/pod-0").version(SIDECAR_CONFIG_TYPE_URL)  # type: ignore[union-attr]
            while len(acks.get(version, {})) < sidecars:
                await asyncio.sleep(0.001)
            latencies = sorted(t - started for t in acks[version].values())
            all_latencies += latencies
            print(
                f"change {change + 1}: all {sidecars} ACKed in {latencies[-1] * 1000:.0f} ms "
                f"(p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {latencies[int(0.99 * len(latencies)) - 1] * 1000:.0f} ms)"
            )
        all_latencies.sort()
        print(
            f"\n| sidecars | changes | p50 ms | p99 ms | max ms | operator RSS MiB |\n|---|---|---|---|---|---|\n"
            f"| {sidecars} | {changes} | {statistics.median(all_latencies) * 1000:.0f} "
            f"| {all_latencies[int(0.99 * len(all_latencies)) - 1] * 1000:.0f} | {all_latencies[-1] * 1000:.0f} | {rss_mib():.0f} |"
        )
    finally:
        child.terminate()
        child.wait()
        await server.stop(None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sidecars", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--clients", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if args.clients:
        asyncio.run(clients(args.clients, args.sidecars))
    else:
        asyncio.run(main(args.sidecars, args.changes))
