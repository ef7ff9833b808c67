"""What a stream that does not end well is billed, against what the provider bills.

A stand-in streams a 200-word answer in 200 chunks, one token each (as
OpenAI-compatible servers do), to one sidecar (both in this process). Three
kinds of stream, ``--streams`` each: completed; left by the client after the
first chunk (the sidecar reads on to the usage chunk); cut by the backend
half-way (no usage: the sidecar estimates from the prompt and the chunks it
relayed). Reported: what the sidecar metered per kind, against what the
provider bills for it (the completed stream's usage for the first two; for
the cut one, the prompt and the tokens sent before the cut).

    python bench/stream_billing.py [--streams 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tokenomy_sidecar.app import Sidecar, SidecarSettings
from tokenomy_sidecar.sources import FileSource
from tokenomy_standin.server import StandinSettings

from helpers import backend, policy_doc, route_doc
from support import RunningStandin, write_yaml

PRICE = {"input": "2.50", "output": "10"}
WORDS = 200
PROMPT = "summarise the quarterly report for the board in plain words please"


def cost(prompt_tokens: int, output_tokens: int) -> Decimal:
    return (prompt_tokens * Decimal(PRICE["input"]) + output_tokens * Decimal(PRICE["output"])) / (
        10**6
    )


def metered(sidecar: Sidecar) -> Decimal:
    total = 0.0
    for family in sidecar.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "tokenomy_cost_usd_total":
                total += sample.value
    return Decimal(str(total))


async def main(streams: int) -> None:
    model = RunningStandin(
        StandinSettings(name="m", reply=" ".join(f"w{i}" for i in range(WORDS)), chunks=WORDS)
    )
    model.settings.chunk_interval = 0.001
    await model.start()
    folder = Path(tempfile.mkdtemp())
    route = route_doc(
        namespace="default",
        tiers=[{"name": "t", "backends": [backend("m", url=model.url, price=PRICE)]}],
    )
    write_yaml(
        folder,
        "r.yaml",
        route,
        policy_doc(namespace="default", cache={"exact": {"enabled": False}}),
    )
    sidecar = Sidecar(SidecarSettings(listen_port=0, metrics_port=0, metrics_host="127.0.0.1"))
    FileSource([folder], None, sidecar.holder, sidecar.metrics).load()
    await sidecar.start()
    body = {"model": "chat", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    url = sidecar.api_url + "/v1/chat/completions"
    prompt_tokens = len(PROMPT.split())  # the stand-in counts words
    provider = {
        "completed": cost(prompt_tokens, WORDS) * streams,
        "client left": cost(prompt_tokens, WORDS) * streams,
        "backend cut": cost(prompt_tokens, WORDS // 2) * streams,
    }
    billed: dict[str, Decimal] = {}
    async with aiohttp.ClientSession() as session:
        for kind in provider:
            before = metered(sidecar)
            for _ in range(streams):
                if kind == "backend cut":
                    model.settings.faults.append("mid-stream-drop")
                async with session.post(url, json=body) as response:
                    if kind == "client left":
                        await response.content.readany()
                        response.close()
                        continue
                    with contextlib.suppress(aiohttp.ClientPayloadError):  # the cut
                        await response.read()
            await asyncio.sleep(1.0)  # the left streams are read to their end meanwhile
            billed[kind] = metered(sidecar) - before
    print("| stream | provider bills USD | sidecar metered USD | difference |")
    print("|---|---|---|---|")
    for kind, truth in provider.items():
        diff = (billed[kind] - truth) / truth * 100
        print(f"| {kind} | {truth:.6f} | {billed[kind]:.6f} | {diff:+.1f} % |")
    await sidecar.stop()
    await model.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=20)
    asyncio.run(main(parser.parse_args().streams))
