"""Shared pieces of the benchmarks: processes on free ports, CPU accounting, load, percentiles."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness_envoy import envoy_binary

__all__ = ["envoy_binary"]

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def bench_resources(folder: Path, upstream: int, policy: dict[str, Any], **route: Any) -> Path:
    """A one-tier ModelRoute to the stand-in upstream and a CostPolicy, written as YAML."""
    docs = [
        {
            "apiVersion": "tokenomy.dev/v1alpha1",
            "kind": "ModelRoute",
            "metadata": {"name": "chat", "namespace": "bench"},
            "spec": {
                "model": "chat",
                "tiers": [
                    {
                        "name": "only",
                        "backends": [
                            {
                                "name": "upstream",
                                "model": "standin",
                                "url": f"http://127.0.0.1:{upstream}/v1",
                                "price": {"input": "2.50", "output": "10"},
                            }
                        ],
                    }
                ],
                **route,
            },
        },
        {
            "apiVersion": "tokenomy.dev/v1alpha1",
            "kind": "CostPolicy",
            "metadata": {"name": "bench", "namespace": "bench"},
            "spec": {"selector": {}, "routes": ["chat"], **policy},
        },
    ]
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def tokenomy(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokenomy_cli.main", *args]


@dataclass
class Proc:
    """A server process under test."""

    name: str
    process: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(
    name: str,
    command: Sequence[str],
    port: int,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> Proc:
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        wait_port(port, timeout=timeout)
    except BaseException:
        process.kill()  # not left running behind a failed bench
        process.wait()
        raise
    return Proc(name, process, port)


@dataclass
class LoadResult:
    latencies: list[float]
    seconds: float
    cpu: float
    errors: int

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds


async def load(
    url: str,
    body: dict[str, Any],
    requests: int,
    concurrency: int,
    headers: dict[str, str] | None = None,
    pid: int | None = None,
) -> LoadResult:
    """Send ``requests`` POSTs with ``concurrency`` in flight; read every body to the end."""
    payload = orjson.dumps(body)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            nonlocal errors
            started = time.perf_counter()
            async with session.post(url, data=payload, headers=all_headers) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - started)

        for _ in range(min(50, requests)):  # warm connections and caches
            await one()
        latencies.clear()
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                await one()

        cpu0 = cpu_seconds(pid) if pid else 0.0
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
        cpu = (cpu_seconds(pid) - cpu0) if pid else 0.0
    return LoadResult(latencies, seconds, cpu, errors)
