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
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
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
class Call:
    """One request to replay."""

    model: str
    messages: list[dict[str, Any]]
    body: dict[str, Any] = field(default_factory=dict)
    """Other fields of the request body (``max_tokens``, ``temperature``...)."""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """What one request came back with."""

    index: int
    """Position of the call in the replayed list."""
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


def read_examples(examples: Path) -> list[dict[str, Any]]:
    """The CostPolicy and ModelRoute documents of a folder."""
    docs = [
        doc
        for path in sorted(examples.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") in ("CostPolicy", "ModelRoute")
    ]
    kinds = sorted(d["kind"] for d in docs)
    if kinds != ["CostPolicy", "ModelRoute"]:
        raise ValueError(f"{examples}: expected one CostPolicy and one ModelRoute, found {kinds}")
    return docs


def point_at(
    docs: list[dict[str, Any]], tier_urls: dict[str, str], mcp_urls: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The documents with every backend of a tier sent to that tier's stand-in, keys dropped,
    and the MCP servers ``mcp_urls`` names sent to the demo's own."""
    out = []
    for original in docs:
        doc = copy.deepcopy(original)
        if doc["kind"] == "CostPolicy":
            for server in doc["spec"].get("tools", {}).get("mcpServers", []):
                server["url"] = (mcp_urls or {}).get(server["name"], server["url"])
        if doc["kind"] == "ModelRoute":
            for tier in doc["spec"].get("tiers", []):
                for backend in tier["backends"]:
                    backend.pop("service", None)
                    backend.pop("credentials", None)
                    backend["url"] = tier_urls[tier["name"]]
            embedding = doc["spec"].get("embedding")
            if embedding and embedding.get("provider") != "local":
                # No provider keys here: embed locally instead.
                doc["spec"]["embedding"] = {"provider": "local"}
        out.append(doc)
    return out


class Processes:
    """Child processes, stopped together."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str, module: str = "tokenomy_cli.main") -> None:
        command = [sys.executable, "-m", module, *args]
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


def wait_port(url: str, processes: Processes, timeout: float = 60.0) -> None:
    """Wait until ``url``'s port takes connections; a child that dies ends the wait."""
    address = url.split("//", 1)[1].split("/", 1)[0]
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check()
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not take connections in {timeout:.0f} s")


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
def started(
    tier_scripts: dict[str, dict[str, Any]],
    docs: list[dict[str, Any]],
    words: int = 0,
    crm: bool = False,
) -> Iterator[tuple[str, dict[str, str], list[dict[str, Any]]]]:
    """A stand-in per tier and a sidecar running: (API URL, stand-in URL by tier, resources).

    ``words``: how long a stand-in's unscripted answers are (0: it echoes the question);
    ``crm``: also the demo's CRM (an MCP server, :mod:`tokenomy_demo.crm`), as ``crm`` in
    the URLs and the policy's MCP server ``crm``.
    """
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="tokenomy-demo-") as folder:
        root = Path(folder)
        urls = {}
        mcp_urls = {}
        try:
            if crm:
                port = free_port()
                processes.start("crm", "--port", str(port), module="tokenomy_demo.crm")
                mcp_urls["crm"] = f"http://127.0.0.1:{port}/mcp"
            for tier, script in tier_scripts.items():
                port = free_port()
                path = root / f"{tier}.json"
                path.write_text(json.dumps(script))
                latency, interval = TIMING.get(tier, TIMING["medium"])
                processes.start(
                    tier, "standin", "--port", str(port), "--name", tier, "--script", str(path),
                    "--latency", latency, "--chunk-interval", interval, "--chunks", "8",
                    "--words", str(words),
                )  # fmt: skip
                urls[tier] = f"http://127.0.0.1:{port}/v1"
            served = point_at(docs, urls, mcp_urls)
            config = root / "config"
            config.mkdir()
            (config / "demo.yaml").write_text(yaml.safe_dump_all(served))
            api, metrics = free_port(), free_port()
            processes.start(
                "sidecar", "sidecar", "--config", str(config), "--listen", f"127.0.0.1:{api}",
                "--metrics", f"127.0.0.1:{metrics}", "--log-level", "WARNING",
            )  # fmt: skip
            asyncio.run(_wait_all(processes, urls, metrics))
            for url in mcp_urls.values():
                wait_port(url, processes)
            yield f"http://127.0.0.1:{api}/v1", {**urls, **mcp_urls}, served
        finally:
            processes.stop()


async def _wait_all(processes: Processes, urls: dict[str, str], metrics: int) -> None:
    await asyncio.gather(
        *(wait_ready(f"{url}/models", processes) for url in urls.values()),
        wait_ready(f"http://127.0.0.1:{metrics}/readyz", processes),
    )


async def replay(
    base_url: str, calls: list[Call], progress: Callable[[int], None] | None = None
) -> list[Result]:
    """Send every call to ``base_url`` with the openai SDK, CONCURRENCY at a time."""
    try:
        # The demo's client is the official SDK; only the demo needs it.
        import openai  # noqa: PLC0415
    except ImportError:
        raise RuntimeError("the demo needs the openai SDK: pip install 'tokenomy[demo]'") from None
    client = openai.AsyncOpenAI(base_url=base_url, api_key="demo", max_retries=0)
    gate = asyncio.Semaphore(CONCURRENCY)
    done = 0

    async def one(index: int, call: Call) -> Result:
        nonlocal done
        async with gate:
            started_at = time.perf_counter()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=call.model, messages=call.messages,  # type: ignore[arg-type]
                    extra_headers=call.headers, extra_body=call.body,
                )  # fmt: skip
            except openai.APIStatusError as error:
                raw = None
                status, text = error.status_code, str(error)
            seconds = time.perf_counter() - started_at
        done += 1
        if progress is not None:
            progress(done)
        if raw is None:
            return Result(index, "", "", "", Decimal(0), seconds, text, status)
        answer = raw.parse()
        h = raw.headers
        return Result(
            index=index,
            tier=h.get("x-tokenomy-tier", ""),
            cache=h.get("x-tokenomy-cache", "bypass"),
            reason=h.get("x-tokenomy-route-reason", ""),
            cost=Decimal(h.get("x-tokenomy-cost-usd", "0")),
            seconds=seconds,
            text=answer.choices[0].message.content or "",
            status=raw.http_response.status_code,
        )

    try:
        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(calls))))
    finally:
        await client.close()


def demo_call(q: Question) -> Call:
    """A demo question as the support agent sends it."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q.text}]
    return Call("support-chat", messages, headers={"x-tenant-id": TENANT})
