"""The pipeline's rules, with stages that only record what happens to them."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from prometheus_client import generate_latest

from tokenomy_api.clock import ManualClock
from tokenomy_api.compiler import compile_configs
from tokenomy_sidecar.credentials import Credentials
from tokenomy_sidecar.errors import ApiError
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, CacheRecord, Exchange, Pipeline, Stage
from tokenomy_sidecar.request import parse_chat
from tokenomy_sidecar.runtime import ConfigHolder, default_store_factory
from tokenomy_sidecar.stages.metering import LABEL_VALUES, Meter

from helpers import policy, route

RAW = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})


class Recorder:
    """A stage that notes each call; ``fail`` raises in ``request``, ``answer`` answers."""

    def __init__(
        self, name: str, log: list[str], optional: bool = True, fail: Exception | None = None
    ) -> None:
        self.name, self.log, self.optional, self.fail = name, log, optional, fail
        self.answer: Answer | None = None

    async def request(self, x: Exchange) -> Answer | None:
        self.log.append(f"{self.name}.request")
        if self.name == "trim":
            x.chat.body["messages"] = []  # what a half-done optimisation leaves behind
            x.cache = CacheRecord.off("changed")
        if self.fail is not None:
            raise self.fail
        return self.answer

    async def store(self, x: Exchange, answer: Answer) -> None:
        self.log.append(f"{self.name}.store")

    async def close(self, x: Exchange) -> None:
        self.log.append(f"{self.name}.close")


def exchange() -> Exchange:
    config = compile_configs([policy()], [route()]).configs["ns/agent"]
    holder = ConfigHolder(default_store_factory(ManualClock()))
    runtime = holder.apply(config, Credentials())
    return Exchange(runtime, runtime.routes["chat"], RAW, parse_chat(RAW), 0.0)


def pipeline_of(*stages: Recorder) -> tuple[Pipeline, Metrics]:
    metrics = Metrics()
    chain: list[Stage] = list(stages)
    return Pipeline(chain, metrics), metrics


async def test_stages_run_in_order_until_one_answers() -> None:
    log: list[str] = []
    first, second, third = (Recorder(n, log) for n in ("identify", "cache", "forward"))
    second.answer = Answer("exact")
    pipeline, _ = pipeline_of(first, second, third)
    x = exchange()
    answer, ran = await pipeline.run(x)
    assert answer is second.answer
    assert log == ["identify.request", "cache.request"]
    await pipeline.store(x, answer, ran)
    await pipeline.close(x)
    assert log[2:] == ["identify.store", "cache.store", "identify.close", "cache.close",
                       "forward.close"]  # fmt: skip


async def test_a_failing_optimisation_fails_open() -> None:
    log: list[str] = []
    stages = (
        Recorder("trim", log, fail=RuntimeError("bug")),
        Recorder("route", log),
        Recorder("budget", log, optional=False),
        Recorder("forward", log, optional=False),
    )
    stages[-1].answer = Answer("miss")
    pipeline, metrics = pipeline_of(*stages)
    x = exchange()
    await pipeline.run(x)
    # The optional stage after the failure is skipped; the required ones run.
    assert log == ["trim.request", "budget.request", "forward.request"]
    # What the failed stage had done is gone: the client's request, the default tier.
    assert x.chat.body["messages"] == [{"role": "user", "content": "hi"}]
    assert x.cache.decision.reason == "fail-open"
    assert (x.routing.tier.name, x.routing.reason) == ("large", "fail-open (trim)")
    sample = metrics.registry.get_sample_value(
        "tokenomy_fail_open_total",
        {"namespace": "ns", "policy": "agent", "route": "chat", "stage": "trim"},
    )
    assert sample == 1


@pytest.mark.parametrize(
    ("optional", "error"),
    [
        (True, ApiError(400, "refused on purpose")),  # a refusal is no failure
        (False, RuntimeError("bug")),  # only optimisations fail open
    ],
)
async def test_what_does_not_fail_open(optional: bool, error: Exception) -> None:
    log: list[str] = []
    pipeline, _ = pipeline_of(
        Recorder("stage", log, optional=optional, fail=error), Recorder("forward", log)
    )
    with pytest.raises(type(error)):
        await pipeline.run(exchange())
    assert log == ["stage.request"]


def test_attribution_labels_in_metrics_are_bounded_and_reports_keep_every_value() -> None:
    metrics = Metrics()
    meter = Meter(metrics, {"team": "payments"})
    x = exchange()
    x.spend.spent, x.spend.input_tokens = Decimal("0.001"), 10
    reported = set()
    for i in range(10_000):
        x.feature = f"feature-{i}"
        meter.record(x, "large", "miss", Decimal(0))
        assert x.spend.usage is not None
        reported.add(dict(x.spend.usage.labels)["feature"])
    assert len(reported) == 10_000  # the usage report keeps the exact value
    page = generate_latest(metrics.registry)
    features = {
        s.labels["value"]
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "tokenomy_attributed_cost_usd_total" and s.labels["key"] == "feature"
    }
    assert len(features) == LABEL_VALUES + 1  # the first 100, and "other"
    assert "other" in features
    assert len(page) < 64 * 1024
