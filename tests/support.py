"""What tests share: paths, and handles on live stand-ins and sidecars (fixtures in conftest)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from aiohttp import web

from tokenomy_sidecar.app import Sidecar
from tokenomy_sidecar.sources import FileSource
from tokenomy_standin.server import Standin, StandinSettings

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
INVALID = EXAMPLES / "invalid"
CRDS = REPO / "crds"


def kustomize(folder: str) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize manifests/<folder>`` renders."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed to render manifests/"
    out = subprocess.run(
        [kubectl, "kustomize", str(REPO / "manifests" / folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


class RunningStandin:
    """A stand-in model server on a free port."""

    def __init__(self, settings: StandinSettings) -> None:
        self.settings = settings
        self.runner: web.AppRunner | None = None
        self.server = Standin(self.settings)
        self.url = ""
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self.runner = web.AppRunner(self.server.app, access_log=None)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_redis(port: int, folder: str) -> subprocess.Popen[bytes]:
    """A real redis-server on ``port`` (no persistence), once it accepts connections."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (.ci/run installs Debian's redis-server)")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", folder],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.025)
    process.kill()
    pytest.fail("redis-server did not start")
