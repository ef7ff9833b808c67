"""``tokenomy simulate``: the demo's report for your own policy and request log.

The log is JSONL, one request a line, either an OpenAI chat request body
(``{"model": ..., "messages": [...], ...}``) or ``{"request": {...},
"response": {...}, "headers": {...}, "timestamp": "2026-11-02T09:14:00Z"}``
where the response (an OpenAI chat completion, optional) is the answer
recorded in production, the headers (optional) are the ones the app sent
(a tenant header the cache is partitioned by, say) and the timestamp
(optional) dates the request. Every tier of the policy's
routes is a stand-in that answers with the recorded answer (or, without
one, echoes the question), so spend is measured through the real sidecar;
quality cannot be, since the log holds one answer per request.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from tokenomy_api.compiled import SidecarConfig
from tokenomy_api.compiler import compile_configs
from tokenomy_api.loader import load_resources
from tokenomy_api.meta import dump
from tokenomy_demo import html, report
from tokenomy_demo.cli import Progress, check_embedder
from tokenomy_demo.report import MILLION, words
from tokenomy_demo.run import Call, replay, started

MONTH = Decimal(30 * 24 * 3600)


@dataclass(frozen=True)
class Entry:
    """One logged request."""

    call: Call
    answer: str | None
    at: datetime | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``simulate``'s arguments."""
    parser.add_argument(
        "-f", "--config", type=Path, action="append", required=True,
        help="CostPolicy and ModelRoute YAML files or folders (repeatable)",
    )  # fmt: skip
    parser.add_argument("--log", type=Path, required=True, help="JSONL of chat requests")
    parser.add_argument("--policy", metavar="NS/NAME", help="the CostPolicy, if several")
    parser.add_argument(
        "--requests-per-month", type=int,
        help="traffic to project a month's spend for (default: from the log's timestamps)",
    )  # fmt: skip
    parser.add_argument("--html", type=Path, help="also write the report as an HTML page")


def _time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{where}: timestamp {value!r} is not ISO 8601 or epoch seconds") from None


def read_log(path: Path) -> list[Entry]:
    """The log's requests; a line that is not one raises ValueError naming it."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error})") from None
        body = item.get("request", item) if isinstance(item, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise ValueError(f"{where}: expected a chat request with `messages`")
        if not isinstance(body.get("model"), str):
            raise ValueError(f"{where}: the request has no `model`")
        answer = None
        response = item.get("response") if "request" in item else None
        if isinstance(response, dict) and response.get("choices"):
            message = response["choices"][0].get("message") or {}
            answer = message.get("content") if isinstance(message.get("content"), str) else None
        rest = {k: v for k, v in body.items() if k not in ("model", "messages", "stream")}
        headers = item.get("headers") if "request" in item else None
        if headers is not None and not (
            isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())
        ):
            raise ValueError(f"{where}: `headers` must map names to strings")
        call = Call(body["model"], body["messages"], body=rest, headers=headers or {})
        out.append(Entry(call, answer, _time(item.get("timestamp"), where)))
    if not out:
        raise ValueError(f"{path}: no requests")
    return out


def _text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _select(paths: list[Path], policy: str | None) -> tuple[SidecarConfig, list[dict[str, Any]]]:
    resources = load_resources(paths)
    compiled = compile_configs(resources.policies, resources.routes)
    problems = [*resources.problems, *compiled.problems]
    if problems:
        raise ValueError("; ".join(str(p) for p in problems))
    if policy is None:
        if len(compiled.configs) != 1:
            raise ValueError(f"pass --policy: the config has {', '.join(compiled.configs)}")
        policy = next(iter(compiled.configs))
    if policy not in compiled.configs:
        raise ValueError(f"no CostPolicy {policy} (have {', '.join(compiled.configs)})")
    config = compiled.configs[policy]
    names = {r.name for r in config.routes}
    docs = [
        dump(p) for p in resources.policies if f"{p.metadata.namespace}/{p.metadata.name}" == policy
    ]
    docs += [dump(r) for r in resources.routes if r.metadata.name in names]
    return config, docs


def baseline_cost(config: SidecarConfig, entry: Entry) -> Decimal:
    """The request on its route's reference tier, answered as recorded (or echoed)."""
    route = config.route_for(entry.call.model)
    if route is None:
        return Decimal(0)  # the sidecar refuses it too: no spend either way
    reference = next(t for t in route.tiers if t.name == route.reference_tier)
    price = reference.backends[0].price
    question = _text(entry.call.messages[-1]) if entry.call.messages else ""
    answer = entry.answer if entry.answer is not None else f"{reference.name} answers: {question}"
    prompt = sum(words(_text(m)) for m in entry.call.messages)
    return (prompt * price.input + words(answer) * price.output) / MILLION


def month_factor(entries: list[Entry], per_month: int | None) -> Decimal | None:
    """How many times this traffic fits in a month, from the flag or the timestamps."""
    if per_month is not None:
        return Decimal(per_month) / len(entries)
    times = [e.at for e in entries if e.at is not None]
    if len(times) < 2 or max(times) == min(times):
        return None
    span = Decimal(str((max(times) - min(times)).total_seconds()))
    return MONTH / span


def run(args: argparse.Namespace) -> int:
    """Replay the log through the policy and print the report (exit 2 on bad input)."""
    try:
        entries = read_log(args.log)
        config, docs = _select(args.config, args.policy)
        if config.cache.semantic.enabled or any(d.examples for d in config.routing.domains):
            check_embedder()
        tiers = list(dict.fromkeys(t.name for r in config.routes for t in r.tiers))
        script = {
            _text(e.call.messages[-1]): {"replies": [e.answer]}
            for e in entries
            if e.answer is not None and e.call.messages
        }
        calls = [e.call for e in entries]
        print(f"Replaying {len(calls):,} logged requests through {config.policy.key}...",
              file=sys.stderr)  # fmt: skip
        with started(dict.fromkeys(tiers, script), docs) as (api, urls, _):
            results = asyncio.run(replay(api, calls, Progress(len(calls))))
            direct = asyncio.run(replay(urls[tiers[-1]], calls[:64]))
    except (OSError, RuntimeError, TimeoutError, ValueError) as error:
        print(f"tokenomy simulate: {error}", file=sys.stderr)
        return 2
    recorded = sum(e.answer is not None for e in entries)
    built = report.build(
        results,
        baseline=[baseline_cost(config, e) for e in entries],
        right=None,
        right_without=None,
        direct=direct,
        tiers=tiers,
        mix=f"{recorded:,} with recorded answers",
        month_factor=month_factor(entries, args.requests_per_month),
    )
    shown = report.text(built)
    print()
    print(shown)
    if built.month is None:
        print("\n(no timestamps in the log: pass --requests-per-month to project a month)")
    if args.html is not None:
        args.html.write_text(html.page(built, shown, "Tokenomy simulation"))
        print(f"\nHTML report: {args.html}")
    return 0
