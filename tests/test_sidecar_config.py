"""Where the sidecar's config comes from: files (watched), Redis for sharing, the CLI process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from tokenomy_api.clock import SystemClock
from tokenomy_api.compiler import compile_configs
from tokenomy_sidecar.app import Sidecar, SidecarSettings
from tokenomy_sidecar.credentials import Credentials
from tokenomy_sidecar.runtime import ConfigHolder, ConfigRejectedError, default_store_factory
from tokenomy_sidecar.sources import compile_files

from helpers import backend, policy, policy_doc, route, route_doc
from support import (
    EXAMPLES,
    SidecarFactory,
    StandinFactory,
    free_port,
    start_redis,
    write_yaml,
)

USER = [{"role": "user", "content": "hi"}]


async def test_two_sidecars_share_hits_through_redis(
    standin: StandinFactory, sidecar: SidecarFactory, redis_url: str
) -> None:
    model = await standin(name="m", reply=f"answer {time.time_ns()}")
    route = route_doc(
        namespace="default", tiers=[{"name": "t", "backends": [backend("b", url=model.url)]}]
    )
    policy = policy_doc(
        namespace="default", cache={"store": {"type": "redis", "redis": {"url": redis_url}}}
    )
    question = [{"role": "user", "content": f"shared question {time.time_ns()}"}]
    one = await sidecar(route, policy)
    two = await sidecar(route, policy)
    first = await one.client().chat.completions.with_raw_response.create(
        model="chat", messages=question
    )
    second = await two.client().chat.completions.with_raw_response.create(
        model="chat", messages=question
    )
    assert first.headers["x-tokenomy-cache"] == "miss"
    assert second.headers["x-tokenomy-cache"] == "exact"
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert len(model.settings.requests) == 1


async def test_redis_down_is_a_miss_not_an_outage(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    model = await standin(name="m")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    route = route_doc(
        namespace="default", tiers=[{"name": "t", "backends": [backend("b", url=model.url)]}]
    )
    policy = policy_doc(
        namespace="default", cache={"store": {"type": "redis", "redis": {"url": dead}}}
    )
    running = await sidecar(route, policy)
    for _ in range(2):
        response = await running.client().chat.completions.with_raw_response.create(
            model="chat", messages=USER
        )
        assert response.parse().choices[0].message.content == "m answers: hi"
    assert running.metric("tokenomy_cache_lookups_total", result="error") == 2
    assert running.metric("tokenomy_cache_stores_total", result="error") == 2


async def test_file_changes_apply_and_bad_changes_keep_the_last_good(
    standin: StandinFactory, sidecar: SidecarFactory
) -> None:
    small = await standin(name="small")
    large = await standin(name="large")
    tiers = [
        {"name": "small", "backends": [backend("s", url=small.url)]},
        {"name": "large", "backends": [backend("l", url=large.url)]},
    ]
    running = await sidecar(
        route_doc(namespace="default", tiers=tiers), policy_doc(namespace="default")
    )
    client = running.client()
    old = running.sidecar.holder.current.config.version
    assert (
        (await client.chat.completions.create(model="chat", messages=USER))
        .choices[0]
        .message.content.startswith("large")
    )

    write_yaml(
        running.folder,
        "resources.yaml",
        route_doc(namespace="default", tiers=tiers, defaultTier="small"),
        policy_doc(namespace="default"),
    )
    running.source.load()
    new = running.sidecar.holder.current.config.version
    assert new != old
    answer = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "again"}]
    )
    assert answer.choices[0].message.content.startswith("small")

    write_yaml(
        running.folder,
        "resources.yaml",
        route_doc(namespace="default", tiers=tiers, defaultTier="nope"),
        policy_doc(namespace="default"),
    )
    with pytest.raises(ConfigRejectedError, match="defaultTier must name one of the tiers"):
        running.source.load()
    assert running.sidecar.holder.current.config.version == new
    assert running.metric("tokenomy_config_updates_total", result="rejected") == 1


async def test_watch_picks_up_changes(standin: StandinFactory, sidecar: SidecarFactory) -> None:
    model = await standin(name="m")
    tiers = [{"name": "t", "backends": [backend("b", url=model.url)]}]
    running = await sidecar(
        route_doc(namespace="default", tiers=tiers), policy_doc(namespace="default")
    )
    running.source.poll_seconds = 0.02
    watcher = asyncio.create_task(running.source.watch())
    try:
        old = running.sidecar.holder.current.config.version
        write_yaml(
            running.folder,
            "resources.yaml",
            route_doc(namespace="default", tiers=tiers),
            policy_doc(namespace="default", output={"maxTokens": 7}),
        )
        for _ in range(200):
            if running.sidecar.holder.current.config.version != old:
                break
            await asyncio.sleep(0.02)
        assert running.sidecar.holder.current.config.output.max_tokens == 7
    finally:
        watcher.cancel()


def test_missing_secret_is_refused_with_its_name(tmp_path: Path) -> None:
    doc = route_doc(
        tiers=[
            {
                "name": "t",
                "backends": [backend("b", credentials={"secretRef": {"name": "keys", "key": "k"}})],
            }
        ]
    )
    write_yaml(tmp_path, "r.yaml", doc, policy_doc())
    config, credentials = compile_files([tmp_path], None, None)

    holder = ConfigHolder(default_store_factory(SystemClock()))
    with pytest.raises(ConfigRejectedError, match="Secret keys not available: keys/k"):
        holder.apply(config, credentials)
    assert holder.current is None


def test_several_policies_need_a_choice(tmp_path: Path) -> None:
    write_yaml(tmp_path, "r.yaml", route_doc(), policy_doc("a"), policy_doc("b"))
    with pytest.raises(
        ConfigRejectedError, match="choose a CostPolicy with --policy NAMESPACE/NAME"
    ):
        compile_files([tmp_path], None, None)
    config, _ = compile_files([tmp_path], "ns/b", None)
    assert config.policy.name == "b"


async def test_the_sidecar_process_serves_and_drains_on_sigterm(
    standin: StandinFactory, tmp_path: Path
) -> None:
    model = await standin(name="m", latency=0.3)
    route = route_doc(
        namespace="default", tiers=[{"name": "t", "backends": [backend("b", url=model.url)]}]
    )
    write_yaml(tmp_path, "r.yaml", route, policy_doc(namespace="default"))
    port, metrics = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenomy_cli.main", "sidecar", "--config", str(tmp_path),
         "--listen", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{metrics}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"http://127.0.0.1:{metrics}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.02)
            body = {"model": "chat", "messages": USER}
            in_flight = asyncio.create_task(
                session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
            )
            await asyncio.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.05)
            # Draining: readiness still answers, and says so, until the request is done.
            async with session.get(f"http://127.0.0.1:{metrics}/readyz") as r:
                assert (r.status, (await r.json())["status"]) == (503, "draining")
            response = await in_flight
            assert response.status == 200  # the request in flight at SIGTERM finished
            assert (await response.json())["choices"][0]["message"]["content"] == "m answers: hi"
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_sidecar_process_refuses_a_bad_config(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(policy_doc(routes=("missing",))))
    result = subprocess.run(
        [sys.executable, "-m", "tokenomy_cli.main", "sidecar", "--config", str(tmp_path), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert 'no ModelRoute "missing" in namespace ns' in result.stderr
    assert "Traceback" not in result.stderr


def test_examples_load_as_a_sidecar_config() -> None:
    config, credentials = compile_files([EXAMPLES], None, None)
    assert config.policy.key == "support/support-agent"
    assert credentials.get(config.routes[0].tiers[0].backends[2].credentials) == "sk-replace-me"  # type: ignore[arg-type]


async def test_a_store_a_reload_replaced_is_closed_and_let_go() -> None:
    sidecar = Sidecar(SidecarSettings(store_retire_seconds=0.05))
    stores = []
    for entries in (100, 200, 300):
        compiled = compile_configs([policy(cache={"store": {"maxEntries": entries}})], [route()])
        runtime = sidecar.holder.apply(compiled.configs["ns/agent"], Credentials())
        await runtime.store.put("p", "k", b"an answer", 60)
        stores.append(runtime.store)
    await asyncio.sleep(0.2)
    assert [len(s) for s in stores] == [0, 0, 1]  # type: ignore[arg-type]
    assert sidecar.holder.retired == []  # nothing holds the replaced stores any more
    assert sidecar._retiring == {}
    await sidecar.stop()


async def test_redis_down_and_back_is_a_miss_meanwhile_and_a_hit_again_after(
    standin: StandinFactory, sidecar: SidecarFactory, tmp_path: Path
) -> None:
    model = await standin(name="m")
    port = free_port()
    redis = start_redis(port, str(tmp_path))
    route = route_doc(
        namespace="default", tiers=[{"name": "t", "backends": [backend("b", url=model.url)]}]
    )
    policy = policy_doc(
        namespace="default",
        cache={"store": {"type": "redis", "redis": {"url": f"redis://127.0.0.1:{port}/0"}}},
    )
    running = await sidecar(route, policy)
    client = running.client()

    async def cache_of(text: str) -> str:
        response = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": text}]
        )
        return str(response.headers["x-tokenomy-cache"])

    try:
        assert [await cache_of("one"), await cache_of("one")] == ["miss", "exact"]
        redis.terminate()
        redis.wait(timeout=10)
        # Down: every request still answered, as a miss.
        assert [await cache_of("one"), await cache_of("two")] == ["miss", "miss"]
        assert running.metric("tokenomy_cache_lookups_total", result="error") == 2
        redis = start_redis(port, str(tmp_path))  # back, empty
        assert [await cache_of("two"), await cache_of("two")] == ["miss", "exact"]
    finally:
        redis.terminate()
        redis.wait(timeout=10)
