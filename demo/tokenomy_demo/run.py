"""Start stand-in tiers and a sidecar with the example policy, replay the workload, stop.

Everything runs as child processes on loopback and free ports, and is
stopped when the run ends, however it ends. The client is the official
``openai`` SDK, as an agent would use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import yaml

from tokenomy_demo.workload import Data, Question, support_answer

SYSTEM = "You are the support assistant of a bank. Answer briefly and correctly."
TENANT = "demo"
CONCURRENCY = 16

# Hosted-model timing, compressed 10x so the demo finishes quickly: time to
# first token, then 8 chunks (small models generate faster too).
TIMING = {
    "small": ("0.03", "0.004"),
    "medium": ("0.05", "0.008"),
    "large": ("0.08", "0.015"),
}


@dataclass(frozen=True)
class Result:
    """What one request came back with."""

    question: Question
    tier: str
    cache: str
    reason: str
    cost: Decimal
    seconds: float
    text: str
    status: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scripts(data: Data) -> dict[str, dict[str, Any]]:
    """Each tier's answers: small and medium replay the weak model, large the strong one."""
    out: dict[str, dict[str, Any]] = {"small": {}, "medium": {}, "large": {}}
    for tier, script in out.items():
        for questions in data.support.values():
            for q in questions:
                script[q.text] = {"replies": [support_answer(q.intent)]}
        for q in data.math:
            script[q.text] = {"replies": [q.answers[1] if tier == "large" else q.answers[0]]}
    return out


def demo_resources(examples: Path, tier_urls: dict[str, str]) -> list[dict[str, Any]]:
    """The example CostPolicy and ModelRoute, with every backend pointed at its tier's stand-in."""
    docs = []
    for path in sorted(examples.glob("*.yaml")):
        for loaded in yaml.safe_load_all(path.read_text()):
            if not loaded or loaded.get("kind") not in ("CostPolicy", "ModelRoute"):
                continue
            doc = copy.deepcopy(loaded)
            for tier in doc["spec"].get("tiers", []) if doc["kind"] == "ModelRoute" else []:
                for backend in tier["backends"]:
                    backend.pop("service", None)
                    backend.pop("credentials", None)
                    backend["url"] = tier_urls[tier["name"]]
            docs.append(doc)
    kinds = sorted(d["kind"] for d in docs)
    if kinds != ["CostPolicy", "ModelRoute"]:
        raise ValueError(f"{examples}: expected one CostPolicy and one ModelRoute, found {kinds}")
    return docs


class Processes:
    """Child processes, stopped together."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> None:
        command = [sys.executable, "-m", "tokenomy_cli.main", *args]
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ}
        )
        self.children.append((name, process))

    def check(self) -> None:
        """Raise with a child's own error output if it has died."""
        for name, process in self.children:
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise RuntimeError(f"{name} exited with {process.returncode}: {err[-2000:]}")

    def stop(self) -> None:
        for _, process in self.children:
            if process.poll() is None:
                process.terminate()
        for _, process in self.children:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_ready(url: str, processes: Processes, timeout: float = 90.0) -> None:
    """Poll ``url`` until it answers 200; a child that dies ends the wait with its error."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            processes.check()
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not become ready in {timeout:.0f} s")


@contextlib.contextmanager
def started(data: Data, examples: Path) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """Stand-ins and a sidecar running: (sidecar API URL, large stand-in URL, resources)."""
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="tokenomy-demo-") as folder:
        root = Path(folder)
        urls = {}
        try:
            for tier, script in scripts(data).items():
                port = free_port()
                path = root / f"{tier}.json"
                path.write_text(json.dumps(script))
                latency, interval = TIMING[tier]
                processes.start(
                    tier, "standin", "--port", str(port), "--name", tier, "--script", str(path),
                    "--latency", latency, "--chunk-interval", interval, "--chunks", "8",
                )  # fmt: skip
                urls[tier] = f"http://127.0.0.1:{port}/v1"
            docs = demo_resources(examples, urls)
            config = root / "config"
            config.mkdir()
            (config / "demo.yaml").write_text(yaml.safe_dump_all(docs))
            api, metrics = free_port(), free_port()
            processes.start(
                "sidecar", "sidecar", "--config", str(config), "--listen", f"127.0.0.1:{api}",
                "--metrics", f"127.0.0.1:{metrics}", "--log-level", "WARNING",
            )  # fmt: skip
            asyncio.run(_wait_all(processes, urls, metrics))
            yield f"http://127.0.0.1:{api}/v1", urls["large"], docs
        finally:
            processes.stop()


async def _wait_all(processes: Processes, urls: dict[str, str], metrics: int) -> None:
    await asyncio.gather(
        *(wait_ready(f"{url}/models", processes) for url in urls.values()),
        wait_ready(f"http://127.0.0.1:{metrics}/readyz", processes),
    )


async def replay(
    base_url: str,
    questions: list[Question],
    progress: Callable[[int], None] | None = None,
    headers: dict[str, str] | None = None,
) -> list[Result]:
    """Send every question through ``base_url`` with the openai SDK, CONCURRENCY at a time."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="demo", max_retries=0)
    gate = asyncio.Semaphore(CONCURRENCY)
    done = 0

    async def one(q: Question) -> Result:
        nonlocal done
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q.text}]
        async with gate:
            started_at = time.perf_counter()
            raw = await client.chat.completions.with_raw_response.create(
                model="support-chat", messages=messages,  # type: ignore[arg-type]
                extra_headers={"x-tenant-id": TENANT, **(headers or {})},
            )  # fmt: skip
            seconds = time.perf_counter() - started_at
        answer = raw.parse()
        done += 1
        if progress is not None:
            progress(done)
        h = raw.headers
        return Result(
            question=q,
            tier=h.get("x-tokenomy-tier", "large"),
            cache=h.get("x-tokenomy-cache", "bypass"),
            reason=h.get("x-tokenomy-route-reason", ""),
            cost=Decimal(h.get("x-tokenomy-cost-usd", "0")),
            seconds=seconds,
            text=answer.choices[0].message.content or "",
            status=raw.http_response.status_code,
        )

    try:
        return list(await asyncio.gather(*(one(q) for q in questions)))
    finally:
        await client.close()
