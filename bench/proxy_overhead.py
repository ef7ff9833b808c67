"""What a proxy adds: the sidecar against direct calls, Envoy and LiteLLM, side by side.

Every proxy runs as its own process in front of the same stand-in upstream
(no added latency, 100-word answers, 100 chunks when streamed); the load
generator runs in this process. Reported per proxy, mode and concurrency:
p50 and p99 latency, what the proxy adds to direct p50, requests per second,
and the proxy process's CPU seconds per 1,000 requests (from /proc).

    python bench/proxy_overhead.py [--requests 2000] [--litellm PATH/TO/litellm]

The sidecar runs with caching off (pure pass-through) so the numbers are
its floor; cache hits are measured in bench/cache_latency.py. With
``--injected`` a second sidecar runs as an injected one would: its config
over ADS and every request reported on the usage stream, to a control plane
(ADS + the operator's usage service, no Kubernetes) in its own process,
whose CPU per 1,000 requests is printed after the table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from harness import (
    Proc,
    bench_resources,
    cpu_seconds,
    envoy_binary,
    free_port,
    load,
    start,
    tokenomy,
)

from harness_envoy import http_listener, static_cluster

BODY = {"model": "chat", "messages": [{"role": "user", "content": "How do I reset my card PIN?"}]}


def wait_ready(metrics_port: int, timeout: float = 30.0) -> None:
    """Until the sidecar serves a config (``/readyz``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the injected sidecar never got its config")


def sidecar_config(folder: Path, upstream: int) -> Path:
    return bench_resources(folder, upstream, {"cache": {"exact": {"enabled": False}}})


async def control_plane(port: int, resources: str) -> None:
    """The child of ``--injected``: ADS with the bench policy, and the usage stream."""
    from tokenomy_api.clock import SystemClock  # noqa: PLC0415
    from tokenomy_api.compiler import compile_configs  # noqa: PLC0415
    from tokenomy_api.loader import load_resources  # noqa: PLC0415
    from tokenomy_operator.spend.usage import UsageService, add_to_server  # noqa: PLC0415
    from tokenomy_operator.xds.resources import snapshot_for  # noqa: PLC0415
    from tokenomy_operator.xds.server import AdsServer, serve  # noqa: PLC0415
    from tokenomy_operator.xds.snapshot import SnapshotCache  # noqa: PLC0415

    loaded = load_resources([resources])
    config = compile_configs(loaded.policies, loaded.routes).configs["bench/bench"]
    cache = SnapshotCache()
    cache.set(NODE, snapshot_for(config))
    usage = UsageService(lambda p: None, SystemClock())
    server, _ = await serve(
        AdsServer(cache), f"127.0.0.1:{port}", lambda s: add_to_server(usage, s)
    )
    await server.wait_for_termination()


NODE = "bench/pod"


def envoy_config(folder: Path, port: int, upstream: int) -> Path:
    routes = {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "60s"}}
                ],
            }
        ]
    }
    config = {
        "static_resources": {
            "listeners": [http_listener("bench", port, route_config=routes)],
            "clusters": [static_cluster("upstream", upstream)],
        }
    }
    path = folder / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def litellm_config(folder: Path, upstream: int) -> Path:
    config = {
        "model_list": [
            {
                "model_name": "chat",
                "litellm_params": {
                    "model": "openai/standin",
                    "api_base": f"http://127.0.0.1:{upstream}/v1",
                    "api_key": "unused",
                },
            }
        ],
        "general_settings": {"master_key": "sk-bench"},
    }
    path = folder / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def measure(
    procs: list[tuple[str, str, Proc | None, dict[str, str]]], requests: int
) -> list[str]:
    rows = []
    for stream in (False, True):
        body = {**BODY, "stream": stream}
        n = requests // 2 if stream else requests
        for concurrency in (1, 32):
            direct_p50 = None
            for name, url, proc, headers in procs:
                result = await load(
                    url, body, n, concurrency, headers, proc.process.pid if proc else None
                )
                if direct_p50 is None:
                    direct_p50 = result.p50
                added = "" if proc is None else f"{(result.p50 - direct_p50) * 1000:+.2f}"
                cpu = f"{result.cpu / n * 1000:.2f}" if proc else ""
                rows.append(
                    f"| {name} | {'stream (100 chunks)' if stream else 'non-stream'} | {concurrency} "
                    f"| {result.p50 * 1000:.2f} | {result.p99 * 1000:.2f} | {added} "
                    f"| {result.rps:,.0f} | {cpu} | {result.errors} |"
                )
                print(rows[-1], flush=True)
    return rows


