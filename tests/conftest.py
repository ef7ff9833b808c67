"""Shared paths and fixtures: stand-in models, sidecars and a real Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

from tokenomy_api.clock import Clock
from tokenomy_sidecar.app import Sidecar, SidecarSettings
from tokenomy_sidecar.sources import FileSource
from tokenomy_standin.server import Standin, StandinSettings

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
INVALID = EXAMPLES / "invalid"
CRDS = REPO / "crds"


class RunningStandin:
    """A stand-in model server on a free port."""

    def __init__(self, settings: StandinSettings) -> None:
        self.settings = settings
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self.runner = web.AppRunner(Standin(self.settings).app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port or self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


StandinFactory = Callable[..., Awaitable[RunningStandin]]


@pytest_asyncio.fixture
async def standin() -> AsyncIterator[StandinFactory]:
    """Start stand-ins: ``await standin(name="small", latency=0.01)``."""
    started: list[RunningStandin] = []

    async def make(**settings: Any) -> RunningStandin:
        running = RunningStandin(StandinSettings(**settings))
        await running.start()
        started.append(running)
        return running

    yield make
    for running in started:
        await running.stop()


def write_yaml(folder: Path, name: str, *docs: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


@dataclass
class LiveSidecar:
    """A running sidecar, the folder its config files are in, and their source."""

    sidecar: Sidecar
    source: FileSource
    folder: Path
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Base URL of its OpenAI API, as an SDK wants it."""
        return self.sidecar.api_url + "/v1"

    def client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """The official SDK pointed at the sidecar, with no retries of its own."""
        client = openai.AsyncOpenAI(base_url=self.url, api_key="unused", max_retries=0, **kwargs)
        self.clients.append(client)
        return client

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        total = 0.0
        for family in self.sidecar.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total


SidecarFactory = Callable[..., Awaitable[LiveSidecar]]


@pytest_asyncio.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[SidecarFactory]:
    """Start sidecars from resource docs: ``await sidecar(route_doc(...), policy_doc(...))``."""
    started: list[LiveSidecar] = []

    async def make(
        *docs: dict[str, Any], clock: Clock | None = None, **settings: Any
    ) -> LiveSidecar:
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        write_yaml(folder, "resources.yaml", *docs)
        defaults = {"listen_port": 0, "metrics_port": 0, "metrics_host": "127.0.0.1"}
        running = Sidecar(SidecarSettings(**{**defaults, **settings}), clock=clock)
        source = FileSource([folder], None, running.holder, running.metrics)
        source.load()
        await running.start()
        live = LiveSidecar(running, source, folder)
        started.append(live)
        return live

    yield make
    for live in started:
        for client in live.clients:
            await client.close()
        await live.sidecar.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free port, for the session; stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed; .ci/run installs it (apt-get install redis-server)"
        )
    port = free_port()
    folder = tempfile.mkdtemp()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", folder],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.025)
        else:
            pytest.fail("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
