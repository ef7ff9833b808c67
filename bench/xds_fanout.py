"""Control-plane fan-out: a CostPolicy change reaching many connected sidecars.

The operator's real pieces run in this process — ClusterState, the Controller
and its loop (debounce 50 ms, as deployed), SnapshotCache, AdsServer on gRPC —
with N injected pods selected by one policy. A child process opens one ADS
stream per simulated sidecar, each on its own TCP connection as deployed
(``--per-connection K`` multiplexes K streams on one), and ACKs every
response, reconnecting after a failed stream as the sidecar does. Measured: time from the policy change to
each sidecar's ACK of the new version (p50, p99, all), this process's CPU per
ACK over the rollout (pushing, ACK handling and status included) and its
memory per connected sidecar.

    python bench/xds_fanout.py [--sidecars 10000] [--changes 5] [--per-connection 1]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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
from tokenomy_operator import collector
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


async def clients(address: str, count: int, per_connection: int) -> None:
    """The child: ``count`` ADS streams that ACK everything, reconnecting as a sidecar does.

    Real sidecars are ``count`` processes with one stream each; this one
    process holds all their objects, so its garbage collector is set as the
    operator's is and what exists once all are connected is frozen; otherwise
    its full collections would slow the operator's rollout on the shared cores.
    """
    failures: dict[str, int] = {}
    answered: set[int] = set()
    collector.tune()

    async def one(i: int, channel: grpc.aio.Channel) -> None:
        acked = ""
        while True:
            queue: asyncio.Queue[DiscoveryRequest] = asyncio.Queue()

            async def outgoing(q: asyncio.Queue[DiscoveryRequest] = queue):  # type: ignore[no-untyped-def]
                while True:
                    yield await q.get()

            queue.put_nowait(
                DiscoveryRequest(
                    node=Node(id=f"bench/pod-{i}"),
                    type_url=SIDECAR_CONFIG_TYPE_URL,
                    version_info=acked,
                )
            )
            try:
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(
                    channel
                ).StreamAggregatedResources(outgoing())
                async for response in call:
                    acked = response.version_info
                    if len(answered) < count:
                        answered.add(i)
                        if len(answered) == count:
                            gc.freeze()
                    queue.put_nowait(
                        DiscoveryRequest(
                            type_url=SIDECAR_CONFIG_TYPE_URL,
                            version_info=response.version_info,
                            response_nonce=response.nonce,
                        )
                    )
            except grpc.aio.AioRpcError as error:
                reason = f"{error.code().name}: {error.details()}"
                failures[reason] = failures.get(reason, 0) + 1
                if sum(failures.values()) in (1, 10, 100, 1000):
                    print(f"client: stream failures so far {failures}", file=sys.stderr)
                await asyncio.sleep(0.5)

    # A local subchannel pool per channel: otherwise grpc shares one TCP
    # connection among all channels to the same address.
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, count // per_connection))
    ]
    await asyncio.gather(*(one(i, channels[i % len(channels)]) for i in range(count)))


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of ``pid``."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def operator(sidecars: int) -> tuple[SnapshotCache, AdsServer, Controller]:
    """The operator's pieces with one policy selecting ``sidecars`` injected pods."""
    cache = SnapshotCache()
    ads = AdsServer(cache)
    controller = Controller(cache, ads, NullWriter())  # type: ignore[arg-type]
    state = controller.state
    state.routes[("bench", "chat")] = route_doc(namespace="bench")
    state.policies[("bench", "agent")] = policy_doc(namespace="bench")
    for i in range(sidecars):
        state.pods[("bench", f"pod-{i}")] = Pod(
            "bench", f"pod-{i}", {"app": "agent"}, injected=True
        )
    return cache, ads, controller


