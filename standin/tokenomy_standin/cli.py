"""``tokenomy standin``: a stand-in model server on a port, for trying the sidecar by hand."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tokenomy_standin.server import StandinSettings, load_script, start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``standin``'s arguments."""
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="standin", help="shown in its answers")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--chunk-interval", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--chunks", type=int, default=8, help="content chunks per stream")
    parser.add_argument(
        "--logprob", type=float, default=-0.05, help="log-probability of every answer token"
    )
    parser.add_argument(
        "--script",
        type=Path,
        help='JSON of scripted answers: {"question": {"replies": [...], "logprob": -0.1}}',
    )
    parser.add_argument(
        "--words",
        type=int,
        default=0,
        help="answer with this many words (default: echo the question)",
    )
    parser.add_argument(
        "--prompt-cache",
        action="store_true",
        help="report repeated message prefixes as cached input tokens, as a prefix cache would",
    )


async def _serve(args: argparse.Namespace) -> None:
    settings = StandinSettings(
        name=args.name,
        latency=args.latency,
        chunk_interval=args.chunk_interval,
        chunks=args.chunks,
        logprob=args.logprob,
        script=load_script(args.script) if args.script else {},
        reply=" ".join(f"w{i}" for i in range(args.words)) if args.words else None,
        prompt_cache=args.prompt_cache,
    )
    runner, url = await start(settings, args.host, args.port)
    print(f"tokenomy standin: {args.name} on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (uvloop when installed, as the sidecar does)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(_serve(args))
        return 0
    uvloop.run(_serve(args))
    return 0
