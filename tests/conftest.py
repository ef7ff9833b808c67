"""Fixtures: stand-in models, sidecars and a real Redis (their handles live in support.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tokenomy_api.clock import Clock
from tokenomy_sidecar.app import Sidecar, SidecarSettings
from tokenomy_sidecar.sources import FileSource
from tokenomy_standin.server import StandinSettings

from support import (
    LiveSidecar,
    RunningStandin,
    SidecarFactory,
    StandinFactory,
    free_port,
    start_redis,
    write_yaml,
)


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


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free port, for the session; stopped afterwards."""
    port = free_port()
    folder = tempfile.mkdtemp()
    process = start_redis(port, folder)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


INTEGRATION_MODULES = frozenset(
    {
        "test_chart",  # helm
        "test_cli",  # the console script as a process
        "test_demo",
        "test_envoy_ads",  # a real Envoy
        "test_monitoring",  # promtool
        "test_operator_wiring",  # the webhook's TLS server
        "test_sidecar_api",
        "test_sidecar_budget",
        "test_sidecar_config",
        "test_sidecar_failover",
        "test_sidecar_routing",
        "test_usage_stream",  # real gRPC
        "test_xds",
    }
)
"""Modules whose tests run real processes or servers on 127.0.0.1."""
PROCESS_FIXTURES = frozenset({"standin", "sidecar", "redis_url", "redis_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/ is ``unit`` or ``integration`` (``pytest -m unit``)."""
    here = Path(__file__).resolve().parent
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if path.parent != here:
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        slow = path.stem in INTEGRATION_MODULES or fixtures & PROCESS_FIXTURES
        item.add_marker(pytest.mark.integration if slow else pytest.mark.unit)