async def main(sidecars: int, changes: int, per_connection: int) -> None:
    collector.tune()  # as the operator does at start
    cache, ads, controller = operator(sidecars)
    state = controller.state
    server, port = await serve(ads, "127.0.0.1:0")
    loop = asyncio.create_task(controller.run())
    await controller.sync()
    acks: dict[str, dict[str, float]] = {}
    ads.listeners.append(
        lambda node, type_url, version, error: (
            acks.setdefault(version, {}).setdefault(node, time.perf_counter())
            if not error
            else None
        )
    )
    idle_rss = rss_mib()
    child = subprocess.Popen(
        [
            sys.executable, __file__, "--clients", f"127.0.0.1:{port}",
            "--sidecars", str(sidecars), "--per-connection", str(per_connection),
        ]
    )  # fmt: skip
    try:
        first = cache.get("bench/pod-0").version(SIDECAR_CONFIG_TYPE_URL)  # type: ignore[union-attr]
        began = time.monotonic()
        deadline = began + 300
        while len(acks.get(first, {})) < sidecars:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(acks.get(first, {}))} sidecars connected")
            await asyncio.sleep(0.05)
        connected_rss = rss_mib()
        per_sidecar_kib = (connected_rss - idle_rss) * 1024 / sidecars
        print(
            f"{sidecars} sidecars connected and on version {first} in "
            f"{time.monotonic() - began:.1f} s; operator RSS {connected_rss:.0f} MiB "
            f"({per_sidecar_kib:.1f} KiB per sidecar)"
        )
        await asyncio.sleep(1)  # let the status refresh after the last ACK settle
        all_latencies = []
        cpu_per_ack = []
        for change in range(changes):
            state.policies[("bench", "agent")] = policy_doc(
                namespace="bench", output={"maxTokens": 100 + change}
            )
            cpu0, client0 = cpu_seconds(), cpu_seconds(child.pid)
            started = time.perf_counter()
            controller.poke()
            while (version := controller.latest.configs["bench/agent"].version) == first:  # type: ignore[union-attr]
                await asyncio.sleep(0.001)
            first = version
            while len(acks.get(version, {})) < sidecars:
                await asyncio.sleep(0.001)
            cpu, client = cpu_seconds() - cpu0, cpu_seconds(child.pid) - client0
            cpu_per_ack.append(cpu / sidecars)
            latencies = sorted(t - started for t in acks[version].values())
            all_latencies += latencies
            print(
                f"change {change + 1}: all {sidecars} ACKed in {latencies[-1] * 1000:.0f} ms "
                f"(p50 {statistics.median(latencies) * 1000:.0f} ms, "
                f"p99 {latencies[int(0.99 * len(latencies)) - 1] * 1000:.0f} ms); "
                f"operator CPU {cpu:.2f} s, {cpu / sidecars * 1e6:.0f} µs per ACK; "
                f"simulated sidecars' CPU {client:.2f} s"
            )
            await asyncio.sleep(0.5)
        all_latencies.sort()
        p99 = all_latencies[int(0.99 * len(all_latencies)) - 1] * 1000
        print(
            "\n| sidecars | changes | p50 ms | p99 ms | max ms | operator CPU µs / ACK "
            "| operator RSS MiB | KiB / sidecar |\n|---|---|---|---|---|---|---|---|\n"
            f"| {sidecars:,} | {changes} | {statistics.median(all_latencies) * 1000:.0f} "
            f"| {p99:.0f} | {all_latencies[-1] * 1000:.0f} "
            f"| {statistics.median(cpu_per_ack) * 1e6:.0f} | {rss_mib():.0f} "
            f"| {per_sidecar_kib:.1f} |"
        )
    finally:
        loop.cancel()
        child.terminate()
        child.wait()
        await server.stop(None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sidecars", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--clients", help=argparse.SUPPRESS)
    parser.add_argument(
        "--per-connection",
        type=int,
        default=1,
        help="ADS streams per TCP connection (1, as deployed: each sidecar dials its own)",
    )
    args = parser.parse_args()
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if args.clients:
        asyncio.run(clients(args.clients, args.sidecars, args.per_connection))
    else:
        asyncio.run(main(args.sidecars, args.changes, args.per_connection))
