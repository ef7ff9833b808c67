"""Generated messages on the two gRPC streams: every one gets an answer (ACK/NACK), none a crash.

The operator's usage service takes anything a sidecar could send (costs that
are not numbers, negative or infinite, odd holders, leases asked with
garbage amounts) and keeps its ledger sane; the sidecar's xDS client takes
any config resource and NACKs what it cannot apply, keeping the last good.
"""

from __future__ import annotations

import os
from decimal import Decimal

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from google.protobuf.any_pb2 import Any as AnyProto
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenomy_api import xds_type
from tokenomy_api.clock import ManualClock
from tokenomy_api.compiler import compile_configs
from tokenomy_api.costpolicy import Budget
from tokenomy_api.names import SIDECAR_CONFIG_TYPE_URL
from tokenomy_api.usage_protocol import Label, Report, SidecarMessage
from tokenomy_operator.spend.usage import UsageService
from tokenomy_sidecar.credentials import Credentials
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.runtime import ConfigHolder, default_store_factory
from tokenomy_sidecar.xds_client import XdsSource

from helpers import policy, route

SETTINGS = settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "1500")),
    derandomize=not os.environ.get("HOSTILE_RANDOM"),
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
amounts = st.one_of(
    st.sampled_from(["", "0", "0.01", "-1", "NaN", "Infinity", "-Infinity", "1e999", "abc"]),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.text(max_size=12),
)
texts = st.text(max_size=30)
reports = st.builds(
    lambda number, cost, saved, labels, tokens: Report(
        number=number,
        cost_usd=cost,
        saved_usd=saved,
        route="chat",
        cache="miss",
        input_tokens=tokens,
        output_tokens=tokens,
        labels=[Label(key=k, value=v) for k, v in labels],
    ),
    st.integers(min_value=0, max_value=2**64 - 1),
    amounts,
    amounts,
    st.lists(st.tuples(texts, texts), max_size=3),
    st.integers(min_value=0, max_value=2**64 - 1),
)
messages = st.builds(
    lambda holder, policy, batch, want, in_flight, need: SidecarMessage(
        holder=holder,
        policy=policy,
        reports=batch,
        want_lease=want,
        in_flight_usd=in_flight,
        need_usd=need,
    ),
    texts,
    st.sampled_from(["shop/agent", "shop/other", ""]),
    st.lists(reports, max_size=5),
    st.booleans(),
    amounts,
    amounts,
)


def test_the_usage_service_answers_anything_and_keeps_its_ledger_sane() -> None:
    budget = Budget.model_validate({"amount": "10"})
    service = UsageService(lambda p: budget if p == "shop/agent" else None, ManualClock())

    @SETTINGS
    @given(message=messages)
    def check(message: object) -> None:
        answer = service.handle(message)
        assert answer.resets_at
        for period in service.periods.values():
            ledger = period.ledger
            assert ledger.spent.is_finite()
            assert ledger.spent >= 0  # a report cannot take money back
            if answer.granted:
                assert Decimal(answer.lease_usd) <= ledger.budget

    check()


def test_the_xds_client_nacks_what_it_cannot_apply_and_keeps_the_last_good() -> None:
    holder = ConfigHolder(default_store_factory(ManualClock()))
    good = compile_configs([policy()], [route()]).configs["ns/agent"]
    source = XdsSource("127.0.0.1:1", "ns/pod", holder, Metrics(), Credentials())
    first = source._handle(
        DiscoveryResponse(
            version_info=good.version,
            type_url=SIDECAR_CONFIG_TYPE_URL,
            nonce="1",
            resources=[AnyProto(type_url=SIDECAR_CONFIG_TYPE_URL, value=xds_type.encode(good))],
        )
    )
    assert not first.HasField("error_detail")
    framed = st.binary(max_size=300).map(lambda b: b"\x0a" + bytes([len(b) & 0x7F]) + b)
    resources = st.lists(
        st.builds(
            lambda type_url, value: AnyProto(type_url=type_url, value=value),
            st.sampled_from([SIDECAR_CONFIG_TYPE_URL, "type.googleapis.com/x.Y"]),
            st.one_of(st.binary(max_size=300), framed),
        ),
        min_size=1,
        max_size=3,
    )

    @SETTINGS
    @given(batch=resources, version=texts)
    def check(batch: list[AnyProto], version: str) -> None:
        assert holder.current is not None
        before = holder.current.config.version
        answer = source._handle(
            DiscoveryResponse(
                version_info=version, type_url=SIDECAR_CONFIG_TYPE_URL, nonce="2", resources=batch
            )
        )
        assert answer.response_nonce == "2"
        if answer.HasField("error_detail"):
            assert answer.error_detail.message
            assert holder.current.config.version == before  # the last good stays

    check()