def start_injected(folder: Path, upstream_port: int) -> tuple[Proc, Proc, str]:
    """The control plane and a sidecar fed by it; returns both and the sidecar's URL."""
    xds, port, metrics = free_port(), free_port(), free_port()
    resources = str(sidecar_config(folder, upstream_port))
    plane = start("control plane", [sys.executable, __file__, "--control-plane", str(xds), resources], xds)  # fmt: skip
    try:
        injected = start(
            "injected sidecar",
            tokenomy("sidecar", "--xds", f"127.0.0.1:{xds}", "--node-id", NODE, "--listen", f"127.0.0.1:{port}",
                     "--metrics", f"127.0.0.1:{metrics}", "--log-level", "WARNING"),
            port,
        )  # fmt: skip
    except BaseException:
        plane.stop()
        raise
    try:
        wait_ready(metrics)
    except BaseException:
        injected.stop()
        plane.stop()
        raise
    return plane, injected, f"http://127.0.0.1:{port}/v1/chat/completions"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--litellm", help="path of LiteLLM's `litellm` command, to include it")
    parser.add_argument("--no-envoy", action="store_true")
    parser.add_argument(
        "--injected", action="store_true", help="add a sidecar fed by ADS that reports usage"
    )
    parser.add_argument("--control-plane", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.control_plane:
        asyncio.run(control_plane(int(args.control_plane[0]), args.control_plane[1]))
        return
    folder = Path(tempfile.mkdtemp())
    upstream_port = free_port()
    started: list[Proc] = []
    try:
        upstream = start(
            "upstream",
            tokenomy("standin", "--port", str(upstream_port), "--words", "100", "--chunks", "100"),
            upstream_port,
        )
        started.append(upstream)
        procs: list[tuple[str, str, Proc | None, dict[str, str]]] = [
            ("direct", f"http://127.0.0.1:{upstream_port}/v1/chat/completions", None, {})
        ]
        port, metrics = free_port(), free_port()
        sidecar = start(
            "tokenomy sidecar",
            tokenomy("sidecar", "--config", str(sidecar_config(folder, upstream_port)), "--listen", f"127.0.0.1:{port}",
                     "--metrics", f"127.0.0.1:{metrics}", "--log-level", "WARNING"),
            port,
        )  # fmt: skip
        started.append(sidecar)
        procs.append(
            ("tokenomy sidecar", f"http://127.0.0.1:{port}/v1/chat/completions", sidecar, {})
        )
        plane = None
        if args.injected:
            plane, injected, url = start_injected(folder, upstream_port)
            started += [plane, injected]
            procs.append(("tokenomy sidecar, injected (usage reports)", url, injected, {}))
        if not args.no_envoy:
            port = free_port()
            envoy = start(
                "envoy",
                [envoy_binary(), "-c", str(envoy_config(folder, port, upstream_port)), "--concurrency", "1", "--log-level", "error"],
                port,
            )  # fmt: skip
            started.append(envoy)
            procs.append(
                ("envoy 1.40 (1 worker)", f"http://127.0.0.1:{port}/v1/chat/completions", envoy, {})
            )
        if args.litellm:
            port = free_port()
            litellm = start(
                "litellm",
                [args.litellm, "--config", str(litellm_config(folder, upstream_port)), "--port", str(port), "--num_workers", "1"],
                port,
                env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
            )  # fmt: skip
            started.append(litellm)
            procs.append(
                (
                    "litellm proxy (1 worker)",
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    litellm,
                    {"Authorization": "Bearer sk-bench"},
                )
            )
        print(
            "| proxy | mode | concurrency | p50 ms | p99 ms | added p50 ms | req/s | proxy CPU-s / 1000 | errors |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        plane_cpu = cpu_seconds(plane.process.pid) if plane else 0.0
        asyncio.run(measure(procs, args.requests))
        if plane is not None:
            served = 2 * (args.requests + args.requests // 2)  # both modes, both concurrencies
            used = cpu_seconds(plane.process.pid) - plane_cpu
            print(f"\ncontrol plane (ADS + usage service): {used / served * 1000:.3f} CPU-s "
                  f"per 1,000 reported requests")  # fmt: skip
    finally:
        for proc in reversed(started):
            proc.stop()


if __name__ == "__main__":
    main()
